"""DLQ redrive: a record dead-lettered because its raw object was missing becomes canonical once
the object is there and the DLQ is redriven; a second redrive sends nothing again."""

from __future__ import annotations

import uuid

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import open_store
from tests.conftest import SHARED_WORKER_ENV
from tests.payloads import v2_body
from tests.support import (
    TopicReader,
    WorkerProcess,
    eventually,
    raw_object_event,
    run_cli,
    wait_canonical,
)


async def test_a_dead_lettered_record_is_canonical_after_redrive_and_redriven_once(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings
) -> None:
    body = v2_body(source="redrive-test")
    event, value = await raw_object_event(settings, body, store_it=False)
    rid = event["record_id"]
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await producer.start()
    try:
        async with TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as dlq:
            await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=rid.encode())
            await dlq.collect(lambda ms: any(m.key == rid.encode() for m in ms), timeout=90)
    finally:
        await producer.stop()

    async def marked() -> bool:
        status = await db.fetchval(
            "SELECT status FROM processing_stage_state WHERE record_id = $1", uuid.UUID(rid)
        )
        return status == "dlq"

    await eventually(marked, timeout=30)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = $1", uuid.UUID(rid)
        )
        == 0
    )

    # The operator puts the missing object back, then redrives.
    async with open_store(settings) as store:
        await store.put(event["raw_object"]["key"], orjson.dumps(body))
    async with TopicReader(settings.broker_list, settings.ingest_topic_for("2")) as ingested:
        code, report = await run_cli("dlq", "redrive", "--version", "v2")
        assert code == 0, report
        assert report["status"] == "succeeded"
        assert report["result"]["redriven"] >= 1
        assert report["result"]["remaining"] == 0
        assert report["result"]["target_topic"] == settings.ingest_topic_for("2")
        resent = await ingested.collect(
            lambda ms: any(m.key == rid.encode() for m in ms), timeout=30
        )
    ours = [orjson.loads(m.value) for m in resent if m.key == rid.encode()]
    assert ours == [event], "the original event is re-published once, unchanged"
    rows = await wait_canonical(db, [rid])
    assert rows[0]["correlation_id"] == event["correlation_id"]
    assert (
        await db.fetchval(
            "SELECT status FROM processing_stage_state WHERE record_id = $1", uuid.UUID(rid)
        )
        == "succeeded"
    )

    # A second redrive starts where the first stopped (the committed offsets of the workers'
    # redrive group, so the same APP_ID): our record, canonical now, is not sent again. (Other
    # tests' permanent failures came back to the DLQ after the first redrive; those go again.)
    async with TopicReader(settings.broker_list, settings.ingest_topic_for("2")) as ingested:
        code, report = await run_cli(
            "dlq",
            "redrive",
            "--version",
            "v2",
            "--local",
            env={"APP_ID": SHARED_WORKER_ENV["APP_ID"]},
        )
        assert code == 0, report
        assert report["local"] is True and report["result"]["remaining"] == 0
        resent = await ingested.collect_to_end()
    assert len(resent) == report["result"]["redriven"]
    assert not [m for m in resent if m.key == rid.encode()]
