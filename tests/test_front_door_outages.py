"""Kafka down: ingest keeps accepting and the outbox drains later. S3 down: 503, nothing kept,
and a stored key answered again."""

from __future__ import annotations

import collections
import uuid

import aiohttp
import asyncpg

from exchange_stream.infra.config import Settings
from tests.conftest import SHARED_WORKER_ENV
from tests.faults.common import describe_group
from tests.payloads import new_key, v2_body
from tests.support import (
    TopicReader,
    WorkerProcess,
    eventually,
    post_json,
    stack_service,
    wait_for_state,
)

PENDING = "SELECT count(*) FROM outbox_events WHERE key = ANY($1) AND published_at IS NULL"


async def test_kafka_down_ingest_still_accepts_and_outbox_drains_once_back(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    restore_services: list[str],
) -> None:
    topic = settings.ingest_topic_for("2")
    async with TopicReader(settings.broker_list, topic) as reader:
        restore_services.append("kafka")
        stack_service("kafka", "down")
        record_ids = []
        for _ in range(20):
            status, resp, _ = await post_json(
                http, f"{worker.base_url}/v2/ingest", v2_body(), key=new_key()
            )
            assert status == 202, resp
            record_ids.append(resp["record_id"])
        waiting = await db.fetchval(
            PENDING,
            record_ids,
        )
        assert waiting == len(record_ids)

        stack_service("kafka", "up")

        async def drained() -> bool:
            return (
                await db.fetchval(
                    PENDING,
                    record_ids,
                )
                == 0
            )

        await eventually(drained, timeout=180)
        wanted = {r.encode() for r in record_ids}
        messages = await reader.collect(lambda ms: wanted <= {m.key for m in ms}, timeout=120)
    counts = collections.Counter(m.key for m in messages if m.key in wanted)
    assert set(counts) == wanted
    assert set(counts.values()) == {1}, "each row published once"

    # And the normalizer consumes again by itself: the group takes the topics back. (A rebalance
    # while the restarted broker had not loaded its topics once assigned nothing until the next
    # metadata refresh, 5 minutes later; the deadline is generous but well under that.)
    async def canonical() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = ANY($1)",
            [uuid.UUID(r) for r in record_ids],
        )
        return n == len(record_ids)

    topics = [settings.ingest_topic_for(v) for v in ("1", "2")]
    await wait_for_state(
        canonical,
        what="the records accepted while Kafka was down, canonical",
        explain=lambda: describe_group(settings, SHARED_WORKER_ENV["APP_ID"], topics),
        timeout=120,
    )
    assert worker.proc.poll() is None


async def test_s3_down_is_503_without_rows_and_the_same_key_works_after(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    restore_services: list[str],
) -> None:
    key, body = new_key(), v2_body()
    stored_key, stored_body = new_key(), v2_body()
    url = f"{worker.base_url}/v2/ingest"
    status, first, _ = await post_json(http, url, stored_body, key=stored_key)
    assert status == 202, first
    restore_services.append("s3")
    stack_service("s3", "down")
    status, resp, headers = await post_json(http, url, body, key=key)
    assert (status, resp) == (503, {"error": "s3 unavailable"})
    assert int(headers["Retry-After"]) >= 1
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 0
    # A key stored before needs no object: its retry is answered, and another body refused.
    status, resp, _ = await post_json(http, url, stored_body, key=stored_key)
    assert (status, resp) == (202, first)
    status, resp, _ = await post_json(http, url, v2_body(), key=stored_key)
    assert (status, resp) == (409, {"error": "idempotency conflict"})
    stack_service("s3", "up")
    status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=key)
    assert status == 202, resp
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 1
