"""Redelivery, permanent and transient failures: one row, or the DLQ with a matching ledger."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from exchange_stream.infra.config import Settings
from tests.conftest import WORKER_MAX_ATTEMPTS
from tests.payloads import new_key, v2_body
from tests.support import (
    TopicReader,
    WorkerProcess,
    eventually,
    isolated_worker,
    post_json,
    raw_object_event,
    stack_service,
    wait_canonical,
)


@pytest.fixture
async def producer(settings: Settings):
    p = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await p.start()
    yield p
    await p.stop()


async def _attempts(db: asyncpg.Pool, record_id: str) -> list:
    return await db.fetch(
        "SELECT attempt_no, status, error_type, error_stage, transient FROM processing_attempts "
        "WHERE record_id = $1 ORDER BY attempt_no",
        uuid.UUID(record_id),
    )


async def _stage(db: asyncpg.Pool, record_id: str):
    return await db.fetchrow(
        "SELECT * FROM processing_stage_state WHERE record_id = $1", uuid.UUID(record_id)
    )


async def _dlq_for(reader: TopicReader, key: bytes, timeout: float = 180.0) -> dict:
    messages = await reader.collect(lambda ms: any(m.key == key for m in ms), timeout=timeout)
    ours = [m for m in messages if m.key == key]
    assert len(ours) == 1, f"expected one DLQ message, got {len(ours)}"
    return orjson.loads(ours[0].value)


async def test_same_event_delivered_twice_makes_one_row(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings, producer: AIOKafkaProducer
) -> None:
    event, value = await raw_object_event(settings, v2_body(source="redelivery"))
    rid = event["record_id"]
    await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=rid.encode())
    await wait_canonical(db, [rid])
    await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=rid.encode())

    async def second_attempt_done() -> bool:
        rows = await _attempts(db, rid)
        return len(rows) == 2 and rows[1]["status"] == "succeeded"

    await eventually(second_attempt_done, timeout=60)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = $1", uuid.UUID(rid)
        )
        == 1
    )
    results = await db.fetch(
        "SELECT result FROM processing_attempts WHERE record_id = $1 ORDER BY attempt_no",
        uuid.UUID(rid),
    )
    assert [r["result"]["canonical_row"] for r in results] == ["inserted", "existing"]


async def test_checksum_mismatch_goes_to_dlq_after_one_attempt(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings, producer: AIOKafkaProducer
) -> None:
    event, value = await raw_object_event(settings, v2_body(source="tampered"), sha256="0" * 64)
    rid = event["record_id"]
    async with TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as reader:
        await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=rid.encode())
        envelope = await _dlq_for(reader, rid.encode())
    assert envelope["original_event"] == event
    assert envelope["error"] == {
        "type": "ChecksumMismatch",
        "stage": "verify",
        "message": "raw object differs from the event",
    }
    assert envelope["attempts"] == 1

    async def marked() -> bool:
        return (await _stage(db, rid))["status"] == "dlq"

    await eventually(marked, timeout=60)
    attempts = await _attempts(db, rid)
    assert [(a["status"], a["error_type"], a["transient"]) for a in attempts] == [
        ("dlq_published", "ChecksumMismatch", False)
    ]


async def test_unmappable_payload_sent_through_http_goes_to_dlq_once(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> None:
    body = v2_body(source="unmappable")
    del body["payload"]["encounter_id"]
    body["payload"]["patient_note"] = "Sentinel-Note-Q7"
    async with TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as reader:
        status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=new_key())
        assert status == 202
        rid = resp["record_id"]
        envelope = await _dlq_for(reader, rid.encode())
    assert envelope["error"]["type"] == "MappingError"
    assert envelope["error"]["stage"] == "map"
    assert "encounter_id" in envelope["error"]["message"]
    assert envelope["attempts"] == 1
    assert "Sentinel" not in orjson.dumps(envelope).decode()

    async def ledger_matches() -> bool:
        stage = await _stage(db, rid)
        manifest = await db.fetchval(
            "SELECT state FROM raw_object_manifest WHERE record_id = $1", uuid.UUID(rid)
        )
        return stage["status"] == "dlq" and manifest == "enqueued"

    await eventually(ledger_matches, timeout=60)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = $1", uuid.UUID(rid)
        )
        == 0
    )


async def test_missing_raw_object_retries_then_dlq(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings, producer: AIOKafkaProducer
) -> None:
    event, value = await raw_object_event(settings, v2_body(source="vanished"), store_it=False)
    rid = event["record_id"]
    async with TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as reader:
        await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=rid.encode())
        envelope = await _dlq_for(reader, rid.encode())
    assert envelope["error"]["type"] == "RawObjectMissing"
    assert envelope["attempts"] == WORKER_MAX_ATTEMPTS

    async def marked() -> bool:
        return (await _stage(db, rid))["status"] == "dlq"

    await eventually(marked, timeout=60)
    attempts = await _attempts(db, rid)
    assert [a["status"] for a in attempts] == (
        ["failed"] * (WORKER_MAX_ATTEMPTS - 1) + ["dlq_published"]
    )
    assert all(a["transient"] for a in attempts)


async def _readyz(http: aiohttp.ClientSession, worker: WorkerProcess) -> dict:
    async with http.get(f"{worker.base_url}/readyz") as r:
        return await r.json()


async def _paused_gauge(http: aiohttp.ClientSession, worker: WorkerProcess) -> float | None:
    async with http.get(f"{worker.base_url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith('normalizer_paused{dependency="s3"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_s3_stopped_pauses_the_normalizer_and_nothing_is_dead_lettered(
    db: asyncpg.Pool,
    http: aiohttp.ClientSession,
    producer: AIOKafkaProducer,
    restore_services: list[str],
    tmp_path: Path,
) -> None:
    # A worker of its own: the session's strict worker shares the test workers' group and reads
    # S3 through a second server that stays up, so it could take the event and never pause.
    async with isolated_worker(tmp_path, "s3-outage", db) as worker:
        settings = Settings.from_env({**os.environ, **worker.env_overrides, "ENV": "local"})
        event, value = await raw_object_event(settings, v2_body(source="s3-outage"))
        rid = event["record_id"]
        log_lines_before = len(worker.log_text().splitlines())
        async with TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as reader:
            restore_services.append("s3")
            stack_service("s3", "down")
            await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=rid.encode())

            async def paused() -> bool:
                ready = await _readyz(http, worker)
                return ready["normalizer"]["waiting_for"] == ["s3"] and "s3" in ready["failing"]

            await eventually(paused, timeout=120)
            assert await _paused_gauge(http, worker) == 1.0
            # The failed read is in the ledger, as retryable; the record spends no attempt.
            stage = await _stage(db, rid)
            assert stage["status"] == "failed_retryable"
            assert stage["last_error_type"] == "StorageUnavailable"
            stack_service("s3", "up")
            restore_services.remove("s3")
            await wait_canonical(db, [rid], timeout=180)
            await eventually(lambda: _not_paused(http, worker), timeout=120)
            # Anything dead-lettered would have been published before the canonical row.
            later = await reader.collect_to_end(timeout=120)
        assert not [m for m in later if m.key == rid.encode()]
        assert (await _stage(db, rid))["status"] == "succeeded"
        attempts = await _attempts(db, rid)
        assert attempts[-1]["status"] == "succeeded"
        assert all(a["error_type"] in (None, "StorageUnavailable") for a in attempts)
        assert await _paused_gauge(http, worker) == 0.0
        logged = worker.log_text().splitlines()[log_lines_before:]
    pauses = [line for line in logged if "normalizer paused" in line and '"s3"' in line]
    resumes = [line for line in logged if "normalizer resumed" in line and '"s3"' in line]
    assert (len(pauses), len(resumes)) == (1, 1), (pauses, resumes)


async def _not_paused(http: aiohttp.ClientSession, worker: WorkerProcess) -> bool:
    return (await _readyz(http, worker))["normalizer"]["paused"] is False


async def test_unparseable_message_goes_to_dlq_with_the_unparseable_envelope(
    worker: WorkerProcess, settings: Settings, producer: AIOKafkaProducer
) -> None:
    garbage = b"{not an event " + uuid.uuid4().bytes.hex().encode()
    key = hashlib.sha256(garbage).digest()[:16]
    async with TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as reader:
        await producer.send_and_wait(settings.ingest_topic_for("2"), garbage, key=b"junk")
        envelope = await _dlq_for(reader, key)
    assert envelope["original_event"] == {
        "unparseable_event": True,
        "event_sha256": hashlib.sha256(garbage).hexdigest(),
        "size_bytes": len(garbage),
    }
    assert envelope["error"]["stage"] == "parse"
    assert envelope["attempts"] == 1


async def test_batch_failing_on_an_unforeseen_error_is_run_again_not_dropped(
    db: asyncpg.Pool,
) -> None:
    """An error the normalizer does not classify (a bug, say) must not crash the agent: Faust
    would restart it without reading the batch again, and the batch's records would wait for the
    next rebalance. The batch is run again until it is done, and the error is counted."""
    from exchange_stream.infra import metrics
    from exchange_stream.pipeline.normalize import Message
    from tests.jobs_support import pipeline_records

    async with pipeline_records(db) as pipeline:
        normalizer = pipeline.normalizer
        normalizer.rerun_first_delay_s = 0.01
        event, value = await raw_object_event(pipeline.settings, v2_body(source="unforeseen"))
        store = normalizer.runtime.store
        real_get = store.get
        calls = 0

        async def get_failing_once(key: str) -> bytes:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected: an error nobody classified")
            return await real_get(key)

        store.get = get_failing_once  # type: ignore[method-assign]
        reruns = metrics.normalizer_batch_reruns_total.labels("RuntimeError")
        before = reruns._value.get()
        topic = pipeline.settings.ingest_topic_for("2")
        await normalizer.process_until_done([Message(topic, 0, 0, value)])

    assert calls == 2, "the batch ran again after the error"
    assert reruns._value.get() == before + 1
    await wait_canonical(db, [event["record_id"]])
    stage = await _stage(db, event["record_id"])
    assert stage["status"] == "succeeded"
