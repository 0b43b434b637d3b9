"""One Kafka producer per worker, started lazily so a worker can start while Kafka is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber, ProducerFenced

from exchange_stream.infra.config import Settings

log = logging.getLogger(__name__)

# Errors an idempotent aiokafka producer never recovers from: it keeps sending sequence numbers the
# broker refuses. OutOfOrderSequenceNumber follows a broker restart under load
# (tests/faults/test_kafka_restart.py); a new producer (a new producer id) starts afresh.
_FATAL = (OutOfOrderSequenceNumber, ProducerFenced)
_STOP_TIMEOUT_S = 10.0


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
                    linger_ms=1,
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
