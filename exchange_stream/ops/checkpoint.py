"""A job's position in ``job_checkpoints``, advanced in the same transaction as each batch.

A batched job keeps its position here and moves it in the transaction that writes the batch
(``Checkpoint.batch``), so a crash at any point resumes from the last committed batch, with no
duplicate and no gap.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from exchange_stream.infra.sql import q


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
