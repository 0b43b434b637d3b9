"""Every operation from the shell, with the same options, progress, output and exit codes.

The options of an operation are built from its parameter contract (``contracts/commands/``):
``--batch-size`` for ``batch_size``, a switch for a boolean, choices for an enum, and the
property's description as the help. By default the command is published on the control topic and
its results are followed until the final one; ``--local`` runs the same operation in this process
instead (for operators without a running worker).

Output. ``--output text`` (the default) prints a readable summary (``cli/render.py``): a
headline, then tables for lists and ``key: value`` lines. ``--output json`` prints one JSON
object on stdout, with the same keys whether the operation ran on a worker or ``--local``:

===================  ===========================================================================
``operation``        the operation's name (``replay``, ``dlq_redrive``, ``recipients_list``,
                     ``materialize-patient-index`` …), also for a job sent as ``run_job``
``command_id``       the command's idempotency id; ``null`` with ``--local`` (nothing is sent)
``job_run_id``       the run's ``job_runs`` row
``status``           ``succeeded``, ``failed``, ``rejected`` or ``duplicate``
``previous_status``  with ``duplicate``: how the first run of that command id ended; else ``null``
``result``           the operation's summary, an object (``{}`` when the run produced none): the
                     same keys and shapes either way, only ids and timings differ
``error``            why the run failed or was rejected; else ``null``
``runner``           who ran it (``host:pid``): the worker, or this process with ``--local``
``local``            ``true`` with ``--local``
===================  ===========================================================================

A dry run reports what it would do, never a count of what it did not: ``replay --dry-run`` has
``would_emit`` (not ``emitted``), ``materialize-patient-index --dry-run`` has ``would_insert``,
``would_update`` and ``would_remove_orphans`` (not ``inserted``, ``updated``, ``written``,
``orphans_removed``), and the text says "would emit N".

Exit codes (the one table of the CLI):

====  ==========================================================================
0     succeeded (also a duplicate of a command id whose run succeeded)
1     failed, rejected, or a duplicate of a command id whose run failed
2     bad arguments or configuration
3     succeeded, but a check found gaps (``--verify``)
4     no final result within ``--timeout`` (nothing on stdout)
141   stdout was closed before the output was written (``… | head -1``); an
      operation still ran to its end. 141 is 128 + SIGPIPE, what a shell reports
      for any program whose reader went away (``cli/main.py``)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.cli.console import ProgressLine
from exchange_stream.cli.render import print_text
from exchange_stream.core.identity import IdentityError, Tokenizer
from exchange_stream.core.match_tokens import MatchKeys
from exchange_stream.core.optouts import MAX_IDENTITIES, tokenize_identity
from exchange_stream.infra.config import Settings
from exchange_stream.ops.framework import (
    Operation,
    ParamsInvalid,
    local_context,
    run_here,
    runner_id,
)
from exchange_stream.ops.registry import JOBS, OPERATIONS, RUN_JOB

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GAPS, EXIT_TIMEOUT = 0, 1, 2, 3, 4
EXIT_CLOSED_PIPE = 141
FINAL = {"succeeded", "failed", "rejected", "duplicate"}
# Where the chosen operation is kept on the parsed arguments.
_OP = "_operation"


def add_parsers(
    sub: argparse._SubParsersAction,
) -> dict[tuple[str, ...], argparse._SubParsersAction]:
    """One sub-command per operation, at its ``cli`` words (``dlq redrive``, ``jobs run NAME``),
    and ``jobs list``."""
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): sub}
    helps = {
        ("dlq",): "dead-letter queues",
        ("jobs",): "derived datasets and checks",
        ("recipients",): "recipients of canonical data and their token keys",
    }
    helps[("jobs", "run")] = "run a job (on a worker, or --local)"
    for op in OPERATIONS.values():
        parent = ()
        for word in op.cli[:-1]:
            path = (*parent, word)
            if path not in groups:
                p = groups[parent].add_parser(word, help=helps.get(path, word))
                groups[path] = p.add_subparsers(dest=f"_{'_'.join(path)}", required=True)
                if path == ("jobs",):
                    groups[path].add_parser("list", help="the jobs and their parameters")
            parent = path
        p = groups[parent].add_parser(op.cli[-1], help=op.summary, description=op.summary)
        _add_params(p, op)
        _add_common(p)
        p.set_defaults(**{_OP: op.name})
    return groups


def _add_params(p: argparse.ArgumentParser, op: Operation) -> None:
    schema = op.schema()
    required = set(schema.get("required", ()))
    for name, spec in schema["properties"].items():
        flag = spec.get("x-option", "--" + name.replace("_", "-"))
        help_text = spec["description"]
        if "default" in spec and spec["default"] not in (False, "", None):
            help_text += f" (default {spec['default']})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if spec.get("type") == "boolean":
            kwargs.update(action="store_const", const=True)
        elif "enum" in spec:
            kwargs.update(choices=spec["enum"])
        elif spec.get("type") == "integer":
            kwargs.update(type=int, metavar="N")
        elif spec.get("type") == "number":
            kwargs.update(type=float, metavar="X")
        elif "x-identities" in spec:
            # Identities in an NDJSON file, tokenized here (run()): only tokens are sent.
            kwargs.update(metavar=spec["x-identities"])
        elif "x-file" in spec:
            # A JSON document given as a file on the shell, and as itself on the control topic.
            kwargs.update(type=_json_file, metavar=spec["x-file"])
        else:
            kwargs.update(metavar=spec.get("x-metavar", name.upper()))
        if "x-positional" in spec:
            # An argument the command is about (``recipients add ID``): given by position.
            kwargs.pop("dest")
            kwargs.pop("default")
            kwargs["metavar"] = spec["x-positional"]
            p.add_argument(name, **kwargs)
            continue
        if name in required:
            kwargs["required"] = True
        p.add_argument(flag, **kwargs)


def _tokenize_identities(
    settings: Settings, op: Operation, given: dict[str, Any]
) -> dict[str, Any]:
    """``given`` with each ``x-identities`` file replaced by its identities' tokens
    (``core/optouts.py``): the identities never leave this process. ``ParamsInvalid`` names the
    line and the field of the first bad identity, never its value; nothing is sent then."""
    for name, spec in op.schema()["properties"].items():
        if "x-identities" not in spec or name not in given:
            continue
        tokenizer = Tokenizer(settings.tokenizer_hmac_secret)
        keys = MatchKeys(settings.match_token_secret)
        try:
            with open(given[name], "rb") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
        except OSError:
            raise ParamsInvalid(f"invalid field: {name}: cannot read the file") from None
        if len(lines) > MAX_IDENTITIES:
            raise ParamsInvalid(
                f"invalid field: {name}: at most {MAX_IDENTITIES} identities a file; split it"
            )
        tokens = []
        for n, line in enumerate(lines, 1):
            try:
                tokens.append(tokenize_identity(orjson.loads(line), tokenizer, keys).as_params())
            except orjson.JSONDecodeError:
                raise ParamsInvalid(f"line {n}: not a JSON object") from None
            except IdentityError as exc:
                raise ParamsInvalid(f"line {n}: {exc}") from None
        given = {**given, name: tokens}
    return given


def _json_file(path: str) -> Any:
    """The JSON document in the file ``path`` (an option of type ``x-file``)."""
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except OSError:
        raise argparse.ArgumentTypeError("cannot read the file") from None
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError("the file is not JSON") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--local",
        action="store_true",
        help="run in this process instead of sending the command to the workers",
    )
    add_output_option(p)
    p.add_argument(
        "--command-id",
        help="idempotency id of the command (default: a new UUID); not used with --local",
    )
    add_timeout_option(p)


def add_output_option(
    p: argparse.ArgumentParser,
    help_text: str = "text (default): a readable summary; json: one JSON object on stdout",
) -> None:
    """``--output text|json``, as every command that prints a result takes it."""
    p.add_argument("--output", choices=("text", "json"), default="text", help=help_text)


def add_timeout_option(p: argparse.ArgumentParser) -> None:
    """``--timeout S``: how long a command sent to the workers waits for its final result."""
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the final result (default 600)",
    )


def params_from_args(op: Operation, args: argparse.Namespace) -> dict[str, Any]:
    """The parameters given on the command line (options left out take the contract's
    defaults)."""
    names = op.schema()["properties"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def is_operation(args: argparse.Namespace) -> bool:
    return getattr(args, _OP, None) is not None


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the operation the arguments name; see the module docstring for exit codes."""
    op = OPERATIONS[getattr(args, _OP)]
    given = params_from_args(op, args)
    try:
        given = _tokenize_identities(settings, op, given)
        params = op.params(given)
    except ParamsInvalid as exc:
        print(f"exchange-stream {' '.join(op.cli)}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    line = ProgressLine(op.name, enabled=args.output == "text")
    try:
        if args.local:
            final = asyncio.run(_run_local(settings, op, params, line))
        else:
            command, command_params = (
                (RUN_JOB, {"job": op.name, "params": given}) if op.job else (op.name, given)
            )
            command_id = args.command_id or str(uuid.uuid4())
            final = asyncio.run(
                _submit_and_follow(
                    settings, command, command_params, command_id, args.timeout, line
                )
            )
    finally:
        line.close()
    if final is None:
        print(
            f"exchange-stream: no result for {op.name} within {args.timeout:g} s", file=sys.stderr
        )
        return EXIT_TIMEOUT
    doc = output(op, final, local=args.local)
    if args.output == "json":
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        print_text(doc, sys.stdout, title=" ".join(op.cli))
    code = exit_code(doc)
    if doc["status"] == "duplicate" and code == EXIT_FAILED:
        print(
            f"exchange-stream: command {doc['command_id']} ran before and failed: {doc['error']}",
            file=sys.stderr,
        )
    return code


def output(op: Operation, final: dict[str, Any], *, local: bool) -> dict[str, Any]:
    """The one object the CLI prints for a run (the module docstring's table), from the final
    result message of a worker or the outcome of a local run."""
    return {
        "operation": op.name,
        "command_id": final.get("command_id"),
        "job_run_id": final.get("job_run_id"),
        "status": final["status"],
        "previous_status": final.get("previous_status"),
        "result": final.get("result") or {},
        "error": final.get("error"),
        "runner": final.get("runner"),
        "local": local,
    }


def exit_code(final: dict[str, Any]) -> int:
    """The exit code of a run's output object or final result message (the table of the module
    docstring)."""
    status = final["status"]
    if status == "duplicate":
        status = final.get("previous_status", "failed")
    if status != "succeeded":
        return EXIT_FAILED
    result = final.get("result") or {}
    if result.get("gaps") or result.get("ok") is False:
        return EXIT_GAPS
    return EXIT_OK


async def _run_local(
    settings: Settings, op: Operation, params: dict[str, Any], line: ProgressLine
) -> dict[str, Any]:
    async with local_context(settings, actor=f"cli:{getpass.getuser()}") as ctx:

        async def on_progress(progress: dict[str, Any]) -> None:
            line.update(progress)

        outcome = await run_here(ctx, op, params, on_progress)
        return {
            "command_id": None,
            "job_run_id": str(outcome.job_run_id),
            "status": outcome.status,
            # Through JSON, as a worker's result travels: the same types either way (ids and
            # times as strings), so text and JSON output do not depend on where it ran.
            "result": orjson.loads(orjson.dumps(outcome.summary)),
            "error": outcome.error,
            "runner": runner_id(),
        }


async def _submit_and_follow(
    settings: Settings,
    command: str,
    params: dict[str, Any],
    command_id: str,
    wait_s: float,
    line: ProgressLine,
) -> dict[str, Any] | None:
    """Publish the command, then read results for its id until a final one arrives."""
    results = settings.topic_control_results
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([results])
    finally:
        await admin.close()
    tps = [TopicPartition(results, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_list, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
        await producer.start()
        try:
            message = {
                "command_id": command_id,
                "command": command,
                "params": params,
                "requested_by": f"cli:{getpass.getuser()}",
            }
            await producer.send_and_wait(
                settings.topic_control, orjson.dumps(message), key=command_id.encode()
            )
        finally:
            await producer.stop()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for msg in messages:
                    if msg.key != command_id.encode():
                        continue
                    doc = orjson.loads(msg.value)
                    if doc["status"] in FINAL:
                        return doc
                    line.update(doc.get("progress") or {})
        return None
    finally:
        await consumer.stop()


def print_jobs(out: Any = None) -> None:
    """``jobs list``: every job, its summary and its parameters."""
    out = out or sys.stdout
    for op in JOBS.values():
        out.write(f"{op.name}: {op.summary}\n")
        for name, spec in op.schema()["properties"].items():
            # Defaults as JSON (``false``, ``"auto"``), as the contract writes them.
            default = (
                f", default {orjson.dumps(spec['default']).decode()}" if "default" in spec else ""
            )
            kind = spec.get("type", "enum")
            out.write(f"  --{name.replace('_', '-')} ({kind}{default}): {spec['description']}\n")
