"""``link-persons``: persons for the canonical records written before linking existed.

The normalizer links each new canonical record in its transaction; records canonical before
migration 0015 have no match tokens and no person. Canonical rows hold no identity, so this job
reads each one's raw object, derives its match attributes and tokens exactly as the normalizer
does (``core/matching.py``, ``core/match_tokens.py``) and links the page with the same function
(``link_records``), so a record gets the person it would have got at arrival and the partition
does not depend on which of the two linked it.

Order: canonical rows without a person, by record id, a page of ``batch_size`` at a time. A page
is read, its raw objects fetched in parallel, and then linked in one transaction that also moves
the checkpoint (``job_checkpoints``) to the page's last record id: a killed run resumes after
the last committed page, and a record linked meanwhile by the normalizer (or another run) is left
as it is (``link_records`` skips records that have a person). A raw object that is gone or
unreadable still gets its record a person, alone (counted as ``no_identity``), so that every
canonical record belongs to one; a later run does not revisit it.

Checkpoint::

    {"version": 1, "cursor": "<record id>",
     "totals": {"batches": n, "linked": n, "no_identity": n}}
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from exchange_stream.core.formats import for_version
from exchange_stream.core.match_tokens import MatchKeys, linking_rows, match_tokens
from exchange_stream.core.matching import match_attributes
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import ObjectMissing
from exchange_stream.ops.checkpoint import Checkpoint
from exchange_stream.ops.framework import Operation, OpsContext, ProgressFn

NAME = "link-persons"
START = str(uuid.UUID(int=0))


def initial_checkpoint() -> dict[str, Any]:
    return {"version": 1, "cursor": START, "totals": {"batches": 0, "linked": 0, "no_identity": 0}}


def tokens_of_raw(raw: bytes, event_version: str, keys: MatchKeys) -> dict[str, bytes] | None:
    """The match tokens of a raw body as the normalizer derives them; None when it has no
    readable patient (then the record is a person of its own)."""
    fmt = for_version(event_version)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    patient = body.get("patient") if isinstance(body, dict) else None
    if fmt is None or not isinstance(patient, dict):
        return None
    return match_tokens(match_attributes(patient, fmt), keys)


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Link every record without a person, page by page (see the module docstring)."""
    keys = MatchKeys(ctx.settings.match_token_secret)
    checkpoint = Checkpoint(ctx.pool, NAME)
    if params["from_start"]:
        await checkpoint.reset(initial_checkpoint())
    cursor = uuid.UUID((await checkpoint.ensure(initial_checkpoint()))["cursor"])
    started_from = str(cursor)
    total = int(await ctx.pool.fetchval(q("link_backfill_remaining"), cursor))
    started = time.monotonic()
    counts = {"batches": 0, "linked": 0, "no_identity": 0}
    while True:
        page = await ctx.pool.fetch(q("link_backfill_page"), cursor, params["batch_size"])
        if not page:
            break
        raws = await asyncio.gather(
            *(_raw(ctx, r["raw_object_key"]) for r in page), return_exceptions=False
        )
        found: list[tuple[uuid.UUID, dict[str, bytes]]] = []
        for row, raw in zip(page, raws, strict=True):
            tokens_of = None if raw is None else tokens_of_raw(raw, row["event_version"], keys)
            if not tokens_of:
                counts["no_identity"] += 1
                continue
            found.append((row["record_id"], tokens_of))
        owners, rules, tokens = linking_rows(found)
        ids = [r["record_id"] for r in page]
        async with checkpoint.batch() as tx:
            await tx.conn.execute(q("link_records"), ids, owners, rules, tokens)
            totals = dict(tx.checkpoint.get("totals") or initial_checkpoint()["totals"])
            totals["batches"] += 1
            totals["linked"] += len(page)
            await tx.advance({"version": 1, "cursor": str(ids[-1]), "totals": totals})
        cursor = ids[-1]
        counts["batches"] += 1
        counts["linked"] += len(page)
        await progress({"done": counts["linked"], "total": total, "batches": counts["batches"]})
        if params["pause_ms"]:
            await asyncio.sleep(params["pause_ms"] / 1000)
    elapsed = time.monotonic() - started
    return {
        **counts,
        "batch_size": params["batch_size"],
        "started_from": started_from,
        "cursor": str(cursor),
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(counts["linked"] / elapsed) if elapsed > 0 else 0,
    }


async def _raw(ctx: OpsContext, key: str) -> bytes | None:
    try:
        return await ctx.store.get(key)
    except ObjectMissing:
        return None


OPERATION = Operation(
    name=NAME,
    cli=("jobs", "run", NAME),
    summary="give records written before linking their match tokens and person, checkpointed",
    run=run,
    job=True,
)
