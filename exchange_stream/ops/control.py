"""The control plane: operator commands from ``exchange.control``, acted on once per command id.

Each command is validated (the envelope against ``contracts/commands/command.json``, its params
against the operation's own contract), recorded in ``job_runs`` (params, progress, outcome,
runner) and reported on ``exchange.control.results`` (running, progress, then one final status).

A command id seen before is never run twice at once:

- its run has ended → ``duplicate``, carrying the first outcome;
- its run is still heartbeating (the command came back through a rebalance while its runner
  works) → wait for that run to end, then ``duplicate``;
- its run stopped heartbeating for ``CONTROL_TAKEOVER_AFTER_S`` (its worker died or hangs) → take
  it over under the next execution number and run it again (every operation is idempotent).

The execution number fences the old runner: each of its writes (progress, heartbeat, outcome)
names the number it claimed, so after a takeover its next write changes nothing, and it stops
without publishing anything more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from exchange_stream.core.timefmt import now_rfc3339
from exchange_stream.infra.contracts import ContractViolation, check_command
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.sql import q
from exchange_stream.infra.topics import raw_topic
from exchange_stream.ops.framework import (
    Fenced,
    Operation,
    OpsContext,
    ParamsInvalid,
    RunRecorder,
    run_recorded,
    runner_id,
)
from exchange_stream.ops.registry import RUN_JOB, resolve

log = logging.getLogger(__name__)


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
    operation: Operation
    params: dict[str, Any]
    requested_by: str | None = None


def parse_command(value: bytes | None) -> Command:
    """A validated command with its params' defaults filled in, or ``CommandInvalid``."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise CommandInvalid("command is not valid JSON") from None
    fields = doc if isinstance(doc, dict) else {}
    command_id = fields.get("command_id") if isinstance(fields.get("command_id"), str) else None
    name = fields.get("command") if isinstance(fields.get("command"), str) else None
    try:
        check_command(doc)
    except ContractViolation as exc:
        raise CommandInvalid(str(exc), command_id, name) from None
    try:
        operation, params = resolve(doc["command"], doc["params"])
    except ParamsInvalid as exc:
        v = exc.violation
        prefix = "params.params." if doc["command"] == RUN_JOB else "params."
        reason = f"{v.reason} field: {prefix}{v.field}" if v else str(exc)
        raise CommandInvalid(reason, command_id, name) from None
    return Command(doc["command_id"], doc["command"], operation, params, doc.get("requested_by"))


def result_message(
    command_id: str | None,
    status: str,
    *,
    command: str | None = None,
    job_run_id: uuid.UUID | str | None = None,
    progress: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    runner: str | None = None,
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
        "runner": runner,
        "emitted_at": now_rfc3339(),
    }


class ControlPlane:
    """Executes commands for the control agent; one instance per worker."""

    def __init__(self, ctx: OpsContext) -> None:
        self.ctx = ctx
        self.runner = runner_id()
        self.heartbeat_s = ctx.settings.control_heartbeat_s
        self.take_over_after_s = ctx.settings.control_takeover_after_s

    async def publish(self, message: dict[str, Any]) -> None:
        key = (message["command_id"] or "invalid").encode()
        await self.ctx.publisher.send(
            self.ctx.settings.topic_control_results, key, orjson.dumps(message)
        )

    async def handle(self, value: bytes | None) -> dict[str, Any] | None:
        """Validate, dedupe, execute and report one command; return the final result message,
        or None when this runner was fenced off (it published nothing more)."""
        try:
            cmd = parse_command(value)
        except CommandInvalid as exc:
            return await self._reject(exc, value)
        claim = await self._claim(cmd)
        if isinstance(claim, dict):
            await self.publish(claim)
            return claim
        run_id, execution = claim
        fields = {"command_id": cmd.command_id, "command": cmd.command, "execution": execution}
        log.info("command started", extra={"fields": fields})
        message = dict(command=cmd.command, job_run_id=run_id, runner=self.runner)
        await self.publish(result_message(cmd.command_id, "running", **message))

        async def on_progress(progress: dict[str, Any]) -> None:
            await self.publish(
                result_message(cmd.command_id, "progress", progress=progress, **message)
            )

        recorder = RunRecorder(self.ctx.pool, run_id, execution, on_progress)
        ctx = dataclasses.replace(
            self.ctx,
            actor=f"control:{cmd.requested_by or 'unknown'}",
            correlation_id=cmd.command_id,
        )
        try:
            outcome = await self._run_with_heartbeat(ctx, cmd, recorder)
        except Fenced:
            log.warning("command taken over by another runner; stopped", extra={"fields": fields})
            return None
        final = result_message(
            cmd.command_id,
            outcome.status,
            progress=recorder.last,
            result=outcome.summary,
            error=outcome.error,
            **message,
        )
        await self.publish(final)
        log.info("command finished", extra={"fields": {**fields, "status": outcome.status}})
        return final

    async def _claim(self, cmd: Command) -> tuple[uuid.UUID, int] | dict[str, Any]:
        """This runner's (run id, execution number), or the ``duplicate`` answer to publish."""
        pool = self.ctx.pool
        row = await pool.fetchrow(
            q("job_run_start"),
            uuid.uuid4(),
            cmd.operation.name,
            cmd.params,
            cmd.command_id,
            self.runner,
        )
        if row is not None:
            return row["job_run_id"], row["executions"]
        while True:
            taken = await pool.fetchrow(
                q("job_run_take_over"), cmd.command_id, self.take_over_after_s, self.runner
            )
            if taken is not None:
                log.warning(
                    "taking over a command whose runner stopped heartbeating",
                    extra={"fields": {"command_id": cmd.command_id}},
                )
                return taken["job_run_id"], taken["executions"]
            existing = await pool.fetchrow(q("job_run_by_command"), cmd.command_id)
            if existing["status"] != "running":
                message = result_message(
                    cmd.command_id,
                    "duplicate",
                    command=cmd.command,
                    job_run_id=existing["job_run_id"],
                    progress=existing["progress"],
                    result=existing["result"],
                    error=existing["error"],
                    runner=existing["runner"],
                )
                message["previous_status"] = existing["status"]
                return message
            # Still heartbeating: another runner has it. Wait for its end, or for its silence.
            await asyncio.sleep(self.heartbeat_s)

    async def _run_with_heartbeat(
        self, ctx: OpsContext, cmd: Command, recorder: RunRecorder
    ) -> Any:
        work = asyncio.create_task(run_recorded(ctx, cmd.operation, cmd.params, recorder))
        beat = asyncio.create_task(self._heartbeat(recorder, work))
        try:
            return await work
        except asyncio.CancelledError:
            if beat.done() and isinstance(beat.exception(), Fenced):
                raise Fenced(str(recorder.job_run_id)) from None
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Fenced):
                await beat

    async def _heartbeat(self, recorder: RunRecorder, work: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await recorder.heartbeat()
            except Fenced:
                work.cancel()
                raise
            except Exception as exc:
                # Not fatal (Postgres may be restarting), but a run that cannot heartbeat for
                # long will be taken over: say so.
                log.warning(
                    "heartbeat write failed",
                    extra={
                        "fields": {
                            "job_run_id": str(recorder.job_run_id),
                            "error_type": type(exc).__name__,
                        }
                    },
                )

    async def _reject(self, exc: CommandInvalid, value: bytes | None) -> dict[str, Any]:
        """Record (when it has an id) and report a command that failed validation."""
        run_id = None
        if exc.command_id:
            run_id = await self.ctx.pool.fetchval(
                q("job_run_reject"),
                uuid.uuid4(),
                exc.command or "invalid",
                exc.command_id,
                exc.reason,
                self.runner,
            )
        message = result_message(
            exc.command_id,
            "rejected",
            command=exc.command,
            job_run_id=run_id,
            error=exc.reason,
            runner=self.runner,
        )
        if not exc.command_id:
            message["message_sha256"] = hashlib.sha256(value or b"").hexdigest()
        log.warning(
            "command rejected",
            extra={"fields": {"command_id": exc.command_id, "reason": exc.reason}},
        )
        await self.publish(message)
        return message


def register(app: faust.App, runtime: Runtime) -> None:
    """Declare the control agent on ``app``: one command at a time, acknowledged after it has
    run and its result is published (or after it was fenced off)."""
    settings = runtime.settings
    plane: ControlPlane | None = None

    @app.agent(raw_topic(app, settings, settings.topic_control), name="control")
    async def control_agent(stream: faust.StreamT) -> None:
        nonlocal plane
        async for value in stream:
            if plane is None:
                # The runtime's resources exist once the worker has started.
                plane = ControlPlane(
                    OpsContext(settings, runtime.work_pool, runtime.store, runtime.publisher)
                )
            await plane.handle(value)
