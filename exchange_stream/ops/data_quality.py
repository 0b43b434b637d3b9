"""``data-quality``: what an operator must look at, counted and listed.

Checks (each a count and at most ``list_limit`` record ids):

- ``canonical_without_token``: canonical rows whose ``patient_token`` is absent or not 64 hex
  characters; they cannot be indexed or linked to a patient.
- ``canonical_unknown_kind``: canonical rows whose ``record_kind`` is not encounter, claim or
  lab_result.
- ``canonical_kind_mismatch``: ``normalized->>'record_kind'`` disagrees with the column.
- ``manifest_stuck_written`` / ``manifest_stuck_enqueued``: manifest rows in that state for longer
  than ``stuck_after_s`` (the ingest or the normalizer did not finish them; see ``reconcile``).
- ``dlq_published``: records dead-lettered within ``window_s``, with the volume by stage and error
  type (from the ledger, ``processing_attempts``).
- ``repeated_transient_failures``: records with at least ``min_transient_failures`` transient
  failures among attempts started within ``window_s``.

It writes nothing but its run: the summary is the run's result, and without a ``source`` filter
the counts are also the ``data_quality_issues{check}`` gauges of the process that ran it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from exchange_stream.infra import metrics
from exchange_stream.infra.sql import q
from exchange_stream.ops.framework import Operation, OpsContext, ProgressFn

NAME = "data-quality"
CHECKS = {
    "canonical_without_token": "canonical rows without a valid patient token",
    "canonical_unknown_kind": "canonical rows with a record_kind outside the contract",
    "canonical_kind_mismatch": "normalized record_kind differs from the record_kind column",
    "manifest_stuck_written": "manifest rows stuck in 'written' (raw object without event)",
    "manifest_stuck_enqueued": "manifest rows stuck in 'enqueued' (event without canonical row)",
    "dlq_published": "records dead-lettered within the window",
    "repeated_transient_failures": "records with repeated transient failures within the window",
}


_STEPS = 4


async def _step(progress: ProgressFn, done: int, name: str) -> None:
    await progress({"phase": name, "done": done, "total": _STEPS})


def _empty() -> dict[str, dict[str, Any]]:
    return {
        name: {"count": 0, "record_ids": [], "description": description}
        for name, description in CHECKS.items()
    }


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Run every check; return the counts, the listed record ids and the DLQ breakdown."""
    pool = ctx.pool
    source: str | None = params.get("source")
    limit: int = params["list_limit"]
    window_s = float(params["window_s"])
    started = time.monotonic()
    checks = _empty()

    await _step(progress, 0, "canonical")
    for r in await pool.fetch(q("data_quality_canonical"), source, limit):
        checks[r["name"]].update(count=r["count"], record_ids=[str(x) for x in r["record_ids"]])

    await _step(progress, 1, "manifest")
    for r in await pool.fetch(
        q("data_quality_manifest_stuck"), source, float(params["stuck_after_s"]), limit
    ):
        checks[r["name"]].update(count=r["count"], record_ids=[str(x) for x in r["record_ids"]])

    await _step(progress, 2, "dlq")
    by_stage_type = [
        {"stage": r["stage"], "type": r["type"], "count": r["count"]}
        for r in await pool.fetch(q("data_quality_dlq_by_stage_type"), source, window_s)
    ]
    dlq = await pool.fetch(q("data_quality_dlq_records"), source, window_s, limit)
    checks["dlq_published"].update(
        count=dlq[0]["count"] if dlq else 0, record_ids=[str(r["record_id"]) for r in dlq]
    )

    await _step(progress, 3, "transient_failures")
    failing = await pool.fetch(
        q("data_quality_transient_failures"),
        source,
        window_s,
        params["min_transient_failures"],
        limit,
    )
    checks["repeated_transient_failures"].update(
        count=failing[0]["count"] if failing else 0,
        record_ids=[str(r["record_id"]) for r in failing],
        failures={str(r["record_id"]): r["failures"] for r in failing},
    )
    await _step(progress, _STEPS, "done")

    issues_total = sum(c["count"] for c in checks.values())
    if source is None:
        # A source-scoped run describes part of the data; only a full run sets the gauges.
        for name, check in checks.items():
            metrics.data_quality_issues.labels(check=name).set(check["count"])
        metrics.data_quality_checked_at.set(time.time())
    return {
        "source": source,
        "thresholds": {
            "stuck_after_s": params["stuck_after_s"],
            "window_s": params["window_s"],
            "min_transient_failures": params["min_transient_failures"],
        },
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "issues_total": issues_total,
        "clean": issues_total == 0,
        "checks": checks,
        "dlq_by_stage_type": by_stage_type,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


OPERATION = Operation(
    name=NAME,
    cli=("jobs", "run", NAME),
    summary="count and list canonical, manifest and ledger rows an operator must look at",
    run=run,
    job=True,
)
