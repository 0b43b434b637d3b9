"""Every Kafka topic, declared once: its name setting, who consumes it, whether the stack makes it.

The ingested and DLQ topics follow the formats of ``core.formats``. All topics have
``TOPIC_PARTITIONS`` partitions (Kafka partitions are the unit of parallelism of workers).
"""

from __future__ import annotations

import logging
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
TOPICS: tuple[Topic, ...] = (
    *(
        Topic(f"ingested.{f.label}", f.topic, "the normalizer agent (see KAFKA_TOPICS)")
        for f in FORMATS
    ),
    *(Topic(f"dlq.{f.label}", f.dlq_topic, "dlq redrive, an operation") for f in FORMATS),
    CONTROL,
    CONTROL_RESULTS,
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
