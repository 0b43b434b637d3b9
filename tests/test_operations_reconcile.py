"""Reconcile finds what a crash left behind and repairs it, auditing every action."""

from __future__ import annotations

import hashlib
import uuid

import aiohttp
import asyncpg
import orjson

from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import open_store
from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, eventually, post_json, run_cli, wait_canonical


async def _audit(db: asyncpg.Pool, record_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT action FROM audit_log WHERE entity_id = $1 AND actor = 'reconcile' ORDER BY id",
        record_id,
    )
    return [r["action"] for r in rows]


async def test_raw_object_without_rows_is_found_and_repaired_or_orphaned(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> None:
    source = f"recon-{uuid.uuid4().hex[:8]}"
    status, resp, _ = await post_json(
        http, f"{worker.base_url}/v2/ingest", v2_body(source=source), key=new_key()
    )
    assert status == 202
    healthy = resp["record_id"]
    await wait_canonical(db, [healthy])

    # The crash between the S3 write and the commit: raw objects, no database rows at all.
    processable = str(uuid.uuid4())
    processable_v1 = str(uuid.uuid4())
    garbage = str(uuid.uuid4())
    async with open_store(settings) as store:
        await store.put(f"{source}/{processable}.json", orjson.dumps(v2_body(source=source)))
        await store.put(f"{source}/{processable_v1}.json", orjson.dumps(v1_body(source=source)))
        await store.put(f"{source}/{garbage}.json", b"\x00 not json")

    code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0")
    assert code == 0, report
    result = report["result"]
    assert result["counts"]["raw_without_manifest"] == 3
    assert sorted(result["records"]["raw_without_manifest"]) == sorted(
        [processable, processable_v1, garbage]
    )
    assert healthy not in {r for ids in result["records"].values() for r in ids}
    assert result["raw_objects"] == 4
    assert (
        await db.fetchval("SELECT count(*) FROM raw_object_manifest WHERE source = $1", source) == 1
    ), "reporting alone changes nothing"

    code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0", "--repair")
    assert code == 0, report
    assert report["result"]["actions"] == {"reenqueued": 2, "orphaned": 1}
    rows = await wait_canonical(db, [processable, processable_v1])
    assert {r["event_version"] for r in rows} == {"1", "2"}

    async def manifest_settled() -> bool:
        states = dict(
            await db.fetch(
                "SELECT record_id::text, state FROM raw_object_manifest WHERE source = $1", source
            )
        )
        return states == {
            healthy: "canonicalized",
            processable: "canonicalized",
            processable_v1: "canonicalized",
            garbage: "orphaned",
        }

    await eventually(manifest_settled, timeout=30)
    garbage_row = await db.fetchrow(
        "SELECT sha256, size_bytes FROM raw_object_manifest WHERE record_id = $1",
        uuid.UUID(garbage),
    )
    assert garbage_row["sha256"] == hashlib.sha256(b"\x00 not json").hexdigest()
    assert await _audit(db, processable) == ["reconcile.reenqueued"]
    assert await _audit(db, garbage) == ["reconcile.orphaned"]

    code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0")
    assert code == 0
    assert sum(report["result"]["counts"].values()) == 0, report["result"]["counts"]


async def test_manifest_states_that_disagree_are_reported_and_fixed(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    source = f"recon-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(3):
        status, resp, _ = await post_json(
            http, f"{worker.base_url}/v2/ingest", v2_body(source=source), key=new_key()
        )
        assert status == 202
        ids.append(resp["record_id"])
    await wait_canonical(db, ids)
    stuck, lost, wrong = (uuid.UUID(i) for i in ids)
    # written but never enqueued; canonicalized without its row; canonical but still 'enqueued'.
    await db.execute("UPDATE raw_object_manifest SET state = 'written' WHERE record_id = $1", stuck)
    await db.execute("DELETE FROM canonical_records WHERE record_id = $1", stuck)
    await db.execute("DELETE FROM canonical_records WHERE record_id = $1", lost)
    await db.execute(
        "UPDATE raw_object_manifest SET state = 'enqueued' WHERE record_id = $1", wrong
    )

    code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0", "--repair")
    assert code == 0, report
    counts = report["result"]["counts"]
    assert counts["manifest_written_not_enqueued"] == 1
    assert counts["state_mismatch"] == 2
    assert report["result"]["records"]["manifest_written_not_enqueued"] == [str(stuck)]
    await wait_canonical(db, ids)

    async def all_canonicalized() -> bool:
        states = {
            r["state"]
            for r in await db.fetch(
                "SELECT state FROM raw_object_manifest WHERE source = $1", source
            )
        }
        return states == {"canonicalized"}

    await eventually(all_canonicalized, timeout=30)
    assert await _audit(db, str(wrong)) == ["reconcile.marked_canonicalized"]


async def test_orphan_of_a_retried_request_is_not_made_a_second_record(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> None:
    source = f"recon-{uuid.uuid4().hex[:8]}"
    body = orjson.dumps(v2_body(source=source))
    # The crashed attempt left its raw object; the partner's retry was accepted.
    orphan = str(uuid.uuid4())
    async with open_store(settings) as store:
        await store.put(f"{source}/{orphan}.json", body)
    status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=new_key())
    assert status == 202
    await wait_canonical(db, [resp["record_id"]])

    code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0", "--repair")
    assert code == 0, report
    assert report["result"]["records"]["raw_without_manifest"] == [orphan]
    assert report["result"]["actions"] == {"orphaned": 1}
    assert (
        await db.fetchval("SELECT count(*) FROM canonical_records WHERE source = $1", source) == 1
    )
    details = await db.fetchval(
        "SELECT details FROM audit_log WHERE entity_id = $1 AND actor = 'reconcile'", orphan
    )
    assert details["accepted_record_id"] == resp["record_id"]
