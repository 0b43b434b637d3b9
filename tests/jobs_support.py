"""Helpers of the jobs tests: rows planted under a source of their own, the jobs CLI as a process.

The test database is shared with every other test of the session, so each test plants its rows
under a fresh source and looks at that source only; ``remove_source`` cleans up after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from exchange_stream.infra.config import Settings
from exchange_stream.infra.runtime import Runtime
from exchange_stream.pipeline.gate import DependencyGate
from exchange_stream.pipeline.normalize import PIPELINE, Message, Normalizer
from tests.support import ROOT, eventually, isolated_topics

# ``exchange-stream jobs …``; runs are --local: these tests start no worker.
JOBS_CLI = [sys.executable, "-m", "exchange_stream", "jobs"]


def _local(args: tuple[str, ...]) -> list[str]:
    return [*args, "--local"] if args and args[0] == "run" else list(args)


def fresh_source(label: str) -> str:
    return f"jobs-test-{label}-{uuid.uuid4().hex[:10]}"


async def insert_canonical(
    db: asyncpg.Pool | asyncpg.Connection,
    source: str,
    count: int,
    *,
    token: bool = True,
    kind: str = "claim",
    normalized_kind: str | None = None,
) -> list[uuid.UUID]:
    """``count`` canonical rows of ``source`` in one statement (one transaction); their ids."""
    rows = await db.fetch(
        """
        INSERT INTO canonical_records
            (record_id, source, raw_object_key, raw_sha256, normalized, ingested_at,
             correlation_id, event_version, record_kind, schema_hint)
        SELECT gen_random_uuid(), $1, $1 || '/' || g || '.json', repeat('0', 64),
               jsonb_build_object(
                   'patient_token',
                   CASE WHEN $3 THEN encode(sha256(convert_to($1 || g, 'UTF8')), 'hex') END,
                   'record_kind', coalesce($5, $4),
                   'meta', jsonb_build_object('schema_hint', 'partnerA.v1')),
               now() - interval '1 hour', 'corr-' || g, '2', $4, 'partnerA.v1'
        FROM generate_series(1, $2) g
        RETURNING record_id
        """,
        source,
        count,
        token,
        kind,
        normalized_kind,
    )
    return [r["record_id"] for r in rows]


async def index_rows(db: asyncpg.Pool, source: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT record_id, patient_token, xmin::text AS row_version "
        "FROM derived_patient_record_index WHERE source = $1 ORDER BY record_id",
        source,
    )


async def canonical_ids(db: asyncpg.Pool, source: str) -> set[uuid.UUID]:
    rows = await db.fetch("SELECT record_id FROM canonical_records WHERE source = $1", source)
    return {r["record_id"] for r in rows}


async def remove_source(db: asyncpg.Pool, source: str) -> None:
    """Delete every row the test planted under ``source`` (canonical rows before index rows, so
    a concurrent index run cannot leave an orphan behind)."""
    ids = await db.fetchval(
        "SELECT coalesce(array_agg(record_id), '{}') FROM ("
        " SELECT record_id FROM raw_object_manifest WHERE source = $1"
        " UNION SELECT record_id FROM canonical_records WHERE source = $1) s",
        source,
    )
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM processing_attempts WHERE record_id = ANY($1)", ids)
        await conn.execute("DELETE FROM processing_stage_state WHERE record_id = ANY($1)", ids)
        await conn.execute("DELETE FROM raw_object_manifest WHERE source = $1", source)
        await conn.execute("DELETE FROM canonical_records WHERE source = $1", source)
    await db.execute("DELETE FROM derived_patient_record_index WHERE source = $1", source)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict[str, Any]:
        """The ``--output json`` object."""
        return orjson.loads(self.stdout)

    @property
    def result(self) -> dict[str, Any]:
        return self.doc["result"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


async def run_jobs_cli(*args: str, timeout: float = 120.0) -> CliResult:
    """``exchange-stream jobs ARGS --local`` to completion, as an operator runs it."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [*JOBS_CLI, *_local(args)],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


async def start_jobs_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *JOBS_CLI,
        *_local(args),
        cwd=ROOT,
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


class PipelineRecords:
    """The worker's own ``Normalizer``, run in this process on events made for it: ledger rows
    with exactly the stages, error types and attempt counts the normalizer writes, without the
    redeliveries a consumer group may add. DLQ envelopes go to topics of its own."""

    def __init__(self, settings: Settings, normalizer: Normalizer, db: asyncpg.Pool) -> None:
        self.settings = settings
        self.normalizer = normalizer
        self.db = db
        self._offsets = itertools.count()

    async def process(self, value: bytes) -> None:
        """One event through the normalizer: canonical, or in the DLQ, when this returns."""
        topic = self.settings.ingest_topic_for("2")
        await self.normalizer.process([Message(topic, 0, next(self._offsets), value)])

    async def process_failing_first(
        self, value: bytes, record_id: uuid.UUID, failures: int, then_store: tuple[str, bytes]
    ) -> None:
        """An event whose raw object is missing for its first ``failures`` attempts and stored
        (``then_store``: key and bytes) before the next: transient failures, then success.

        The attempt after the failures is held (its ledger row taken by an open transaction,
        so the normalizer's start of that attempt waits on it) until the object is there: the
        order is certain whatever the machine's speed, with no timed wait."""
        from exchange_stream.infra.storage import open_store

        async with self.db.acquire() as conn:
            held = conn.transaction()
            await held.start()
            try:
                await conn.execute(
                    "INSERT INTO processing_attempts (record_id, pipeline, attempt_no, status) "
                    "VALUES ($1, $2, $3, 'started')",
                    record_id,
                    PIPELINE,
                    failures + 1,
                )
                work = asyncio.create_task(self.process(value))

                async def failed_enough() -> bool:
                    if work.done():
                        return True  # too early: asserted below
                    n = await self.db.fetchval(
                        "SELECT count(*) FROM processing_attempts WHERE record_id = $1 "
                        "AND status = 'failed' AND error_type = 'RawObjectMissing'",
                        record_id,
                    )
                    return n == failures

                await eventually(failed_enough, timeout=120)
                if work.done():
                    work.result()  # an error of the normalizer, raised here
                    raise AssertionError("the normalizer finished before it was let go")
                async with open_store(self.settings) as store:
                    await store.put(*then_store)
            finally:
                await held.rollback()
        await asyncio.wait_for(work, 120)


@contextlib.asynccontextmanager
async def pipeline_records(db: asyncpg.Pool) -> AsyncIterator[PipelineRecords]:
    """``PipelineRecords`` with the test workers' retry settings and topics of its own."""
    async with isolated_topics("dq", db) as env:
        settings = Settings.from_env(
            {**os.environ, **env, "ENV": "local", "MAX_ATTEMPTS": "3", "BACKOFF_BASE_MS": "50"}
        )
        runtime = Runtime(settings)
        await runtime.start()
        try:
            normalizer = Normalizer(settings, runtime, DependencyGate(runtime.probe))
            yield PipelineRecords(settings, normalizer, db)
        finally:
            await runtime.stop()


async def age_attempts(db: asyncpg.Pool, record_id: uuid.UUID, age_s: float) -> None:
    """Move a record's ledger attempts ``age_s`` seconds into the past (windows and order of the
    jobs are about time; the attempts themselves stay as the normalizer wrote them)."""
    await db.execute(
        "UPDATE processing_attempts SET started_at = started_at - make_interval(secs => $2), "
        "ended_at = ended_at - make_interval(secs => $2) WHERE record_id = $1",
        record_id,
        float(age_s),
    )
