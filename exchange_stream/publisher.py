"""One Kafka producer per worker, started lazily so a worker can start while Kafka is down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from exchange_stream.config import Settings


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
        """Send ``(topic, key, value)`` messages and wait until Kafka acknowledged all of them."""
        producer = await self._ensure()
        futures = [await producer.send(t, value=v, key=k) for t, k, v in messages]
        await asyncio.gather(*futures)

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        await self.send_many([(topic, key, value)])

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
