"""What every operator command runs with: resources, progress reporting, a recorded run.

An operation is ``async def op(ctx, params, progress) -> dict``: it reads validated ``params``,
calls ``await progress({...})`` as it goes (throttled, recorded in ``job_runs.progress`` and, on
a worker, published to the results topic), and returns its summary. It raises
``OperationFailed`` for an outcome the operator must see as a failure.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from exchange_stream.config import Settings
from exchange_stream.db import create_pool
from exchange_stream.publisher import Publisher
from exchange_stream.sql import q
from exchange_stream.storage import RawStore, open_store

ProgressFn = Callable[[dict[str, Any]], Awaitable[None]]
Operation = Callable[["OpsContext", dict[str, Any], ProgressFn], Awaitable[dict[str, Any]]]


class OperationFailed(Exception):
    """The operation ran but its outcome is a failure; ``summary`` says what it found."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


@dataclass
class OpsContext:
    settings: Settings
    pool: asyncpg.Pool
    store: RawStore
    publisher: Publisher


@contextlib.asynccontextmanager
async def local_context(settings: Settings) -> AsyncIterator[OpsContext]:
    """Resources for running an operation in this process (CLI ``--local``, tests)."""
    pool = await create_pool(settings, max_size=8)
    publisher = Publisher(settings, client_id=f"{settings.app_id}-ops")
    try:
        async with open_store(settings) as store:
            yield OpsContext(settings, pool, store, publisher)
    finally:
        await publisher.stop()
        await pool.close()


class RunRecorder:
    """One ``job_runs`` row: progress as it goes (throttled), then the outcome."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        job_run_id: uuid.UUID,
        on_progress: ProgressFn | None = None,
        min_interval_s: float = 0.5,
    ) -> None:
        self.pool = pool
        self.job_run_id = job_run_id
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
        """A fresh run without a command id (CLI ``--local``, jobs run directly)."""
        run_id = uuid.uuid4()
        await pool.execute(q("job_run_start"), run_id, job_name, params, None)
        return cls(pool, run_id, on_progress)

    async def progress(self, progress: dict[str, Any]) -> None:
        self.last = progress
        now = time.monotonic()
        if now - self._sent_at < self.min_interval_s:
            return
        self._sent_at = now
        await self.pool.execute(q("job_run_progress"), self.job_run_id, progress)
        if self.on_progress is not None:
            await self.on_progress(progress)

    async def finish(
        self, status: str, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        await self.pool.execute(
            q("job_run_finish"), self.job_run_id, status, self.last, result, error
        )


async def run_recorded(
    ctx: OpsContext,
    job_name: str,
    op: Operation,
    params: dict[str, Any],
    recorder: RunRecorder,
) -> tuple[str, dict[str, Any], str | None]:
    """Run ``op`` under ``recorder``; return (status, summary, error) as recorded."""
    try:
        summary = await op(ctx, params, recorder.progress)
    except OperationFailed as exc:
        await recorder.finish("failed", exc.summary, str(exc))
        return "failed", exc.summary, str(exc)
    except Exception as exc:
        error = f"{type(exc).__name__} during {job_name}"
        await recorder.finish("failed", None, error)
        return "failed", {}, error
    await recorder.finish("succeeded", summary)
    return "succeeded", summary, None
