"""The outbox relay: woken by each commit's NOTIFY, and each row published once with several relays
running."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

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


async def _notify_wakeups(http: aiohttp.ClientSession, worker: WorkerProcess) -> float:
    async with http.get(f"{worker.base_url}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "outbox_relay_wakeups_total" and sample.labels == {"cause": "notify"}:
                return sample.value
    return 0.0


async def test_each_commit_wakes_the_relay_by_notify(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    """Records one at a time, each after the previous one is published: every commit's NOTIFY
    wakes the idle relay (the poll is only a safety net and is counted apart)."""
    ids = []
    for _ in range(10):
        woken_before = await _notify_wakeups(http, worker)
        status, resp, _ = await post_json(
            http, f"{worker.base_url}/v2/ingest", v2_body(), key=new_key()
        )
        assert status == 202
        ids.append(resp["record_id"])

        async def published_after_a_notify(
            record_id: str = resp["record_id"], before: float = woken_before
        ) -> bool:
            published = await db.fetchval(
                "SELECT published_at IS NOT NULL FROM outbox_events WHERE key = $1", record_id
            )
            return bool(published) and await _notify_wakeups(http, worker) > before

        await eventually(published_after_a_notify, timeout=30)

    assert await db.fetchval(
        "SELECT count(*) FROM outbox_events WHERE key = ANY($1) AND published_at IS NOT NULL",
        ids,
    ) == len(ids)
