"""``exchange-stream control send FILE``: send a command written as JSON and follow it to its end.

FILE (``-`` for stdin) holds one command as ``contracts/commands/command.json`` has it:
``command`` (an operation's name such as ``replay`` or ``recipients_list``, or ``run_job`` with
``{"job", "params"}``), ``params``, and optionally ``command_id`` (a new UUID when absent; an id
sent before gets that run's outcome, as ``duplicate``)::

    {"command_id": "ops-2026-11-26-001", "command": "replay",
     "params": {"source": "hospital-a", "dry_run": true}}

The command is checked before anything is sent, as a worker checks it: the envelope against
``command.json``, then the parameters against the operation's own contract. A file that fails
is refused with the reason (exit 2) and nothing is published. Otherwise the command is published
on the control topic (``TOPIC_CONTROL``), its results are followed on ``<TOPIC_CONTROL>.results``
(progress on a terminal's stderr), and the final result is printed as every operation prints it
(``--output json``: one JSON object), with the exit codes of ``cli/operations.py``. As for every
command the CLI sends, ``requested_by`` is the CLI's own (``cli:<user>``): a ``requested_by`` or
``requested_at`` in the file is not sent (stderr says so).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from exchange_stream.cli.console import ProgressLine
from exchange_stream.cli.operations import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    _submit_and_follow,
    add_output_option,
    add_timeout_option,
    exit_code,
    output,
)
from exchange_stream.cli.render import print_text
from exchange_stream.infra import logs
from exchange_stream.infra.config import Settings
from exchange_stream.ops.control import Command, CommandInvalid, parse_command
from exchange_stream.ops.registry import OPERATIONS, RUN_JOB

# What ``args.command`` is for this command (main.py dispatches on it).
COMMAND = "control send"
# Envelope fields the CLI sets itself (operations._submit_and_follow).
_SET_BY_CLI = ("requested_by", "requested_at")


class CommandFileInvalid(ValueError):
    """The file does not hold a command that a worker would accept; the message says why."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``control send`` (``control`` is a group, for the commands of the control topic)."""
    group = sub.add_parser("control", help="commands on the control topic, written as JSON")
    commands = group.add_subparsers(dest="_control", required=True)
    p = commands.add_parser(
        "send",
        help="send a JSON command file and follow it to its final result",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="the JSON command (- for stdin)")
    add_timeout_option(p)
    add_output_option(p)
    p.set_defaults(command=COMMAND)


def read_command(raw: bytes) -> tuple[dict[str, Any], Command]:
    """The command document to send (``command_id`` added when absent) and what a worker would
    make of it; ``CommandFileInvalid`` names what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CommandFileInvalid("not JSON") from None
    if not isinstance(doc, dict):
        raise CommandFileInvalid("a command is a JSON object")
    doc.setdefault("command_id", str(uuid.uuid4()))
    try:
        # The worker's own check (ops/control.py): the envelope, then the operation's params.
        return doc, parse_command(orjson.dumps(doc))
    except CommandInvalid as exc:
        reason = exc.reason
        if reason == "invalid field: command":
            reason += f" (one of {', '.join([*OPERATIONS, RUN_JOB])})"
        raise CommandFileInvalid(reason) from None


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Check, send and follow the command of ``args.file``; exit codes of cli/operations.py."""
    logs.setup("WARNING")
    try:
        message, cmd = read_command(_read(args.file))
    except CommandFileInvalid as exc:
        _err(f"{args.file}: {exc}; nothing sent")
        return EXIT_USAGE
    dropped = [f for f in _SET_BY_CLI if f in message]
    if dropped:
        _err(f"{', '.join(dropped)} of the file not sent: the CLI sends its own requested_by")
    name = cmd.operation.name
    line = ProgressLine(name, enabled=args.output == "text")
    try:
        final = asyncio.run(
            _submit_and_follow(
                settings, cmd.command, message["params"], cmd.command_id, args.timeout, line
            )
        )
    except KafkaError as exc:
        _err(f"Kafka at {settings.kafka_brokers} failed ({type(exc).__name__})")
        return EXIT_FAILED
    finally:
        line.close()
    if final is None:
        _err(f"no result for command {cmd.command_id} ({name}) within {args.timeout:g} s")
        return EXIT_TIMEOUT
    doc = output(cmd.operation, final, local=False)
    if args.output == "json":
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print_text(doc, sys.stdout, title=" ".join(cmd.operation.cli))
    code = exit_code(doc)
    if doc["status"] == "duplicate" and code == EXIT_FAILED:
        _err(f"command {cmd.command_id} ran before and failed: {doc['error']}")
    return code


def _read(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CommandFileInvalid(f"cannot read the file ({exc.strerror})") from None


def _err(message: str) -> None:
    print(f"exchange-stream {COMMAND}: {message}", file=sys.stderr)
