"""Opt-outs: record and remove them (``opt-outs add|remove``, ``POST /v1/opt-outs``).

What arrives here is already tokenized (``core/optouts.py``): each identity's master token and
its match tokens, never the identity. Recording one excludes its whole person from every read
and export from its commit on (migration 0016's ``opt_out_add``, under the linking lock, so a
record linked at the same moment is excluded too); removing one gives the person back, unless
another opt-out reaches it. Each opt-out is one ``audit_log`` row (its id, never a token).

A batch is one transaction: all of its identities are recorded, or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from exchange_stream.core.optouts import OptOutTokens
from exchange_stream.infra.sql import q
from exchange_stream.ops.framework import Operation, OpsContext, ProgressFn


async def record_opt_outs(
    pool: asyncpg.Pool,
    identities: Sequence[OptOutTokens],
    actor: str,
    correlation_id: str | None = None,
) -> int:
    """Record ``identities`` in one transaction; return how many were given."""
    async with pool.acquire() as conn, conn.transaction():
        for identity in identities:
            rules, tokens = identity.rows()
            await conn.fetchval(
                q("opt_out_add"), identity.patient_token, rules, tokens, actor, correlation_id
            )
    return len(identities)


async def remove_opt_outs(
    pool: asyncpg.Pool,
    identities: Sequence[OptOutTokens],
    actor: str,
    correlation_id: str | None = None,
) -> int:
    """Remove the opt-outs of ``identities`` in one transaction; return how many were given
    (never how many existed: that would say who had opted out)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(q("opt_out_lock"))
        for identity in identities:
            await conn.fetchval(q("opt_out_remove"), identity.patient_token, actor, correlation_id)
    return len(identities)


def _identities(params: dict[str, Any]) -> list[OptOutTokens]:
    return [OptOutTokens.from_params(doc) for doc in params["identities"]]


async def add(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    given = await record_opt_outs(ctx.pool, _identities(params), ctx.actor, ctx.correlation_id)
    return {"accepted": given, "opt_outs": await ctx.pool.fetchval(q("opt_out_count"))}


async def remove(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    given = await remove_opt_outs(ctx.pool, _identities(params), ctx.actor, ctx.correlation_id)
    return {"accepted": given, "opt_outs": await ctx.pool.fetchval(q("opt_out_count"))}


OPERATIONS = (
    Operation(
        "opt_outs_add",
        ("opt-outs", "add"),
        "record opt-outs: their persons are left out of every read and export",
        add,
    ),
    Operation(
        "opt_outs_remove",
        ("opt-outs", "remove"),
        "remove opt-outs: their persons are read and exported again",
        remove,
    ),
)
