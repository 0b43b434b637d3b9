"""The Postgres connection pool, and the errors that mean Postgres is not answering."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson

from exchange_stream.infra.config import Settings

# Errors that mean "Postgres is not answering", as opposed to a bug in a statement.
POSTGRES_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # A pooled connection whose server went away mid-restart: "protocol is in the failed state".
    asyncpg.exceptions.InternalClientError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as text; orjson does the (de)serialisation on both sides.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
        format="text",
    )


async def _keep_connection(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is. asyncpg's default reset costs one round trip per
    release (UNLISTEN, RESET ALL, advisory unlock); pooled connections here never change session
    state: every lock is transaction-scoped and LISTEN uses its own connection."""


# Batch statements (the normalizer's, the relay's, the operations') join arrays of ids against
# tables that may grow fast. asyncpg prepares every statement, and after five runs Postgres may
# keep one generic plan for it; a generic plan made while the tables were small (a new database)
# scans them whole for every batch, and stays until an autoanalyze replaces it, minutes later.
# bench/end_to_end.py on a new database at 300 req/s: 202→canonical p99 5.7 s with Postgres at
# 1.2 cores, against 84 ms with a plan made for each run. Planning a batch statement costs far
# less than a record, so the pools of batch work plan every statement for its arguments.
CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}


async def create_pool(
    settings: Settings, *, min_size: int = 0, max_size: int = 20, batch_work: bool = False
) -> asyncpg.Pool:
    """A pool that connects lazily: a worker starts, and reports unready, while Postgres is down.
    ``batch_work``: every statement is planned for its arguments (``CUSTOM_PLANS``), unless
    ``PG_BATCH_CUSTOM_PLANS`` is off."""
    return await asyncpg.create_pool(
        settings.dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_connection,
        command_timeout=30,
        timeout=5,
        max_inactive_connection_lifetime=300,
        server_settings=CUSTOM_PLANS if batch_work and settings.pg_batch_custom_plans else None,
    )
