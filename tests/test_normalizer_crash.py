"""Crash safety: SIGKILL the worker repeatedly under load; every accepted record ends canonical.

The worker here has its own consumer group and its own topics, so no other worker can do its
work for it: whatever it lost in a crash, its restarted self must recover.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import pytest

from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, eventually, isolated_topics, post_json, wait_canonical

KILLS = 3
ACCEPTED_BETWEEN_KILLS = 20


async def _load(url: str, accepted: list[str], stop: asyncio.Event, n_clients: int = 4) -> None:
    """Steady ingest; a request that fails (worker dead) is retried with the same key and body,
    as a partner would, until it gets its 202."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                version = "1" if n % 3 == 0 else "2"
                body = (
                    v1_body(source="crash-test") if version == "1" else v2_body(source="crash-test")
                )
                key = new_key()
                while True:
                    try:
                        status, resp, _ = await post_json(
                            http, f"{url}/v{version}/ingest", body, key=key
                        )
                        if status == 202:
                            accepted.append(resp["record_id"])
                            break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(client(i) for i in range(n_clients)))


@pytest.fixture
async def crash_worker(db: asyncpg.Pool, tmp_path):
    async with isolated_topics("crash", db) as env:
        proc = WorkerProcess(
            workdir=tmp_path / "crash-worker",
            env_overrides={**env, "KAFKA_SESSION_TIMEOUT_S": "6"},
        )
        proc.start()
        try:
            await proc.wait_healthy()
            yield proc
        finally:
            proc.stop()


async def _more_accepted(accepted: list[str], load: asyncio.Task, n: int) -> None:
    """Until the load has had ``n`` more 202s: the worker is under load, however slow the
    machine (the pace of the kills follows the work done, not the clock)."""
    target = len(accepted) + n

    async def enough() -> bool:
        return load.done() or len(accepted) >= target

    await eventually(enough, timeout=300, interval=0.05)
    if load.done():
        load.result()  # a load client's error, raised here
        raise AssertionError("the load stopped")


async def test_sigkilled_worker_loses_nothing_and_leaves_no_running_ledger_rows(
    crash_worker: WorkerProcess, db: asyncpg.Pool
) -> None:
    accepted: list[str] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_load(crash_worker.base_url, accepted, stop))
    try:
        for _ in range(KILLS):
            await _more_accepted(accepted, load, ACCEPTED_BETWEEN_KILLS)
            crash_worker.kill()
            crash_worker.start()
            await crash_worker.wait_healthy()
        await _more_accepted(accepted, load, ACCEPTED_BETWEEN_KILLS)
    finally:
        stop.set()
        await load
    assert crash_worker.starts == KILLS + 1
    assert len(set(accepted)) == len(accepted)

    rows = await wait_canonical(db, accepted, timeout=300)
    assert len(rows) == len(accepted)
    ids = [uuid.UUID(r) for r in accepted]
    running = await db.fetchval(
        "SELECT count(*) FROM processing_stage_state WHERE record_id = ANY($1) "
        "AND status <> 'succeeded'",
        ids,
    )
    assert running == 0
    unpublished = await db.fetchval(
        "SELECT count(*) FROM outbox_events WHERE key = ANY($1) AND published_at IS NULL", accepted
    )
    assert unpublished == 0
    states = await db.fetch(
        "SELECT state, count(*) FROM raw_object_manifest WHERE record_id = ANY($1) GROUP BY 1", ids
    )
    assert {r["state"]: r["count"] for r in states} == {"canonicalized": len(accepted)}
