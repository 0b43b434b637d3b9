"""Fault: the worker killed between a request's S3 write and its commit (the known boundary).

The crash is real, not simulated: the test takes an EXCLUSIVE lock on ``idempotency_keys``, so
every ingest request of the load stops in its one statement (which runs beside its S3
PUT) before its transaction commits. Once their raw objects are listed in S3, it SIGKILLs the
worker with those requests waiting, then lets go of the lock: their transactions roll back,
their raw objects stay in S3 without any row, and the partners' retries (same key, same body)
are accepted under new record ids.

Then the orphans are counted independently (the S3 listing through botocore, minus the manifest),
``reconcile`` must report exactly those, ``reconcile --repair`` must resolve each, and the
invariant holds for the 202s. An orphan whose partner's retry was accepted holds the same bytes as
that record: the repair marks it ``orphaned`` instead of making it a second canonical row of one
submission; an orphan with no such twin is re-enqueued (what can be processed is). The test plants
one of those beside the kills' orphans: a valid request's raw object under a record id no request
was ever answered with, which the repair must turn into exactly one canonical row.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import asyncpg
import orjson
import pytest

from exchange_stream.core.events import object_key
from exchange_stream.infra.config import Settings
from tests.faults.common import (
    FaultRun,
    Variant,
    conclude,
    s3_record_ids,
    stalled,
    time_to_recover,
    wait_for_invariant,
)
from tests.payloads import v2_body
from tests.support import WorkerProcess, eventually, independent_s3_client

VARIANTS = [
    pytest.param(Variant("default", rate=25, seconds=14, faults=2), id="default"),
    pytest.param(Variant("long", rate=40, seconds=90, faults=8), id="long", marks=pytest.mark.slow),
]


async def _kill_between_put_and_commit(
    db: asyncpg.Pool, run: FaultRun, worker: WorkerProcess, clients: int, known: set[str]
) -> int:
    """SIGKILL the worker while its ingest requests wait between their S3 PUT and their COMMIT;
    return how many were waiting. ``known`` holds the orphans of earlier kills and gets this
    kill's."""
    # A generous timeout: on a slow machine the requests take longer to reach the lock, and a
    # kill with none waiting strands nothing (asserted below).
    async with stalled(
        db, worker, "idempotency_keys", "FROM ingest_once(", at_least=clients, timeout=60
    ) as waiting:
        # A request's PUT runs beside its statement: before the kill, the objects of the
        # waiting requests must be in S3 (nothing commits while the lock is held).
        fresh: set[str] = set()

        async def objects_of_the_waiting_stored() -> bool:
            manifest = await db.fetch(
                "SELECT record_id::text AS id FROM raw_object_manifest WHERE source = $1",
                run.source,
            )
            listed = await s3_record_ids(run.settings, run.source)
            fresh.update(listed - {r["id"] for r in manifest} - known)
            return len(fresh) >= waiting

        await eventually(objects_of_the_waiting_stored, timeout=60)
        worker.kill()
    known.update(fresh)
    worker.start()
    await worker.wait_healthy()
    return waiting


async def _reconcile(run: FaultRun, *repair: str) -> dict:
    code, report = await run.cli(
        "reconcile", "--source", run.source, "--older-than-s", "0", *repair
    )
    assert code == 0, report
    return report["result"]


async def _plant_processable_orphan(run: FaultRun) -> tuple[str, bytes]:
    """A raw object as ingest writes it (a valid v2 request, under ``<source>/<record id>.json``)
    with no row anywhere: the same state a kill leaves, but with no accepted twin. Written with
    botocore, not the service's client. Returns its record id and bytes."""
    raw = orjson.dumps(v2_body(source=run.source))
    record_id = str(uuid.uuid4())
    settings = run.settings
    async with independent_s3_client(settings) as client:
        await client.put_object(
            Bucket=settings.raw_bucket, Key=object_key(run.source, record_id), Body=raw
        )
    return record_id, raw


@pytest.mark.parametrize("variant", VARIANTS)
async def test_killed_between_s3_write_and_commit_reconcile_finds_and_resolves_every_orphan(
    fault_run: FaultRun, db: asyncpg.Pool, settings: Settings, variant: Variant
) -> None:
    """Worker SIGKILLed between the S3 write and the commit"""
    run = fault_run
    worker = await run.start_worker()
    load = run.start_load([worker.base_url])
    await load.wait_accepted(20)
    stranded: list[int] = []
    known_orphans: set[str] = set()
    recovering: list[asyncio.Task] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        stranded.append(
            await _kill_between_put_and_commit(db, run, worker, load.clients, known_orphans)
        )
        back_at = time.time()
        # Measured beside the rest of the run: the next fault's moment follows the load, and
        # waiting here first could make a slow machine miss it.
        recovering.append(asyncio.create_task(time_to_recover(db, run, load, back_at)))
    await load.finish()
    recover_s = list(await asyncio.gather(*recovering))
    accepted = load.accepted_ids()
    before, _ = await wait_for_invariant(db, run.source, accepted, timeout=300)
    assert before.holds, before.describe()
    planted, planted_raw = await _plant_processable_orphan(run)

    # The orphans, counted without the service: raw objects minus manifest rows.
    listed = await s3_record_ids(settings, run.source)
    manifest = {
        r["id"]
        for r in await db.fetch(
            "SELECT record_id::text AS id FROM raw_object_manifest WHERE source = $1", run.source
        )
    }
    orphans = listed - manifest
    assert planted in orphans
    assert manifest == set(accepted), "a manifest row exactly for each 202"
    assert len(orphans - {planted}) >= sum(stranded) > 0, (orphans, stranded)
    orphan_uuids = [uuid.UUID(o) for o in orphans]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE record_id = ANY($1)", orphan_uuids
        )
        == 0
    ), "no orphan was ever answered"

    found = await _reconcile(run)
    assert found["raw_objects"] == len(listed)
    assert set(found["records"]["raw_without_manifest"]) == orphans, "every orphan, only them"
    assert {c: n for c, n in found["counts"].items() if n} == {"raw_without_manifest": len(orphans)}

    repair_started = time.time()
    report = await _reconcile(run, "--repair")
    twins = await db.fetch(
        "SELECT o.record_id::text AS id, EXISTS (SELECT 1 FROM raw_object_manifest a "
        "WHERE a.record_id = ANY($2) AND a.sha256 = o.sha256) AS twin "
        "FROM raw_object_manifest o WHERE o.record_id = ANY($1)",
        orphan_uuids,
        [uuid.UUID(a) for a in accepted],
    )
    superseded = {r["id"] for r in twins if r["twin"]}
    assert planted not in superseded and superseded, "the kills' orphans all have a twin"
    expected = {"orphaned": len(superseded), "reenqueued": len(orphans) - len(superseded)}
    assert report["actions"] == {k: n for k, n in expected.items() if n}, report["actions"]
    # Every orphan resolved: marked orphaned, or re-enqueued and canonical.
    resolved = (
        "SELECT count(*) FROM raw_object_manifest m WHERE m.record_id = ANY($1) AND (m.state = "
        "'orphaned' OR (m.state = 'canonicalized' AND EXISTS (SELECT 1 FROM canonical_records c "
        "WHERE c.record_id = m.record_id)))"
    )

    async def all_resolved() -> bool:
        return await db.fetchval(resolved, orphan_uuids) == len(orphans)

    await eventually(all_resolved, timeout=180)
    repair_s = round(time.time() - repair_started, 2)
    # The planted orphan is now one record: one canonical row of its bytes, at its key.
    sha = hashlib.sha256(planted_raw).hexdigest()
    rows = await db.fetch(
        "SELECT record_id::text AS id, raw_object_key FROM canonical_records "
        "WHERE source = $1 AND raw_sha256 = $2",
        run.source,
        sha,
    )
    assert [(r["id"], r["raw_object_key"]) for r in rows] == [
        (planted, object_key(run.source, planted))
    ]
    assert (
        await db.fetchval(
            "SELECT state FROM raw_object_manifest WHERE record_id = $1", uuid.UUID(planted)
        )
        == "canonicalized"
    )
    orphaned_state = await db.fetchval(
        "SELECT count(*) FROM raw_object_manifest WHERE record_id = ANY($1) AND state = 'orphaned'",
        [uuid.UUID(o) for o in superseded],
    )
    assert orphaned_state == len(superseded), "an orphan with an accepted twin is not a record"
    audited = await db.fetchval(
        "SELECT count(DISTINCT entity_id) FROM audit_log WHERE actor = 'reconcile' "
        "AND action IN ('reconcile.reenqueued', 'reconcile.orphaned') AND entity_id = ANY($1)",
        list(orphans),
    )
    assert audited == len(orphans), "every repair action is audited"

    inv, _ = await conclude(
        db,
        run,
        load,
        recover_s=recover_s,
        settle_timeout=300,
        also_canonical=orphans - superseded,
        allowed_duplicated=0,
        kills=variant.faults,
        stranded_at_kill=stranded,
        orphans_in_s3=len(orphans),
        orphans_planted_processable=1,
        orphans_found_by_reconcile=len(found["records"]["raw_without_manifest"]),
        orphans_reenqueued=report["actions"].get("reenqueued", 0),
        orphans_marked_orphaned=report["actions"].get("orphaned", 0),
        orphans_duplicating_an_accepted_body=len(superseded),
        repair_s=repair_s,
    )
    assert inv.duplicated == 0, inv.describe()
    assert inv.holds, inv.describe()
    after = await _reconcile(run)
    assert sum(after["counts"].values()) == 0, after["counts"]
