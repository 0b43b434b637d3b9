"""Fault: the worker SIGKILLed under load, alone or beside a second worker.

Whatever the killed worker had in flight (requests, a claimed outbox batch, events read but not
committed) must end as exactly one canonical row per 202, done by its restarted self or by the
worker that takes over its partitions.

Each kill lands while the worker's normalizer is half-way through batches: the test holds an
EXCLUSIVE lock on ``canonical_records`` until the worker's canonical INSERTs wait on it (their
ledger starts already committed), kills the worker, then lets go. Were offsets committed before
the canonical write, those records would be lost; were a ``running`` ledger row never closed, the
invariant would see it.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.faults.common import (
    FaultRun,
    Variant,
    assert_recovered,
    conclude,
    group_assignments,
    stalled,
    time_to_recover,
)
from tests.support import eventually

SINGLE = [
    pytest.param(Variant("default", rate=25, seconds=30, faults=2), id="default"),
    pytest.param(
        Variant("long", rate=40, seconds=150, faults=8), id="long", marks=pytest.mark.slow
    ),
]
# The normalizer's canonical transaction, held up half-way (see the module docstring), for longer
# than Faust's offset commit interval (2.8 s): an offset acknowledged before its canonical write
# would be committed by the time of the kill, and the record lost.
CANONICAL_WRITE = ("canonical_records", "normalize_commit(")
# The worker's one normalizer actor has at most one canonical write in flight. The timeout is
# generous: how soon it waits depends on the machine, and a kill with none waiting would not test
# the half-way case (asserted).
STALL = {"at_least": 1, "timeout": 60.0, "hold_s": 3.5}
# Correct code recovers in seconds; a slow, shared machine may need many times that.
RECOVER_TIMEOUT_S = 300.0
PAIR = [
    pytest.param(Variant("default", rate=25, seconds=16, faults=1), id="default"),
    pytest.param(
        Variant("long", rate=40, seconds=120, faults=4), id="long", marks=pytest.mark.slow
    ),
]


def _ingested(run: FaultRun, members: list[set[tuple[str, int]]]) -> list[set[tuple[str, int]]]:
    topics = {run.topics["TOPIC_RECORD_INGESTED_V1"], run.topics["TOPIC_RECORD_INGESTED_V2"]}
    return [{tp for tp in m if tp[0] in topics} for m in members]


async def _wait_members(run: FaultRun, n: int, timeout: float = 180.0) -> None:
    """Until the group has ``n`` members that all hold ingested partitions and, together, all
    of them: the normalizer's work is shared by exactly those ``n`` workers."""
    total = 2 * run.settings.topic_partitions

    async def settled() -> bool:
        members = _ingested(run, await group_assignments(run.settings, run.group))
        return (
            len(members) == n
            and all(members)
            and len(set().union(*members)) == total == sum(map(len, members))
        )

    await eventually(settled, timeout=timeout, interval=0.5)


@pytest.mark.parametrize("variant", SINGLE)
async def test_worker_sigkilled_repeatedly_loses_and_duplicates_nothing(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant
) -> None:
    """One worker, SIGKILLed repeatedly and restarted"""
    run = fault_run
    worker = await run.start_worker()
    load = run.start_load([worker.base_url])
    await load.wait_accepted(20)
    recovering: list[asyncio.Task] = []
    mid_batch: list[int] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        async with stalled(db, worker, *CANONICAL_WRITE, **STALL) as waiting:
            worker.kill()
        mid_batch.append(waiting)
        worker.start()
        await worker.wait_healthy()
        back = time.time()
        # Measured beside the run: the next fault's moment follows the load, not this wait.
        recovering.append(
            asyncio.create_task(time_to_recover(db, run, load, back, timeout=RECOVER_TIMEOUT_S))
        )
    recover_s = list(await asyncio.gather(*recovering))
    inv, summary = await conclude(
        db,
        run,
        load,
        recover_s=recover_s,
        settle_timeout=300,
        kills=variant.faults,
        worker_starts=worker.starts,
        batches_mid_write_at_kill=mid_batch,
    )
    assert worker.starts == variant.faults + 1
    assert summary["errors"], "the kills should have cut requests off"
    assert all(mid_batch), f"each kill should land mid-batch: {mid_batch}"
    assert_recovered(run, recover_s, "kill")
    assert inv.holds, inv.describe()


@pytest.mark.parametrize("variant", PAIR)
async def test_two_workers_one_sigkilled_partitions_move_to_the_survivor(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant
) -> None:
    """Two workers, one SIGKILLed: its partitions move to the survivor"""
    run = fault_run
    workers = [await run.start_worker(), await run.start_worker()]
    await _wait_members(run, 2)
    load = run.start_load([w.base_url for w in workers])
    await load.wait_accepted(20)
    rebalance_s: list[float] = []
    mid_batch: list[int] = []
    recovering: list[asyncio.Task] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        victim = workers[i % 2]
        async with stalled(db, victim, *CANONICAL_WRITE, **STALL) as waiting:
            victim.kill()
        mid_batch.append(waiting)
        killed_at = time.time()
        await _wait_members(run, 1)
        rebalanced_at = time.time()
        rebalance_s.append(round(rebalanced_at - killed_at, 2))
        # Records sent to the victim's partitions wait for the rebalance: recovery counts from
        # the kill until everything accepted before the survivor took over is canonical.
        recovering.append(
            asyncio.create_task(
                time_to_recover(
                    db, run, load, rebalanced_at, since=killed_at, timeout=RECOVER_TIMEOUT_S
                )
            )
        )
        if i + 1 < variant.faults:
            victim.start()
            await victim.wait_healthy()
            await _wait_members(run, 2)
    recover_s = list(await asyncio.gather(*recovering))
    inv, summary = await conclude(
        db,
        run,
        load,
        recover_s=recover_s,
        settle_timeout=300,
        kills=variant.faults,
        rebalance_s=rebalance_s,
        batches_mid_write_at_kill=mid_batch,
    )
    assert summary["errors"], "requests to the killed worker failed and went to the survivor"
    assert all(mid_batch), f"each kill should land mid-batch: {mid_batch}"
    survivor = workers[1 - (variant.faults - 1) % 2]
    assert survivor.proc is not None and survivor.proc.poll() is None, "the survivor kept running"
    assert_recovered(run, recover_s, "kill")
    assert inv.holds, inv.describe()
