"""Every Kafka topic, declared once: its name setting, who consumes it, whether the stack makes it.

The ingested and DLQ topics follow the formats of ``core.formats``. All topics are created with
``TOPIC_PARTITIONS`` partitions (Kafka partitions are the unit of parallelism of workers); an
operator raises them later with ``exchange-stream topics --raise-partitions`` (``cli/topics.py``
says what that means for keyed topics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exchange_stream.core.formats import FORMATS, TopicName

if TYPE_CHECKING:
    import faust

    from exchange_stream.infra.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topic:
    """One topic: its role in the system, its name setting and default, its consumers."""

    role: str
    name: TopicName
    consumed_by: str
    created_by_stack: bool = True


CONTROL = Topic(
    "control",
    TopicName("TOPIC_CONTROL", "exchange.control"),
    "the control agent of every worker",
)
# Named after the control topic (``<TOPIC_CONTROL>.results``), so it has no setting of its own.
CONTROL_RESULTS = Topic(
    "control.results",
    TopicName("", "exchange.control.results"),
    "the CLI, following the commands it sent",
)
# Bulk exports to run (ops/export.py): one message per export, keyed by its id, so exports spread
# over the workers and one that loses its worker is taken over by another.
EXPORTS = Topic(
    "exports",
    TopicName("TOPIC_EXPORTS", "exchange.exports"),
    "the export agent of every worker",
)
TOPICS: tuple[Topic, ...] = (
    *(
        Topic(f"ingested.{f.label}", f.topic, "the normalizer agent (see KAFKA_TOPICS)")
        for f in FORMATS
    ),
    *(Topic(f"dlq.{f.label}", f.dlq_topic, "dlq redrive, an operation") for f in FORMATS),
    CONTROL,
    CONTROL_RESULTS,
    EXPORTS,
)


def ingested_role(version: str) -> str:
    return f"ingested.v{version}"


def dlq_role(version: str) -> str:
    return f"dlq.v{version}"


def raw_topic(app: faust.App, settings: Settings, name: str) -> faust.TopicT:
    """A Faust topic of raw bytes (keys and values are decoded by their consumers)."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every missing topic the stack makes, with ``TOPIC_PARTITIONS`` partitions; return
    those created."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    wanted = [settings.topic(t.role) for t in TOPICS if t.created_by_stack]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, settings.topic_partitions, 1) for t in missing]
                )
            except TopicAlreadyExistsError:
                # Another worker created them between our listing and our request.
                pass
        for topic in missing:
            log.info("created topic", extra={"fields": {"topic": topic}})
        return missing
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicState:
    """What the broker says of one of the stack's topics (partitions None: it does not exist)."""

    name: str
    role: str
    consumed_by: str
    partitions: int | None
    replication_factor: int | None

    @property
    def exists(self) -> bool:
        return self.partitions is not None


async def describe_topics(settings: Settings) -> list[TopicState]:
    """Every topic the stack creates (``Settings.all_topics()``), as the broker has it now."""
    from aiokafka.admin import AIOKafkaAdminClient

    ours = [(settings.topic(t.role), t) for t in TOPICS if t.created_by_stack]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        # Only existing topics are described: a metadata request for a missing topic may create
        # it on a broker that auto-creates topics.
        names = [name for name, _ in ours if name in existing]
        described = {d["topic"]: d for d in await admin.describe_topics(names)} if names else {}
    finally:
        await admin.close()
    states = []
    for name, topic in ours:
        parts = described.get(name, {}).get("partitions") or []
        states.append(
            TopicState(
                name=name,
                role=topic.role,
                consumed_by=topic.consumed_by,
                partitions=len(parts) if parts else None,
                replication_factor=len(parts[0]["replicas"]) if parts else None,
            )
        )
    return states


async def raise_partitions(
    settings: Settings, counts: dict[str, int], *, settle_s: float = 15.0
) -> None:
    """Raise each topic of ``counts`` to that many partitions, and return once the broker's
    metadata shows them (Kafka adds partitions, never removes them: the caller checks that each
    count is higher than the topic's)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    if not counts:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_partitions({name: NewPartitions(n) for name, n in counts.items()})
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            described = await admin.describe_topics(list(counts))
            if all(len(d["partitions"]) >= counts[d["topic"]] for d in described):
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    for name, n in counts.items():
        log.info("raised partitions", extra={"fields": {"topic": name, "partitions": n}})
