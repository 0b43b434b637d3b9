"""The normalizer's statements read and write the ledger and canonical rows by key, however the
tables' statistics look (migration 0020).

A worker's connections keep their statements for the session, and the work pool plans each for
its arguments (``plan_cache_mode = force_custom_plan``, infra/db.py). Planned against small
tables, a batch's join of its arrays to the ledger was a hash join over a sequential scan of each
table: every batch read the tables whole (bench/end_to_end.py counted up to 28 ledger rows read
by sequential scan per record at 600 req/s). The statements run the normalizer's queries as it
runs them (sql/queries/normalize.sql), on a connection set up as the work pool's.
"""

from __future__ import annotations

import urllib.parse
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson

from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import CUSTOM_PLANS
from exchange_stream.infra.migrate import migrate
from exchange_stream.infra.sql import q
from tests.support import drop_database

PIPELINE = "normalizer"
TABLES = (
    "processing_stage_state",
    "processing_attempts",
    "raw_object_manifest",
    "canonical_records",
)


async def _batch(conn: asyncpg.Connection, n: int) -> None:
    """One batch of ``n`` new records through the normalizer's two statements: manifest rows as
    ingest leaves them, the start, then the canonical commit (no linking)."""
    ids = sorted(uuid.uuid4() for _ in range(n))
    await conn.executemany(
        "INSERT INTO raw_object_manifest (record_id, source, bucket, object_key, sha256,"
        " size_bytes, state) VALUES ($1::uuid, 'plans', 'raw', $1::uuid::text, repeat('0', 64), 10,"
        " 'enqueued')",
        [(i,) for i in ids],
    )
    texts = [str(i) for i in ids]
    rows = await conn.fetch(
        q("normalize_start"),
        ids,
        texts,
        ["2"] * n,
        texts,
        ["exchange.record.ingested.v2"] * n,
        [0] * n,
        list(range(n)),
        PIPELINE,
    )
    attempt = {r["record_id"]: r["attempt_no"] for r in rows}
    assert sorted(attempt) == ids and not any(r["canonical"] for r in rows)
    await conn.execute(
        q("normalize_commit"),
        ids,
        [attempt[i] for i in ids],
        ["plans"] * n,
        texts,
        ["0" * 64] * n,
        [orjson.dumps({"kind": "encounter"}).decode()] * n,
        [datetime.now(UTC)] * n,
        texts,
        ["2"] * n,
        ["encounter"] * n,
        ["partnerA.v1"] * n,
        [False] * n,
        PIPELINE,
        [],
        [],
        [],
        [],
    )


async def _seq_rows_read(conn: asyncpg.Connection) -> dict[str, int]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")  # a new transaction publishes what the last one counted
    rows = await conn.fetch(
        "SELECT relname, coalesce(seq_tup_read, 0) AS n FROM pg_stat_user_tables"
        " WHERE relname = ANY($1::text[])",
        list(TABLES),
    )
    return {r["relname"]: r["n"] for r in rows}


async def test_the_normalizer_reads_the_ledger_by_key_on_custom_plan_connections(
    settings: Settings,
) -> None:
    """Tables analyzed at a few hundred rows, then batches of 50 on a connection that plans for
    its arguments: no row of the ledger, the manifest or the canonical rows is read by a
    sequential scan, and every record ends canonical with its ledger closed."""
    name = f"normplans_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = urllib.parse.urlsplit(settings.dsn)._replace(path=f"/{name}").geturl()
    try:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn, server_settings=CUSTOM_PLANS)
        try:
            await conn.execute("SET stats_fetch_consistency = none")
            for _ in range(6):
                await _batch(conn, 50)
            await conn.execute(f"ANALYZE {', '.join(TABLES)}")
            before = await _seq_rows_read(conn)
            for _ in range(10):
                await _batch(conn, 50)
            after = await _seq_rows_read(conn)
            assert {t: after[t] - before[t] for t in TABLES} == dict.fromkeys(TABLES, 0)
            counts = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM canonical_records) AS canonical,"
                " (SELECT count(*) FROM processing_stage_state WHERE status = 'succeeded') AS ok,"
                " (SELECT count(*) FROM processing_attempts WHERE status = 'succeeded') AS tries,"
                " (SELECT count(*) FROM raw_object_manifest WHERE state = 'canonicalized') AS m"
            )
            assert dict(counts) == {"canonical": 800, "ok": 800, "tries": 800, "m": 800}
        finally:
            await conn.close()
    finally:
        await drop_database(settings.dsn, name)
