"""Fault: Postgres down for seconds to minutes under load.

While it is down, ingest answers 503 with ``Retry-After`` and stores nothing; the partner's retry
with the same key then succeeds. The normalizer, which has a backlog when Postgres goes away,
waits at its gate (no progress is possible without its ledger; offsets stay where they are) and
carries on by itself. No worker is restarted, nothing is dead-lettered, nobody acts: the pools,
the relay's listener and the ledger writes all come back by themselves.
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
async def test_postgres_down_under_load_is_waited_out_without_restart_or_dead_letters(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant, restore_services: list[str]
) -> None:
    """Postgres down for seconds to minutes"""
    run = fault_run
    normalizer = await run.start_worker()
    front = await run.start_worker(KAFKA_TOPICS=run.idle_topic)
    pids = [w.proc.pid for w in (normalizer, front) if w.proc]
    load = run.start_load([front.base_url], grace_s=max(variant.outages) + 60)
    await load.wait_accepted(20)
    recover_s: list[float | None] = []
    rounds: list[dict] = []
    for i, outage_s in enumerate(variant.outages):
        await run.next_fault(load, i)
        round_ = await outage_with_backlog(
            run, load, normalizer, "postgres", outage_s, restore_services
        )
        back_at = round_.pop("back_at")
        recover_s.append(await time_to_recover(db, run, load, back_at, timeout=outage_s + 90))
        round_["dead_lettered_so_far"] = await dead_lettered(run)
        rounds.append(round_)
    dlq = await dead_lettered(run)
    inv, summary = await conclude(
        db, run, load, recover_s=recover_s, rounds=rounds, dead_lettered=dlq, redrives=0
    )
    assert [w.proc.pid for w in (normalizer, front) if w.proc] == pids
    assert (normalizer.starts, front.starts) == (1, 1), "no worker was restarted"
    assert all(w.proc is not None and w.proc.poll() is None for w in (normalizer, front))
    assert int(summary["statuses"].get("503", 0)) > 0, "ingest answers 503 while Postgres is down"
    assert sum(summary["retry_after"].values()) > 0, "and its 503s carry Retry-After"
    assert all(r["pauses"] >= 1 for r in rounds), f"the normalizer paused for each: {rounds}"
    assert dlq == 0, f"{dlq} records dead-lettered because Postgres was down"
    assert_recovered(run, recover_s, "outage")
    assert inv.holds, inv.describe()
