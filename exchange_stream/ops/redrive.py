"""DLQ redrive: re-publish the original events of a version's DLQ to its ingested topic.

Progress through the DLQ is kept as the committed offsets of one consumer group, so each redrive
starts where the last one stopped and re-publishes a dead letter once; offsets are committed only
after the re-published events are acknowledged. The normalizer's idempotency makes a repeat
harmless. An unparseable dead letter has no original event to re-publish and is counted.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.core import formats
from exchange_stream.ops.framework import Operation, OperationFailed, OpsContext, ProgressFn

BATCH = 500


async def _partitions(brokers: list[str], topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """The ``dlq_redrive`` operation (params per contracts/commands/dlq_redrive.json)."""
    fmt = formats.for_label(params["version"])
    version = fmt.version
    limit = params.get("limit")
    settings = ctx.settings
    dlq_topic = settings.dlq_topic_for(version)
    target = settings.ingest_topic_for(version)
    tps = await _partitions(settings.broker_list, dlq_topic)
    if not tps:
        raise OperationFailed(f"topic {dlq_topic} does not exist")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.broker_list,
        group_id=f"{settings.app_id}-dlq-redrive-{fmt.label}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    counts = {"redriven": 0, "skipped_unparseable": 0}
    try:
        consumer.assign(tps)
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        # Only what was in the DLQ when the redrive began: events that fail again and come
        # back are for the next redrive, not an endless loop.
        end = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        while pending and (limit is None or counts["redriven"] < limit):
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=BATCH)
            out: list[tuple[str, bytes, bytes]] = []
            commit: dict[TopicPartition, int] = {}
            for tp, messages in batch.items():
                for msg in messages:
                    if msg.offset >= end[tp] or (
                        limit is not None and counts["redriven"] + len(out) >= limit
                    ):
                        break
                    commit[tp] = msg.offset + 1
                    original = _original_event(msg.value)
                    if original is None:
                        counts["skipped_unparseable"] += 1
                        continue
                    out.append(
                        (target, str(original["record_id"]).encode(), orjson.dumps(original))
                    )
            if out:
                await ctx.publisher.send_many(out)
                counts["redriven"] += len(out)
            if commit:
                await consumer.commit(commit)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp] or commit.get(tp, -1) >= end[tp]:
                    pending.discard(tp)
            await progress({"version": fmt.label, **counts})
        remaining = 0
        for tp in tps:
            remaining += end[tp] - (await consumer.committed(tp) or 0)
    finally:
        await consumer.stop()
    return {
        "version": fmt.label,
        "dlq_topic": dlq_topic,
        "target_topic": target,
        **counts,
        "remaining": max(0, remaining),
    }


def _original_event(value: bytes | None) -> dict[str, Any] | None:
    try:
        envelope = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    original = envelope.get("original_event") if isinstance(envelope, dict) else None
    if (
        not isinstance(original, dict)
        or original.get("unparseable_event")
        or ("record_id" not in original)
    ):
        return None
    return original


def _check(params: dict[str, Any]) -> None:
    formats.check_label(params["version"], "version")


OPERATION = Operation(
    name="dlq_redrive",
    cli=("dlq", "redrive"),
    summary="re-publish a version's dead letters to its topic",
    run=run,
    check=_check,
)
