"""Process-wide resources (Postgres pool, raw store) as one service started before the app."""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg
import mode

from exchange_stream.config import Settings
from exchange_stream.db import create_pool
from exchange_stream.publisher import Publisher
from exchange_stream.storage import RawStore, open_store


class NotStarted(RuntimeError):
    """A resource was used before the runtime started."""


class Runtime(mode.Service):
    """Owns the pool, the S3 client and the Kafka publisher; agents, views and the relay
    borrow them."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._store: RawStore | None = None
        self._stack = contextlib.AsyncExitStack()
        self.publisher = Publisher(settings, client_id=f"{settings.app_id}-publisher")
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._pool = await create_pool(self.settings, max_size=self.settings.pg_pool_size)
        self._store = await self._stack.enter_async_context(open_store(self.settings))

    async def on_stop(self) -> None:
        await self.publisher.stop()
        await self._stack.aclose()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise NotStarted("postgres pool")
        return self._pool

    @property
    def store(self) -> RawStore:
        if self._store is None:
            raise NotStarted("raw store")
        return self._store
