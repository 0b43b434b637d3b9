"""How far the normalizer is behind the front door, and whether ingest sheds load because of it.

The backlog is the number of accepted records not yet taken by the normalizer: outbox rows not
yet published, plus the lag of the worker's consumer group on the ingested topics (each
partition's end offset less the group's committed offset; a partition the group never committed
counts from its first offset). Every worker samples it every ``INGEST_BACKLOG_SAMPLE_MS`` with
one count through the outbox's partial index and two Kafka requests, whatever the load, so the
figure is the whole group's, not the partitions this worker happens to hold.

When the last sample is over ``INGEST_MAX_BACKLOG``, ingest answers 503 with ``Retry-After``
before it reads the body (``web/ingest.py``): nothing is written, and the client's retry with the
same key works once the normalizer has caught up. An accepted request waits for nothing but its
own writes, and a refused one costs the worker almost nothing, so the normalizer gets the
machine back. Committed offsets move at the group's commit interval (a few seconds), so the
figure runs up to that many seconds of traffic ahead of the truth: the limit is meant to be
tens of seconds of traffic. A sample that fails (Kafka or Postgres not answering) leaves the
backlog unknown, and an unknown backlog never sheds: outages have their own 503s.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.core.formats import FORMATS
from exchange_stream.infra import metrics
from exchange_stream.infra.config import Settings
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.sql import q

log = logging.getLogger(__name__)

# The ingested topics' partitions are described again this often (a topic may gain some).
PARTITIONS_REFRESH_S = 60.0


def group_lag(
    end: Mapping[TopicPartition, int],
    beginning: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int],
) -> int:
    """Messages the group has not committed past, over every partition of ``end``."""
    lag = 0
    for tp, last in end.items():
        done = committed.get(tp, -1)
        if done < 0:
            done = beginning.get(tp, 0)
        lag += max(0, last - done)
    return lag


def retry_after_s(backlog: int, limit: int, drain_per_s: float, floor_s: int, cap_s: int) -> int:
    """Seconds until the backlog should be back under ``limit`` at the drain rate last seen,
    between ``floor_s`` and ``cap_s`` (``cap_s`` when the normalizer is not draining)."""
    excess = backlog - limit
    if excess <= 0:
        return floor_s
    if drain_per_s <= 0:
        return cap_s
    return max(floor_s, min(cap_s, math.ceil(excess / drain_per_s)))


class Backlog(mode.Service):
    """Samples the backlog (see the module docstring); ``shedding()`` is ingest's answer."""

    def __init__(self, settings: Settings, runtime: Runtime, **kwargs: Any) -> None:
        self.settings = settings
        self.runtime = runtime
        self.limit = settings.ingest_max_backlog
        self.value: int | None = None
        self.drain_per_s = 0.0
        self._topics = sorted({settings.ingest_topic_for(f.version) for f in FORMATS})
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._partitions_at = 0.0
        super().__init__(**kwargs)

    def shedding(self) -> bool:
        """Whether ingest should refuse new requests now."""
        return self.limit > 0 and self.value is not None and self.value > self.limit

    def retry_after(self) -> str:
        """The ``Retry-After`` value of a shed request, in seconds."""
        s = self.settings
        return str(
            retry_after_s(
                self.value or 0,
                self.limit,
                self.drain_per_s,
                s.ingest_shed_retry_after_min_s,
                s.ingest_shed_retry_after_max_s,
            )
        )

    async def on_stop(self) -> None:
        await self._close()

    @mode.Service.task
    async def _sample_loop(self) -> None:
        if self.limit <= 0:
            return  # shedding is off: nothing to measure
        interval = self.settings.ingest_backlog_sample_ms / 1000
        last_committed: tuple[float, int] | None = None
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            try:
                async with asyncio.timeout(max(2.0, 4 * interval)):
                    pending, lag, committed_total = await self._sample()
                now = loop.time()
                if last_committed is not None and now > last_committed[0]:
                    rate = (committed_total - last_committed[1]) / (now - last_committed[0])
                    # Smoothed: commits come in steps of the group's commit interval.
                    self.drain_per_s = 0.7 * self.drain_per_s + 0.3 * max(0.0, rate)
                last_committed = (now, committed_total)
                self.value = pending + lag
                metrics.ingest_backlog.set(self.value)
            except Exception as exc:
                self.value = None
                last_committed = None
                log.warning(
                    "could not measure the normalizer's backlog",
                    extra={"fields": {"error_type": type(exc).__name__}},
                )
                await self._close()
            await self.sleep(interval)

    async def _sample(self) -> tuple[int, int, int]:
        """(outbox rows pending, the group's lag, the sum of its committed offsets)."""
        async with self.runtime.work_pool.acquire() as conn:
            pending = (await conn.fetchrow(q("outbox_pending_count")))["pending"]
        admin, consumer = await self._clients()
        now = asyncio.get_running_loop().time()
        if not self._partitions or now - self._partitions_at > PARTITIONS_REFRESH_S:
            described = await admin.describe_topics(self._topics)
            self._partitions = [
                TopicPartition(t["topic"], p["partition"])
                for t in described
                for p in t["partitions"]
            ]
            self._partitions_at = now
        tps = self._partitions
        if not tps:
            return pending, 0, 0
        offsets = await admin.list_consumer_group_offsets(self.settings.app_id, partitions=tps)
        committed = {tp: om.offset for tp, om in offsets.items() if om is not None}
        end = await consumer.end_offsets(tps)
        beginning = await consumer.beginning_offsets(tps)
        done = sum(max(0, v) for v in committed.values())
        return pending, group_lag(end, beginning, committed), done

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            brokers = self.settings.broker_list
            admin = AIOKafkaAdminClient(bootstrap_servers=brokers, client_id="backlog")
            consumer = AIOKafkaConsumer(
                bootstrap_servers=brokers, group_id=None, client_id="backlog"
            )
            await admin.start()
            try:
                await consumer.start()
            except BaseException:
                await admin.close()
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()
