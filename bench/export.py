"""The bulk export's benchmark (issue 23): one worker exports every type of 1,000,000 rows.

    .venv/bin/python bench/export.py [--min-rows 1000000] [--baseline-s 20]
        [--output bench/results/export.json] [--profile bench/results/export.pyspy.txt]

Runs against the stack of the environment (POSTGRES_PORT, KAFKA_BROKERS, MINIO_ENDPOINT, as for
the tests) whose database holds the rows of ``bench/load_canonical.py``. In one run:

1. Preconditions: the number of canonical rows (at least ``--min-rows``). The loader writes no
   persons; rows without one get a person per patient token here, in bulk SQL (not the
   linker: the bench needs persons, not their matching), once.
2. One full worker is started (ENV=local, default export settings: 128 MiB files, pages of
   5,000 rows) on topics of its own for this run. A recipient of this run gets a grant of
   everything. One GraphQL client (``encounters`` of one patient, as ``bench/read.py``'s first
   row, ``Bearer dev``) runs back to back for ``--baseline-s`` seconds: its latency with no
   export.
3. An export of every type is kicked off as ``web/fhir.py`` does it (the ``exports`` row and its
   command in the outbox, one transaction), and the same client runs until it completes, while
   the worker's resident memory (VmRSS of its process tree, /proc) is sampled every 50 ms.
   With ``--profile FILE``, py-spy records the worker meanwhile (``.venv/bin/pip install
   py-spy``): collapsed stacks to FILE, the functions with the most samples printed.

Printed: the machine and its calibration, the export's resources, seconds and resources/s (the
run's own time, from its claim to its completion), the worker's peak RSS, and the client's
latency without and during the export. Targets (issue 23): >= 20,000 resources/s, peak RSS
< 400 MiB, GraphQL p99 during the export <= 2x its p99 without.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from harness import ROOT, Machine, Result, machine, percentile, print_table, write_json
from read import (
    ENCOUNTERS_MAX,
    ENCOUNTERS_MIN,
    ENCOUNTERS_QUERY,
    LOADER_HINT,
    PICK_PATIENT,
    graphql_body,
    py_spy,
    recipient_token,
    summarise_stacks,
)

from exchange_stream.infra.config import Settings
from exchange_stream.infra.sql import q
from exchange_stream.infra.topics import ensure_topics
from tests.support import WorkerProcess

TARGET_RESOURCES_PER_S = 20_000
TARGET_RSS_MIB = 400
TARGET_P99_RATIO = 2.0
TYPES = ["Patient", "Encounter", "Claim", "Observation"]
RSS_SAMPLE_S = 0.05

UNLINKED = """
SELECT count(*) FROM canonical_records c
WHERE NOT EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = c.record_id)
"""
# One person per patient token of the rows without one (what linking would give rows whose
# tokens are all distinct per patient), with person ids drawn from the identity's sequence.
LINK_BY_TOKEN = (
    """
CREATE TEMP TABLE bench_persons ON COMMIT DROP AS
SELECT t.token, nextval(pg_get_serial_sequence('persons', 'person_id')) AS person_id
FROM (SELECT DISTINCT c.normalized ->> 'patient_token' AS token FROM canonical_records c
      WHERE NOT EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = c.record_id)) t
""",
    "INSERT INTO persons (person_id) OVERRIDING SYSTEM VALUE SELECT person_id FROM bench_persons",
    """
INSERT INTO record_persons (record_id, person_id)
SELECT c.record_id, b.person_id
FROM canonical_records c JOIN bench_persons b ON b.token = c.normalized ->> 'patient_token'
WHERE NOT EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = c.record_id)
""",
)
EXPECTED = """
SELECT (SELECT count(*) FROM canonical_records c
        WHERE EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = c.record_id)
          AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id))
     + (SELECT count(*) FROM persons p WHERE p.merged_into IS NULL AND EXISTS (
            SELECT 1 FROM record_persons rp WHERE rp.person_id = p.person_id
              AND NOT EXISTS (SELECT 1 FROM opted_out_records o
                              WHERE o.record_id = rp.record_id)))
"""
KICK_OFF = """
INSERT INTO exports (export_id, recipient_id, request_url, params, transaction_time, horizon)
VALUES ($1, $2, 'http://127.0.0.1/fhir/$export', $3, now(),
        pg_snapshot_xmin(pg_current_snapshot()))
"""
ENDED = """
SELECT e.status, e.error, e.output, j.status AS run, j.result
FROM exports e LEFT JOIN job_runs j ON j.job_run_id = e.job_run_id
WHERE e.export_id = $1
"""


def rss_bytes(root: int) -> int:
    """VmRSS of ``root`` and its live children (0 for a process gone)."""
    total = 0
    pids = [root]
    try:
        pids += [int(p) for p in Path(f"/proc/{root}/task/{root}/children").read_text().split()]
    except OSError:
        pass
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class RssPeak(threading.Thread):
    """Samples a process tree's resident memory until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


async def link_persons(conn: asyncpg.Connection) -> tuple[int, float]:
    """Persons for the rows that have none (see the module docstring); (rows, seconds)."""
    unlinked = await conn.fetchval(UNLINKED)
    started = time.monotonic()
    if unlinked:
        print(f"linking {unlinked:,} rows to one person per patient token ...", flush=True)
        async with conn.transaction():
            for statement in LINK_BY_TOKEN:
                await conn.execute(statement)
        await conn.execute("ANALYZE persons")
        await conn.execute("ANALYZE record_persons")
    return unlinked, time.monotonic() - started


async def loop_lag_buckets(url: str) -> dict[float, float]:
    """The worker's ``event_loop_lag_seconds`` histogram: cumulative count per bucket bound."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def lag_share_over(before: dict[float, float], after: dict[float, float], bound: float) -> str:
    """Of the loop-lag probes between two scrapes, the share later than ``bound`` seconds."""
    total = after.get(float("inf"), 0) - before.get(float("inf"), 0)
    within = after.get(bound, 0) - before.get(bound, 0)
    return f"{100 * (total - within) / total:.1f}% of {total:.0f}" if total else "no probes"


async def graphql_loop(
    name: str, url: str, body: bytes, *, duration_s: float | None, done: asyncio.Event | None
) -> Result:
    """One client, back to back, for ``duration_s`` or until ``done`` is set."""
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": "Bearer dev", "Content-Type": "application/json"}
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else None
    async with aiohttp.ClientSession() as http:
        while True:
            if (deadline and time.perf_counter() >= deadline) or (done and done.is_set()):
                break
            t0 = time.perf_counter()
            async with http.post(f"{url}/graphql", data=body, headers=headers) as r:
                answer = await r.json()
            if r.status == 200 and not answer.get("errors"):
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return Result(
        name=name,
        concurrency=1,
        ops=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(ordered, 50),
        p95_ms=percentile(ordered, 95),
        p99_ms=percentile(ordered, 99),
    )


@dataclass
class ExportFigures:
    resources: int
    expected: int
    files: int
    bytes: int
    run_s: float
    wall_s: float
    resources_per_s: float
    peak_rss_mib: float
    idle_rss_mib: float
    by_type: dict[str, int]


async def run_export(
    conn: asyncpg.Connection,
    topic: str,
    recipient: str,
    worker: WorkerProcess,
    url: str,
    body: bytes,
    profile: Path | None,
) -> tuple[ExportFigures, Result, list[str]]:
    """Kick the export off and follow it, the client running beside it, RSS sampled."""
    assert worker.proc is not None
    pid = worker.proc.pid
    idle_rss = rss_bytes(pid)
    sampler = RssPeak(pid)
    sampler.start()
    spy = None
    if profile is not None:
        # Started and left running beside the loop; only waited for once the export is done.
        spy = subprocess.Popen(  # noqa: ASYNC220
            [
                py_spy(),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "100",
                "--output",
                str(profile),
                "--nonblocking",
                "--nolineno",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    export_id = uuid.uuid4()
    params = {
        "types": TYPES,
        "since": None,
        "until": None,
        "type_filters": {},
        "output_format": "application/fhir+ndjson",
        "patient_level": False,
    }
    command = {
        "command_id": f"export:{export_id}",
        "command": "export",
        "params": {"export_id": str(export_id)},
        "requested_by": f"recipient:{recipient}",
    }
    done = asyncio.Event()
    client = asyncio.create_task(
        graphql_loop("encounters, during the export", url, body, duration_s=None, done=done)
    )
    started = time.monotonic()
    async with conn.transaction():
        await conn.execute(KICK_OFF, export_id, recipient, params)
        await conn.execute(q("outbox_enqueue"), [topic], [str(export_id)], [command])
    while True:
        row = await conn.fetchrow(ENDED, export_id)
        if row["status"] not in ("accepted", "running") and row["run"] not in (None, "running"):
            break
        if worker.proc.poll() is not None:
            raise SystemExit(f"the worker exited; see {worker.log_path}")
        await asyncio.sleep(0.25)
    wall = time.monotonic() - started
    done.set()
    during = await client
    peak = sampler.stop()
    stacks: list[str] = []
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes what it recorded and exits
        spy.wait(timeout=60)
        stacks = summarise_stacks(profile)  # type: ignore[arg-type]
    if row["status"] != "completed":
        raise SystemExit(f"the export ended {row['status']}: {row['error']}")
    result = row["result"]
    figures = ExportFigures(
        resources=result["resources"],
        expected=await conn.fetchval(EXPECTED),
        files=result["files"],
        bytes=result["bytes"],
        run_s=result["elapsed_s"],
        wall_s=round(wall, 3),
        resources_per_s=round(result["resources"] / result["elapsed_s"]),
        peak_rss_mib=round(peak / 2**20, 1),
        idle_rss_mib=round(idle_rss / 2**20, 1),
        by_type=result["by_type"],
    )
    return figures, during, stacks


async def bench(args: argparse.Namespace, info: Machine) -> dict[str, Any]:
    settings = Settings.from_env({**os.environ, "ENV": "local"})
    conn = await asyncpg.connect(settings.dsn)
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )
    rows = await conn.fetchval("SELECT count(*) FROM canonical_records")
    print(f"canonical rows: {rows:,} (need >= {args.min_rows:,})")
    if rows < args.min_rows:
        raise SystemExit(f"too few rows: {LOADER_HINT}")
    linked, link_s = await link_persons(conn)
    if linked:
        print(f"linked {linked:,} rows in {link_s:.1f} s")
    patient = await conn.fetchrow(PICK_PATIENT, ENCOUNTERS_MIN, ENCOUNTERS_MAX)
    if patient is None:
        raise SystemExit(f"no patient with {ENCOUNTERS_MIN} to {ENCOUNTERS_MAX} encounters")

    run = uuid.uuid4().hex[:8]
    prefix = f"bench.export.{run}"
    env = {
        "ENV": "local",
        "APP_ID": f"bench-export-{run}",
        "TOPIC_RECORD_INGESTED_V1": f"{prefix}.v1",
        "TOPIC_RECORD_INGESTED_V2": f"{prefix}.v2",
        "KAFKA_DLQ_TOPIC_V1": f"{prefix}.v1.dlq",
        "KAFKA_DLQ_TOPIC_V2": f"{prefix}.v2.dlq",
        "TOPIC_CONTROL": f"{prefix}.control",
        "TOPIC_EXPORTS": f"{prefix}.exports",
        "LOG_LEVEL": "WARNING",
    }
    await ensure_topics(Settings.from_env({**os.environ, **env}))
    recipient = f"bench-export-{run}"
    await conn.fetchval(q("recipients_add"), recipient, "bench", None)
    await conn.execute(
        "INSERT INTO recipient_grants (recipient_id, created_by) VALUES ($1, 'bench')", recipient
    )
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        worker = WorkerProcess(Path(tmp), env_overrides=env)
        worker.start()
        try:
            await worker.wait_healthy(timeout=180)
            token = await recipient_token(settings, patient["master"])
            body = graphql_body(ENCOUNTERS_QUERY, {"t": token})
            await graphql_loop("warm-up", worker.base_url, body, duration_s=3, done=None)
            idle = await graphql_loop(
                "encounters, no export",
                worker.base_url,
                body,
                duration_s=args.baseline_s,
                done=None,
            )
            print(f"baseline: {idle.ops} queries in {idle.seconds:.1f} s", flush=True)
            print("export of every type: running ...", flush=True)
            lag_before = await loop_lag_buckets(worker.base_url)
            figures, during, stacks = await run_export(
                conn,
                env["TOPIC_EXPORTS"],
                recipient,
                worker,
                worker.base_url,
                body,
                Path(args.profile) if args.profile else None,
            )
            lag_after = await loop_lag_buckets(worker.base_url)
        finally:
            worker.stop()
    await conn.close()
    lag = {
        f"over {b * 1000:g} ms": lag_share_over(lag_before, lag_after, b)
        for b in (0.002, 0.005, 0.01, 0.02)
    }

    ratio = during.p99_ms / idle.p99_ms if idle.p99_ms else float("nan")
    print_table("GraphQL, one client (encounters of one patient)", [idle, during])
    print("\nexport of every type, one worker")
    print(
        f"  resources: {figures.resources:,} (database: {figures.expected:,}) in "
        f"{figures.files} files, {figures.bytes / 2**20:,.0f} MiB; by type {figures.by_type}"
    )
    print(f"  run: {figures.run_s:.1f} s (kick-off to completed: {figures.wall_s:.1f} s)")
    print(f"  resources/s: {figures.resources_per_s:,.0f}")
    print(
        f"  worker RSS: peak {figures.peak_rss_mib:.0f} MiB (idle {figures.idle_rss_mib:.0f} MiB)"
    )
    verdicts = {
        "resources_per_s >= 20,000": figures.resources_per_s >= TARGET_RESOURCES_PER_S,
        "peak RSS < 400 MiB": figures.peak_rss_mib < TARGET_RSS_MIB,
        "GraphQL p99 during <= 2x without": ratio <= TARGET_P99_RATIO,
        "every row exported": figures.resources == figures.expected,
    }
    print(f"  event loop lag during the export (50 ms probes): {lag}")
    print(f"\nGraphQL p99 ratio (during / without): {ratio:.2f}")
    for what, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    if stacks:
        print(f"\npy-spy of the worker during the export ({args.profile}):")
        print("\n".join(stacks[:45]))
    return {
        "machine": asdict(info),
        "export": asdict(figures),
        "graphql": {"without": idle, "during": during, "p99_ratio": ratio},
        "event_loop_lag": lag,
        "verdicts": verdicts,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--min-rows", type=int, default=1_000_000)
    p.add_argument("--baseline-s", type=float, default=20.0, help="the client's run without export")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "export.json"))
    p.add_argument("--profile", help="py-spy the worker during the export; collapsed stacks here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(info.line(), flush=True)
    report = asyncio.run(bench(args, info))
    write_json(Path(args.output), report)
    return 0 if all(report["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
