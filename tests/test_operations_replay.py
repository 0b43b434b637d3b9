"""Replay via the control topic: rebuild deleted canonical rows, verify, dry run, idempotence."""

from __future__ import annotations

import uuid

import aiohttp
import asyncpg

from exchange_stream.core.events import replay_correlation_id
from tests.conftest import SHARED_WORKER_ENV
from tests.payloads import new_key, v1_body, v2_body
from tests.support import (
    WorkerProcess,
    eventually,
    post_json,
    run_cli,
    wait_canonical,
    wait_offsets_committed,
)


async def _source_with_records(worker, http, db, n: int = 8) -> tuple[str, list[str]]:
    source = f"replay-{uuid.uuid4().hex[:8]}"
    ids = []
    for i in range(n):
        version = "1" if i % 2 else "2"
        body = v1_body(source=source) if version == "1" else v2_body(source=source)
        status, resp, _ = await post_json(
            http, f"{worker.base_url}/v{version}/ingest", body, key=new_key()
        )
        assert status == 202
        ids.append(resp["record_id"])
    await wait_canonical(db, ids)
    # Settled: nothing of these records can be redelivered after this point.
    await wait_offsets_committed(db, settings_for_tests(), ids, SHARED_WORKER_ENV["APP_ID"])
    return source, ids


def settings_for_tests():
    import os

    from exchange_stream.infra.config import Settings

    return Settings.from_env({**os.environ, "ENV": "local"})


async def test_replay_auto_rebuilds_every_deleted_canonical_row_and_verify_sees_no_gaps(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    source, ids = await _source_with_records(worker, http, db)
    await db.execute("DELETE FROM canonical_records WHERE source = $1", source)

    code, report = await run_cli("replay", "--source", source, "--verify")
    assert code == 3, report
    assert report["result"]["gaps"] == len(ids)
    assert sorted(report["result"]["missing_record_ids"]) == sorted(ids)

    code, report = await run_cli("replay", "--source", source, "--emit-version", "auto")
    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["result"]["emitted"] == len(ids)
    assert report["result"]["uninferable"] == 0
    rows = await wait_canonical(db, ids)
    assert {r["event_version"] for r in rows} == {"1", "2"}
    assert all(r["correlation_id"] == replay_correlation_id(r["record_id"]) for r in rows)

    code, report = await run_cli("replay", "--source", source, "--verify")
    assert code == 0, report
    assert report["result"]["gaps"] == 0


async def test_second_replay_adds_no_rows_and_dry_run_emits_nothing(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    source, ids = await _source_with_records(worker, http, db, n=4)
    outbox_before = await db.fetchval("SELECT count(*) FROM outbox_events WHERE key = ANY($1)", ids)

    code, report = await run_cli("replay", "--source", source, "--dry-run")
    assert code == 0
    assert report["result"]["dry_run"] is True
    assert report["result"]["emitted"] == len(ids)  # what it would emit
    assert (
        await db.fetchval("SELECT count(*) FROM outbox_events WHERE key = ANY($1)", ids)
        == outbox_before
    )

    code, report = await run_cli("replay", "--source", source)
    assert code == 0

    async def replayed_events_processed() -> bool:
        # Distinct records: a rebalance may deliver a replayed event twice, which is fine.
        n = await db.fetchval(
            "SELECT count(DISTINCT record_id) FROM processing_attempts WHERE record_id = ANY($1) "
            "AND result->>'canonical_row' = 'existing'",
            [uuid.UUID(i) for i in ids],
        )
        return n == len(ids)

    await eventually(replayed_events_processed, timeout=60)
    assert await db.fetchval(
        "SELECT count(*) FROM canonical_records WHERE source = $1", source
    ) == len(ids)


async def test_replay_reports_uninferable_objects_and_honours_limit(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    from exchange_stream.infra.storage import open_store

    source, ids = await _source_with_records(worker, http, db, n=3)
    odd = f"{source}/{uuid.uuid4()}.json"
    async with open_store(settings_for_tests()) as store:
        await store.put(odd, b'{"hello": "world"}')
    code, report = await run_cli("replay", "--source", source, "--dry-run")
    assert code == 0
    assert report["result"]["uninferable"] == 1
    assert report["result"]["emitted"] == len(ids)
    assert report["result"]["samples"]["uninferable"] == [odd]
    code, report = await run_cli("replay", "--source", source, "--dry-run", "--limit", "2")
    assert report["result"]["listed"] == 2
