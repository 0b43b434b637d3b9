"""Faults: the worker running an export, or its export process, SIGKILLed in the middle of a file.

The export must still complete, on the worker that takes the run over, with every row of the
database in exactly one line: the files the dead worker had finished (its checkpoint) are kept,
the file it was writing is written again from its first row by the new execution, and its
unfinished upload is aborted.

The kill lands mid-file for certain: once the checkpoint holds a finished file, the test takes an
ACCESS EXCLUSIVE lock on ``opted_out_records``, which every page statement of the run reads, so
the run waits on its next page with a file open (an upload started, lines not yet sent); the
worker is killed while it waits, and only then is the lock let go.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg

from exchange_stream.core.fhir import KIND_OF_TYPE, token_of_fhir_id
from exchange_stream.core.mappings import map_payload
from exchange_stream.core.scoped_ids import ScopedIds
from exchange_stream.infra.config import Settings
from exchange_stream.infra.topics import ensure_topics
from exchange_stream.ops.export import export_prefix, job_name
from exchange_stream.read.grants import Grants
from tests.conftest import SHARED_WORKER_ENV
from tests.support import WorkerProcess, independent_s3_client, isolated_env, wait_for_state
from tests.test_export_job import (
    DAYS,
    EXPORT_ENV,
    expected_rows,
    kick_off,
    new_recipient,
    parse_and_validate,
    payload,
    read_files,
    wait_ended,
)

ROWS = 600
PATIENTS = 60
CRASH_ENV = {
    **EXPORT_ENV,
    # About three lines a file: hundreds of files, so the run is surely mid-way at the kill.
    "EXPORT_FILE_MAX_BYTES": "2048",
    "EXPORT_PAGE_ROWS": "20",
    # A dead runner's command is taken over after 3 s without a heartbeat.
    "CONTROL_HEARTBEAT_S": "0.5",
    "CONTROL_TAKEOVER_AFTER_S": "3",
    "KAFKA_SESSION_TIMEOUT_S": "6",
}
# A statement waiting for the lock on opted_out_records: the run's next page.
WAITING_PAGE = (
    "SELECT count(*) FROM pg_locks WHERE relation = 'opted_out_records'::regclass AND NOT granted"
)


async def plant_canonical(db: asyncpg.Pool, source: str, rows: int, patients: int) -> None:
    """``rows`` canonical rows of ``source`` (three kinds, partnerA.v1 mapped as the normalizer
    maps it), linked to ``patients`` persons by one match token each."""
    kinds = ("encounter", "claim", "lab_result")
    values, owners, tokens = [], [], []
    for i in range(rows):
        kind = kinds[i % 3]
        n = i % patients
        record_id = uuid.uuid4()
        master = hashlib.sha256(f"{source}/{n}".encode()).hexdigest()
        obj = map_payload(kind, "partnerA.v1", payload(kind, i, DAYS[i % len(DAYS)]))
        normalized = {"patient_token": master, "record_kind": kind, kind: obj, "meta": {}}
        values.append((record_id, source, f"{source}/{record_id}.json", normalized, kind))
        owners.append(record_id)
        tokens.append(hashlib.sha256(master.encode()).digest())
    async with db.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO canonical_records (record_id, source, raw_object_key, raw_sha256,"
            " normalized, ingested_at, correlation_id, event_version, record_kind, schema_hint)"
            " VALUES ($1, $2, $3, repeat('0', 64), $4, now(), 'test', '2', $5, 'partnerA.v1')",
            values,
        )
        await conn.execute(
            "SELECT link_records($1::uuid[], $2::uuid[], $3::text[], $4::bytea[])",
            owners,
            owners,
            ["export-crash-test"] * len(owners),
            tokens,
        )


async def open_uploads(settings: Settings, prefix: str) -> list[str]:
    async with independent_s3_client(settings) as s3:
        listed = await s3.list_multipart_uploads(Bucket=settings.export_bucket, Prefix=prefix)
        return [u["Key"] for u in listed.get("Uploads", [])]


@contextlib.asynccontextmanager
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess, str]]:
    """Two workers of one consumer group on topics of their own (neither started yet)."""
    env = isolated_env("export-crash")
    full = {**SHARED_WORKER_ENV, **env, **CRASH_ENV}
    await ensure_topics(Settings.from_env({**os.environ, **full, "ENV": "local"}))
    first = WorkerProcess(workdir=tmp_path / "first", env_overrides=full)
    second = WorkerProcess(workdir=tmp_path / "second", env_overrides=full)
    try:
        yield first, second, env["TOPIC_EXPORTS"]
    finally:
        first.stop()
        second.stop()


async def files_done(db: asyncpg.Pool, export_id: uuid.UUID) -> int:
    cp = await db.fetchval(
        "SELECT checkpoint FROM job_checkpoints WHERE job_name = $1", job_name(export_id)
    )
    return len(cp["files"]) if cp else 0


async def kill_mid_file(
    db: asyncpg.Pool,
    settings: Settings,
    export_id: uuid.UUID,
    kill: Callable[[], None],
    dead: Callable[[], bool],
) -> int:
    """Hold the run at a page with a file open, ``kill`` there, then let the run go; the number
    of files the killed execution had checkpointed."""
    prefix = export_prefix(export_id)

    async def describe() -> str:
        return f"files checkpointed: {await files_done(db, export_id)}"

    done_before = 0
    mid_file: list[str] = []
    for _ in range(20):
        # Wait for one more finished file, then hold the run at its next page.
        floor = done_before

        async def one_more(floor: int = floor) -> bool:
            return await files_done(db, export_id) > floor

        await wait_for_state(one_more, what="a file checkpointed", explain=describe, timeout=120)
        async with db.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            try:
                await holder.execute("LOCK TABLE opted_out_records IN ACCESS EXCLUSIVE MODE")

                async def waiting() -> bool:
                    return bool(await db.fetchval(WAITING_PAGE))

                await wait_for_state(
                    waiting, what="the run waiting on a page", explain=describe, timeout=60
                )
                # Held at the next page of a type, the run has a file open; held at the first
                # page of a type, it has none yet: then let it go and try again.
                mid_file = await open_uploads(settings, prefix)
                if mid_file:
                    kill()
                # What the dead execution left: its checkpoint (and its open upload, which
                # the next execution aborts).
                done_before = await files_done(db, export_id)
            finally:
                await tx.rollback()
        if mid_file and dead():
            break
    assert mid_file, "the run was not killed with a file open"
    assert done_before >= 1
    return done_before


async def assert_whole_once(
    db: asyncpg.Pool,
    settings: Settings,
    row: asyncpg.Record,
    source: str,
    recipient: str,
    done_before: int,
) -> None:
    """The completed export: the dead execution's finished files kept, the rest the second
    execution's, nothing left unfinished, and every row of the database in exactly one line."""
    prefix = export_prefix(row["export_id"])
    files = row["output"]
    executions = [f["key"].removeprefix(prefix).split("/", 1)[0] for f in files]
    assert executions[:done_before] == ["1"] * done_before
    assert set(executions[done_before:]) == {"2"}
    assert await open_uploads(settings, prefix) == []

    resources = parse_and_validate(await read_files(settings, files))
    ids = ScopedIds(settings.recipient_token_secret)
    expected = await expected_rows(db, row["export_id"], [source], Grants.of([{"grant_id": 1}]))
    assert len(expected) == ROWS
    for rtype, kind in KIND_OF_TYPE.items():
        opened = ids.open_record_ids(
            [token_of_fhir_id(r["id"]) for r in resources[rtype]], recipient, [1]
        )
        doubled = [i for i, n in Counter(opened).items() if n > 1]
        assert not doubled, f"{rtype}: {len(doubled)} rows written twice"
        assert set(opened) == {r["record_id"] for r in expected if r["record_kind"] == kind}
    persons = ids.open_person_ids(
        [token_of_fhir_id(r["id"]) for r in resources["Patient"]], recipient, [1]
    )
    assert sorted(persons) == sorted({r["person_id"] for r in expected})
    assert len(persons) == PATIENTS


async def test_an_export_whose_worker_is_killed_mid_file_completes_with_no_line_lost_or_doubled(
    db: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    source = f"export-crash-{uuid.uuid4().hex[:8]}"
    await plant_canonical(db, source, ROWS, PATIENTS)
    recipient = await new_recipient(db, {"sources": [source]})
    async with two_workers(tmp_path) as (first, second, topic):
        first.start()
        await first.wait_healthy()
        export_id = await kick_off(db, topic, recipient)
        done_before = await kill_mid_file(
            db,
            settings,
            export_id,
            first.kill,
            lambda: first.proc is not None and first.proc.poll() is not None,
        )
        # The worker's export process died with it.
        assert export_children(first) == []
        second.start()
        await second.wait_healthy()
        row = await wait_ended(db, export_id, timeout=300)

    assert row["status"] == "completed", row["error"]
    run = await db.fetchrow("SELECT * FROM job_runs WHERE job_run_id = $1", row["job_run_id"])
    assert run["status"] == "succeeded" and run["executions"] == 2
    result = run["result"]
    assert result["execution"] == 2 and result["uploads_aborted"] >= 1
    await assert_whole_once(db, settings, row, source, recipient, done_before)


def export_children(worker: WorkerProcess) -> list[int]:
    """The pids of the export processes ``worker`` started (``ops/export_process.py``)."""
    if worker.proc is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # Fields after the command's closing parenthesis: state, ppid, ...
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == worker.proc.pid and b"exchange_stream.ops.export_child" in cmdline:
            found.append(int(entry.name))
    return found


def niceness(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except OSError:
        return -100  # gone


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_an_export_process_killed_mid_file_is_started_again_and_completes_the_export(
    db: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    """The export runs in a process of its own, nicer than the worker; killed, it is started
    again by the same run and continues from the checkpoint."""
    source = f"export-child-{uuid.uuid4().hex[:8]}"
    await plant_canonical(db, source, ROWS, PATIENTS)
    recipient = await new_recipient(db, {"sources": [source]})
    async with two_workers(tmp_path) as (worker, _, topic):
        worker.start()
        await worker.wait_healthy()
        export_id = await kick_off(db, topic, recipient)

        assert worker.proc is not None
        nicer = min(19, niceness(worker.proc.pid) + 19)

        async def started() -> bool:
            # It lowers its own priority as it starts, before it reads anything.
            return any(niceness(pid) == nicer for pid in export_children(worker))

        async def children() -> str:
            found = {pid: niceness(pid) for pid in export_children(worker)}
            return f"export processes of the worker and their niceness: {found}"

        await wait_for_state(
            started, what="the export process, niced", explain=children, timeout=60
        )
        (child,) = export_children(worker)

        def kill() -> None:
            os.kill(child, signal.SIGKILL)
            # Until the kernel has taken it down (a zombie until the worker reaps it).
            deadline = time.monotonic() + 30
            while alive(child) and time.monotonic() < deadline:
                time.sleep(0.01)

        done_before = await kill_mid_file(db, settings, export_id, kill, lambda: not alive(child))
        row = await wait_ended(db, export_id, timeout=300)
        assert worker.proc.poll() is None

    assert row["status"] == "completed", row["error"]
    run = await db.fetchrow("SELECT * FROM job_runs WHERE job_run_id = $1", row["job_run_id"])
    # One run, one execution of it: the worker started a second export process itself.
    assert run["status"] == "succeeded" and run["executions"] == 1
    result = run["result"]
    assert result["execution"] == 2 and result["uploads_aborted"] >= 1
    await assert_whole_once(db, settings, row, source, recipient, done_before)
