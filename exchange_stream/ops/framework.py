"""What every operation is declared with and runs under: parameters, resources, a recorded run.

An operation is declared once, as an ``Operation``: its name (the ``command`` on the control
topic), the words that call it from the shell, a one-line summary, and the coroutine
``async def run(ctx, params, progress) -> dict`` that does the work. Its parameters are the JSON
Schema ``contracts/commands/<name>.json``: the control plane validates commands against it, the
CLI builds its options from it (every property's ``description`` is the option's help), and the
defaults come from it. Rules across parameters (two modes that exclude each other) are the
operation's ``check``.

``run`` calls ``await progress({...})`` as it goes (throttled, recorded in ``job_runs.progress``
and, on a worker, published to the results topic) and returns its summary; it raises
``OperationFailed`` for an outcome the operator must see as a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from exchange_stream.core.formats import FormatUnknown
from exchange_stream.infra.config import Settings
from exchange_stream.infra.contracts import ContractViolation, command_params, command_schema
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.export_store import ExportStore, open_export_store
from exchange_stream.infra.kafka import Publisher
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import RawStore, open_store

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]
RunFn = Callable[["OpsContext", dict[str, Any], ProgressFn], Awaitable[dict[str, Any]]]


class OperationFailed(Exception):
    """The operation ran but its outcome is a failure; ``summary`` says what it found."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


class ParamsInvalid(ValueError):
    """Parameters the operation does not accept; the message names the parameter, never a
    value. ``violation`` is the contract's finding, when the contract refused them."""

    def __init__(self, message: str, violation: ContractViolation | None = None) -> None:
        super().__init__(message)
        self.violation = violation


class Fenced(Exception):
    """Another runner took this run over: stop without writing or publishing anything more."""


def runner_id() -> str:
    """Who runs a command, for ``job_runs.runner`` and result messages: host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Operation:
    """One operation, declared once (see the module docstring)."""

    name: str
    cli: tuple[str, ...]
    summary: str
    run: RunFn
    check: Callable[[dict[str, Any]], None] | None = None
    # A job is also reachable as ``run_job {"job": name}`` on the control topic.
    job: bool = False

    @property
    def contract(self) -> str:
        return f"commands/{self.name}.json"

    def schema(self) -> dict[str, Any]:
        return command_schema(self.name)

    def params(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` validated against the contract, defaults filled in, ``check`` applied;
        ``ParamsInvalid`` otherwise."""
        try:
            effective = command_params(self.name, given)
        except ContractViolation as exc:
            raise ParamsInvalid(exc.explained(), exc) from None
        if self.check is not None:
            try:
                self.check(effective)
            except ParamsInvalid:
                raise
            except FormatUnknown as exc:
                violation = ContractViolation(exc.field, "invalid", exc.wants)
                raise ParamsInvalid(str(exc), violation) from None
        return effective


@dataclass
class OpsContext:
    """The resources an operation uses: the worker's own, or ``local_context``'s."""

    settings: Settings
    pool: asyncpg.Pool
    store: RawStore
    publisher: Publisher
    # Who asked, for audit rows: the command's sender, or the local user of the CLI.
    actor: str = "operator"
    correlation_id: str | None = None
    # The bulk exports' bucket (ops/export.py).
    export_store: ExportStore | None = None
    # The run being executed and its execution number, set by ``run_recorded``: an operation
    # that writes outside ``job_runs`` (an export) fences those writes with them too.
    job_run_id: uuid.UUID | None = None
    execution: int | None = None


@contextlib.asynccontextmanager
async def local_context(settings: Settings, actor: str = "cli") -> AsyncIterator[OpsContext]:
    """Resources for running an operation in this process (CLI ``--local``, tests)."""
    pool = await create_pool(settings, max_size=8, batch_work=True)
    publisher = Publisher(settings, client_id=f"{settings.app_id}-ops")
    try:
        async with open_store(settings) as store, open_export_store(settings) as exports:
            yield OpsContext(settings, pool, store, publisher, actor=actor, export_store=exports)
    finally:
        await publisher.stop()
        await pool.close()


class RunRecorder:
    """One ``job_runs`` row: progress as it goes (throttled), then the outcome.

    ``execution`` is the fencing token: the row's ``executions`` when this runner claimed it.
    Every write names it, so once another runner has taken the run over, the old runner's next
    write changes nothing and raises ``Fenced``.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        job_run_id: uuid.UUID,
        execution: int = 1,
        on_progress: ProgressFn | None = None,
        min_interval_s: float = 0.5,
    ) -> None:
        self.pool = pool
        self.job_run_id = job_run_id
        self.execution = execution
        self.on_progress = on_progress
        self.min_interval_s = min_interval_s
        self.last: dict[str, Any] = {}
        self._sent_at = 0.0

    @classmethod
    async def start(
        cls,
        pool: asyncpg.Pool,
        job_name: str,
        params: dict[str, Any],
        on_progress: ProgressFn | None = None,
    ) -> RunRecorder:
        """A fresh run without a command id (CLI ``--local``)."""
        run_id = uuid.uuid4()
        row = await pool.fetchrow(q("job_run_start"), run_id, job_name, params, None, runner_id())
        return cls(pool, run_id, row["executions"], on_progress)

    async def progress(self, progress: dict[str, Any]) -> None:
        self.last = progress
        now = time.monotonic()
        if now - self._sent_at < self.min_interval_s:
            return
        self._sent_at = now
        await self._owned(q("job_run_progress"), self.job_run_id, self.execution, progress)
        if self.on_progress is not None:
            await self.on_progress(progress)

    async def heartbeat(self) -> None:
        await self._owned(q("job_run_heartbeat"), self.job_run_id, self.execution)

    async def finish(
        self, status: str, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        await self._owned(
            q("job_run_finish"), self.job_run_id, self.execution, status, self.last, result, error
        )

    async def _owned(self, statement: str, *args: Any) -> None:
        updated = await self.pool.fetchval(statement, *args)
        if updated is None:
            raise Fenced(str(self.job_run_id))


@dataclass(frozen=True)
class Outcome:
    job_run_id: uuid.UUID
    status: str
    summary: dict[str, Any]
    error: str | None


async def run_here(
    ctx: OpsContext,
    op: Operation,
    params: dict[str, Any],
    on_progress: ProgressFn | None = None,
) -> Outcome:
    """Run ``op`` in this process as a fresh ``job_runs`` row (CLI ``--local``, tests)."""
    recorder = await RunRecorder.start(ctx.pool, op.name, params, on_progress)
    return await run_recorded(ctx, op, params, recorder)


async def run_recorded(
    ctx: OpsContext, op: Operation, params: dict[str, Any], recorder: RunRecorder
) -> Outcome:
    """Run ``op`` under ``recorder`` and record its outcome. ``Fenced`` propagates: a runner that
    lost its run must not record anything."""
    ctx = dataclasses.replace(ctx, job_run_id=recorder.job_run_id, execution=recorder.execution)
    try:
        summary = await op.run(ctx, params, recorder.progress)
    except Fenced:
        raise
    except OperationFailed as exc:
        await recorder.finish("failed", exc.summary, str(exc))
        return Outcome(recorder.job_run_id, "failed", exc.summary, str(exc))
    except Exception as exc:
        # Type and frames reach the log (logs.py never writes exception texts); the run keeps
        # the type only, as its error may be shown to whoever sent the command.
        log.error(
            "operation failed",
            exc_info=True,
            extra={"fields": {"operation": op.name, "job_run_id": str(recorder.job_run_id)}},
        )
        error = f"{type(exc).__name__} during {op.name}"
        await recorder.finish("failed", None, error)
        return Outcome(recorder.job_run_id, "failed", {}, error)
    await recorder.finish("succeeded", summary)
    return Outcome(recorder.job_run_id, "succeeded", summary, None)
