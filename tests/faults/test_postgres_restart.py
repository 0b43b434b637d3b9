"""Fault: Postgres stopped and restarted under load.

While it is down, ingest answers 503 with ``Retry-After`` and stores nothing; the partner's retry
with the same key then succeeds. The worker is never restarted: its pool, the relay's listener and
the normalizer's ledger writes all come back by themselves.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.faults.common import FaultRun, Variant, conclude, time_to_recover
from tests.support import stack_service

VARIANTS = [
    pytest.param(Variant("default", rate=25, seconds=16, faults=1, outage_s=4), id="default"),
    pytest.param(
        Variant("long", rate=40, seconds=90, faults=3, outage_s=12),
        id="long",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("variant", VARIANTS)
async def test_postgres_restarted_under_load_ingest_503s_then_recovers_without_restart(
    fault_run: FaultRun, db: asyncpg.Pool, variant: Variant, restore_services: list[str]
) -> None:
    """Postgres stopped and restarted"""
    run = fault_run
    worker = await run.start_worker()
    pid = worker.proc.pid if worker.proc else None
    load = run.start_load([worker.base_url])
    await load.wait_accepted(20)
    recover_s: list[float | None] = []
    outages: list[float] = []
    for i in range(variant.faults):
        await run.next_fault(load, i)
        restore_services.append("postgres")
        stopping_at = time.time()
        await asyncio.to_thread(stack_service, "postgres", "down")
        await asyncio.sleep(variant.outage_s)
        await asyncio.to_thread(stack_service, "postgres", "up")
        restore_services.remove("postgres")
        back_at = time.time()
        outages.append(round(back_at - stopping_at, 2))
        recover_s.append(await time_to_recover(db, run, load, back_at))
    inv, summary = await conclude(db, run, load, recover_s=recover_s, down_s=outages)
    assert worker.proc is not None and worker.proc.poll() is None
    assert (worker.proc.pid, worker.starts) == (pid, 1), "the worker was never restarted"
    assert int(summary["statuses"].get("503", 0)) > 0, "ingest answers 503 while Postgres is down"
    assert sum(summary["retry_after"].values()) > 0, "and its 503s carry Retry-After"
    assert None not in recover_s, f"not recovered after every restart: {recover_s}"
    assert inv.holds, inv.describe()
