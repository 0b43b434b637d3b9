"""data-quality on the real database: each planted problem is found, a clean source shows none.

Problems are planted under a source of their own, and the job runs with ``--source``: the database
is shared with the rest of the session, whose rows are none of this test's concern. Ledger
problems (dead-lettered records, transient failures) are made by the normalizer itself, so the
job is tested against the stages and error types production writes.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from exchange_stream.infra import metrics
from exchange_stream.ops.data_quality import CHECKS, NAME
from exchange_stream.ops.framework import local_context, run_here
from exchange_stream.ops.registry import JOBS
from tests.jobs_support import (
    PipelineRecords,
    age_attempts,
    canonical_ids,
    fresh_source,
    insert_canonical,
    pipeline_records,
    remove_source,
    run_jobs_cli,
)
from tests.payloads import v2_body
from tests.support import raw_object_event

pytestmark = pytest.mark.usefixtures("migrated")


async def _manifest(
    db: asyncpg.Pool, source: str, state: str, age_s: float, record_id: uuid.UUID | None = None
) -> uuid.UUID:
    record_id = record_id or uuid.uuid4()
    await db.execute(
        "INSERT INTO raw_object_manifest (record_id, source, bucket, object_key, sha256, "
        "size_bytes, state, created_at, updated_at) VALUES ($1, $2, 'raw-objects', "
        "$5, repeat('0', 64), 10, $3, "
        "now() - make_interval(secs => $4), now() - make_interval(secs => $4))",
        record_id,
        source,
        state,
        float(age_s),
        f"{source}/{record_id}.json",
    )
    return record_id


async def _attempts(
    db: asyncpg.Pool, record_id: uuid.UUID, outcomes: list[tuple], age_s: float
) -> None:
    """Ledger attempts 1..n: (status, error_stage, error_type, transient) each."""
    for n, (status, stage, error_type, transient) in enumerate(outcomes, start=1):
        await db.execute(
            "INSERT INTO processing_attempts (record_id, pipeline, attempt_no, status, "
            "started_at, ended_at, error_type, error_message, error_stage, transient) "
            "VALUES ($1, 'normalize', $2, $3, now() - make_interval(secs => $4), "
            "now() - make_interval(secs => $4), $5, 'planted by a test', $6, $7)",
            record_id,
            n,
            status,
            float(age_s),
            error_type,
            stage,
            transient,
        )


async def _through_the_normalizer(
    db: asyncpg.Pool, pipeline: PipelineRecords, source: str, body: dict, **kind: Any
) -> uuid.UUID:
    """One record of ``source`` (a manifest row 'enqueued', as ingest leaves it) through the
    normalizer. ``kind``: ``missing=True`` for a raw object that is never stored, or
    ``fails_first=n`` for one stored only after ``n`` failed attempts; else it is stored."""
    stored = not kind.get("missing") and not kind.get("fails_first")
    event, value = await raw_object_event(pipeline.settings, body, store_it=stored)
    record_id = uuid.UUID(event["record_id"])
    await _manifest(db, source, "enqueued", 0, record_id)
    if kind.get("fails_first"):
        key = event["raw_object"]["key"]
        await pipeline.process_failing_first(
            value, record_id, kind["fails_first"], (key, orjson.dumps(body))
        )
    else:
        await pipeline.process(value)
    return record_id


@pytest.fixture(scope="module")
async def planted(db: asyncpg.Pool):
    """One of each problem under one source, next to rows that are fine or just under a
    threshold; yields the source and the record ids each check must list.

    Canonical rows the normalizer would never write (no token, a kind outside the contract) are
    planted with SQL. Every ledger row is the normalizer's own: each record goes through it, so
    its stages and error types are what production writes; only their age is set afterwards."""
    source = fresh_source("dq")
    await insert_canonical(db, source, 3)
    (no_token,) = await insert_canonical(db, source, 1, token=False)
    (unknown_kind,) = await insert_canonical(db, source, 1, kind="prescription")
    (kind_mismatch,) = await insert_canonical(db, source, 1, normalized_kind="lab_result")

    stuck_written = await _manifest(db, source, "written", 7200)
    stuck_enqueued = await _manifest(db, source, "enqueued", 7200)
    recent_enqueued = await _manifest(db, source, "enqueued", 120)
    await _manifest(db, source, "canonicalized", 7200)

    good = v2_body(source=source)
    payload = {k: v for k, v in good["payload"].items() if k != "encounter_id"}
    unmappable = {**good, "payload": payload}
    async with pipeline_records(db) as pipeline:
        # A payload the mapping refuses: permanent, dead-lettered at once.
        dlq_mapping = await _through_the_normalizer(db, pipeline, source, unmappable)
        # A raw object that never appears: transient, MAX_ATTEMPTS tries, then the DLQ.
        dlq_after_retries = await _through_the_normalizer(
            db, pipeline, source, v2_body(source=source), missing=True
        )
        flaky = await _through_the_normalizer(
            db, pipeline, source, v2_body(source=source), fails_first=2
        )
        failed_once = await _through_the_normalizer(
            db, pipeline, source, v2_body(source=source), fails_first=1
        )
        old_dlq = await _through_the_normalizer(db, pipeline, source, unmappable)
    for record_id, age_s in (
        (dlq_mapping, 3600),
        (dlq_after_retries, 600),
        (flaky, 300),
        (failed_once, 300),
        (old_dlq, 3 * 86400),
    ):
        await age_attempts(db, record_id, age_s)
    try:
        yield {
            "source": source,
            "expected": {
                "canonical_without_token": [no_token],
                "canonical_unknown_kind": [unknown_kind],
                "canonical_kind_mismatch": [kind_mismatch],
                "manifest_stuck_written": [stuck_written],
                "manifest_stuck_enqueued": [stuck_enqueued],
                # most recent first
                "dlq_published": [dlq_after_retries, dlq_mapping],
                "repeated_transient_failures": [dlq_after_retries, flaky],
            },
            "recent_enqueued": recent_enqueued,
            "failed_once": failed_once,
            "old_dlq": old_dlq,
        }
    finally:
        await remove_source(db, source)


async def test_the_planted_ledger_is_what_the_normalizer_wrote(
    db: asyncpg.Pool, planted: dict
) -> None:
    """The premise of the checks below: each record's attempts, as the pipeline left them."""

    async def ledger(record_id: uuid.UUID) -> list[tuple]:
        rows = await db.fetch(
            "SELECT status, error_stage, error_type, transient FROM processing_attempts "
            "WHERE record_id = $1 ORDER BY attempt_no",
            record_id,
        )
        return [tuple(r) for r in rows]

    missing = ("failed", "fetch", "RawObjectMissing", True)
    succeeded = ("succeeded", None, None, None)
    dlq_after_retries, dlq_mapping = planted["expected"]["dlq_published"]
    flaky = planted["expected"]["repeated_transient_failures"][1]
    assert await ledger(dlq_mapping) == [("dlq_published", "map", "MappingError", False)]
    assert await ledger(planted["old_dlq"]) == [("dlq_published", "map", "MappingError", False)]
    assert await ledger(dlq_after_retries) == [
        missing,
        missing,
        ("dlq_published", "fetch", "RawObjectMissing", True),
    ]
    assert await ledger(flaky) == [missing, missing, succeeded]
    assert await ledger(planted["failed_once"]) == [missing, succeeded]
    canonical = await canonical_ids(db, planted["source"])
    assert {flaky, planted["failed_once"]} <= canonical
    assert not {dlq_mapping, dlq_after_retries, planted["old_dlq"]} & canonical


def _listed(summary: dict, check: str) -> list[str]:
    return summary["checks"][check]["record_ids"]


async def test_data_quality_finds_each_planted_problem(planted: dict) -> None:
    run = await run_jobs_cli("run", NAME, "--source", planted["source"], "--output", "json")
    assert run.returncode == 0, run.stderr
    summary = run.result
    assert run.doc["status"] == "succeeded"
    for check, ids in planted["expected"].items():
        assert summary["checks"][check]["count"] == len(ids), check
        assert _listed(summary, check) == [str(i) for i in ids], check
    assert summary["issues_total"] == 9 and summary["clean"] is False
    assert summary["dlq_by_stage_type"] == [
        {"stage": "fetch", "type": "RawObjectMissing", "count": 1},
        {"stage": "map", "type": "MappingError", "count": 1},
    ]
    failures = summary["checks"]["repeated_transient_failures"]["failures"]
    assert failures == {
        str(i): n
        for i, n in zip(planted["expected"]["repeated_transient_failures"], (3, 2), strict=True)
    }


async def test_thresholds_move_what_counts(planted: dict) -> None:
    run = await run_jobs_cli(
        "run",
        NAME,
        "--source",
        planted["source"],
        "--stuck-after-s",
        "60",
        "--min-transient-failures",
        "1",
        "--window-s",
        str(4 * 86400),
        "--output",
        "json",
    )
    assert run.returncode == 0, run.stderr
    summary = run.result
    assert str(planted["recent_enqueued"]) in _listed(summary, "manifest_stuck_enqueued")
    assert str(planted["failed_once"]) in _listed(summary, "repeated_transient_failures")
    assert str(planted["old_dlq"]) in _listed(summary, "dlq_published")
    assert summary["dlq_by_stage_type"][0] == {"stage": "map", "type": "MappingError", "count": 2}


async def test_text_output_is_a_table_naming_the_records(planted: dict) -> None:
    run = await run_jobs_cli("run", NAME, "--source", planted["source"])
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "9 finding(s)" in out
    assert "check" in out and "count" in out
    for check in CHECKS:
        assert check in out
    assert "MappingError" in out and "RawObjectMissing" in out
    for ids in planted["expected"].values():
        for rid in ids:
            assert str(rid) in out


async def test_data_quality_is_zero_for_a_clean_source(db: asyncpg.Pool) -> None:
    source = fresh_source("dq-clean")
    try:
        for record_id in await insert_canonical(db, source, 5):
            await _manifest(db, source, "canonicalized", 7200, record_id)
            await _attempts(db, record_id, [("succeeded", None, None, None)], 7200)
        run = await run_jobs_cli("run", NAME, "--source", source, "--output", "json")
        assert run.returncode == 0, run.stderr
        summary = run.result
        assert summary["issues_total"] == 0 and summary["clean"] is True
        assert all(c["count"] == 0 and c["record_ids"] == [] for c in summary["checks"].values())
        assert summary["dlq_by_stage_type"] == []
    finally:
        await remove_source(db, source)


async def test_full_run_is_recorded_and_sets_the_gauges(settings, planted: dict) -> None:
    async with local_context(settings) as ctx:
        seen: list[dict] = []

        async def on_progress(progress: dict) -> None:
            seen.append(progress)

        outcome = await run_here(ctx, JOBS[NAME], JOBS[NAME].params({}), on_progress)
        assert outcome.status == "succeeded", outcome.error
        row = await ctx.pool.fetchrow(
            "SELECT status, progress, result FROM job_runs WHERE job_run_id = $1",
            outcome.job_run_id,
        )
    assert row["status"] == "succeeded"
    assert row["result"]["checks"] == outcome.summary["checks"]
    assert row["progress"]["phase"] == "done"
    assert seen, "no progress reported"
    for check, ids in planted["expected"].items():
        found = outcome.summary["checks"][check]["count"]
        assert found >= len(ids), check
        assert metrics.REGISTRY.get_sample_value("data_quality_issues", {"check": check}) == found
    assert b'data_quality_issues{check="canonical_without_token"}' in metrics.render()
