"""Fault: the S3 server down for seconds to minutes under load.

Ingest answers 503 with ``Retry-After`` while S3 is down. The normalizer, which has a backlog
when S3 goes away (it was paused a moment, as a GC pause or a burst would leave it behind), does
not spend its records' attempts on the outage: it waits at its gate, probing S3 with capped
backoff, and carries on by itself when S3 answers again. Nothing is dead-lettered, nobody
redrives anything, and every 202 ends as exactly one canonical row.

A separate ingest-only worker takes the load, so the pause does not stop the front door.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.faults.common import FaultRun, Variant, assert_recovered, conclude, time_to_recover
from tests.faults.outages import dead_lettered, outage_with_backlog

VARIANTS = [
    pytest.param(Variant("default", rate=25, seconds=18, outages=(5,)), id="default"),
    pytest.param(
        Variant("long", rate=25, seconds=260, outages=(5, 30, 120)),
        id="long",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_s3_down_under_load_is_waited_out_and_nothing_is_dead_lettered(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant, restore_services: list[str]
) -> None:
    """S3 server down for seconds to minutes"""
    run = fault_run
    normalizer = await run.start_worker()
    front = await run.start_worker(KAFKA_TOPICS=run.idle_topic)
    load = run.start_load([front.base_url], grace_s=max(variant.outages) + 60)
    await load.wait_accepted(20)
    recover_s: list[float | None] = []
    rounds: list[dict] = []
    for i, outage_s in enumerate(variant.outages):
        await run.next_fault(load, i)
        round_ = await outage_with_backlog(run, load, normalizer, "s3", outage_s, restore_services)
        back_at = round_.pop("back_at")
        recover_s.append(await time_to_recover(db, run, load, back_at, timeout=outage_s + 90))
        round_["dead_lettered_so_far"] = await dead_lettered(run)
        rounds.append(round_)
    dlq = await dead_lettered(run)
    inv, summary = await conclude(
        db, run, load, recover_s=recover_s, rounds=rounds, dead_lettered=dlq, redrives=0
    )
    assert int(summary["statuses"].get("503", 0)) > 0, "ingest answers 503 while S3 is down"
    assert sum(summary["retry_after"].values()) > 0, "and its 503s carry Retry-After"
    assert all(r["pauses"] >= 1 for r in rounds), f"the normalizer paused for each: {rounds}"
    assert dlq == 0, f"{dlq} records dead-lettered because S3 was down"
    dlq_ledger = await db.fetchval(
        "SELECT count(*) FROM processing_stage_state s JOIN raw_object_manifest m USING "
        "(record_id) WHERE m.source = $1 AND s.status = 'dlq'",
        run.source,
    )
    assert dlq_ledger == 0
    assert (normalizer.starts, front.starts) == (1, 1)
    assert normalizer.proc is not None and normalizer.proc.poll() is None
    assert front.proc is not None and front.proc.poll() is None
    assert_recovered(run, recover_s, "outage")
    assert inv.holds, inv.describe()
