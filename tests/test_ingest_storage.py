"""After a 202: raw bytes in S3, rows that agree, an event on the topic that fits its schema."""

from __future__ import annotations

import hashlib
import uuid

import aiohttp
import asyncpg
import orjson

from exchange_stream.infra.config import Settings
from exchange_stream.infra.contracts import check_event
from tests.payloads import new_key, v1_body, v2_body
from tests.support import TopicReader, WorkerProcess, post_json, s3_read_independently


async def _accept_and_check(
    version: str,
    body: dict,
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    raw = orjson.dumps(body) + b"\n  "  # exact bytes are kept, whitespace included
    key = new_key()
    topic = settings.ingest_topic_for(version)
    async with TopicReader(settings.broker_list, topic) as reader:
        status, resp, _ = await post_json(
            http, f"{worker.base_url}/v{version}/ingest", raw, key=key
        )
        assert status == 202, resp
        record_id = resp["record_id"]
        sha = hashlib.sha256(raw).hexdigest()
        object_key = f"{body['source']}/{record_id}.json"

        assert await s3_read_independently(settings, object_key) == raw

        manifest = await db.fetchrow(
            "SELECT * FROM raw_object_manifest WHERE record_id = $1", uuid.UUID(record_id)
        )
        assert manifest["object_key"] == object_key
        assert manifest["bucket"] == settings.raw_bucket
        assert manifest["sha256"] == sha
        assert manifest["size_bytes"] == len(raw)
        assert manifest["state"] in ("enqueued", "canonicalized")
        assert manifest["source"] == body["source"]

        idem = await db.fetchrow("SELECT * FROM idempotency_keys WHERE key = $1", key)
        assert idem["request_sha256"] == sha
        assert idem["response"] == resp
        assert str(idem["record_id"]) == record_id

        outbox = await db.fetchrow("SELECT * FROM outbox_events WHERE key = $1", record_id)
        assert outbox["topic"] == topic
        event = outbox["payload"]
        assert event["record_id"] == record_id
        assert event["correlation_id"] == resp["correlation_id"]
        assert event["raw_object"] == {
            "bucket": settings.raw_bucket,
            "key": object_key,
            "sha256": sha,
            "size_bytes": len(raw),
        }

        messages = await reader.collect(
            lambda ms: any(m.key == record_id.encode() for m in ms), timeout=120
        )
        ours = [m for m in messages if m.key == record_id.encode()]
        assert len(ours) == 1
        published = orjson.loads(ours[0].value)
        check_event(published)
        assert published == event
        if version == "2":
            assert (published["record_kind"], published["schema_hint"]) == (
                body["record_kind"],
                body["schema_hint"],
            )


async def test_v1_accept_writes_raw_object_rows_and_event(worker, http, db, settings) -> None:
    await _accept_and_check("1", v1_body(), worker, http, db, settings)


async def test_v2_accept_writes_raw_object_rows_and_event(worker, http, db, settings) -> None:
    await _accept_and_check("2", v2_body(), worker, http, db, settings)
