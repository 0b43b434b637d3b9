"""``materialize-patient-index``: canonical rows into ``derived_patient_record_index``.

Order: pages of canonical rows by ``(insert_xid, record_id)``, the id of the inserting
transaction then the record id, read only up to the horizon below which every transaction has
finished (migration 0004). No row can later appear behind the cursor, so rows that arrive
during a run are never skipped: they are ahead of the cursor and the next batch or run takes
them. A run ends once the horizon has passed every transaction that committed before the run
began (waiting up to ``horizon_wait_s`` for older transactions still open), so a successful run
has indexed every row that was canonical when it started.

Each batch is one statement (``patient_index_batch``: the page, the upsert of new or changed
rows, the counts) plus the checkpoint update, in one transaction that holds the checkpoint row
locked. A crash loses at most the batch in flight; the next run resumes from the last commit.
The checkpoint persists between runs, so a run only reads what is new since the last one;
``from_start`` rescans everything, rewrites rows that differ from canonical and drops index rows
whose canonical row is gone (the repair ``verify`` points to).

Checkpoint (``job_checkpoints.checkpoint``)::

    {"version": 1,
     "cursor": {"insert_xid": "<xid8 as text>", "record_id": "<uuid>"},
     "totals": {"batches": n, "scanned": n, "inserted": n, "updated": n, "skipped_no_token": n}}

``totals`` count since the cursor was last started from the beginning (``from_start``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from exchange_stream.infra.sql import q
from exchange_stream.ops.checkpoint import Checkpoint
from exchange_stream.ops.framework import Operation, OpsContext, ParamsInvalid, ProgressFn

NAME = "materialize-patient-index"
START_CURSOR = {"insert_xid": "0", "record_id": str(uuid.UUID(int=0))}
SAMPLE_IDS = 20
# Verify findings; the first three are gaps (the index is wrong), the others are not.
GAP_FINDINGS = ("missing", "orphaned", "mismatched")
OTHER_FINDINGS = ("pending", "unindexable_no_token")
_HORIZON_POLL_S = 0.2


def initial_checkpoint() -> dict[str, Any]:
    return {
        "version": 1,
        "cursor": dict(START_CURSOR),
        "totals": {"batches": 0, "scanned": 0, "inserted": 0, "updated": 0, "skipped_no_token": 0},
    }


def advanced(checkpoint: dict[str, Any], batch: asyncpg.Record) -> dict[str, Any]:
    """The checkpoint after ``batch`` (a ``patient_index_batch`` row with at least one row)."""
    totals = dict(checkpoint.get("totals") or initial_checkpoint()["totals"])
    totals["batches"] += 1
    totals["scanned"] += batch["scanned"]
    totals["inserted"] += batch["new_rows"]
    totals["updated"] += batch["changed_rows"]
    totals["skipped_no_token"] += batch["skipped_no_token"]
    return {
        "version": 1,
        "cursor": {
            "insert_xid": batch["last_insert_xid"],
            "record_id": str(batch["last_record_id"]),
        },
        "totals": totals,
    }


def _cursor_args(cursor: dict[str, Any]) -> tuple[str, uuid.UUID]:
    return cursor["insert_xid"], uuid.UUID(cursor["record_id"])


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Materialize (or, with ``dry_run``, preview) the index; with ``verify``, check it."""
    if params["verify"]:
        return await verify(ctx.pool, params)
    return await materialize(ctx.pool, params, progress)


async def materialize(
    pool: asyncpg.Pool, params: dict[str, Any], progress: ProgressFn
) -> dict[str, Any]:
    """Index canonical rows after the checkpoint, batch by batch (see the module docstring)."""
    dry_run: bool = params["dry_run"]
    batch_size: int = params["batch_size"]
    checkpoint = Checkpoint(pool, NAME)
    if dry_run:
        stored = None if params["from_start"] else await checkpoint.read()
        cursor = (stored or initial_checkpoint())["cursor"]
    else:
        if params["from_start"]:
            await checkpoint.reset(initial_checkpoint())
        cursor = (await checkpoint.ensure(initial_checkpoint()))["cursor"]
    started_from = dict(cursor)
    run_start_xid = int(await pool.fetchval(q("jobs_xid_next")))
    total = await pool.fetchval(q("patient_index_remaining"), *_cursor_args(cursor))

    started = time.monotonic()
    counts = {"batches": 0, "scanned": 0, "new": 0, "changed": 0, "written": 0, "no_token": 0}
    sample: list[str] = []
    waiting_since: float | None = None
    horizon_timed_out = False
    while True:
        if dry_run:
            batch = await pool.fetchrow(
                q("patient_index_batch"), *_cursor_args(cursor), batch_size, True
            )
        else:
            async with checkpoint.batch() as tx:
                # The locked checkpoint, not our own last cursor: another run may have moved it.
                cursor = tx.checkpoint["cursor"]
                batch = await tx.conn.fetchrow(
                    q("patient_index_batch"), *_cursor_args(cursor), batch_size, False
                )
                if batch["scanned"]:
                    await tx.advance(advanced(tx.checkpoint, batch))
        if batch["scanned"]:
            cursor = {
                "insert_xid": batch["last_insert_xid"],
                "record_id": str(batch["last_record_id"]),
            }
            counts["batches"] += 1
            counts["scanned"] += batch["scanned"]
            counts["new"] += batch["new_rows"]
            counts["changed"] += batch["changed_rows"]
            counts["written"] += batch["written"]
            counts["no_token"] += batch["skipped_no_token"]
            if dry_run and len(sample) < SAMPLE_IDS:
                sample += [str(r) for r in (batch["record_ids"] or [])][: SAMPLE_IDS - len(sample)]
            elapsed = time.monotonic() - started
            await progress(
                {
                    "phase": "dry_run" if dry_run else "indexing",
                    "done": counts["scanned"],
                    "total": max(total, counts["scanned"]),
                    "batches": counts["batches"],
                    ("would_write" if dry_run else "written"): (
                        counts["new"] + counts["changed"] if dry_run else counts["written"]
                    ),
                    "rows_per_s": round(counts["scanned"] / elapsed) if elapsed > 0 else 0,
                }
            )
        if batch["scanned"] == batch_size:
            if params["pause_ms"]:
                await asyncio.sleep(params["pause_ms"] / 1000)
            continue
        # Drained up to the horizon. Once it has passed every transaction id assigned before
        # the run began, every row committed before the run is behind the cursor.
        if int(batch["horizon"]) >= run_start_xid:
            break
        now = time.monotonic()
        waiting_since = waiting_since or now
        if now - waiting_since >= params["horizon_wait_s"]:
            horizon_timed_out = True
            break
        await asyncio.sleep(_HORIZON_POLL_S)

    orphans = 0
    if params["from_start"]:
        if dry_run:
            orphans = await pool.fetchval(q("patient_index_orphans_count"))
        else:
            status = await pool.execute(q("patient_index_orphans_delete"))
            orphans = int(status.split()[-1])
    elapsed = time.monotonic() - started
    pending = await pool.fetchval(q("patient_index_remaining"), *_cursor_args(cursor))
    summary: dict[str, Any] = {
        "mode": "dry_run" if dry_run else "run",
        "batch_size": batch_size,
        "from_start": params["from_start"],
        "batches": counts["batches"],
        "scanned": counts["scanned"],
        "skipped_no_token": counts["no_token"],
        "started_from": started_from,
        "cursor": cursor,
        "pending": pending,
        "horizon_wait_timed_out": horizon_timed_out,
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(counts["scanned"] / elapsed) if elapsed > 0 else 0,
    }
    # A dry run wrote nothing: it reports what it would write, never a count of writes.
    if dry_run:
        summary["would_insert"] = counts["new"]
        summary["would_update"] = counts["changed"]
        summary["would_remove_orphans"] = orphans
        summary["sample_record_ids"] = sample
    else:
        summary["inserted"] = counts["new"]
        summary["updated"] = counts["changed"]
        summary["written"] = counts["written"]
        summary["orphans_removed"] = orphans
    return summary


async def verify(pool: asyncpg.Pool, params: dict[str, Any]) -> dict[str, Any]:
    """Compare the index with canonical rows (one snapshot); write nothing.

    ``ok`` is false when the index has gaps: canonical rows the checkpoint has passed but the
    index lacks (``missing``), index rows without a canonical row (``orphaned``), or rows that
    differ (``mismatched``). Rows ahead of the checkpoint are ``pending``, the next run's work,
    and canonical rows without a token cannot be indexed; neither is a gap.
    """
    source: str | None = params.get("source")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(q("jobs_checkpoint_get"), NAME)
        cursor = row["checkpoint"]["cursor"] if row else dict(START_CURSOR)
        findings = await conn.fetch(
            q("patient_index_verify"), *_cursor_args(cursor), source, params["list_limit"]
        )
        counts = await conn.fetchrow(q("patient_index_counts"), source)
    found = {f["finding"]: f for f in findings}
    summary: dict[str, Any] = {
        "mode": "verify",
        "source": source,
        "cursor": cursor,
        "canonical_rows": counts["canonical_rows"],
        "index_rows": counts["index_rows"],
    }
    for name in GAP_FINDINGS + OTHER_FINDINGS:
        f = found.get(name)
        summary[name] = {
            "count": f["count"] if f else 0,
            "record_ids": [str(r) for r in f["record_ids"]] if f else [],
        }
    summary["gaps"] = sum(summary[name]["count"] for name in GAP_FINDINGS)
    summary["ok"] = summary["gaps"] == 0
    return summary


def _check(params: dict[str, Any]) -> None:
    if params["dry_run"] and params["verify"]:
        raise ParamsInvalid("dry_run and verify exclude each other")
    if params.get("source") is not None and not params["verify"]:
        raise ParamsInvalid("source only applies to verify (the index covers every source)")
    if params["from_start"] and params["verify"]:
        raise ParamsInvalid("from_start does not apply to verify")


OPERATION = Operation(
    name=NAME,
    cli=("jobs", "run", NAME),
    summary="fill derived_patient_record_index from canonical rows, checkpointed",
    run=run,
    check=_check,
    job=True,
)
