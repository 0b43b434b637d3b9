"""materialize-patient-index on the real database: crash-safe, gap-free, idempotent, verifiable.

Other tests write canonical rows at the same time, so each test plants rows under a source of its
own and asserts on those rows; ``--verify --source`` checks one source.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from exchange_stream.ops.framework import ParamsInvalid
from exchange_stream.ops.patient_index import NAME, START_CURSOR
from exchange_stream.ops.registry import JOBS, RUN_JOB, resolve
from tests.jobs_support import (
    canonical_ids,
    fresh_source,
    index_rows,
    insert_canonical,
    remove_source,
    run_jobs_cli,
    start_jobs_cli,
)
from tests.support import eventually

pytestmark = pytest.mark.usefixtures("migrated")


@pytest.fixture
async def source(db: asyncpg.Pool):
    name = fresh_source("index")
    yield name
    await remove_source(db, name)


async def _catch_up() -> None:
    """Index whatever other tests left, so the next run's work is (mostly) this test's rows."""
    run = await run_jobs_cli("run", NAME, "--batch-size", "5000", "--output", "json")
    assert run.returncode == 0, run.stderr


async def _checkpoint(db: asyncpg.Pool) -> dict:
    return await db.fetchval("SELECT checkpoint FROM job_checkpoints WHERE job_name = $1", NAME)


async def _assert_index_equals_canonical(db: asyncpg.Pool, source: str) -> None:
    rows = await index_rows(db, source)
    ids = [r["record_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate index rows"
    assert set(ids) == await canonical_ids(db, source), "index differs from canonical rows"
    mismatched = await db.fetchval(
        "SELECT count(*) FROM derived_patient_record_index d JOIN canonical_records c "
        "USING (record_id) WHERE d.source = $1 "
        "AND d.patient_token IS DISTINCT FROM c.normalized->>'patient_token'",
        source,
    )
    assert mismatched == 0


async def test_sigkill_mid_run_then_rerun_indexes_every_row_exactly_once(
    db: asyncpg.Pool, source: str
) -> None:
    await _catch_up()
    planted = set(await insert_canonical(db, source, 400))
    started_at = await db.fetchval("SELECT now()")
    # The run stops half-way whatever the machine's speed: the batch that reaches the middle
    # record waits on an uncommitted index row of it, and the run is killed while it waits.
    middle = sorted(planted)[len(planted) // 2]
    async with db.acquire() as stall:
        held = stall.transaction()
        await held.start()
        try:
            await stall.execute(
                "INSERT INTO derived_patient_record_index (patient_token, record_id, source, "
                "event_version, record_kind, schema_hint, ingested_at, normalized_at) "
                "SELECT normalized->>'patient_token', record_id, source, event_version, "
                "record_kind, schema_hint, ingested_at, normalized_at FROM canonical_records "
                "WHERE record_id = $1",
                middle,
            )
            proc = await start_jobs_cli(
                "run", NAME, "--batch-size", "5", "--pause-ms", "10", "--output", "json"
            )
            try:

                async def waiting_mid_run() -> bool:
                    if proc.returncode is not None:
                        return True  # ended: asserted below
                    n = await db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE $1 = ANY(pg_blocking_pids(pid))",
                        stall.get_server_pid(),
                    )
                    return n > 0

                await eventually(waiting_mid_run, timeout=300)
                assert proc.returncode is None, "the run ended before the middle record"
            finally:
                proc.kill()
                await proc.wait()
        finally:
            await held.rollback()
    assert proc.returncode == -9

    # What the crash left: every batch is all or nothing, together with its checkpoint. Rows of
    # ours up to the cursor are indexed, rows after it are not.
    cursor = (await _checkpoint(db))["cursor"]
    split = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE behind AND d.record_id IS NULL) AS behind_missing,"
        "       count(*) FILTER (WHERE NOT behind AND d.record_id IS NOT NULL) AS ahead_indexed,"
        "       count(d.record_id) AS indexed "
        "FROM (SELECT record_id, (insert_xid, record_id) <= ($2::text::xid8, $3::uuid) AS behind"
        "      FROM canonical_records WHERE source = $1) c "
        "LEFT JOIN derived_patient_record_index d USING (record_id)",
        source,
        cursor["insert_xid"],
        uuid.UUID(cursor["record_id"]),
    )
    assert split["behind_missing"] == 0 and split["ahead_indexed"] == 0
    assert 0 < split["indexed"] < len(planted)
    killed = await db.fetchrow(
        "SELECT status, ended_at FROM job_runs WHERE job_name = $1 AND started_at >= $2 "
        "AND params->>'pause_ms' = '10' ORDER BY started_at DESC LIMIT 1",
        NAME,
        started_at,
    )
    assert killed["status"] == "running" and killed["ended_at"] is None

    rerun = await run_jobs_cli("run", NAME, "--batch-size", "50", "--output", "json")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.doc["status"] == "succeeded"
    assert rerun.result["started_from"] != START_CURSOR, "the rerun started over"
    assert rerun.result["inserted"] >= len(planted) - split["indexed"]
    await _assert_index_equals_canonical(db, source)

    verify = await run_jobs_cli("run", NAME, "--verify", "--source", source, "--output", "json")
    assert verify.returncode == 0, verify.stdout
    summary = verify.result
    assert summary["ok"] is True and summary["gaps"] == 0
    assert summary["canonical_rows"] == summary["index_rows"] == len(planted)
    assert summary["missing"]["count"] == summary["pending"]["count"] == 0


async def test_verify_names_gaps_and_from_start_repairs_them(db: asyncpg.Pool, source: str) -> None:
    ids = sorted(await insert_canonical(db, source, 30))
    assert (await run_jobs_cli("run", NAME, "--output", "json")).returncode == 0
    await _assert_index_equals_canonical(db, source)

    deleted, tampered, orphan = ids[3], ids[7], ids[11]
    await db.execute("DELETE FROM derived_patient_record_index WHERE record_id = $1", deleted)
    await db.execute(
        "UPDATE derived_patient_record_index SET patient_token = repeat('f', 64) "
        "WHERE record_id = $1",
        tampered,
    )
    await db.execute("DELETE FROM canonical_records WHERE record_id = $1", orphan)

    verify = await run_jobs_cli("run", NAME, "--verify", "--source", source, "--output", "json")
    assert verify.returncode == 3
    assert verify.doc["status"] == "succeeded"
    summary = verify.result
    assert summary["ok"] is False and summary["gaps"] == 3
    assert summary["missing"] == {"count": 1, "record_ids": [str(deleted)]}
    assert summary["mismatched"] == {"count": 1, "record_ids": [str(tampered)]}
    assert summary["orphaned"] == {"count": 1, "record_ids": [str(orphan)]}

    text = await run_jobs_cli("run", NAME, "--verify", "--source", source)
    assert text.returncode == 3
    assert "3 GAP(S)" in text.stdout
    for rid in (deleted, tampered, orphan):
        assert str(rid) in text.stdout

    # A plain run does not go back over what the checkpoint has passed; a rebuild does.
    repair = await run_jobs_cli(
        "run", NAME, "--from-start", "--batch-size", "2000", "--output", "json"
    )
    assert repair.returncode == 0, repair.stderr
    assert repair.result["inserted"] >= 1 and repair.result["updated"] >= 1
    assert repair.result["orphans_removed"] >= 1
    await _assert_index_equals_canonical(db, source)
    verify = await run_jobs_cli("run", NAME, "--verify", "--source", source, "--output", "json")
    assert verify.returncode == 0 and verify.result["gaps"] == 0


async def test_second_full_run_writes_nothing_new(db: asyncpg.Pool, source: str) -> None:
    await insert_canonical(db, source, 50)
    first = await run_jobs_cli("run", NAME, "--output", "json")
    assert first.returncode == 0 and first.result["inserted"] >= 50
    before = await index_rows(db, source)
    assert len(before) == 50

    index_total = "SELECT count(*) FROM derived_patient_record_index"
    total_before = await db.fetchval(index_total)
    second = await run_jobs_cli("run", NAME, "--output", "json")
    assert second.returncode == 0
    assert second.result["updated"] == 0
    # Honest counts: anything inserted is a row other tests committed meanwhile.
    assert second.result["inserted"] == await db.fetchval(index_total) - total_before
    # Our rows were not rewritten (same row versions), even by a rescan of everything.
    rescan = await run_jobs_cli(
        "run", NAME, "--from-start", "--batch-size", "5000", "--output", "json"
    )
    assert rescan.returncode == 0 and rescan.result["updated"] == 0
    assert await index_rows(db, source) == before


async def test_dry_run_reports_and_writes_nothing(db: asyncpg.Pool, source: str) -> None:
    await _catch_up()
    planted = await insert_canonical(db, source, 40)
    checkpoint_before = await db.fetchrow(
        "SELECT checkpoint, updated_at FROM job_checkpoints WHERE job_name = $1", NAME
    )

    dry = await run_jobs_cli("run", NAME, "--dry-run", "--batch-size", "7", "--output", "json")
    assert dry.returncode == 0, dry.stderr
    summary = dry.result
    assert summary["mode"] == "dry_run"
    # What a dry run would write, never a count of writes it did not make.
    assert not {"written", "inserted", "updated", "orphans_removed"} & set(summary)
    assert summary["would_insert"] >= len(planted) and summary["batches"] >= 6
    assert summary["sample_record_ids"]
    assert await index_rows(db, source) == []
    checkpoint_after = await db.fetchrow(
        "SELECT checkpoint, updated_at FROM job_checkpoints WHERE job_name = $1", NAME
    )
    assert checkpoint_after == checkpoint_before

    text = await run_jobs_cli("run", NAME, "--dry-run")
    assert text.returncode == 0 and "nothing written" in text.stdout

    real = await run_jobs_cli("run", NAME, "--output", "json")
    assert real.returncode == 0 and real.result["inserted"] >= len(planted)
    await _assert_index_equals_canonical(db, source)


async def _checkpoint_locker(db: asyncpg.Pool) -> str:
    """The transaction that last locked the job's checkpoint row (its ``xmax``): each batch of a
    run locks it in a transaction of its own."""
    return await db.fetchval("SELECT xmax::text FROM job_checkpoints WHERE job_name = $1", NAME)


async def _wait_for_a_second_batch(db: asyncpg.Pool, before: str, run: asyncio.Task) -> None:
    """Until ``run`` has locked the checkpoint for two batches since ``before`` (or ended): its
    first batch read up to the horizon and the run went on instead of ending."""
    lockers: set[str] = set()

    async def two_batches() -> bool:
        if run.done():
            return True
        locker = await _checkpoint_locker(db)
        if locker not in (before, "0"):
            lockers.add(locker)
        return len(lockers) >= 2

    await eventually(two_batches, timeout=300, interval=0.05)


async def test_a_row_committed_late_behind_the_cursor_is_not_skipped(
    db: asyncpg.Pool, source: str
) -> None:
    """The gap a record_id or timestamp keyset would leave: a transaction that began earlier
    commits after later rows were indexed. The horizon holds the cursor back until it commits."""
    await _catch_up()
    async with db.acquire() as early:
        tx = early.transaction()
        await tx.start()
        try:
            (late_row,) = await insert_canonical(early, source, 1)
            on_time = set(await insert_canonical(db, source, 5))

            held = await run_jobs_cli("run", NAME, "--horizon-wait-s", "0.5", "--output", "json")
            assert held.returncode == 0, held.stderr
            assert held.result["horizon_wait_timed_out"] is True
            assert held.result["pending"] >= len(on_time)
            assert await index_rows(db, source) == []
            verify = await run_jobs_cli(
                "run", NAME, "--verify", "--source", source, "--output", "json"
            )
            # Rows ahead of the cursor are the next run's work, not gaps.
            assert verify.returncode == 0
            assert verify.result["pending"]["count"] == len(on_time)

            # A run that starts now waits for the early transaction, then takes every row. Its
            # horizon wait is made far longer than any slow machine needs to get here.
            before = await _checkpoint_locker(db)
            waiting = asyncio.create_task(
                run_jobs_cli(
                    "run",
                    NAME,
                    "--horizon-wait-s",
                    "600",
                    "--batch-size",
                    "5000",
                    "--output",
                    "json",
                    timeout=900,
                )
            )
            await _wait_for_a_second_batch(db, before, waiting)
            assert not waiting.done(), "the run ended with a transaction older than it open"
        finally:
            await tx.commit()
    done = await asyncio.wait_for(waiting, 900)
    assert done.returncode == 0, done.stderr
    assert done.result["horizon_wait_timed_out"] is False
    assert {r["record_id"] for r in await index_rows(db, source)} == on_time | {late_row}
    await _assert_index_equals_canonical(db, source)


async def test_unknown_job_and_bad_params_are_refused() -> None:
    with pytest.raises(ParamsInvalid, match="unknown job"):
        resolve(RUN_JOB, {"job": "no-such-job"})
    op = JOBS[NAME]
    with pytest.raises(ParamsInvalid, match=r"invalid field: batch_size \(at least 1\)"):
        op.params({"batch_size": 0})
    with pytest.raises(ParamsInvalid, match="exclude each other"):
        op.params({"dry_run": True, "verify": True})
    with pytest.raises(ParamsInvalid, match="unknown field: bogus"):
        resolve(RUN_JOB, {"job": NAME, "params": {"bogus": 1}})
    cli = await run_jobs_cli("run", NAME, "--stuck-after-s", "5")
    assert cli.returncode == 2 and "unrecognized arguments: --stuck-after-s" in cli.stderr
    assert set(JOBS) == {"materialize-patient-index", "data-quality", "link-persons", "export"}


async def test_a_run_is_recorded_with_progress_and_result(db: asyncpg.Pool, source: str) -> None:
    await insert_canonical(db, source, 20)
    run = await run_jobs_cli("run", NAME, "--batch-size", "3", "--output", "json")
    assert run.returncode == 0
    row = await db.fetchrow(
        "SELECT job_name, status, params, progress, result, ended_at FROM job_runs "
        "WHERE job_run_id = $1",
        uuid.UUID(run.doc["job_run_id"]),
    )
    assert row["job_name"] == NAME and row["status"] == "succeeded"
    assert row["params"]["batch_size"] == 3
    assert row["result"] == run.result
    assert row["progress"]["phase"] == "indexing" and row["progress"]["done"] >= 20
    assert row["ended_at"] is not None
