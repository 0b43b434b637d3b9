"""The Kafka topics of SPEC §5, and their creation through the admin API."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from exchange_stream.config import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every missing topic with ``TOPIC_PARTITIONS`` partitions; return those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.all_topics() if t not in existing]
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
