"""DLQ redrive: a record dead-lettered while S3 was down becomes canonical once S3 is back."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from exchange_stream.config import Settings
from exchange_stream.ingest import build_event, object_key
from exchange_stream.storage import open_store
from tests.payloads import v2_body
from tests.support import TopicReader, WorkerProcess, run_cli, stack_service, wait_canonical


async def test_record_dead_lettered_while_s3_was_down_is_canonical_after_redrive(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings, restore_services: list[str]
) -> None:
    body = v2_body(source="redrive-test")
    raw = orjson.dumps(body)
    rid = str(uuid.uuid4())
    key = object_key(body["source"], rid)
    async with open_store(settings) as store:
        await store.put(key, raw)
    event = build_event(
        version="2",
        record_id=rid,
        source=body["source"],
        bucket=settings.raw_bucket,
        key=key,
        sha256=hashlib.sha256(raw).hexdigest(),
        size_bytes=len(raw),
        correlation_id=f"redrive-{rid}",
        record_kind="encounter",
        schema_hint="partnerA.v1",
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await producer.start()
    try:
        async with TopicReader(settings.broker_list, settings.kafka_dlq_topic_v2) as dlq:
            restore_services.append("s3")
            stack_service("s3", "down")
            await producer.send_and_wait(
                settings.topic_record_ingested_v2, orjson.dumps(event), key=rid.encode()
            )
            await dlq.collect(lambda ms: any(m.key == rid.encode() for m in ms), timeout=90)
            stack_service("s3", "up")
    finally:
        await producer.stop()
    assert (
        await db.fetchval(
            "SELECT status FROM processing_stage_state WHERE record_id = $1", uuid.UUID(rid)
        )
        == "dlq"
    )

    code, report = await run_cli("dlq", "redrive", "--version", "v2")
    assert code == 0, report
    assert report["result"]["redriven"] >= 1
    assert report["result"]["remaining"] == 0
    rows = await wait_canonical(db, [rid])
    assert rows[0]["correlation_id"] == f"redrive-{rid}"

    # A second redrive starts where the first stopped: nothing of ours is sent again.
    code, report = await run_cli("dlq", "redrive", "--version", "v2", "--local")
    assert code == 0, report
    assert report["local"] is True
