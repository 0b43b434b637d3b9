"""Operator commands from the shell: ``replay``, ``reconcile``, ``dlq redrive``.

By default a command is published on the control topic and its results are followed until the
final one, with progress on a terminal; ``--local`` runs the same operation in this process
instead (for operators without a running worker). ``--output json`` prints one JSON summary.

Exit codes: 0 succeeded, 1 failed or rejected, 3 ``--verify`` found gaps, 4 no result in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.config import Settings
from exchange_stream.console import ProgressLine, print_summary
from exchange_stream.contracts import command_params
from exchange_stream.control import OPERATIONS
from exchange_stream.operations import RunRecorder, local_context, run_recorded

FINAL = {"succeeded", "failed", "rejected", "duplicate"}
EXIT_OK, EXIT_FAILED, EXIT_GAPS, EXIT_TIMEOUT = 0, 1, 3, 4


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--local",
        action="store_true",
        help="run in this process instead of sending the command to the workers",
    )
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument("--command-id", help="idempotency id of the command (default: a new UUID)")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the final result (default 600)",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``replay``, ``reconcile`` and ``dlq redrive`` with the options of SPEC §8."""
    p = sub.add_parser("replay", help="re-emit ingested events for a source's raw objects")
    p.add_argument("--source", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--limit", type=int)
    p.add_argument("--emit-version", choices=("v1", "v2", "auto"), default="auto")
    p.add_argument("--rate-per-sec", type=float)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument(
        "--verify",
        action="store_true",
        help="only check: exit 3 when raw objects of the source lack canonical rows",
    )
    add_common(p)

    p = sub.add_parser("reconcile", help="compare raw objects, manifest and canonical rows")
    p.add_argument("--source", required=True)
    p.add_argument("--repair", action="store_true")
    p.add_argument(
        "--older-than-s",
        type=float,
        default=60.0,
        help="younger rows are in flight, not findings (default 60)",
    )
    add_common(p)

    dlq = sub.add_parser("dlq", help="dead-letter queues")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    p = dlq_sub.add_parser("redrive", help="re-publish a version's dead letters to its topic")
    p.add_argument("--version", choices=("v1", "v2"), required=True)
    p.add_argument("--limit", type=int)
    add_common(p)


def command_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control command and params the parsed arguments stand for (unset options left out)."""
    if args.command == "replay":
        params = {
            "source": args.source,
            "prefix": args.prefix,
            "limit": args.limit,
            "emit_version": args.emit_version,
            "rate_per_sec": args.rate_per_sec,
            "dry_run": args.dry_run,
            "verify": args.verify,
        }
        name = "replay"
    elif args.command == "reconcile":
        params = {"source": args.source, "repair": args.repair, "older_than_s": args.older_than_s}
        name = "reconcile"
    else:
        params = {"version": args.version, "limit": args.limit}
        name = "dlq_redrive"
    return name, {k: v for k, v in params.items() if v is not None}


def exit_code(status: str, result: dict[str, Any] | None) -> int:
    if status not in ("succeeded", "duplicate"):
        return EXIT_FAILED
    if result and (result.get("gaps") or result.get("ok") is False):
        return EXIT_GAPS
    return EXIT_OK


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point for the three commands; see the module docstring."""
    name, params = command_from_args(args)
    try:
        params = command_params(name, params)
    except ValueError as exc:
        print(f"exchange-stream: {exc}", file=sys.stderr)
        return 2
    line = ProgressLine(name, enabled=args.output == "text")
    if args.local:
        final = asyncio.run(_run_local(settings, name, params, line))
    else:
        command_id = args.command_id or str(uuid.uuid4())
        final = asyncio.run(
            _submit_and_follow(settings, name, params, command_id, args.timeout, line)
        )
    line.close()
    if final is None:
        print(f"exchange-stream: no result for {name} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print_summary(final, args.output)
    return exit_code(final["status"], final.get("result"))


async def _run_local(
    settings: Settings, name: str, params: dict[str, Any], line: ProgressLine
) -> dict[str, Any]:
    async with local_context(settings) as ctx:

        async def on_progress(progress: dict[str, Any]) -> None:
            line.update(progress)

        recorder = await RunRecorder.start(ctx.pool, name, params, on_progress)
        status, summary, error = await run_recorded(ctx, name, OPERATIONS[name], params, recorder)
        return {
            "command": name,
            "job_run_id": str(recorder.job_run_id),
            "status": status,
            "result": summary,
            "error": error,
            "local": True,
        }


async def _submit_and_follow(
    settings: Settings,
    name: str,
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
            command = {
                "command_id": command_id,
                "command": name,
                "params": params,
                "requested_by": "cli",
            }
            await producer.send_and_wait(
                settings.topic_control, orjson.dumps(command), key=command_id.encode()
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
