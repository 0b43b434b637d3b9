"""Jobs: named functions over canonical data, run in batches, checkpointed, recorded.

A job is an operation (``async def run(ctx, params, progress) -> summary``, see
``exchange_stream.operations``) plus the parameters it accepts. A batched job keeps its position
in ``job_checkpoints`` and advances it in the transaction that writes the batch
(``Checkpoint.batch``), so a crash at any point resumes from the last committed batch.

``run_job`` is what the control plane calls for a ``run_job`` command (its ``job_runs`` row
belongs to the command); ``run_job_recorded`` is the local path (CLI, tests), which records its
own ``job_runs`` row.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from exchange_stream.operations import (
    Operation,
    OperationFailed,
    OpsContext,
    ProgressFn,
    RunRecorder,
    run_recorded,
)
from exchange_stream.sql import q


class JobParamsError(ValueError):
    """Parameters a job does not accept; the message names the parameter."""


@dataclass(frozen=True)
class Param:
    """One parameter of a job: its type, default and bounds."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: Any) -> Any:
        if value is None:
            if self.default is None:
                return None
            raise JobParamsError(f"{self.name} must not be null")
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, self.kind) and value != ""
        if not ok:
            raise JobParamsError(f"{self.name} must be a {self.kind.__name__}")
        if self.minimum is not None and value < self.minimum:
            raise JobParamsError(f"{self.name} must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise JobParamsError(f"{self.name} must be at most {self.maximum:g}")
        return value


@dataclass(frozen=True)
class Job:
    """A named job: what it does, the parameters it accepts, and the operation that runs it."""

    name: str
    description: str
    params: tuple[Param, ...]
    run: Operation
    # Rules across parameters (e.g. two modes that exclude each other); raises JobParamsError.
    check: Callable[[dict[str, Any]], None] | None = None

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with defaults filled in; an unknown or ill-typed parameter is an error."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise JobParamsError(
                f"{self.name} does not accept {', '.join(unknown)}"
                f" (accepted: {', '.join(known) or 'none'})"
            )
        effective = {name: p.check(params.get(name, p.default)) for name, p in known.items()}
        if self.check is not None:
            self.check(effective)
        return effective


def get_job(name: str) -> Job:
    """The registered job called ``name``; an unknown name is an ``OperationFailed``."""
    job = JOBS.get(name)
    if job is None:
        raise OperationFailed(f"unknown job {name!r}", {"job": name, "known_jobs": sorted(JOBS)})
    return job


async def run_job(
    ctx: OpsContext, name: str, params: dict[str, Any], progress: ProgressFn
) -> dict[str, Any]:
    """Run job ``name`` with ``params``, reporting through ``progress``; return its summary.

    Creates no ``job_runs`` row: the caller's recorder owns the run. Unknown jobs and invalid
    parameters raise ``OperationFailed``.
    """
    job = get_job(name)
    try:
        effective = job.validate(params or {})
    except JobParamsError as exc:
        raise OperationFailed(f"invalid params: {exc}", {"job": name}) from None
    try:
        summary = await job.run(ctx, effective, progress)
    except OperationFailed as exc:
        exc.summary = {"job": name, "params": effective, **exc.summary}
        raise
    return {"job": name, "params": effective, **summary}


@dataclass(frozen=True)
class JobOutcome:
    job_run_id: uuid.UUID
    status: str
    summary: dict[str, Any]
    error: str | None


async def run_job_recorded(
    ctx: OpsContext,
    name: str,
    params: dict[str, Any],
    on_progress: ProgressFn | None = None,
) -> JobOutcome:
    """Run a job as its own ``job_runs`` row (job_name = the job's name): the local path."""
    recorder = await RunRecorder.start(ctx.pool, name, params, on_progress)

    async def op(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
        return await run_job(ctx, name, params, progress)

    status, summary, error = await run_recorded(ctx, name, op, params, recorder)
    return JobOutcome(recorder.job_run_id, status, summary, error)


@dataclass
class Batch:
    """One batch's transaction: ``conn`` for its writes, the checkpoint it starts from."""

    conn: asyncpg.Connection
    job_name: str
    checkpoint: dict[str, Any]

    async def advance(self, checkpoint: dict[str, Any]) -> None:
        """Record the position after this batch; it commits with the batch's writes or not at
        all."""
        await self.conn.execute(q("jobs_checkpoint_save"), self.job_name, checkpoint)
        self.checkpoint = checkpoint


class Checkpoint:
    """A job's position in ``job_checkpoints``."""

    def __init__(self, pool: asyncpg.Pool, job_name: str) -> None:
        self.pool = pool
        self.job_name = job_name

    async def read(self) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(q("jobs_checkpoint_get"), self.job_name)
        return None if row is None else row["checkpoint"]

    async def ensure(self, initial: dict[str, Any]) -> dict[str, Any]:
        """The stored position, creating it as ``initial`` on the job's first run."""
        await self.pool.execute(q("jobs_checkpoint_init"), self.job_name, initial)
        return await self.read() or initial

    async def reset(self, initial: dict[str, Any]) -> None:
        """Start over from ``initial`` (waits for a batch of another run to commit first)."""
        await self.ensure(initial)
        async with self.batch() as batch:
            await batch.advance(initial)

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[Batch]:
        """A transaction holding the checkpoint row locked until it commits, so concurrent runs
        of one job take turns and each continues from the position the other committed."""
        async with self.pool.acquire() as conn, conn.transaction():
            checkpoint = await conn.fetchval(q("jobs_checkpoint_lock"), self.job_name)
            if checkpoint is None:
                raise RuntimeError(f"no checkpoint row for {self.job_name}; call ensure() first")
            yield Batch(conn, self.job_name, checkpoint)


# The job modules build on the framework above, so they are imported after it.
from exchange_stream.jobs import data_quality, patient_index  # noqa: E402

JOBS: dict[str, Job] = {job.name: job for job in (patient_index.JOB, data_quality.JOB)}
