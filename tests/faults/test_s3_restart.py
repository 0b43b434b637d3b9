"""Fault: the S3 server stopped and restarted under load.

Ingest answers 503 with ``Retry-After`` while S3 is down. The normalizer, which had a backlog
when S3 went away, retries each record ``MAX_ATTEMPTS`` times and dead-letters it; once S3 is back
an operator redrives both DLQs, and every 202 ends as one canonical row.

The backlog is made on purpose: the normalizing worker is paused (SIGSTOP) for a moment before
S3 stops, as a GC pause or a burst would leave it behind. A separate ingest-only worker takes the
load, so the pause does not stop the front door.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import asyncpg
import pytest

from tests.faults.common import FAULT_WORKER_ENV, FaultRun, Variant, conclude, time_to_recover
from tests.support import eventually, stack_service

VARIANTS = [
    pytest.param(Variant("default", rate=25, seconds=18, faults=1, outage_s=4), id="default"),
    pytest.param(
        Variant("long", rate=40, seconds=90, faults=3, outage_s=12),
        id="long",
        marks=pytest.mark.slow,
    ),
]
LAG_S = 1.5
MAX_ATTEMPTS = int(FAULT_WORKER_ENV["MAX_ATTEMPTS"])


async def _settled(db: asyncpg.Pool, ids: list[str]) -> list[str]:
    """Wait until each record is canonical or dead-lettered; return the dead-lettered ones."""
    uuids = [uuid.UUID(r) for r in ids]

    async def done() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM processing_stage_state WHERE record_id = ANY($1) "
            "AND status IN ('succeeded', 'dlq')",
            uuids,
        )
        return n == len(uuids)

    await eventually(done, timeout=60)
    rows = await db.fetch(
        "SELECT record_id::text AS id FROM processing_stage_state WHERE record_id = ANY($1) "
        "AND status = 'dlq'",
        uuids,
    )
    return [r["id"] for r in rows]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_s3_restarted_under_load_ingest_503s_and_redrive_completes(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant, restore_services: list[str]
) -> None:
    """S3 server stopped and restarted"""
    run = fault_run
    normalizer = await run.start_worker()
    front = await run.start_worker(KAFKA_TOPICS=run.idle_topic)
    assert normalizer.proc is not None
    load = run.start_load([front.base_url])
    await load.wait_accepted(20)
    recover_s: list[float | None] = []
    rounds: list[dict] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        os.kill(normalizer.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(LAG_S)
            restore_services.append("s3")
            stopping_at = time.time()
            await asyncio.to_thread(stack_service, "s3", "down")
        finally:
            os.kill(normalizer.proc.pid, signal.SIGCONT)
        await asyncio.sleep(variant.outage_s)
        await asyncio.to_thread(stack_service, "s3", "up")
        restore_services.remove("s3")
        back_at = time.time()
        # The operator's part: once nothing accepted before S3 came back is in flight, redrive.
        dead = await _settled(db, load.accepted_ids(until=back_at))
        redriven = {}
        for version in ("v1", "v2"):
            code, report = await run.cli("dlq", "redrive", "--version", version)
            assert code == 0, report
            assert report["result"]["remaining"] == 0, report
            redriven[version] = report["result"]["redriven"]
        recover_s.append(await time_to_recover(db, run, load, back_at))
        rounds.append(
            {
                "down_s": round(back_at - stopping_at, 2),
                "dead_lettered": len(dead),
                "redriven": redriven,
                "dead_ids": dead,
            }
        )
    inv, summary = await conclude(
        db,
        run,
        load,
        recover_s=recover_s,
        rounds=[{k: v for k, v in r.items() if k != "dead_ids"} for r in rounds],
    )
    assert int(summary["statuses"].get("503", 0)) > 0, "ingest answers 503 while S3 is down"
    assert sum(summary["retry_after"].values()) > 0, "and its 503s carry Retry-After"
    for r in rounds:
        assert r["dead_lettered"] > 0, "the backlog met S3 down and went to the DLQ"
        assert sum(r["redriven"].values()) == r["dead_lettered"], r
    dead_ids = [uuid.UUID(d) for r in rounds for d in r["dead_ids"]]
    retried = await db.fetchval(
        "SELECT count(*) FROM processing_attempts WHERE record_id = ANY($1) "
        "AND error_type = 'StorageUnavailable' AND transient",
        dead_ids,
    )
    assert retried >= MAX_ATTEMPTS * len(dead_ids), "each was retried before it was dead-lettered"
    assert (normalizer.starts, front.starts) == (1, 1)
    assert normalizer.proc.poll() is None and front.proc is not None and front.proc.poll() is None
    assert None not in recover_s, f"not recovered after every restart: {recover_s}"
    assert inv.holds, inv.describe()
