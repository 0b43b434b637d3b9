"""One Kafka producer per worker, started lazily so a worker can start while Kafka is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    BrokerResponseError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownTopicOrPartitionError,
)

from exchange_stream.infra.config import Settings

log = logging.getLogger(__name__)

# Errors an idempotent aiokafka producer never recovers from: it keeps sending sequence numbers the
# broker refuses. OutOfOrderSequenceNumber follows a broker restart under load
# (tests/faults/test_kafka_restart.py); a new producer (a new producer id) starts afresh.
_FATAL = (OutOfOrderSequenceNumber, ProducerFenced)
_STOP_TIMEOUT_S = 10.0
# How long a look at the cluster's topics may take: a broker that answers does so in milliseconds,
# and one that does not is an outage, which the caller handles as a whole.
METADATA_TIMEOUT_S = 5.0


# The error type recorded for a message whose topic the cluster does not have (Kafka's own name).
UNKNOWN_TOPIC = UnknownTopicOrPartitionError.__name__


def producer_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the producer, not of a message (it is replaced)."""
    return isinstance(exc, _FATAL)


def refused_message(exc: BaseException) -> bool:
    """Whether ``exc`` refuses one message for what it is (too large, a topic that is invalid or
    not allowed), so that sending it again soon would fail alike; an outage, a timeout or a failed
    producer is not that."""
    return (
        isinstance(exc, BrokerResponseError) and not exc.retriable and not isinstance(exc, _FATAL)
    )


class Publisher:
    """Idempotent, acks=all producer shared by the outbox relay and the normalizer's DLQ."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.broker_list,
                    acks="all",
                    enable_idempotence=True,
                    # A few milliseconds let one produce request carry what the relay and the
                    # DLQ send together; each request is a socket write and a round trip.
                    linger_ms=5,
                    request_timeout_ms=15000,
                    client_id=self.client_id,
                )
                try:
                    await producer.start()
                except Exception:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def send_many(self, messages: Iterable[tuple[str, bytes, bytes]]) -> None:
        """Send ``(topic, key, value)`` messages and wait until Kafka acknowledged all of them.
        A producer that failed fatally is replaced on the next call (a new producer id, so new
        sequence numbers); the caller retries, and at-least-once delivery is kept."""
        producer = await self._ensure()
        try:
            futures = [await producer.send(t, value=v, key=k) for t, k, v in messages]
            await asyncio.gather(*futures)
        except _FATAL as exc:
            log.warning(
                "kafka producer failed for good; replacing it",
                extra={"fields": {"error_type": type(exc).__name__}},
            )
            await self._discard(producer)
            raise

    async def missing_topics(
        self, topics: Iterable[str], timeout_s: float = METADATA_TIMEOUT_S
    ) -> set[str]:
        """The topics among ``topics`` that Kafka does not have.

        ``send`` to a topic the cluster lacks waits for its metadata for the whole request
        timeout, and our brokers never create topics on demand; asking first keeps one bad topic
        from stalling the messages sent with it. Topics the producer already knows cost nothing;
        for the others one listing of the cluster's topics is fetched (a listing, not a request
        naming them: that would create them on a broker that creates topics on demand). A broker
        that does not answer within ``timeout_s`` raises: that is an outage, not a missing topic.
        """
        producer = await self._ensure()
        cluster = producer.client.cluster
        unknown = {t for t in topics if cluster.partitions_for_topic(t) is None}
        if not unknown:
            return set()
        listing = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
        return unknown - listing.topics(exclude_internal_topics=False)

    async def send_each(
        self, messages: Sequence[tuple[str, bytes, bytes]]
    ) -> list[BaseException | None]:
        """Send ``(topic, key, value)`` messages and wait for each outcome: ``None`` where Kafka
        acknowledged the message, its error where it did not, in the order given. Unlike
        ``send_many`` one failed message fails nothing else. A producer that failed fatally is
        replaced, as in ``send_many``."""
        producer = await self._ensure()
        outcomes: list[BaseException | None] = [None] * len(messages)
        refused: dict[str, BaseException] = {}
        sent: list[tuple[int, asyncio.Future]] = []
        for i, (topic, key, value) in enumerate(messages):
            if topic in refused:
                # send() of that topic already failed (it may have waited out the metadata
                # timeout); the topic's other messages fail alike instead of waiting again.
                outcomes[i] = refused[topic]
                continue
            try:
                sent.append((i, await producer.send(topic, value=value, key=key)))
            except Exception as exc:
                outcomes[i] = refused[topic] = exc
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (i, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[i] = result
        fatal = next((o for o in outcomes if isinstance(o, _FATAL)), None)
        if fatal is not None:
            log.warning(
                "kafka producer failed for good; replacing it",
                extra={"fields": {"error_type": type(fatal).__name__}},
            )
            await self._discard(producer)
        return outcomes

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        async with self._lock:
            if self._producer is producer:
                self._producer = None
        # The broker answered, so the flush in stop() is short; bounded all the same.
        try:
            await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)
        except Exception:
            log.warning("discarded producer did not stop cleanly", exc_info=True)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        await self.send_many([(topic, key, value)])

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
