"""The outbox relay: woken at commit, and each row published once with several relays running."""

from __future__ import annotations

import asyncio
import collections
import statistics

import aiohttp
import asyncpg

from exchange_stream.infra.config import Settings
from tests.auth_tokens import good_token
from tests.payloads import new_key, v2_body
from tests.support import TopicReader, WorkerProcess, eventually, post_json


async def test_two_workers_relaying_publish_each_row_once(
    worker: WorkerProcess,
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    async with TopicReader(settings.broker_list, settings.ingest_topic_for("2")) as reader:

        async def post(i: int) -> str:
            target, token = (worker, "dev") if i % 2 else (strict_worker, good_token())
            status, resp, _ = await post_json(
                http, f"{target.base_url}/v2/ingest", v2_body(), key=new_key(), token=token
            )
            assert status == 202, resp
            return resp["record_id"]

        ids = await asyncio.gather(*(post(i) for i in range(120)))
        wanted = {r.encode() for r in ids}
        messages = await reader.collect(lambda ms: wanted <= {m.key for m in ms}, timeout=60)
    counts = collections.Counter(m.key for m in messages if m.key in wanted)
    assert set(counts) == wanted
    assert set(counts.values()) == {1}

    async def all_marked() -> bool:
        return (
            await db.fetchval(
                "SELECT count(*) FROM outbox_events WHERE key = ANY($1) AND published_at IS NULL",
                list(ids),
            )
            == 0
        )

    await eventually(all_marked, timeout=10)


async def test_relay_publishes_within_milliseconds_of_commit(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    ids = []
    for _ in range(15):
        status, resp, _ = await post_json(
            http, f"{worker.base_url}/v2/ingest", v2_body(), key=new_key()
        )
        assert status == 202
        ids.append(resp["record_id"])
        await asyncio.sleep(0.15)  # idle between records: the relay must be woken, not polling

    async def all_published() -> bool:
        return await db.fetchval(
            "SELECT count(*) FROM outbox_events WHERE key = ANY($1) AND published_at IS NOT NULL",
            ids,
        ) == len(ids)

    await eventually(all_published, timeout=10)
    delays = [
        r["d"]
        for r in await db.fetch(
            "SELECT extract(epoch FROM published_at - created_at) * 1000 AS d "
            "FROM outbox_events WHERE key = ANY($1)",
            ids,
        )
    ]
    # A 1 s safety-net poll alone would put the median near 500 ms.
    assert statistics.median(delays) < 150, delays
