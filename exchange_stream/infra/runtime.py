"""Process-wide resources (Postgres pools, raw store, export store, Kafka publisher) as one
service started before the app, and the probes that tell whether each dependency answers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import asyncpg
import mode
from aiokafka import AIOKafkaClient

from exchange_stream.infra import metrics
from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.export_store import ExportStore, open_export_store
from exchange_stream.infra.kafka import Publisher
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import RawStore, open_store

PROBE_TIMEOUT_S = 3.0
LAG_PROBE_S = 0.05
STARTUP_SETTLE_S = 10.0
GC_YOUNG_THRESHOLD = 10_000
DEPENDENCIES = ("postgres", "kafka", "s3")


class NotStarted(RuntimeError):
    """A resource was used before the runtime started."""


class Runtime(mode.Service):
    """Owns the pools, the S3 clients (raw objects, exports) and the Kafka publisher; agents,
    views and the relay borrow them.

    Three Postgres pools: ``pool`` serves ingest and the other requests that write (ingest
    holds a connection across its S3 write, so a burst can take them all), ``read_pool`` the
    read API (a burst of GraphQL statements must never leave ingest waiting, nor the other way
    round), ``work_pool`` the background stages and operations (normalizer, relay, control
    plane), which a burst of requests must never leave waiting."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._work_pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._store: RawStore | None = None
        self._export_store: ExportStore | None = None
        self._stack = contextlib.AsyncExitStack()
        self.publisher = Publisher(settings, client_id=f"{settings.app_id}-publisher")
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._pool = await create_pool(self.settings, max_size=self.settings.pg_pool_size)
        self._work_pool = await create_pool(
            self.settings, max_size=self.settings.pg_work_pool_size, batch_work=True
        )
        self._read_pool = await create_pool(self.settings, max_size=self.settings.pg_read_pool_size)
        self._store = await self._stack.enter_async_context(
            open_store(self.settings, recent_bytes=self.settings.raw_cache_mb << 20)
        )
        self._export_store = await self._stack.enter_async_context(open_export_store(self.settings))

    async def on_stop(self) -> None:
        await self.publisher.stop()
        await self._stack.aclose()
        for pool in (self._pool, self._work_pool, self._read_pool):
            if pool is not None:
                await pool.close()
        self._pool = self._work_pool = self._read_pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise NotStarted("postgres pool")
        return self._pool

    @property
    def work_pool(self) -> asyncpg.Pool:
        if self._work_pool is None:
            raise NotStarted("postgres work pool")
        return self._work_pool

    @property
    def read_pool(self) -> asyncpg.Pool:
        if self._read_pool is None:
            raise NotStarted("postgres read pool")
        return self._read_pool

    @property
    def store(self) -> RawStore:
        if self._store is None:
            raise NotStarted("raw store")
        return self._store

    @property
    def export_store(self) -> ExportStore:
        """The bulk exports' bucket: the export runs write it, downloads stream from it."""
        if self._export_store is None:
            raise NotStarted("export store")
        return self._export_store

    @mode.Service.task
    async def _freeze_startup_objects(self) -> None:
        """Once the worker has settled, move everything alive to the permanent generation: a
        full collection then walks only what requests made since, which took it from 40-60 ms
        to a few ms under load (a full collection runs every second or so), and young
        collections run less often."""
        await self.sleep(STARTUP_SETTLE_S)
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    @mode.Service.task
    async def _watch_loop_lag(self) -> None:
        """How late a short timer fires: the longest CPU slice that held the event loop since
        the last probe (plus any wait for a core), as ``event_loop_lag_seconds``."""
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            start = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            metrics.event_loop_lag_seconds.observe(max(0.0, loop.time() - start - LAG_PROBE_S))

    async def probe(self, dependency: str) -> None:
        """Raise unless ``dependency`` (one of ``DEPENDENCIES``) answers in time."""
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await _PROBES[dependency](self)


async def _probe_postgres(runtime: Runtime) -> None:
    async with runtime.work_pool.acquire(timeout=PROBE_TIMEOUT_S) as conn:
        await conn.fetchval(q("health_ping"))


async def _probe_kafka(runtime: Runtime) -> None:
    # A fresh client per check: bootstrapping is a real metadata round trip to a broker.
    client = AIOKafkaClient(
        bootstrap_servers=runtime.settings.broker_list,
        request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
    )
    try:
        await client.bootstrap()
    finally:
        await client.close()


async def _probe_s3(runtime: Runtime) -> None:
    await runtime.store.exists_bucket()


_PROBES = {"postgres": _probe_postgres, "kafka": _probe_kafka, "s3": _probe_s3}
