"""Migrations create every table and column of the contract, once, even with concurrent
migrators (docs/CONTRACT.md §5)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from exchange_stream.infra.config import Settings
from exchange_stream.infra.migrate import discover, migrate
from tests.support import drop_database

# The contract's tables, restated here on purpose: the test is the contract's own check.
CONTRACT_TABLES = {
    "idempotency_keys": {"key", "request_sha256", "response", "created_at"},
    "outbox_events": {"id", "topic", "key", "payload", "created_at", "published_at"},
    "audit_log": {
        "occurred_at",
        "correlation_id",
        "actor",
        "action",
        "entity_type",
        "entity_id",
        "status",
        "details",
    },
    "canonical_records": {
        "record_id",
        "source",
        "raw_object_key",
        "raw_sha256",
        "normalized",
        "ingested_at",
        "normalized_at",
        "correlation_id",
        "event_version",
        "record_kind",
        "schema_hint",
    },
    "raw_object_manifest": {
        "record_id",
        "source",
        "bucket",
        "object_key",
        "sha256",
        "size_bytes",
        "state",
        "created_at",
        "updated_at",
    },
    "processing_stage_state": {
        "record_id",
        "pipeline",
        "status",
        "attempt_count",
        "correlation_id",
        "event_version",
        "event_id",
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "last_error_type",
        "last_error_message",
        "last_error_stage",
    },
    "processing_attempts": {
        "record_id",
        "pipeline",
        "attempt_no",
        "status",
        "started_at",
        "ended_at",
        "error_type",
        "error_message",
        "error_stage",
        "transient",
        "result",
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
    },
    "job_runs": {
        "job_run_id",
        "job_name",
        "status",
        "started_at",
        "ended_at",
        "params",
        "progress",
        "error",
    },
    "job_checkpoints": {"job_name", "checkpoint", "updated_at"},
    "derived_patient_record_index": {
        "patient_token",
        "record_id",
        "source",
        "event_version",
        "record_kind",
        "schema_hint",
        "ingested_at",
        "normalized_at",
    },
}


async def _columns(conn: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public'"
    )
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["table_name"], set()).add(r["column_name"])
    return found


async def _schema_fingerprint(conn: asyncpg.Connection) -> list[tuple]:
    rows = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2"
    )
    return [tuple(r) for r in rows]


async def _scratch_db(settings: Settings) -> tuple[str, str]:
    name = f"migrate_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, settings.dsn.rsplit("/", 1)[0] + f"/{name}"


async def test_migrate_creates_every_spec_table_and_column(stack, settings: Settings) -> None:
    name, dsn = await _scratch_db(settings)
    try:
        applied = await migrate(dsn)
        assert applied == [m.version for m in discover()]
        conn = await asyncpg.connect(dsn)
        try:
            columns = await _columns(conn)
            for table, expected in CONTRACT_TABLES.items():
                assert table in columns, f"missing table {table}"
                assert expected <= columns[table], f"{table} lacks {expected - columns[table]}"
            states = await conn.fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'raw_object_manifest'::regclass AND contype = 'c'"
            )
            for state in ("written", "enqueued", "canonicalized", "orphaned"):
                assert state in states
        finally:
            await conn.close()
    finally:
        await drop_database(settings.dsn, name)


async def test_second_migrate_changes_nothing(stack, settings: Settings) -> None:
    name, dsn = await _scratch_db(settings)
    try:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            before = await _schema_fingerprint(conn)
            assert await migrate(dsn) == []
            assert await _schema_fingerprint(conn) == before
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(discover())
        finally:
            await conn.close()
    finally:
        await drop_database(settings.dsn, name)


async def test_concurrent_migrators_apply_each_migration_once(stack, settings: Settings) -> None:
    name, dsn = await _scratch_db(settings)
    try:
        results = await asyncio.gather(*(migrate(dsn) for _ in range(4)))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in discover()]
    finally:
        await drop_database(settings.dsn, name)


async def test_functions_on_the_write_path_keep_their_plans_for_the_session(
    db: asyncpg.Pool,
) -> None:
    """Migration 0019: the outbox insert of every ingest is planned once per session (PL/pgSQL,
    not a SQL function planned again at each call from ingest_once), and the linker keeps
    generic plans even on the normalizer's connections, which force custom plans."""
    lang = await db.fetchval(
        "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE p.proname = 'outbox_enqueue'"
    )
    assert lang == "plpgsql"
    config = await db.fetchval(
        "SELECT proconfig FROM pg_proc WHERE proname = 'link_persons_of_records'"
    )
    assert "plan_cache_mode=force_generic_plan" in config
    assert "enable_seqscan=off" in config
