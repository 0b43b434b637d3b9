"""Replay: re-emit ``record.ingested`` events for the raw objects of a source.

Events go through the outbox, so the relay's guarantees hold and a replay commits or not as a
whole page. The normalizer's ``ON CONFLICT`` makes a replay of existing records a no-op, so a
second replay adds no rows. ``verify`` only checks: raw objects of the source that have no
canonical row.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson

from exchange_stream.core import formats
from exchange_stream.core.events import (
    IngestedEvent,
    RawObject,
    new_event,
    record_id_from_key,
    replay_correlation_id,
)
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import ObjectMissing
from exchange_stream.ops.framework import Operation, OpsContext, ProgressFn

PAGE = 200
SAMPLE = 50  # record ids listed per category in a summary; counts are always complete


def replay_event(
    key: str, raw: bytes, bucket: str, emit_version: str, occurred_at: datetime | None
) -> IngestedEvent | str:
    """The event to re-emit for one raw object, or the reason it cannot be: the object's format
    is inferred from its body (``formats.infer``), never guessed; ``emit_version`` ``v1``/``v2``
    emits only objects of that format."""
    record_id = record_id_from_key(key)
    if record_id is None:
        return "unrecognised_key"
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unparseable"
    fmt = formats.infer(body)
    if fmt is None:
        return "uninferable"
    if emit_version != "auto" and formats.for_label(emit_version) is not fmt:
        # A body of the other shape would only reach the DLQ as that version.
        return "incompatible"
    kind, hint = fmt.kind_and_hint(body)
    return new_event(
        fmt,
        record_id=record_id,
        source=key.split("/", 1)[0],
        raw_object=RawObject(bucket, key, hashlib.sha256(raw).hexdigest(), len(raw)),
        correlation_id=replay_correlation_id(record_id),
        record_kind=kind,
        schema_hint=hint,
        occurred_at=occurred_at,
    )


async def _pages(ctx: OpsContext, prefix: str) -> AsyncIterator[list[str]]:
    page: list[str] = []
    async for key, _ in ctx.store.list_keys(prefix):
        page.append(key)
        if len(page) == PAGE:
            yield page
            page = []
    if page:
        yield page


async def _fetch_all(ctx: OpsContext, keys: list[str]) -> list[bytes | None]:
    sem = asyncio.Semaphore(16)

    async def one(key: str) -> bytes | None:
        async with sem:
            try:
                return await ctx.store.get(key)
            except ObjectMissing:
                return None

    return await asyncio.gather(*(one(k) for k in keys))


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """The ``replay`` operation (params per contracts/commands/replay.json). The summary counts
    ``emitted`` events, or with ``dry_run`` those it ``would_emit``, and why the others were
    not: ``uninferable``, ``unparseable``, ``incompatible``, ``unrecognised_key``, ``vanished``."""
    if params.get("verify"):
        return await verify(ctx, params, progress)
    source, limit = params["source"], params.get("limit")
    rate = params.get("rate_per_sec")
    dry_run = bool(params.get("dry_run"))
    # A dry run emits nothing: its count is what it would emit, and is named so.
    emit_key = "would_emit" if dry_run else "emitted"
    counts = {
        "listed": 0,
        emit_key: 0,
        "uninferable": 0,
        "unparseable": 0,
        "incompatible": 0,
        "unrecognised_key": 0,
        "vanished": 0,
    }
    samples: dict[str, list[str]] = {}
    started = time.monotonic()
    async for keys in _pages(ctx, f"{source}/{params.get('prefix', '')}"):
        if limit is not None:
            keys = keys[: max(0, limit - counts["listed"])]
            if not keys:
                break
        counts["listed"] += len(keys)
        bodies = await _fetch_all(ctx, keys)
        ids = [record_id_from_key(k) for k in keys]
        created = await _created_at(ctx, [i for i in ids if i])
        outbox: list[tuple[str, str, dict[str, Any]]] = []
        for key, raw, rid in zip(keys, bodies, ids, strict=True):
            if raw is None:
                counts["vanished"] += 1
                continue
            made = replay_event(
                key,
                raw,
                ctx.store.bucket,
                params["emit_version"],
                created.get(rid) if rid else None,
            )
            if isinstance(made, str):
                counts[made] += 1
                samples.setdefault(made, [])
                if len(samples[made]) < SAMPLE:
                    samples[made].append(key)
                continue
            outbox.append(
                (ctx.settings.ingest_topic_for(made.version), str(made.record_id), made.to_dict())
            )
        if outbox and not dry_run:
            await ctx.pool.execute(
                q("outbox_enqueue"),
                [t for t, _, _ in outbox],
                [k for _, k, _ in outbox],
                [e for _, _, e in outbox],
            )
        counts[emit_key] += len(outbox)
        await progress({"source": source, **counts, "dry_run": dry_run})
        if rate:
            # Pace whole pages so that emitted / elapsed stays at or under the rate (a dry run
            # is paced alike, so that it takes as long as the replay it previews).
            ahead = counts[emit_key] / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return {
        "source": source,
        "dry_run": dry_run,
        "emit_version": params["emit_version"],
        **counts,
        "samples": samples,
    }


async def _created_at(ctx: OpsContext, record_ids: list[str]) -> dict[str, datetime]:
    """When each record was first accepted (its manifest row), so replays keep ingested_at."""
    if not record_ids:
        return {}
    rows = await ctx.pool.fetch(q("replay_manifest_created"), [uuid.UUID(r) for r in record_ids])
    return {str(r["record_id"]): r["created_at"] for r in rows}


async def verify(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Raw objects of the source without a canonical row; ``gaps`` > 0 means incomplete."""
    source = params["source"]
    raw_objects, missing, unrecognised = 0, [], 0
    async for keys in _pages(ctx, f"{source}/{params.get('prefix', '')}"):
        ids = {record_id_from_key(k) for k in keys}
        unrecognised += sum(1 for i in ids if i is None)
        ids.discard(None)
        raw_objects += len(ids)
        present = await ctx.pool.fetch(q("replay_canonical_present"), [uuid.UUID(i) for i in ids])
        have = {str(r["record_id"]) for r in present}
        missing += sorted(ids - have)
        await progress({"source": source, "raw_objects": raw_objects, "gaps": len(missing)})
    return {
        "source": source,
        "verify": True,
        "raw_objects": raw_objects,
        "gaps": len(missing),
        "missing_record_ids": missing[: SAMPLE * 20],
        "unrecognised_keys": unrecognised,
    }


def _check(params: dict[str, Any]) -> None:
    if params["emit_version"] != "auto":
        formats.check_label(params["emit_version"], "emit_version")


OPERATION = Operation(
    name="replay",
    cli=("replay",),
    summary="re-emit ingested events for a source's raw objects",
    run=run,
    check=_check,
)
