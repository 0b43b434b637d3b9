"""Replay via the control topic: rebuild deleted canonical rows, verify, dry run, idempotence.

The waits follow a replayed record through what it observably passes: its new outbox row
published, then a new ledger attempt closed as ``succeeded`` (by whichever worker of the shared
group holds its partition), then its canonical row. A wait that runs out prints where each record
stood and the group's assignment, not only that time ran out.
"""

from __future__ import annotations

import os
import uuid

import aiohttp
import asyncpg

from exchange_stream.infra.config import Settings
from tests.conftest import SHARED_WORKER_ENV
from tests.faults.common import describe_group
from tests.payloads import new_key, v1_body, v2_body
from tests.support import (
    WorkerProcess,
    post_json,
    run_cli,
    wait_canonical,
    wait_for_state,
    wait_offsets_committed,
)

GROUP = SHARED_WORKER_ENV["APP_ID"]
# Generous: the machine is shared, and a rebalance of the group (a worker joining or leaving)
# holds every partition for a while. Correct code meets these waits in seconds.
SETTLE_S = 240.0


def settings_for_tests() -> Settings:
    return Settings.from_env({**os.environ, "ENV": "local"})


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
    await wait_canonical(db, ids, timeout=SETTLE_S)
    # Settled: nothing of these records can be redelivered after this point.
    await wait_offsets_committed(db, settings_for_tests(), ids, GROUP, timeout=SETTLE_S)
    return source, ids


async def _marks(db: asyncpg.Pool) -> tuple[int, int]:
    """The newest outbox and ledger attempt ids: what a replay adds comes after them."""
    return (
        await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox_events"),
        await db.fetchval("SELECT coalesce(max(id), 0) FROM processing_attempts"),
    )


async def _wait_replayed(
    db: asyncpg.Pool, ids: list[str], marks: tuple[int, int], canonical_row: str
) -> None:
    """Wait until the replay of ``ids`` (started after ``marks``) is published and processed:
    each record has a new attempt closed ``succeeded`` whose result is ``canonical_row``
    (``inserted`` for a rebuilt row, ``existing`` for a no-op)."""
    outbox_mark, attempt_mark = marks
    uuids = [uuid.UUID(i) for i in ids]

    async def published() -> bool:
        n = await db.fetchval(
            "SELECT count(DISTINCT key) FROM outbox_events WHERE id > $1 AND key = ANY($2) "
            "AND published_at IS NOT NULL",
            outbox_mark,
            ids,
        )
        return n == len(ids)

    async def processed() -> bool:
        # Distinct records: a rebalance may deliver a replayed event twice, which is fine.
        n = await db.fetchval(
            "SELECT count(DISTINCT record_id) FROM processing_attempts WHERE id > $1 "
            "AND record_id = ANY($2) AND status = 'succeeded' "
            "AND result->>'canonical_row' = $3",
            attempt_mark,
            uuids,
            canonical_row,
        )
        return n == len(ids)

    async def explain() -> str:
        settings = settings_for_tests()
        outbox = await db.fetch(
            "SELECT id, key, topic, created_at, published_at, attempts, last_error "
            "FROM outbox_events WHERE id > $1 AND key = ANY($2) ORDER BY id",
            outbox_mark,
            ids,
        )
        ledger = await db.fetch(
            "SELECT record_id, status, attempt_count, kafka_topic, kafka_partition, "
            "kafka_offset, last_error_type, updated_at FROM processing_stage_state "
            "WHERE record_id = ANY($1) ORDER BY kafka_topic, kafka_partition",
            uuids,
        )
        attempts = await db.fetch(
            "SELECT record_id, attempt_no, status, result, error_type, kafka_partition, "
            "kafka_offset FROM processing_attempts WHERE id > $1 AND record_id = ANY($2) "
            "ORDER BY id",
            attempt_mark,
            uuids,
        )
        topics = [settings.ingest_topic_for(v) for v in ("1", "2")]
        return "\n".join(
            [
                "replayed outbox rows:",
                *(f"  {dict(r)}" for r in outbox),
                "ledger (stage state):",
                *(f"  {dict(r)}" for r in ledger),
                "attempts since the replay:",
                *(f"  {dict(r)}" for r in attempts),
                await describe_group(settings, GROUP, topics),
            ]
        )

    await wait_for_state(
        published, what="replayed outbox rows published", explain=explain, timeout=SETTLE_S
    )
    await wait_for_state(
        processed, what="replayed events processed", explain=explain, timeout=SETTLE_S
    )


async def test_replay_auto_rebuilds_every_deleted_canonical_row_and_verify_sees_no_gaps(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    source, ids = await _source_with_records(worker, http, db)
    ingest_correlation = {
        str(r["record_id"]): r["correlation_id"]
        for r in await db.fetch(
            "SELECT record_id, correlation_id FROM canonical_records WHERE source = $1", source
        )
    }
    await db.execute("DELETE FROM canonical_records WHERE source = $1", source)

    code, report = await run_cli("replay", "--source", source, "--verify")
    assert code == 3, report
    assert report["result"]["gaps"] == len(ids)
    assert sorted(report["result"]["missing_record_ids"]) == sorted(ids)

    marks = await _marks(db)
    code, report = await run_cli("replay", "--source", source, "--emit-version", "auto")
    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["result"]["emitted"] == len(ids)
    assert report["result"]["uninferable"] == 0
    await _wait_replayed(db, ids, marks, "inserted")
    rows = await wait_canonical(db, ids, timeout=SETTLE_S)
    assert {r["event_version"] for r in rows} == {"1", "2"}
    # docs/CONTRACT.md: a replayed event's correlation id is UUIDv5(URL namespace, record id),
    # not the one its ingest answered.
    for r in rows:
        correlation = uuid.UUID(r["correlation_id"])
        assert correlation.version == 5
        assert correlation == uuid.uuid5(uuid.NAMESPACE_URL, str(r["record_id"]))
        assert r["correlation_id"] != ingest_correlation[str(r["record_id"])]

    code, report = await run_cli("replay", "--source", source, "--verify")
    assert code == 0, report
    assert report["result"]["gaps"] == 0


async def test_second_replay_adds_no_rows_and_dry_run_emits_nothing(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    source, ids = await _source_with_records(worker, http, db, n=4)
    outbox_before = await db.fetchval("SELECT count(*) FROM outbox_events WHERE key = ANY($1)", ids)

    code, report = await run_cli("replay", "--source", source, "--dry-run")
    assert code == 0, report
    assert report["result"]["dry_run"] is True
    assert report["result"]["would_emit"] == len(ids)
    assert "emitted" not in report["result"]
    assert (
        await db.fetchval("SELECT count(*) FROM outbox_events WHERE key = ANY($1)", ids)
        == outbox_before
    )

    marks = await _marks(db)
    code, report = await run_cli("replay", "--source", source)
    assert code == 0, report
    assert report["result"]["emitted"] == len(ids)
    await _wait_replayed(db, ids, marks, "existing")
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
    assert code == 0, report
    assert report["result"]["uninferable"] == 1
    assert report["result"]["would_emit"] == len(ids)
    assert report["result"]["samples"]["uninferable"] == [odd]
    outbox_mark, _ = await _marks(db)
    code, report = await run_cli("replay", "--source", source, "--dry-run", "--limit", "2")
    assert code == 0, report
    assert report["status"] == "succeeded"
    assert report["result"]["listed"] == 2
    assert report["result"]["would_emit"] + report["result"]["uninferable"] == 2
    enqueued = await db.fetchval(
        "SELECT count(*) FROM outbox_events WHERE id > $1 AND payload->>'source' = $2",
        outbox_mark,
        source,
    )
    assert enqueued == 0, "a dry run enqueues nothing"
