"""data-quality on the real database: each planted problem is found, a clean source shows none.

Problems are planted with SQL under a source of their own, and the job runs with ``--source``:
the database is shared with the rest of the session, whose rows are none of this test's concern.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from exchange_stream.infra import metrics
from exchange_stream.ops.data_quality import CHECKS, NAME
from exchange_stream.ops.framework import local_context, run_here
from exchange_stream.ops.registry import JOBS
from tests.jobs_support import fresh_source, insert_canonical, remove_source, run_jobs_cli

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


S3_DOWN = ("failed", "raw_object", "S3Unavailable", True)


@pytest.fixture(scope="module")
async def planted(db: asyncpg.Pool):
    """One of each problem under one source, next to rows that are fine or just under a
    threshold; yields the source and the record ids each check must list."""
    source = fresh_source("dq")
    await insert_canonical(db, source, 3)
    (no_token,) = await insert_canonical(db, source, 1, token=False)
    (unknown_kind,) = await insert_canonical(db, source, 1, kind="prescription")
    (kind_mismatch,) = await insert_canonical(db, source, 1, normalized_kind="lab_result")

    stuck_written = await _manifest(db, source, "written", 7200)
    stuck_enqueued = await _manifest(db, source, "enqueued", 7200)
    recent_enqueued = await _manifest(db, source, "enqueued", 120)
    await _manifest(db, source, "canonicalized", 7200)

    dlq_mapping = await _manifest(db, source, "enqueued", 0)
    await _attempts(
        db, dlq_mapping, [("dlq_published", "mapping", "UnmappablePayload", False)], 3600
    )
    dlq_after_retries = await _manifest(db, source, "enqueued", 0)
    await _attempts(
        db,
        dlq_after_retries,
        [S3_DOWN, S3_DOWN, ("dlq_published", "raw_object", "S3Unavailable", True)],
        600,
    )
    flaky = await _manifest(db, source, "canonicalized", 0)
    await _attempts(db, flaky, [S3_DOWN, S3_DOWN, ("succeeded", None, None, None)], 300)
    failed_once = await _manifest(db, source, "canonicalized", 0)
    await _attempts(db, failed_once, [S3_DOWN, ("succeeded", None, None, None)], 300)
    old_dlq = await _manifest(db, source, "enqueued", 0)
    await _attempts(
        db, old_dlq, [("dlq_published", "mapping", "UnmappablePayload", False)], 3 * 86400
    )
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
        {"stage": "mapping", "type": "UnmappablePayload", "count": 1},
        {"stage": "raw_object", "type": "S3Unavailable", "count": 1},
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
    assert summary["dlq_by_stage_type"][0] == {
        "stage": "mapping",
        "type": "UnmappablePayload",
        "count": 2,
    }


async def test_text_output_is_a_table_naming_the_records(planted: dict) -> None:
    run = await run_jobs_cli("run", NAME, "--source", planted["source"])
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "9 finding(s)" in out
    assert "check" in out and "count" in out
    for check in CHECKS:
        assert check in out
    assert "UnmappablePayload" in out and "S3Unavailable" in out
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
