"""The Postgres connection pool."""

from __future__ import annotations

import asyncpg
import orjson

from exchange_stream.config import Settings


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as text; orjson does the (de)serialisation on both sides.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
        format="text",
    )


async def create_pool(settings: Settings, *, min_size: int = 0, max_size: int = 20) -> asyncpg.Pool:
    """A pool that connects lazily: a worker starts, and reports unready, while Postgres is down."""
    return await asyncpg.create_pool(
        settings.dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        timeout=5,
        max_inactive_connection_lifetime=300,
    )
