"""The Postgres pools on the real server: batch work plans every statement for its arguments
(why: ``exchange_stream/infra/db.py``; the effect is measured by bench/end_to_end.py on a new
database)."""

from __future__ import annotations

import asyncpg

from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool


async def _plan_cache_mode(pool: asyncpg.Pool) -> str:
    async with pool.acquire() as conn:
        return await conn.fetchval("SHOW plan_cache_mode")


async def test_batch_work_pools_never_keep_a_generic_plan_and_request_pools_may(
    migrated: None, settings: Settings
) -> None:
    batch = await create_pool(settings, max_size=2, batch_work=True)
    requests = await create_pool(settings, max_size=2)
    try:
        assert await _plan_cache_mode(batch) == "force_custom_plan"
        assert await _plan_cache_mode(requests) == "auto"
    finally:
        await batch.close()
        await requests.close()
