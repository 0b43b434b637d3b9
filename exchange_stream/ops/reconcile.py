"""Reconcile: compare raw objects, the manifest and canonical rows of a source.

The S3 listing is loaded page by page into a temporary table, so every comparison is one SQL
statement whatever the source's size. With ``repair``, what can still be processed is re-enqueued
through the outbox (the relay's guarantees hold), what cannot is marked ``orphaned``, and every
action is written to ``audit_log`` in the same transaction as the change it describes.
Outbox rows of the source that failed to publish (``outbox_stuck``) are reported with their
topic, attempts and error type, and never repaired: see ``REPORT_ONLY``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg

from exchange_stream.core.events import IngestedEvent, record_id_from_key, replay_correlation_id
from exchange_stream.core.timefmt import rfc3339
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import ObjectMissing
from exchange_stream.ops.framework import Operation, OpsContext, ProgressFn
from exchange_stream.ops.replay import SAMPLE, replay_event

CATEGORIES = (
    "raw_without_manifest",
    "manifest_written_not_enqueued",
    "enqueued_without_canonical",
    "canonical_without_manifest",
    "manifest_without_raw",
    "state_mismatch",
    "outbox_stuck",
)
# Findings that ``repair`` leaves alone. An outbox row that does not publish needs its topic
# created or its cause fixed, which is an operator's job, and the relay retries it by itself once
# that is done; re-enqueuing it would only add a second row that fails alike.
REPORT_ONLY = frozenset({"outbox_stuck"})
ACTOR = "reconcile"
_LOAD_PAGE = 1000


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """The ``reconcile`` operation (params per contracts/commands/reconcile.json)."""
    source = params["source"]
    async with ctx.pool.acquire() as conn:
        await conn.execute(q("reconcile_create_seen"))
        try:
            listed, unrecognised = await _load_listing(ctx, conn, source, progress)
            findings = await _findings(conn, source, float(params.get("older_than_s", 60)))
        finally:
            await conn.execute(q("reconcile_drop_seen"))
    summary: dict[str, Any] = {
        "source": source,
        "raw_objects": listed,
        "unrecognised_keys": unrecognised,
        "counts": {c: len(findings[c]) for c in CATEGORIES},
        "records": {
            c: [str(r["record_id"]) for r in findings[c]][: SAMPLE * 20] for c in CATEGORIES
        },
        "outbox_stuck_rows": [_outbox_row(r) for r in findings["outbox_stuck"][: SAMPLE * 20]],
        "repair": bool(params.get("repair")),
    }
    if params.get("repair"):
        summary["actions"] = await _repair(ctx, source, findings, progress)
    return summary


async def _load_listing(
    ctx: OpsContext, conn: asyncpg.Connection, source: str, progress: ProgressFn
) -> tuple[int, int]:
    listed = unrecognised = 0
    ids: list[uuid.UUID] = []
    keys: list[str] = []
    sizes: list[int] = []
    modified: list = []

    async def flush() -> None:
        if ids:
            await conn.execute(q("reconcile_load_seen"), ids, keys, sizes, modified)
            for column in (ids, keys, sizes, modified):
                column.clear()

    async for key, size, last_modified in ctx.store.list_objects(f"{source}/"):
        rid = record_id_from_key(key)
        if rid is None:
            unrecognised += 1
            continue
        listed += 1
        ids.append(uuid.UUID(rid))
        keys.append(key)
        sizes.append(size)
        modified.append(last_modified)
        if len(ids) >= _LOAD_PAGE:
            await flush()
            await progress({"source": source, "phase": "listing", "raw_objects": listed})
    await flush()
    return listed, unrecognised


async def _findings(
    conn: asyncpg.Connection, source: str, older_than_s: float
) -> dict[str, list[asyncpg.Record]]:
    return {c: await conn.fetch(q(f"reconcile_{c}"), source, older_than_s) for c in CATEGORIES}


def _outbox_row(row: asyncpg.Record) -> dict[str, Any]:
    """One stuck outbox row as reported: where it goes, how often it failed and with what type."""
    due = row["next_attempt_at"]
    return {
        "outbox_id": row["outbox_id"],
        "record_id": row["record_id"],
        "topic": row["topic"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "next_attempt_at": rfc3339(due) if due is not None else None,
    }


async def _repair(
    ctx: OpsContext, source: str, findings: dict[str, list[asyncpg.Record]], progress: ProgressFn
) -> dict[str, int]:
    actions: dict[str, int] = {}
    done = 0
    for category in CATEGORIES:
        if category in REPORT_ONLY:
            continue
        for row in findings[category]:
            action = await _repair_one(ctx, category, row)
            actions[action] = actions.get(action, 0) + 1
            done += 1
            await progress({"source": source, "phase": "repair", "repaired": done})
    return actions


async def _repair_one(ctx: OpsContext, category: str, row: asyncpg.Record) -> str:
    """Fix one finding; return the action taken (also written to audit_log)."""
    record_id = row["record_id"]
    key = row["object_key"]
    details: dict[str, Any] = {"category": category}
    if category == "manifest_without_raw":
        return await _apply(ctx, record_id, "orphaned", None, details, row)
    if category == "canonical_without_manifest":
        if row["size_bytes"] is None:
            details["reason"] = "raw object missing"
            await _audit(ctx.pool, record_id, "reconcile.report_only", details)
            return "report_only"
        return await _apply(ctx, record_id, "canonicalized", None, details, row)
    if category == "state_mismatch" and row["has_canonical"]:
        return await _apply(ctx, record_id, "canonicalized", None, details, row)
    try:
        raw = await ctx.store.get(key)
    except ObjectMissing:
        details["reason"] = "raw object missing"
        return await _apply(ctx, record_id, "orphaned", None, details, row)
    if category == "raw_without_manifest":
        # The partner never got a 202 for this object; if its retry was accepted, the same bytes
        # are already a record, and enqueuing this one too would make a second canonical row.
        twin = await ctx.pool.fetchval(
            q("reconcile_same_body_accepted"),
            row["source"],
            hashlib.sha256(raw).hexdigest(),
            record_id,
        )
        if twin is not None:
            details.update(reason="duplicate of an accepted record", accepted_record_id=str(twin))
            return await _apply(ctx, record_id, "orphaned", None, details, row, raw=raw)
    made = replay_event(key, raw, ctx.store.bucket, "auto", row["created_at"])
    if isinstance(made, str):
        details["reason"] = made
        return await _apply(ctx, record_id, "orphaned", None, details, row, raw=raw)
    return await _apply(ctx, record_id, "enqueued", made, details, row, raw=raw)


async def _apply(
    ctx: OpsContext,
    record_id: uuid.UUID,
    state: str,
    enqueue: IngestedEvent | None,
    details: dict[str, Any],
    row: asyncpg.Record,
    raw: bytes | None = None,
) -> str:
    """Set the manifest state (creating the row when missing), enqueue, audit: one transaction."""
    action = {
        "enqueued": "reenqueued",
        "orphaned": "orphaned",
        "canonicalized": "marked_canonicalized",
    }[state]
    sha = row["sha256"]
    size = row["size_bytes"]
    if raw is not None:
        sha, size = hashlib.sha256(raw).hexdigest(), len(raw)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            q("reconcile_upsert_manifest"),
            record_id,
            row["source"],
            ctx.store.bucket,
            row["object_key"],
            sha or "",
            size or 0,
            state,
        )
        if enqueue is not None:
            await conn.execute(
                q("outbox_enqueue"),
                [ctx.settings.ingest_topic_for(enqueue.version)],
                [str(record_id)],
                [enqueue.to_dict()],
            )
        await conn.execute(
            q("reconcile_audit"),
            replay_correlation_id(record_id),
            ACTOR,
            f"reconcile.{action}",
            str(record_id),
            "done",
            details,
        )
    return action


async def _audit(pool: asyncpg.Pool, record_id: uuid.UUID, action: str, details: dict) -> None:
    await pool.execute(
        q("reconcile_audit"),
        replay_correlation_id(record_id),
        ACTOR,
        action,
        str(record_id),
        "done",
        details,
    )


OPERATION = Operation(
    name="reconcile",
    cli=("reconcile",),
    summary="compare raw objects, manifest and canonical rows of a source",
    run=run,
)
