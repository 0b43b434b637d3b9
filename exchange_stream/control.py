"""The control plane: operator commands from ``exchange.control``, executed once per command id.

Each command is validated against ``contracts/commands``, recorded in ``job_runs`` (params,
progress, outcome), and reported on ``exchange.control.results`` (running, progress, then one
final status). A command id seen before is acknowledged with ``duplicate`` and not run again,
unless its run stopped heartbeating (the worker running it died), in which case it is taken over
and run again: every operation is idempotent, so a second execution is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from exchange_stream import reconcile, redrive, replay
from exchange_stream.contracts import ContractViolation, check_command, command_params
from exchange_stream.ingest import rfc3339
from exchange_stream.operations import Operation, OpsContext, RunRecorder, run_recorded
from exchange_stream.sql import q

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
TAKE_OVER_AFTER_S = 60.0


def _run_job(ctx: OpsContext, params: dict[str, Any], progress: Any) -> Any:
    from exchange_stream.jobs import run_job

    return run_job(ctx, params["job"], params.get("params") or {}, progress)


OPERATIONS: dict[str, Operation] = {
    "replay": replay.run,
    "reconcile": reconcile.run,
    "dlq_redrive": redrive.run,
    "run_job": _run_job,
}


class CommandInvalid(ValueError):
    """The message is not a valid command; ``reason`` names the problem."""

    def __init__(self, reason: str, command_id: str | None = None, command: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id
        self.command = command


@dataclass(frozen=True)
class Command:
    command_id: str
    command: str
    params: dict[str, Any]


def parse_command(value: bytes | None) -> Command:
    """A validated command with its params' defaults filled in, or ``CommandInvalid``."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise CommandInvalid("command is not valid JSON") from None
    command_id = doc.get("command_id") if isinstance(doc, dict) else None
    command_id = command_id if isinstance(command_id, str) else None
    name = doc.get("command") if isinstance(doc, dict) else None
    name = name if isinstance(name, str) else None
    try:
        check_command(doc)
    except ContractViolation as exc:
        raise CommandInvalid(str(exc), command_id, name) from None
    try:
        params = command_params(doc["command"], doc["params"])
    except ContractViolation as exc:
        raise CommandInvalid(f"{exc.reason} field: params.{exc.field}", command_id, name) from None
    return Command(command_id=doc["command_id"], command=doc["command"], params=params)


def result_message(
    command_id: str | None,
    status: str,
    *,
    command: str | None = None,
    job_run_id: uuid.UUID | str | None = None,
    progress: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A message for ``exchange.control.results`` (contracts/commands/result.json)."""
    return {
        "command_id": command_id,
        "command": command,
        "job_run_id": str(job_run_id) if job_run_id else None,
        "status": status,
        "progress": progress or {},
        "result": result,
        "error": error,
        "emitted_at": rfc3339(datetime.now(UTC)),
    }


class ControlPlane:
    """Executes commands for the control agent; one instance per worker."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx

    async def publish(self, message: dict[str, Any]) -> None:
        key = (message["command_id"] or "invalid").encode()
        await self.ctx.publisher.send(
            self.ctx.settings.topic_control_results, key, orjson.dumps(message)
        )

    async def handle(self, value: bytes | None) -> dict[str, Any]:
        """Validate, dedupe, execute and report one command; return the final result message."""
        try:
            cmd = parse_command(value)
        except CommandInvalid as exc:
            return await self._reject(exc, value)
        pool = self.ctx.pool
        run_id = await pool.fetchval(
            q("job_run_start"), uuid.uuid4(), cmd.command, cmd.params, cmd.command_id
        )
        if run_id is None:
            run_id = await pool.fetchval(q("job_run_take_over"), cmd.command_id, TAKE_OVER_AFTER_S)
            if run_id is None:
                existing = await pool.fetchrow(q("job_run_by_command"), cmd.command_id)
                message = result_message(
                    cmd.command_id,
                    "duplicate",
                    command=cmd.command,
                    job_run_id=existing["job_run_id"],
                    progress=existing["progress"],
                    result=existing["result"],
                    error=existing["error"],
                )
                message["previous_status"] = existing["status"]
                await self.publish(message)
                return message
            log.warning(
                "taking over a stalled command", extra={"fields": {"command_id": cmd.command_id}}
            )
        log.info(
            "command started",
            extra={"fields": {"command_id": cmd.command_id, "command": cmd.command}},
        )
        await self.publish(
            result_message(cmd.command_id, "running", command=cmd.command, job_run_id=run_id)
        )

        async def on_progress(progress: dict[str, Any]) -> None:
            await self.publish(
                result_message(
                    cmd.command_id,
                    "progress",
                    command=cmd.command,
                    job_run_id=run_id,
                    progress=progress,
                )
            )

        recorder = RunRecorder(pool, run_id, on_progress)
        beat = asyncio.create_task(self._heartbeat(run_id))
        try:
            status, summary, error = await run_recorded(
                self.ctx, cmd.command, OPERATIONS[cmd.command], cmd.params, recorder
            )
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        message = result_message(
            cmd.command_id,
            status,
            command=cmd.command,
            job_run_id=run_id,
            progress=recorder.last,
            result=summary,
            error=error,
        )
        await self.publish(message)
        log.info(
            "command finished", extra={"fields": {"command_id": cmd.command_id, "status": status}}
        )
        return message

    async def _heartbeat(self, run_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(Exception):
                await self.ctx.pool.execute(q("job_run_heartbeat"), run_id)

    async def _reject(self, exc: CommandInvalid, value: bytes | None) -> dict[str, Any]:
        """Record (when it has an id) and report a command that failed validation."""
        run_id = None
        if exc.command_id:
            run_id = await self.ctx.pool.fetchval(
                q("job_run_start"), uuid.uuid4(), exc.command or "invalid", {}, exc.command_id
            )
            if run_id is not None:
                await self.ctx.pool.execute(
                    q("job_run_finish"), run_id, "failed", {}, None, exc.reason
                )
        message = result_message(
            exc.command_id, "rejected", command=exc.command, job_run_id=run_id, error=exc.reason
        )
        if not exc.command_id:
            message["message_sha256"] = hashlib.sha256(value or b"").hexdigest()
        log.warning(
            "command rejected",
            extra={"fields": {"command_id": exc.command_id, "reason": exc.reason}},
        )
        await self.publish(message)
        return message
