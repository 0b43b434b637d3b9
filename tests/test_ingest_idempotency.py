"""Idempotency-Key semantics on the real services (docs/CONTRACT.md §2)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg

from exchange_stream.infra.config import Settings
from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, independent_s3_client, post_json


async def _objects(settings: Settings, source: str) -> list[str]:
    """Keys of the raw objects under ``source``, listed with an S3 client not the service's.
    The object written for the request must be gone when a replay or 409 is answered."""
    async with independent_s3_client(settings) as client:
        page = await client.list_objects_v2(Bucket=settings.raw_bucket, Prefix=f"{source}/")
    return [o["Key"] for o in page.get("Contents", [])]


def _source() -> str:
    return f"idem-{uuid.uuid4().hex[:8]}"


async def _record_rows(db: asyncpg.Pool, key: str) -> dict[str, int]:
    row = await db.fetchrow("SELECT record_id FROM idempotency_keys WHERE key = $1", key)
    if row is None:
        return {"keys": 0, "manifest": 0, "outbox": 0, "audit": 0}
    rid = row["record_id"]
    return {
        "keys": await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key),
        "manifest": await db.fetchval(
            "SELECT count(*) FROM raw_object_manifest WHERE record_id = $1", rid
        ),
        "outbox": await db.fetchval("SELECT count(*) FROM outbox_events WHERE key = $1", str(rid)),
        "audit": await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE entity_id = $1 AND action = 'ingest'", str(rid)
        ),
    }


async def test_same_key_same_body_returns_the_same_response_once(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> None:
    source = _source()
    key, body = new_key(), v2_body(source=source)
    first = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=key)
    second = await post_json(
        http,
        f"{worker.base_url}/v2/ingest",
        body,
        key=key,
        headers={"X-Correlation-Id": "another-correlation-id"},
    )
    assert first[0] == second[0] == 202
    assert first[1] == second[1]
    uuid.UUID(first[1]["record_id"])
    assert await _record_rows(db, key) == {"keys": 1, "manifest": 1, "outbox": 1, "audit": 1}
    assert await _objects(settings, source) == [f"{source}/{first[1]['record_id']}.json"]


async def test_same_key_other_body_is_409(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> None:
    key, source, other = new_key(), _source(), _source()
    status, first, _ = await post_json(
        http, f"{worker.base_url}/v1/ingest", v1_body(source=source), key=key
    )
    assert status == 202
    status, body, _ = await post_json(
        http, f"{worker.base_url}/v1/ingest", v1_body(source=other), key=key
    )
    assert (status, body) == (409, {"error": "idempotency conflict"})
    assert await _record_rows(db, key) == {"keys": 1, "manifest": 1, "outbox": 1, "audit": 1}
    assert await _objects(settings, source) == [f"{source}/{first['record_id']}.json"]
    assert await _objects(settings, other) == [], "the refused body is not kept"


async def test_200_concurrent_requests_with_one_key_make_one_record(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings
) -> None:
    source = _source()
    key, body = new_key(), v2_body(source=source)
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:
        results = await asyncio.gather(
            *(post_json(http, f"{worker.base_url}/v2/ingest", body, key=key) for _ in range(200))
        )
    statuses = {status for status, _, _ in results}
    responses = {tuple(sorted(b.items())) for _, b, _ in results}
    assert statuses == {202}
    assert len(responses) == 1
    assert await _record_rows(db, key) == {"keys": 1, "manifest": 1, "outbox": 1, "audit": 1}
    record_id = results[0][1]["record_id"]
    assert await _objects(settings, source) == [f"{source}/{record_id}.json"]


async def test_correlation_id_header_is_used_when_long_enough(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{worker.base_url}/v2/ingest"
    _, body, _ = await post_json(
        http, url, v2_body(), key=new_key(), headers={"X-Correlation-Id": "corr-12345678"}
    )
    assert body["correlation_id"] == "corr-12345678"
    _, body, _ = await post_json(
        http, url, v2_body(), key=new_key(), headers={"X-Correlation-Id": "short"}
    )
    assert body["correlation_id"] != "short"
    uuid.UUID(body["correlation_id"])
