"""Fault: the Kafka broker stopped and restarted under load.

Ingest must keep answering 202 while the broker is down (the outbox is the buffer), and the relay
and the normalizer must carry on by themselves once it is back: same worker process throughout.
"""

from __future__ import annotations

import asyncio
import functools
import time

import asyncpg
import pytest

from tests.faults.common import FaultRun, Load, Variant, assert_recovered, conclude, time_to_recover
from tests.support import stack_service, wait_for_state

VARIANTS = [
    pytest.param(Variant("default", rate=25, seconds=30, faults=1, outage_s=3), id="default"),
    pytest.param(
        Variant("long", rate=40, seconds=150, faults=3, outage_s=10),
        id="long",
        marks=pytest.mark.slow,
    ),
]


WAITING = (
    "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND payload->>'source' = $1"
)


async def _accepting_while_down(
    db: asyncpg.Pool, run: FaultRun, load: Load, down_at: float
) -> bool:
    accepted = any(d["accepted_at"] >= down_at for d in load.accepted())
    return accepted and await db.fetchval(WAITING, run.source) > 0


async def _describe_outage(db: asyncpg.Pool, run: FaultRun, load: Load, down_at: float) -> str:
    lines = load.lines()
    return (
        f"load running: {load.running}; 202s since the broker went down: "
        f"{sum(d['accepted_at'] >= down_at for d in load.accepted())}; "
        f"outbox rows waiting: {await db.fetchval(WAITING, run.source)}; "
        f"last load lines: {lines[-3:]}"
    )


@pytest.mark.parametrize("variant", VARIANTS)
async def test_kafka_restarted_under_load_every_202_becomes_one_canonical_row(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant, restore_services: list[str]
) -> None:
    """Kafka broker stopped and restarted"""
    run = fault_run
    worker = await run.start_worker()
    pid = worker.proc.pid if worker.proc else None
    load = run.start_load([worker.base_url])
    await load.wait_accepted(20)
    recovering: list[asyncio.Task] = []
    outages: list[dict[str, float]] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        restore_services.append("kafka")
        stopping_at = time.time()
        await asyncio.to_thread(stack_service, "kafka", "down")
        down_at = time.time()
        await asyncio.sleep(variant.outage_s)  # the outage's length: the variant's parameter
        # And until the outage has shown what it is for, however slow the machine: 202s while
        # the broker is down, their events waiting in the outbox.
        await wait_for_state(
            functools.partial(_accepting_while_down, db, run, load, down_at),
            what="202s with waiting outbox rows while Kafka is down",
            explain=functools.partial(_describe_outage, db, run, load, down_at),
            timeout=120,
        )
        waiting = await db.fetchval(WAITING, run.source)
        starting_at = time.time()
        await asyncio.to_thread(stack_service, "kafka", "up")
        restore_services.remove("kafka")
        back_at = time.time()
        accepted_down = sum(down_at <= d["accepted_at"] <= starting_at for d in load.accepted())
        outages.append(
            {
                "down_s": round(back_at - stopping_at, 2),
                "accepted_while_down": accepted_down,
                "outbox_waiting": waiting,
            }
        )
        # Measured beside the run: the next outage's moment follows the load, not this wait.
        recovering.append(asyncio.create_task(time_to_recover(db, run, load, back_at, timeout=300)))
    recover_s = list(await asyncio.gather(*recovering))
    inv, summary = await conclude(
        db, run, load, recover_s=recover_s, outages=outages, settle_timeout=300
    )
    assert worker.proc is not None and worker.proc.poll() is None
    assert (worker.proc.pid, worker.starts) == (pid, 1), "the worker was never restarted"
    assert "503" not in summary["statuses"], "Kafka down must not stop ingest"
    for outage in outages:
        assert outage["accepted_while_down"] > 0, outage
        assert outage["outbox_waiting"] > 0, "accepted records wait in the outbox"
    assert_recovered(run, recover_s, "restart")
    assert inv.holds, inv.describe()
