"""The read API's benchmark (issue 14): GraphQL on one full worker over 1,000,000 canonical rows.

    .venv/bin/python bench/read.py [--duration 10] [--connections 16] [--warmup 3]
        [--ingest-rate 200] [--threads 1] [--min-rows 1000000] [--output bench/results/read.json]
        [--profile bench/results/read-encounters.pyspy.txt] [--ref GIT_REF --rounds N]

Runs against the stack of the environment (POSTGRES_PORT, KAFKA_BROKERS, MINIO_ENDPOINT, as
for the tests) whose database holds the rows of ``bench/load_canonical.py`` (the worker must use
the same TOKENIZER_HMAC_SECRET as the loader; both default to the local one). In one run:

1. Preconditions: the number of canonical rows (at least ``--min-rows``), one patient picked by
   SQL (the one with the most encounters within 10 to 20; only counts are printed, never a
   token), and ``EXPLAIN (ANALYZE, BUFFERS)`` of the statement the worker runs for
   ``encounters`` (``read_patient_kind`` of sql/queries/read.sql), both the plan for the given
   values and the generic plan a prepared statement may switch to.
2. One full worker is started (ingest + outbox relay + normalizer + read, the default
   deployment; ENV=local, so ``Bearer dev`` is the recipient ``local-dev``), on ingest topics of
   its own for this run. The patient's token for local-dev is issued with the project's
   ``RecipientTokenService``; every query is checked once (status, no GraphQL error, the
   expected number of items) and warmed up for ``--warmup`` seconds.
3. Measured rows, each with ``wrk`` and ``bench/wrk/graphql.lua`` at ``--connections`` for
   ``--duration`` seconds: ``encounters`` for the patient; the same while ``bench/openloop.py``
   sends ``--ingest-rate`` v2 FHIR records per second (source ``bench-read-ingest``) to the same
   worker; ``patient(patientToken)``; and one page of ``records(first: 500)``.
4. With ``--profile FILE``, one more ``encounters`` run (not a measured row) under ``py-spy
   record`` of the worker (``.venv/bin/pip install py-spy``; not a project dependency): its
   collapsed stacks go to FILE, and the functions with the most samples are printed.

With ``--ref``, a worker of that git ref (checked out in a temporary worktree) runs the same
rows after the working tree's, ``--rounds`` times, alternating, and a table of both follows:
the figures to compare, since absolute ones change with the machine (a calibration figure, the
time of a fixed Python loop, is printed first).

Each row shows queries/s (2xx answers without GraphQL errors), latency percentiles (ms), the
non-2xx answers, answers with GraphQL errors, socket errors, and CPU in % of one core: wrk's,
the worker's (also as CPU ms per query, which the machine's load changes little), its Postgres
backends', and the whole machine's busy share (all cores); and how long the worker's event loop
waited for a CPU while ready to run (other processes' doing, on a shared machine). The issue's
targets (``encounters`` p99 <= 20 ms and >= 1,000 queries/s at 16 clients; p99 <= 50 ms while
ingesting 200 req/s) are checked at the end. Results go to JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
from compare_seed import settle, start_worker, topics
from harness import ROOT, GitRef, bodies, machine
from openloop import OpenLoopResult, prepare_client, run_openloop
from wrk import CpuMeter, WrkResult, parse_wrk_output, require_wrk

from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.sql import q
from exchange_stream.read.tokens import LOCAL_DEV_RECIPIENT, RecipientTokenService

LUA_SCRIPT = ROOT / "bench" / "wrk" / "graphql.lua"
LOADER_HINT = (
    "load them first: .venv/bin/python bench/load_canonical.py --rows 1000000 "
    "(same stack environment)"
)
INGEST_SOURCE = "bench-read-ingest"
ENCOUNTERS_MIN, ENCOUNTERS_MAX = 10, 20
RECORDS_PAGE = 500
PATIENT_INDEX = "canonical_records_patient_idx"
TARGET_CLIENTS = 16
TARGET_P99_MS = 20.0
TARGET_QPS = 1_000.0
TARGET_P99_INGEST_MS = 50.0
# Ingest runs this long before and after the measured read window, so the window sees steady
# ingest (the open-loop clients start 1.5 s after they are launched; see bench/openloop.py).
INGEST_LEAD_S = 3.0
# Frames that hold everything else (the CLI, the event loop, threads): they say nothing about
# where the time goes, so the inclusive list leaves them out.
SCAFFOLD_FRAMES = (
    "<module> ",
    "main (",
    "_cmd_worker ",
    "Worker.execute_from_commandline ",
    "BaseEventLoop.",
    "Handle._run ",
    "Thread._bootstrap",
)
_EPOCH = "0001-01-01T00:00:00+00:00"  # the cursor of a first page (exchange_stream/read)

# The patient: of those with 10 to 20 encounters, the one with the most (then by token, so
# every run on the same rows picks the same one). A full scan of the encounters, about 1 s.
PICK_PATIENT = """
SELECT normalized ->> 'patient_token' AS master, count(*) AS encounters
FROM canonical_records
WHERE record_kind = 'encounter'
GROUP BY 1
HAVING count(*) BETWEEN $1 AND $2
ORDER BY count(*) DESC, 1
LIMIT 1
"""
PATIENT_KINDS = """
SELECT record_kind, count(*) AS n FROM canonical_records
WHERE normalized ->> 'patient_token' = $1 GROUP BY 1 ORDER BY 1
"""
COUNT_SOURCE = "SELECT count(*) FROM canonical_records WHERE source = $1"
# Postgres backends serving this database, other than the asking connection: the worker's pool.
BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""

T = TypeVar("T")

ENCOUNTERS_QUERY = (
    "query ($t: ID!) { encounters(patientToken: $t) "
    "{ encounterId patientToken facilityId admitTime dischargeTime } }"
)
PATIENT_QUERY = "query ($t: ID!) { patient(patientToken: $t) { patientToken dob } }"
RECORDS_QUERY = (
    f"{{ records(first: {RECORDS_PAGE}) {{ nextCursor items {{ recordId patientToken kind "
    "source schemaHint ingestedAt encounter { encounterId facilityId admitTime } "
    "claim { claimId serviceDate } labResult { resultId collectedAt status } } } }"
)


@dataclass
class Preconditions:
    """What the database holds for this run; ``master`` never leaves this process."""

    rows: int
    encounters: int
    records_by_kind: dict[str, int]
    plan: list[str]
    generic_plan: list[str]
    index_scan: bool
    master: str = field(repr=False, default="")

    def public(self) -> dict[str, Any]:
        """JSON-ready, without the master token."""
        out = asdict(self)
        del out["master"]
        return out


@dataclass
class Query:
    """One GraphQL request the bench repeats, and how to tell that its answer is complete."""

    name: str
    body: bytes
    expect_items: int | None = None

    def items(self, answer: dict[str, Any]) -> int:
        """How many items the answer carries (1 for a found patient)."""
        data = answer.get("data") or {}
        if self.name.startswith("encounters"):
            return len(data.get("encounters") or [])
        if self.name.startswith("patient"):
            return 1 if data.get("patient") else 0
        return len((data.get("records") or {}).get("items") or [])


@dataclass
class Row:
    """One measured wrk run, with the CPU of the worker and of its Postgres backends."""

    wrk: WrkResult
    graphql_errors: int
    worker_cpu_pct: float | None
    postgres_cpu_pct: float | None
    # Share of the time the worker's event loop thread was ready to run but had no CPU.
    worker_wait_pct: float | None = None

    @property
    def good(self) -> int:
        """2xx answers without GraphQL errors."""
        return self.wrk.ok - self.graphql_errors

    @property
    def per_second(self) -> float:
        """Answered queries per second."""
        return self.good / self.wrk.seconds if self.wrk.seconds else 0.0

    @property
    def worker_ms_per_query(self) -> float | None:
        """The worker's CPU per answered query: 1000 / this is its ceiling on one free core."""
        if self.worker_cpu_pct is None or not self.good:
            return None
        return 10 * self.worker_cpu_pct * self.wrk.seconds / self.good

    @property
    def non_2xx(self) -> int:
        """Answers wrk counted as errors by status (not 2xx or 3xx)."""
        return self.wrk.errors.get("status", 0)

    @property
    def socket_errors(self) -> int:
        """Connect, read, write errors and timeouts."""
        return sum(v for k, v in self.wrk.errors.items() if k != "status")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived figures."""
        return {
            **self.wrk.as_dict(),
            "graphql_errors": self.graphql_errors,
            "queries_per_second": self.per_second,
            "worker_cpu_pct": self.worker_cpu_pct,
            "worker_cpu_ms_per_query": self.worker_ms_per_query,
            "postgres_cpu_pct": self.postgres_cpu_pct,
            "worker_runqueue_wait_pct": self.worker_wait_pct,
        }


# Preconditions -------------------------------------------------------------------------------


def redact(line: str, secret: str) -> str:
    """A plan line without the master token (a custom plan prints the bound value)."""
    return line.replace(secret, "<master token>")


async def explain(conn: asyncpg.Connection, master: str, *, generic: bool) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of ``read_patient_kind`` for the patient's encounters.

    The worker runs the statement prepared (asyncpg), and Postgres may switch a prepared
    statement to a generic plan after five runs; ``generic`` shows that plan.
    """
    # EXECUTE takes no bind parameters: the token goes in as a literal quoted by Postgres.
    token = await conn.fetchval("SELECT quote_literal($1::text)", master)
    # Then the credential's kinds: NULL, every kind (``Bearer dev``); and its grants: a grant of
    # everything (read/grants.py).
    args = (
        f"{token}, 'encounter', '{_EPOCH}', '{uuid.UUID(int=0)}', {RECORDS_PAGE}, NULL,"
        " true, '{}', '{}', '{}', '{}'"
    )
    name = f"bench_read_{uuid.uuid4().hex[:8]}"
    async with conn.transaction():
        await conn.execute(
            f"SET LOCAL plan_cache_mode = {'force_generic_plan' if generic else 'auto'}"
        )
        # PREPARE with the worker's statement text; the types are those Postgres infers.
        await conn.execute(f"PREPARE {name} AS {q('read_patient_kind')}")
        try:
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE {name}({args})")
        finally:
            await conn.execute(f"DEALLOCATE {name}")
    return [redact(r[0], master) for r in rows]


async def preconditions(conn: asyncpg.Connection, min_rows: int) -> Preconditions:
    """Count the rows, pick the patient, and explain the encounters statement; exit if unmet."""
    rows = await conn.fetchval("SELECT count(*) FROM canonical_records")
    if rows < min_rows:
        raise SystemExit(f"{rows:,} canonical rows, fewer than {min_rows:,}: {LOADER_HINT}")
    picked = await conn.fetchrow(PICK_PATIENT, ENCOUNTERS_MIN, ENCOUNTERS_MAX)
    if picked is None:
        raise SystemExit(
            f"no patient with {ENCOUNTERS_MIN} to {ENCOUNTERS_MAX} encounters: {LOADER_HINT}"
        )
    master = picked["master"]
    kinds = {r["record_kind"]: r["n"] for r in await conn.fetch(PATIENT_KINDS, master)}
    plan = await explain(conn, master, generic=False)
    generic = await explain(conn, master, generic=True)
    index_scan = all(
        any("Index" in line and PATIENT_INDEX in line for line in p) for p in (plan, generic)
    )
    return Preconditions(rows, picked["encounters"], kinds, plan, generic, index_scan, master)


def node_lines(plan: list[str]) -> list[str]:
    """The plan's node lines and their conditions, without the timing footer."""
    return [line for line in plan if not line.startswith(("Planning", "Execution"))]


async def backend_pids(conn: asyncpg.Connection) -> list[int]:
    """The pids of the database's other client backends (the worker's pool, once warm)."""
    return [r["pid"] for r in await conn.fetch(BACKENDS)]


async def recipient_token(settings: Settings, master: str, timeout_s: float = 60.0) -> str:
    """The local-dev recipient's token for ``master``, once the worker has registered it."""
    pool = await create_pool(settings, max_size=1)
    try:
        tokens = RecipientTokenService(lambda: pool, settings.recipient_token_secret)
        deadline = time.monotonic() + timeout_s
        while True:
            token = await tokens.issue(LOCAL_DEV_RECIPIENT, master)
            if token is not None:
                return token
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not register the local-dev recipient in time")
            tokens.forget()
            await asyncio.sleep(0.5)
    finally:
        await pool.close()


# Queries and load -------------------------------------------------------------------------


def graphql_body(query: str, variables: dict[str, Any] | None = None) -> bytes:
    """A POST /graphql body."""
    return orjson.dumps({"query": query, "variables": variables or {}})


def ask(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """One POST to /graphql with ``Bearer dev``: status and JSON answer."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=body,
        headers={"Authorization": "Bearer dev", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def check(url: str, query: Query) -> None:
    """Exit unless the query answers 200, without errors, with the expected number of items."""
    status, answer = ask(url, query.body)
    errors = [e.get("message") for e in answer.get("errors") or []]
    got = query.items(answer)
    if status != 200 or errors or (query.expect_items is not None and got != query.expect_items):
        raise SystemExit(
            f"{query.name}: status {status}, errors {errors}, {got} items "
            f"(expected {query.expect_items}); nothing measured"
        )


def run_graphql_wrk(
    url: str,
    body_path: Path,
    *,
    connections: int,
    duration_s: float,
    threads: int,
    worker_pid: int,
    postgres_pids: list[int],
    label: str,
) -> Row:
    """wrk with graphql.lua for ``duration_s``; CPU of wrk, the worker and its backends."""
    cmd = [
        require_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        # Long, because wrk leaves timed-out requests out of its latency figures.
        "--timeout=10s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        f"{url}/graphql",
        "--",
        str(body_path),
    ]
    meter = CpuMeter([worker_pid, *postgres_pids])
    with tempfile.TemporaryFile() as out:
        meter.start()
        waited = runqueue_wait_s(worker_pid)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        # wait4: the rusage of this one child, not of the worker or the ingest clients.
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        per_pid, machine = meter.stop()
        waited_after = runqueue_wait_s(worker_pid)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk failed:\n{text}")
    parsed = parse_wrk_output(text)
    graphql_errors = re.search(r'"graphql_errors": (\d+)', text)
    backends = [per_pid[p] for p in postgres_pids if per_pid.get(p) is not None]
    result = WrkResult(
        url=f"{url}/graphql",
        connections=connections,
        threads=threads,
        seconds=parsed.seconds,
        requests=parsed.requests,
        ok=parsed.requests - parsed.errors.get("status", 0),
        errors=parsed.errors,
        latency_ms=parsed.latency_ms,
        client_cpu_pct=100 * (rusage.ru_utime + rusage.ru_stime) / wall,
        server_cpu_pct=per_pid.get(worker_pid),
        machine_busy_pct=machine,
        label=label,
    )
    return Row(
        wrk=result,
        graphql_errors=int(graphql_errors.group(1)) if graphql_errors else 0,
        worker_cpu_pct=per_pid.get(worker_pid),
        postgres_cpu_pct=sum(backends) if backends else None,
        worker_wait_pct=None
        if waited is None or waited_after is None
        else 100 * (waited_after - waited) / wall,
    )


def runqueue_wait_s(pid: int) -> float | None:
    """Seconds the process's main thread (the worker's event loop) has waited for a CPU while
    runnable, from ``/proc/<pid>/schedstat``; None where the kernel does not keep it.

    On a shared machine this is the time other processes took from the worker: with it, a
    reader can tell a slow worker from a busy machine.
    """
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def write_ingest_bodies(path: Path) -> Path:
    """The benchmark's v2 FHIR bodies (bench/harness.py) under this bench's own source."""
    lines = []
    for body in bodies():
        doc = orjson.loads(body)
        doc["source"] = INGEST_SOURCE
        lines.append(orjson.dumps(doc))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def with_ingest(
    read: Callable[[], Row],
    *,
    url: str,
    rate: float,
    duration_s: float,
    bodies_path: Path,
    worker_pid: int,
) -> tuple[Row, OpenLoopResult]:
    """``read()`` (a wrk run of ``duration_s``) while the open-loop client ingests ``rate``/s.

    Ingest starts INGEST_LEAD_S before the read window and ends INGEST_LEAD_S after it.
    """
    prepare_client()  # a build of the Go client would otherwise delay the ingest past the lead
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        launched = time.monotonic()
        ingest = pool.submit(
            run_openloop,
            f"{url}/v2/ingest",
            rate=rate,
            duration_s=duration_s + 2 * INGEST_LEAD_S,
            bodies_path=bodies_path,
            server_pids=[worker_pid],
            label="ingest",
        )
        # The clients' first send is 1.5 s after launch (bench/openloop.py), then the lead.
        time.sleep(max(0.0, launched + 1.5 + INGEST_LEAD_S - time.monotonic()))
        row = read()
        return row, ingest.result()


# Report -----------------------------------------------------------------------------------

HEADER = (
    f"{'query':<30}{'conn':>5}{'q/s':>8}{'p50':>7}{'p90':>7}{'p99':>7}{'p99.9':>7}"
    f"{'non2xx':>7}{'gqlerr':>7}{'sockerr':>8}{'wrk%':>6}{'worker%':>8}{'ms/q':>6}{'wait%':>6}"
    f"{'pg%':>5}{'busy%':>6}{'secs':>6}"
)


LEGEND = (
    "(latency in ms; CPU in % of one core; ms/q = the worker's CPU ms per query; wait% = time\n"
    " its event loop was ready to run but the machine gave it no CPU; busy% = all cores)"
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_row(row: Row) -> str:
    """One line of the table under HEADER."""
    r, lat = row.wrk, row.wrk.latency_ms
    return (
        f"{r.label:<30}{r.connections:>5}{row.per_second:>8.0f}{lat['p50']:>7.1f}"
        f"{lat['p90']:>7.1f}{lat['p99']:>7.1f}{lat['p99.9']:>7.1f}{row.non_2xx:>7}"
        f"{row.graphql_errors:>7}{row.socket_errors:>8}{r.client_cpu_pct:>6.0f}"
        f"{_pct(row.worker_cpu_pct):>8}{_ms(row.worker_ms_per_query):>6}"
        f"{_pct(row.worker_wait_pct):>6}{_pct(row.postgres_cpu_pct):>5}"
        f"{_pct(r.machine_busy_pct):>6}{r.seconds:>6.1f}"
    )


def verdicts(
    encounters: Row, loaded: Row | None, ingest: OpenLoopResult | None, rate: float
) -> list[dict[str, Any]]:
    """The issue's targets against this run's rows (they are stated at 16 clients)."""
    out = [
        {
            "target": f"encounters p99 <= {TARGET_P99_MS:g} ms at {TARGET_CLIENTS} clients",
            "measured": f"p99 {encounters.wrk.latency_ms['p99']:.1f} ms",
            "met": encounters.wrk.latency_ms["p99"] <= TARGET_P99_MS,
        },
        {
            "target": f"encounters >= {TARGET_QPS:,.0f} queries/s on one worker",
            "measured": f"{encounters.per_second:,.0f} queries/s",
            "met": encounters.per_second >= TARGET_QPS,
        },
    ]
    if loaded is not None and ingest is not None:
        out.append(
            {
                "target": f"encounters p99 <= {TARGET_P99_INGEST_MS:g} ms while ingesting "
                f"{rate:g} req/s",
                "measured": f"p99 {loaded.wrk.latency_ms['p99']:.1f} ms "
                f"(ingest achieved {ingest.ok_per_second:.0f}/s)",
                # The target only counts if the ingest load was really applied.
                "met": loaded.wrk.latency_ms["p99"] <= TARGET_P99_INGEST_MS
                and ingest.ok >= 0.99 * ingest.scheduled,
            }
        )
    for v in out:
        v["met"] = bool(v["met"]) and encounters.wrk.connections == TARGET_CLIENTS
    return out


# Profile ----------------------------------------------------------------------------------


def py_spy() -> str:
    """The path of ``py-spy``, or exit with how to install it (it is no project dependency)."""
    for path in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if path and Path(path).exists():
            return str(path)
    raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")


def summarise_stacks(collapsed: Path, top: int = 20) -> list[str]:
    """The functions with the most samples in py-spy's collapsed stacks: own and inclusive %.

    The inclusive list leaves out SCAFFOLD_FRAMES.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples; own % (function where the sample was taken):"]
    for f, n in own.most_common(top):
        # Innermost Python frame a scaffold one: the loop ran C code (select, callbacks), or
        # py-spy --nonblocking read a stack while it changed.
        note = "(event loop, no Python handler) " if f.startswith(SCAFFOLD_FRAMES) else ""
        lines.append(f"  {100 * n / total:5.1f}  {note}{f}")
    lines.append("inclusive % (the function or what it called), under the event loop:")
    below = [(f, n) for f, n in inclusive.most_common() if not f.startswith(SCAFFOLD_FRAMES)]
    lines += [f"  {100 * n / total:5.1f}  {f}" for f, n in below[:top]]
    return lines


# Main -------------------------------------------------------------------------------------


class Database:
    """The bench's own connection, used from synchronous code between wrk runs."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.run(asyncpg.connect(settings.dsn))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion on the bench's own loop."""
        return self.loop.run_until_complete(coro)

    def ingested(self) -> int:
        """Canonical rows of the ingest this bench sends."""
        return self.run(self.conn.fetchval(COUNT_SOURCE, INGEST_SOURCE))

    def close(self) -> None:
        """Close the connection and the loop."""
        self.run(self.conn.close())
        self.loop.close()


@dataclass
class Bench:
    """One worker under test, the request bodies, and the run's options."""

    args: argparse.Namespace
    db: Database
    url: str
    pid: int
    paths: dict[str, Path]
    durations: dict[str, float] = field(default_factory=dict)

    def wrk(self, query: str, label: str, duration_s: float) -> Row:
        """One wrk run of ``query`` (by name) at the run's connections."""
        return run_graphql_wrk(
            self.url,
            self.paths[query],
            connections=self.args.connections,
            duration_s=duration_s,
            threads=self.args.threads,
            worker_pid=self.pid,
            postgres_pids=self.db.run(backend_pids(self.db.conn)),
            label=label,
        )

    def measure(self, query: str, label: str | None = None) -> Row:
        """Wait until the worker is idle, then one measured row, printed."""
        settle([self.pid], self.args.settle_max)
        row = self.wrk(query, label or query, self.args.duration)
        print(format_row(row), flush=True)
        return row

    def wait_normalized(self, expected: int) -> float:
        """Seconds until ``expected`` rows of the ingest are canonical (at most settle-max)."""
        started = time.monotonic()
        while self.db.ingested() < expected and time.monotonic() - started < self.args.settle_max:
            time.sleep(0.2)
        return time.monotonic() - started

    def profile(self, out: Path) -> list[str]:
        """py-spy on the worker while wrk sends ``encounters``; collapsed stacks to ``out``."""
        settle([self.pid], self.args.settle_max)
        spy = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--duration",
                str(max(1, round(self.args.duration))),
                "--output",
                str(out),
                # Without pausing the worker to sample it, and one frame per function.
                "--nonblocking",
                "--nolineno",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        row = self.wrk("encounters", "encounters (under py-spy)", self.args.duration)
        _, err = spy.communicate(timeout=self.args.duration + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
        return [format_row(row), *summarise_stacks(out)]


def show_preconditions(pre: Preconditions, min_rows: int, seconds: float) -> None:
    """Print the counts and both plans (never the token)."""
    kinds = ", ".join(f"{n} {k}" for k, n in pre.records_by_kind.items())
    print(f"canonical rows: {pre.rows:,} (need >= {min_rows:,})")
    print(f"patient: {pre.encounters} encounters ({kinds}); picked by SQL, token not shown")
    print("EXPLAIN (ANALYZE, BUFFERS) of read_patient_kind for them, plan for the values:")
    for line in pre.plan:
        print(f"  {line}")
    print("generic plan (a prepared statement may switch to it after five runs):")
    for line in node_lines(pre.generic_plan):
        print(f"  {line}")
    print(f"index scan on {PATIENT_INDEX}: {'yes' if pre.index_scan else 'NO'}")
    print(f"preconditions took {seconds:.1f} s", flush=True)


def queries_for(token: str, pre: Preconditions) -> list[Query]:
    """The three measured queries, for the patient's recipient token."""
    return [
        Query("encounters", graphql_body(ENCOUNTERS_QUERY, {"t": token}), pre.encounters),
        Query("patient", graphql_body(PATIENT_QUERY, {"t": token}), 1),
        Query(f"records(first: {RECORDS_PAGE})", graphql_body(RECORDS_QUERY), RECORDS_PAGE),
    ]


@dataclass
class Outcome:
    """What the measured part of a run found."""

    rows: list[Row]
    ingest: OpenLoopResult
    ingested_rows: int
    profile: list[str]
    durations: dict[str, float]


def run_bench(bench: Bench, queries: list[Query], ingest_bodies: Path) -> Outcome:
    """Warm up, then the four measured rows (and the profile when asked)."""
    args, durations = bench.args, bench.durations
    t0 = time.monotonic()
    for query in queries:
        bench.wrk(query.name, "warm-up", args.warmup)
    durations["warmup_s"] = time.monotonic() - t0
    print(f"warm-up: {args.warmup:g} s per query, {durations['warmup_s']:.1f} s in all")

    print(f"\n{HEADER}\n{LEGEND}")
    rows = [bench.measure("encounters")]
    before = bench.db.ingested()
    settle([bench.pid], args.settle_max)
    loaded, ingest = with_ingest(
        lambda: bench.wrk(
            "encounters", f"encounters + ingest {args.ingest_rate:g}/s", args.duration
        ),
        url=bench.url,
        rate=args.ingest_rate,
        duration_s=args.duration,
        bodies_path=ingest_bodies,
        worker_pid=bench.pid,
    )
    print(format_row(loaded), flush=True)
    rows.append(loaded)
    # The next rows start once the normalizer has written what was ingested.
    durations["normalizer_drain_s"] = bench.wait_normalized(before + ingest.ok)
    ingested_rows = bench.db.ingested() - before
    for query in queries[1:]:
        rows.append(bench.measure(query.name))
    profile = bench.profile(Path(args.profile)) if args.profile else []
    return Outcome(rows, ingest, ingested_rows, profile, durations)


def start_and_run(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    pre: Preconditions,
    code_env: dict[str, str] | None = None,
) -> Outcome:
    """Start the full worker on topics of this run's own, run the bench, stop the worker;
    ``code_env`` points the worker at another tree's code (``harness.GitRef``)."""
    run = uuid.uuid4().hex[:8]
    ingest_topic = f"bench.read.{run}.v2"
    asyncio.run(topics("create", [ingest_topic]))
    try:
        with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
            tmp_path = Path(tmp)
            t0 = time.monotonic()
            worker = start_worker(
                tmp_path / "worker",
                {
                    "APP_ID": f"bench-read-{run}",
                    "TOPIC_RECORD_INGESTED_V2": ingest_topic,
                    "KAFKA_TOPICS": ingest_topic,
                    **(code_env or {}),
                },
            )
            try:
                started = time.monotonic() - t0
                assert worker.proc is not None
                print(f"full worker (pid {worker.proc.pid}) ready in {started:.1f} s", flush=True)
                token = db.run(recipient_token(settings, pre.master))
                queries = queries_for(token, pre)
                paths = {}
                for query in queries:
                    check(worker.base_url, query)
                    paths[query.name] = tmp_path / f"{query.name.split('(')[0]}.json"
                    paths[query.name].write_bytes(query.body)
                bench = Bench(args, db, worker.base_url, worker.proc.pid, paths)
                bench.durations["worker_start_s"] = started
                return run_bench(bench, queries, write_ingest_bodies(tmp_path / "ingest.jsonl"))
            finally:
                worker.stop()
    finally:
        asyncio.run(topics("delete", [ingest_topic]))


def report(args: argparse.Namespace, pre: Preconditions, outcome: Outcome) -> dict[str, Any]:
    """Print the ingest line, the profile and the targets; the JSON document of the run."""
    ingest, lat = outcome.ingest, outcome.ingest.latency_ms
    print(
        f"\ningest during row 2: {ingest.ok_per_second:.0f} req/s of {ingest.target_rate:g} "
        f"({ingest.ok} of {ingest.scheduled} accepted, errors {ingest.errors or 0}), "
        f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms from the due time, "
        f"client CPU {ingest.client_cpu_pct:.0f} %, over {ingest.seconds:g} s; the normalizer "
        f"wrote {outcome.ingested_rows} canonical rows "
        f"({outcome.durations['normalizer_drain_s']:.1f} s after the ingest ended)"
    )
    if outcome.profile:
        print(f"\nprofile of the worker, encounters at {args.connections} connections:")
        print("\n".join(outcome.profile))
    targets = verdicts(outcome.rows[0], outcome.rows[1], ingest, args.ingest_rate)
    print(f"\ntargets (issue 14, at {TARGET_CLIENTS} clients; this run: {args.connections})")
    for v in targets:
        print(f"  {'met    ' if v['met'] else 'NOT met'}  {v['target']}: {v['measured']}")
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "preconditions": pre.public(),
        "rows": [r.as_dict() for r in outcome.rows],
        "ingest": ingest.as_dict(),
        "ingested_canonical_rows": outcome.ingested_rows,
        "profile": outcome.profile,
        "targets": targets,
        "durations_s": outcome.durations,
    }


def compare_with_ref(
    args: argparse.Namespace, settings: Settings, db: Database, pre: Preconditions
) -> dict[str, Any]:
    """``--rounds`` rounds of the working tree's worker and the ref's, alternating (which goes
    first alternates too), then one table of both: queries/s, p50, p99 and the worker's CPU per
    query, medians over the rounds, with the ratio of the working tree's to the ref's."""
    runs: dict[str, list[Outcome]] = {"working tree": [], args.ref: []}
    with GitRef(args.ref) as ref:
        systems = [("working tree", None), (args.ref, ref.env())]
        for round_no in range(args.rounds):
            for label, env in systems if round_no % 2 == 0 else systems[::-1]:
                print(
                    f"\n=== round {round_no + 1}: {label}{f' ({ref.commit})' if env else ''} ===",
                    flush=True,
                )
                run_args = args
                if args.profile:
                    # One profile per system: FILE.working-tree, FILE.<ref>.
                    suffix = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)
                    run_args = argparse.Namespace(
                        **{**vars(args), "profile": f"{args.profile}.{suffix}"}
                    )
                outcome = start_and_run(run_args, settings, db, pre, env)
                if outcome.profile:
                    print(f"\nprofile of the worker ({label}), encounters:")
                    print("\n".join(outcome.profile))
                runs[label].append(outcome)
    names = [r.wrk.label for r in runs["working tree"][0].rows]

    def med(label: str, i: int, get: Callable[[Row], float | None]) -> float:
        values = [v for o in runs[label] if (v := get(o.rows[i])) is not None]
        return statistics.median(values) if values else float("nan")

    print(f"\nside by side, medians of {args.rounds} round(s): working tree / {args.ref}")
    print("| query | queries/s | p50 ms | p99 ms | worker CPU ms/query | p99 ratio | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for i, name in enumerate(names):
        cells = {}
        for label in runs:
            cells[label] = {
                "qps": med(label, i, lambda r: r.per_second),
                "p50": med(label, i, lambda r: r.wrk.latency_ms["p50"]),
                "p99": med(label, i, lambda r: r.wrk.latency_ms["p99"]),
                "ms_per_query": med(label, i, lambda r: r.worker_ms_per_query),
            }
        new, old = cells["working tree"], cells[args.ref]
        p99_ratio = new["p99"] / old["p99"] if old["p99"] else float("nan")
        cpu_ratio = new["ms_per_query"] / old["ms_per_query"] if old["ms_per_query"] else 0.0
        print(
            f"| {name} | {new['qps']:,.0f} / {old['qps']:,.0f} | {new['p50']:.1f} / "
            f"{old['p50']:.1f} | {new['p99']:.1f} / {old['p99']:.1f} | "
            f"{new['ms_per_query']:.2f} / {old['ms_per_query']:.2f} | {p99_ratio:.2f} | "
            f"{cpu_ratio:.2f} |"
        )
        table.append({"query": name, "cells": cells, "p99_ratio": p99_ratio})
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "ref": args.ref,
        "rounds": args.rounds,
        "preconditions": pre.public(),
        "side_by_side": table,
        "runs": {
            label: [[r.as_dict() for r in o.rows] for o in outcomes]
            for label, outcomes in runs.items()
        },
        "durations_s": {},
    }


def main() -> None:
    """Parse the options, check the preconditions, run, report, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured row")
    parser.add_argument("--connections", type=int, default=TARGET_CLIENTS)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per query, first")
    parser.add_argument("--ingest-rate", type=float, default=200.0, help="req/s, row 2")
    # One wrk thread drives thousands of requests/s; a second would take a core from the worker.
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--min-rows", type=int, default=1_000_000)
    parser.add_argument("--settle-max", type=float, default=60.0)
    parser.add_argument(
        "--profile", metavar="FILE", help="also py-spy the worker on encounters (collapsed stacks)"
    )
    parser.add_argument(
        "--ref",
        metavar="GIT_REF",
        help="also run a worker of this git ref (a temporary worktree), alternating with the "
        "working tree's, and print both side by side",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --ref: rounds of both")
    parser.add_argument("--output", default=str(ROOT / "bench/results/read.json"))
    args = parser.parse_args()
    require_wrk()
    if args.profile:
        py_spy()
    started = time.monotonic()
    load_at_start = os.getloadavg()
    settings = Settings.from_env()
    print(
        f"read bench on {settings.postgres_host}:{settings.postgres_port}/{settings.postgres_db}"
        f"; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    host = machine()
    calibration = host.calibration_s
    print(host.line())
    db = Database(settings)
    try:
        pre = db.run(preconditions(db.conn, args.min_rows))
        show_preconditions(pre, args.min_rows, time.monotonic() - started)
        if args.ref:
            document = compare_with_ref(args, settings, db, pre)
        else:
            document = report(args, pre, start_and_run(args, settings, db, pre))
    finally:
        db.close()
    document["calibration_s"] = calibration
    document["machine"] = {"cpu": host.cpu, "cores": host.cores}
    document["durations_s"]["total_s"] = time.monotonic() - started
    document["load_average"] = {"start": load_at_start, "end": os.getloadavg()}
    print(f"total {document['durations_s']['total_s']:.0f} s")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
