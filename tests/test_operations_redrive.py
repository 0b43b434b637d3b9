"""DLQ redrive: a record dead-lettered while S3 was down becomes canonical once S3 is back."""

from __future__ import annotations

import uuid

import asyncpg
from aiokafka import AIOKafkaProducer

from exchange_stream.config import Settings
from tests.payloads import v2_body
from tests.support import (
    TopicReader,
    WorkerProcess,
    raw_object_event,
    run_cli,
    stack_service,
    wait_canonical,
)


async def test_record_dead_lettered_while_s3_was_down_is_canonical_after_redrive(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings, restore_services: list[str]
) -> None:
    event, value = await raw_object_event(settings, v2_body(source="redrive-test"))
    rid = event["record_id"]
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await producer.start()
    try:
        async with TopicReader(settings.broker_list, settings.kafka_dlq_topic_v2) as dlq:
            restore_services.append("s3")
            stack_service("s3", "down")
            await producer.send_and_wait(settings.topic_record_ingested_v2, value, key=rid.encode())
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
    assert rows[0]["correlation_id"] == event["correlation_id"]

    # A second redrive starts where the first stopped: nothing of ours is sent again.
    code, report = await run_cli("dlq", "redrive", "--version", "v2", "--local")
    assert code == 0, report
    assert report["local"] is True
