"""One bad outbox row never holds back the others: a row for a topic Kafka does not have waits for
its retry, counted per topic and reported by reconcile, while the rows around it are published;
once the topic exists the relay publishes it by itself."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiohttp
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from exchange_stream.infra.config import Settings
from tests.payloads import new_key, v2_body
from tests.support import WorkerProcess, eventually, post_json, run_cli, wait_canonical

GOOD_RECORDS = 30


async def _row_failures(
    http: aiohttp.ClientSession, workers: list[WorkerProcess], topic: str
) -> float:
    """``outbox_row_failures_total{topic}`` summed over the workers: any relay may take the row."""
    total = 0.0
    for w in workers:
        async with http.get(f"{w.base_url}/metrics") as r:
            text = await r.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "outbox_row_failures_total"
                    and sample.labels.get("topic") == topic
                ):
                    total += sample.value
    return total


async def _ingest(http: aiohttp.ClientSession, worker: WorkerProcess, source: str) -> str:
    status, resp, _ = await post_json(
        http, f"{worker.base_url}/v2/ingest", v2_body(source=source), key=new_key()
    )
    assert status == 202, resp
    return resp["record_id"]


async def test_row_for_a_missing_topic_waits_while_the_others_reach_canonical(
    worker: WorkerProcess,
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    source = f"isolate-{uuid.uuid4().hex[:8]}"
    missing_topic = f"test.missing.{uuid.uuid4().hex[:8]}"
    bad_record = str(uuid.uuid4())
    workers = [worker, strict_worker]
    failures_before = await _row_failures(http, workers, missing_topic)
    # The event of a record of this source, sent to a topic the broker does not have (and does
    # not create: auto.create.topics.enable=false), committed before the good rows are ingested.
    bad_id = await db.fetchval(
        "INSERT INTO outbox_events (topic, key, payload) VALUES ($1, $2, $3) RETURNING id",
        missing_topic,
        bad_record,
        {"source": source, "record_id": bad_record, "event_version": "2"},
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        good = list(
            await asyncio.gather(*(_ingest(http, worker, source) for _ in range(GOOD_RECORDS)))
        )
        await wait_canonical(db, good)

        # One claim takes the bad row with good ones: its retry comes due in the very commit that
        # enqueues the good records' events again (as a replay would; consumers are idempotent).
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE outbox_events SET next_attempt_at = NULL WHERE id = $1", bad_id
            )
            again = await conn.fetch(
                "INSERT INTO outbox_events (topic, key, payload) "
                "SELECT topic, key, payload FROM outbox_events WHERE key = ANY($1) RETURNING id",
                good,
            )
        assert len(again) == GOOD_RECORDS

        async def again_published() -> bool:
            return (
                await db.fetchval(
                    "SELECT count(*) FROM outbox_events "
                    "WHERE id = ANY($1) AND published_at IS NULL",
                    [r["id"] for r in again],
                )
                == 0
            )

        await eventually(again_published, timeout=60)

        async def set_aside() -> bool:
            row = await db.fetchrow(
                "SELECT published_at, attempts, next_attempt_at > now() AS waiting "
                "FROM outbox_events WHERE id = $1",
                bad_id,
            )
            return row["published_at"] is None and row["attempts"] >= 1 and row["waiting"]

        await eventually(set_aside, timeout=30)
        row = await db.fetchrow("SELECT last_error FROM outbox_events WHERE id = $1", bad_id)
        assert row["last_error"] == "UnknownTopicOrPartitionError", "the type, never a message"

        async def counted() -> bool:
            return await _row_failures(http, workers, missing_topic) > failures_before

        await eventually(counted, timeout=30)

        async def manifests_settled() -> bool:
            states = {
                r["state"]
                for r in await db.fetch(
                    "SELECT state FROM raw_object_manifest WHERE source = $1", source
                )
            }
            return states == {"canonicalized"}

        await eventually(manifests_settled, timeout=30)
        code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0")
        assert code == 0, report
        result = report["result"]
        assert result["counts"]["outbox_stuck"] == 1, result
        assert result["records"]["outbox_stuck"] == [bad_record]
        (stuck,) = result["outbox_stuck_rows"]
        assert stuck["outbox_id"] == bad_id
        assert stuck["topic"] == missing_topic
        assert stuck["attempts"] >= 1
        assert stuck["last_error"] == "UnknownTopicOrPartitionError"
        others = {c: n for c, n in result["counts"].items() if c != "outbox_stuck"}
        assert set(others.values()) == {0}, others

        # Repair leaves the row to the relay: no action, no audit, no second outbox row.
        code, report = await run_cli(
            "reconcile", "--source", source, "--older-than-s", "0", "--repair"
        )
        assert code == 0, report
        assert report["result"]["actions"] == {}
        assert report["result"]["counts"]["outbox_stuck"] == 1
        assert (
            await db.fetchval("SELECT count(*) FROM outbox_events WHERE key = $1", bad_record) == 1
        )
        assert (
            await db.fetchval("SELECT count(*) FROM audit_log WHERE entity_id = $1", bad_record)
            == 0
        )

        # The operator creates the topic: the relay publishes the row at its next attempt, which
        # the row shows (its backoff doubles per attempt, so wait from that moment on).
        await admin.create_topics([NewTopic(missing_topic, 1, 1)])
        due_in = await db.fetchval(
            "SELECT greatest(0, extract(epoch FROM next_attempt_at - now()))::float8 "
            "FROM outbox_events WHERE id = $1",
            bad_id,
        )

        async def published() -> bool:
            return await db.fetchval(
                "SELECT published_at IS NOT NULL FROM outbox_events WHERE id = $1", bad_id
            )

        await eventually(published, timeout=due_in + 60)
        code, report = await run_cli("reconcile", "--source", source, "--older-than-s", "0")
        assert code == 0, report
        assert report["result"]["counts"]["outbox_stuck"] == 0
    finally:
        await db.execute("DELETE FROM outbox_events WHERE id = $1", bad_id)
        with contextlib.suppress(KafkaError):  # never created if the test failed before
            await admin.delete_topics([missing_topic])
        await admin.close()
