"""Fault: the worker killed between a request's S3 write and its commit (the known boundary).

The crash is real, not simulated. The worker's request pool has two connections
(``PG_POOL_SIZE=2``) and the load four clients. The test takes an EXCLUSIVE lock on
``idempotency_keys``: two requests stop in their statement, holding both connections, and the
other two, their raw objects stored, wait for a connection. Once those objects are listed in S3,
it SIGKILLs the worker, then lets go of the lock. The two statements run on (each is its own
transaction, and Postgres finishes a statement whose client has gone), so their records exist and
their partners' retries get the stored answers. The two requests that waited for a connection
leave their raw objects without any row, and their partners' retries (same key, same body) are
accepted under new record ids.

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


# Connections of the worker's request pool: fewer than the load's clients, so that some requests
# wait for one with their raw objects stored.
POOL_SIZE = 2


async def _kill_between_put_and_statement(
    db: asyncpg.Pool, run: FaultRun, worker: WorkerProcess, clients: int, known: set[str]
) -> int:
    """SIGKILL the worker while some of its ingest requests wait for a connection, their S3 PUT
    done; return how many were waiting. ``known`` holds the objects of earlier kills and gets
    this kill's."""
    # A generous timeout: on a slow machine the requests take longer to reach the lock.
    async with stalled(
        db, worker, "idempotency_keys", "FROM ingest_once(", at_least=POOL_SIZE, timeout=60
    ) as in_statement:
        assert in_statement == POOL_SIZE, "every connection of the pool waits on the lock"
        # Every client's request has stored its object: two are in the statements above, the
        # others wait for a connection (nothing commits while the lock is held).
        fresh: set[str] = set()

        async def every_clients_object_stored() -> bool:
            manifest = await db.fetch(
                "SELECT record_id::text AS id FROM raw_object_manifest WHERE source = $1",
                run.source,
            )
            listed = await s3_record_ids(run.settings, run.source)
            fresh.update(listed - {r["id"] for r in manifest} - known)
            return len(fresh) >= clients

        await eventually(every_clients_object_stored, timeout=60)
        worker.kill()
    known.update(fresh)
    worker.start()
    await worker.wait_healthy()
    return len(fresh) - in_statement


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
    worker = await run.start_worker(PG_POOL_SIZE=str(POOL_SIZE))
    load = run.start_load([worker.base_url])
    await load.wait_accepted(20)
    stranded: list[int] = []
    known_objects: set[str] = set()
    recovering: list[asyncio.Task] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        stranded.append(
            await _kill_between_put_and_statement(db, run, worker, load.clients, known_objects)
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
