"""Crash safety: SIGKILL the worker repeatedly under load; every accepted record ends canonical.

The worker here has its own consumer group and its own topics, so no other worker can do its
work for it: whatever it lost in a crash, its restarted self must recover.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import aiohttp
import asyncpg
import pytest

from exchange_stream.infra.config import Settings
from exchange_stream.infra.topics import ensure_topics
from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, post_json, wait_canonical

KILLS = 3
SECONDS_BETWEEN_KILLS = 4.0


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
async def crash_worker(migrated, settings: Settings, tmp_path):
    run = uuid.uuid4().hex[:8]
    topics = {
        "TOPIC_RECORD_INGESTED_V1": f"crash.{run}.v1",
        "TOPIC_RECORD_INGESTED_V2": f"crash.{run}.v2",
        "KAFKA_DLQ_TOPIC_V1": f"crash.{run}.v1.dlq",
        "KAFKA_DLQ_TOPIC_V2": f"crash.{run}.v2.dlq",
        "TOPIC_CONTROL": f"crash.{run}.control",
    }
    await ensure_topics(Settings.from_env({**os.environ, **topics}))
    proc = WorkerProcess(
        workdir=tmp_path / "crash-worker",
        env_overrides={**topics, "APP_ID": f"crash-{run}", "KAFKA_SESSION_TIMEOUT_S": "6"},
    )
    proc.start()
    await proc.wait_healthy()
    yield proc
    proc.stop()


async def test_sigkilled_worker_loses_nothing_and_leaves_no_running_ledger_rows(
    crash_worker: WorkerProcess, db: asyncpg.Pool
) -> None:
    accepted: list[str] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_load(crash_worker.base_url, accepted, stop))
    try:
        for _ in range(KILLS):
            await asyncio.sleep(SECONDS_BETWEEN_KILLS)
            crash_worker.kill()
            crash_worker.start()
            await crash_worker.wait_healthy()
        await asyncio.sleep(2)
    finally:
        stop.set()
        await load
    assert crash_worker.starts == KILLS + 1
    assert len(accepted) > 50, "the load should have been steady"
    assert len(set(accepted)) == len(accepted)

    rows = await wait_canonical(db, accepted, timeout=120)
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
