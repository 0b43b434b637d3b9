"""One full worker at fixed ingest rates: how long from the 202 until the record is canonical.

    .venv/bin/python bench/end_to_end.py [--rates 100,200,300,400,500] [--duration 20]
        [--warmup 5] [--processes 2] [--worker-env KEY=VALUE ...]
        [--variant NAME:KEY=VALUE,KEY=VALUE ...] [--slo-p99-ms 250] [--drain-deadline 300]

    # variants side by side, rates taken in turn by each (the order alternates per rate):
    .venv/bin/python bench/end_to_end.py --variant uvloop:EVENT_LOOP=uvloop \\
        --variant asyncio:EVENT_LOOP=asyncio
    .venv/bin/python bench/end_to_end.py --variant c4: --variant c2:NORMALIZER_CONCURRENCY=2
    # the working tree beside a git ref (a temporary worktree whose code its worker runs):
    .venv/bin/python bench/end_to_end.py --rates 200,400 --ref 7354200

The worker is the default deployment (ingest + outbox relay + normalizer) on the stack of the
environment (POSTGRES_PORT, KAFKA_BROKERS, MINIO_ENDPOINT, as for the tests). Each variant's
worker has topics, a consumer group (APP_ID) and a database of its own
(``<POSTGRES_DB>_bench_e2e_<run>_<n>``, migrated here): the outbox relays of every worker on one
database share its rows, so two variants on one database would do part of each other's work.
Topics are made with ``exchange-stream create-topics``; topics, databases and the raw objects of
the sources sent are removed at the end.

For each rate, bench/openloop.py sends v2 FHIR bodies of a source of their own at a fixed rate
for ``--duration`` seconds (latency from each request's due time), then the script waits until
the worker has a canonical row for every accepted record (a deadline, never a fixed sleep) and
reads, from the database, ``normalized_at - ingested_at`` of that source's rows: ingested_at is
the event's occurred_at, set just before the ingest commit; normalized_at is the time of the
canonical transaction (its now()). Per rate: accepted/s, ingest p50/p99, 202->canonical
p50/p95/p99, the records without a canonical row when the load window closed ("behind"), the
worker's CPU during the load (% of one core) and per record (load and drain), the event-loop lag
from the worker's ``event_loop_lag_seconds`` histogram when it has one (bucket upper bounds),
the client's CPU and how busy the machine was; and the work of one record as the services
count it: transactions, rows written and read, blocks and sessions of the run's database
(``pg_stat_database``), and the workers' raw store calls (``raw_store_calls_total``: S3 PUT and
GET, and reads served from the recent bodies). JSON goes to bench/results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from compare_seed import database_env, ensure_database, migrate, settle
from harness import ROOT, GitRef, Machine, bodies, machine, wait_ready
from openloop import OpenLoopResult, prepare_client, run_openloop
from stackprocs import WindowMeter, stack_pids

from exchange_stream.infra.config import Settings
from tests.support import WorkerProcess, drop_database

LAG_METRIC = "event_loop_lag_seconds"
CLI = Path(sys.executable).parent / "exchange-stream"


# ------------------------------------------------------------------ settings, variants ----


@dataclass(frozen=True)
class Variant:
    """A named set of worker settings compared against the others in one run."""

    name: str
    env: dict[str, str]


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a mapping; exit with a message on a malformed one."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        env[key.strip()] = value
    return env


def parse_variant(text: str) -> Variant:
    """``NAME:KEY=VAL,KEY=VAL`` (or ``NAME:`` for the defaults) as a Variant."""
    name, sep, settings = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"expected NAME:KEY=VAL,KEY=VAL, got {text!r}")
    return Variant(name, parse_env([s for s in settings.split(",") if s]))


# ----------------------------------------------------------------- an isolated slice ----


class IsolatedRun:
    """Topics, a consumer group and a database no other worker uses, made and removed here."""

    def __init__(self, label: str, partitions: int | None = None) -> None:
        self.label = label
        prefix = f"bench.{label}"
        base_db = os.environ.get("POSTGRES_DB", "exchange")
        if url := os.environ.get("DATABASE_URL"):
            base_db = urllib.parse.urlsplit(url).path.lstrip("/") or base_db
        self.database = f"{base_db}_bench_{label.replace('-', '_')}"
        self.topics = {
            "TOPIC_RECORD_INGESTED_V1": f"{prefix}.v1",
            "TOPIC_RECORD_INGESTED_V2": f"{prefix}.v2",
            "KAFKA_DLQ_TOPIC_V1": f"{prefix}.v1.dlq",
            "KAFKA_DLQ_TOPIC_V2": f"{prefix}.v2.dlq",
            "TOPIC_CONTROL": f"{prefix}.control",
            "TOPIC_EXPORTS": f"{prefix}.exports",
        }
        self.partitions = partitions
        self.created = False
        self.sources: list[str] = []  # whose raw objects are removed with the rest

    def env(self) -> dict[str, str]:
        """What a worker or a CLI command of this slice needs on top of the environment."""
        env = {**self.topics, **database_env(self.database), "APP_ID": f"bench-{self.label}"}
        if self.partitions is not None:
            env["TOPIC_PARTITIONS"] = str(self.partitions)
        return env

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, **self.env()})

    @property
    def group(self) -> str:
        return self.env()["APP_ID"]

    def create(self) -> None:
        """The database (migrated with the CLI) and the topics (``exchange-stream
        create-topics``)."""
        self.created = True
        asyncio.run(ensure_database(self.database))
        migrate(database_env(self.database))
        done = subprocess.run(
            [str(CLI), "create-topics"],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"create-topics failed:\n{done.stdout}\n{done.stderr}")

    def destroy(self) -> None:
        """Delete the topics, drop the database and delete the raw objects of the sources
        sent (after the workers have stopped)."""
        if not self.created:
            return
        settings = self.settings
        asyncio.run(_delete_topics(settings.broker_list, settings.all_topics()))
        asyncio.run(drop_database(Settings.from_env(os.environ).dsn, self.database))
        asyncio.run(_delete_objects(settings, [f"{s}/" for s in self.sources]))


async def _delete_topics(brokers: list[str], names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if mine := [n for n in names if n in existing]:
            await admin.delete_topics(mine)
    except KafkaError as exc:
        print(f"could not delete topics {names}: {exc!r}", file=sys.stderr)
    finally:
        await admin.close()


async def _delete_objects(settings: Settings, prefixes: list[str]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from tests.support import independent_s3_client

    try:
        async with independent_s3_client(settings) as s3:
            keys = []
            for prefix in prefixes:
                pages = s3.get_paginator("list_objects_v2").paginate(
                    Bucket=settings.raw_bucket, Prefix=prefix
                )
                async for page in pages:
                    keys += [o["Key"] for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):  # the most one DeleteObjects request takes
                chunk = [{"Key": k} for k in keys[i : i + 1000]]
                await s3.delete_objects(
                    Bucket=settings.raw_bucket, Delete={"Objects": chunk, "Quiet": True}
                )
    except (BotoCoreError, ClientError) as exc:
        print(f"could not delete the raw objects of {prefixes}: {exc!r}", file=sys.stderr)


def start_worker(workdir: Path, env: Mapping[str, str]) -> WorkerProcess:
    """Start an ``exchange-stream worker`` and wait until it answers /healthz and /readyz."""
    worker = WorkerProcess(workdir, env_overrides=dict(env))
    worker.start()
    asyncio.run(worker.wait_healthy(timeout=180))
    asyncio.run(wait_ready(worker.base_url, worker.log_path))
    return worker


async def wait_assigned(
    brokers: list[str], group: str, topic: str, members: int, within_s: float = 180.0
) -> dict[str, list[int]]:
    """Wait until ``group`` is stable with ``members`` members that between them hold every
    partition of ``topic``, each member at least one; return member id -> its partitions."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
    from aiokafka.errors import GroupCoordinatorNotAvailableError

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        wanted = {p["partition"] for p in described["partitions"]}
        deadline = time.monotonic() + within_s
        seen = "nothing yet"
        while time.monotonic() < deadline:
            try:
                (response,) = await admin.describe_consumer_groups([group])
            except GroupCoordinatorNotAvailableError:
                # A new broker makes its offsets topic (and so the coordinator) on first use.
                seen = "no group coordinator yet"
                await asyncio.sleep(0.5)
                continue
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            state, group_members = response.groups[0][2], response.groups[0][5]
            held: dict[str, list[int]] = {}
            for member in group_members:
                member_id, assignment = member[0], member[4]
                decoded = (
                    ConsumerProtocolMemberAssignment.decode(assignment) if assignment else None
                )
                held[member_id] = sorted(
                    p
                    for t, parts in (decoded.assignment if decoded else [])
                    if t == topic
                    for p in parts
                )
            covered = {p for parts in held.values() for p in parts}
            seen = f"state {state}, {len(held)} member(s), partitions of {topic}: {held}"
            if (
                state == "Stable"
                and len(held) == members
                and covered == wanted
                and all(held.values())
            ):
                return held
            await asyncio.sleep(0.5)
        raise TimeoutError(f"group {group} not assigned within {within_s} s: {seen}")
    finally:
        await admin.close()


# -------------------------------------------------------------------- measurements ----


def write_source_bodies(path: Path, source: str) -> Path:
    """The bench's 150 v2 FHIR bodies with ``source`` set, one JSON document per line."""
    lines = []
    for body in bodies():
        doc = orjson.loads(body)
        doc["source"] = source
        lines.append(orjson.dumps(doc))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@dataclass
class CanonicalStats:
    """202 -> canonical of one source's rows, in ms, and the rows canonical by a moment."""

    rows: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    canonical_by_end: int
    # From the first to the last ingested_at: about the load window when the client kept pace.
    ingested_span_s: float


async def wait_canonical(dsn: str, source: str, expected: int, within_s: float) -> int:
    """Poll until ``source`` has ``expected`` canonical rows or ``within_s`` passes; the count."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within_s
        while True:
            n = await conn.fetchval(
                "SELECT count(*) FROM canonical_records WHERE source = $1", source
            )
            if n >= expected or time.monotonic() >= deadline:
                return n
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def canonical_stats(dsn: str, source: str, load_end: float) -> CanonicalStats:
    """Percentiles of ``normalized_at - ingested_at`` over ``source``'s canonical rows, and how
    many were canonical at epoch second ``load_end``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS n,
                   percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY e2e) AS p,
                   max(e2e) AS worst,
                   count(*) FILTER (WHERE normalized_at <= to_timestamp($2)) AS by_end,
                   extract(epoch FROM max(ingested_at) - min(ingested_at)) AS span
            FROM (SELECT normalized_at, ingested_at,
                         extract(epoch FROM normalized_at - ingested_at) * 1000 AS e2e
                  FROM canonical_records WHERE source = $1) AS t
            """,
            source,
            load_end,
        )
    finally:
        await conn.close()
    p = [float(x) for x in row["p"]] if row["p"] else [math.nan] * 3
    return CanonicalStats(
        rows=row["n"],
        p50_ms=p[0],
        p95_ms=p[1],
        p99_ms=p[2],
        max_ms=float(row["worst"]) if row["worst"] is not None else math.nan,
        canonical_by_end=row["by_end"],
        ingested_span_s=float(row["span"] or 0.0),
    )


Buckets = dict[float, float]  # upper bound (s) -> cumulative count


async def _scrape_buckets(url: str, name: str) -> Buckets | None:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    buckets: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name == f"{name}_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value  # summed over other labels
    return buckets or None


# The work of one record, counted by the services: the database's own counters (this run's
# database alone) and the workers' raw store calls. Per accepted record, load and drain.
DB_WORK = """
SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_returned, tup_fetched,
       blks_hit + blks_read AS blocks, sessions
FROM pg_stat_database WHERE datname = current_database()
"""
RAW_CALLS = ("put", "get", "get_cached", "delete")
WRITTEN = ("tup_inserted", "tup_updated", "tup_deleted")
# Per table: rows written, rows read by sequential scans and by index scans.
TABLE_WORK = """
SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS written,
       coalesce(seq_tup_read, 0) AS seq_read, coalesce(idx_tup_fetch, 0) AS idx_read,
       coalesce(seq_scan, 0) AS seq_scans
FROM pg_stat_user_tables
"""


async def _db_work(dsn: str) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(DB_WORK)
        tables = await conn.fetch(TABLE_WORK)
    finally:
        await conn.close()
    work = {k: float(v) for k, v in row.items()}
    for t in tables:
        for k in ("written", "seq_read", "idx_read", "seq_scans"):
            work[f"{t['relname']}.{k}"] = float(t[k])
    return work


async def _raw_calls(urls: Sequence[str]) -> dict[str, float]:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    calls = dict.fromkeys(RAW_CALLS, 0.0)
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name == "raw_store_calls_total" and s.labels.get("call") in calls:
                        calls[s.labels["call"]] += s.value
    return calls


def work_counters(dsn: str, urls: Sequence[str]) -> dict[str, float]:
    """The database's counters and the workers' raw store calls, once Postgres has published
    what its backends did (they flush their counters at most once a second): read until two
    reads a second apart agree on what was written, for at most 10 s (the reads themselves
    are transactions, sessions and catalog rows read, so those are not compared)."""
    last: dict[str, float] | None = None
    for _ in range(10):
        now = {**asyncio.run(_db_work(dsn)), **asyncio.run(_raw_calls(urls))}
        settled = [k for k in now if k in WRITTEN or k in RAW_CALLS or k.endswith(".written")]
        if last is not None and all(now[k] == last.get(k) for k in settled):
            return now
        last = now
        time.sleep(1.0)
    return last or {}


def per_record(
    before: Mapping[str, float], after: Mapping[str, float], records: int
) -> dict[str, float]:
    """Each counter's growth per record (the reads' own transactions and sessions, two and two
    per measurement here, are left in: a few per thousand records)."""
    if not records:
        return {}
    return {k: round((after[k] - before.get(k, 0.0)) / records, 2) for k in after}


def scrape_lag(urls: Sequence[str]) -> Buckets | None:
    """The workers' ``event_loop_lag_seconds`` buckets, summed; None when none exports it."""

    async def all_of() -> list[Buckets | None]:
        return await asyncio.gather(*(_scrape_buckets(u, LAG_METRIC) for u in urls))

    found = [b for b in asyncio.run(all_of()) if b is not None]
    if not found:
        return None
    total: Buckets = {}
    for b in found:
        for le, v in b.items():
            total[le] = total.get(le, 0.0) + v
    return total


def lag_summary(before: Buckets | None, after: Buckets | None) -> dict[str, str] | None:
    """p99 and max of the lag samples between two scrapes, as bucket upper bounds in ms
    (``<=5`` means the sample fell in the bucket ending at 5 ms); None without the metric."""
    if before is None or after is None:
        return None
    delta = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    count = delta[-1][1] if delta else 0.0
    if count <= 0:
        return {"p99": "-", "max": "-", "samples": "0"}

    def bound(fraction: float) -> str:
        finite = [le for le, _ in delta if math.isfinite(le)]
        for le, cumulative in delta:
            if cumulative >= fraction * count:
                return f"<={le * 1000:g}" if math.isfinite(le) else f">{finite[-1] * 1000:g}"
        return "?"

    return {"p99": bound(0.99), "max": bound(1.0), "samples": f"{count:.0f}"}


@dataclass
class Measurement:
    """One fixed-rate cell: the client's view, the database's view and the CPU it cost."""

    label: str
    target_rate: float
    workers: int
    source: str
    scheduled: int
    accepted: int
    errors: dict[str, int]
    accepted_per_s: float
    ingest_ms: dict[str, float]
    late_p99_ms: float
    e2e: CanonicalStats
    behind_at_end: int
    drained: bool
    drain_s: float
    cpu_pct: dict[str, float | None]
    worker_cpu_ms_per_record: float
    client_cpu_pct: float
    client_processes: int
    machine_busy_pct: float
    loop_lag_ms: dict[str, str] | None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def all_accepted(self) -> bool:
        return not self.errors and self.accepted >= self.scheduled

    def within(self, slo_p99_ms: float) -> bool:
        """202->canonical p99 within the SLO, every request accepted, every record canonical."""
        return self.all_accepted and self.drained and self.e2e.p99_ms <= slo_p99_ms

    def worker_cpu_pct(self) -> list[float | None]:
        return [v for k, v in self.cpu_pct.items() if k.startswith("worker")]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def measure(
    workers: Sequence[WorkerProcess],
    *,
    run: IsolatedRun,
    rate: float,
    duration_s: float,
    processes: int,
    workdir: Path,
    label: str,
    others: Mapping[str, list[int]] | None = None,
    idle_pids: Sequence[int] = (),
    drain_deadline_s: float = 300.0,
    settle_max_s: float = 60.0,
) -> Measurement:
    """Open-loop ingest at ``rate``/s spread over ``workers``, then wait for the canonical rows.

    The records go to a new source of ``run`` (remembered there for the clean-up) and are
    counted in its database. Before the load, waits until the workers (and ``idle_pids``) are
    idle. CPU is measured for each worker and for each tree of ``others`` (name -> root pids)
    over the load window (the schedule's first to last due time); the workers' CPU per record
    covers the window and the drain that follows it. ``behind_at_end``: accepted records
    without a canonical row when the window closed.
    """
    pids = [w.proc.pid for w in workers if w.proc is not None]
    settle([*pids, *idle_pids], settle_max_s)
    source = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    run.sources.append(source)
    dsn = run.settings.dsn
    bodies_path = write_source_bodies(workdir / f"{source}.jsonl", source)
    urls = [f"{w.base_url}/v2/ingest" for w in workers]
    lag_before = scrape_lag([w.base_url for w in workers])
    work_before = work_counters(dsn, [w.base_url for w in workers])
    groups = {f"worker-{i + 1}": [pid] for i, pid in enumerate(pids)}
    groups.update(others or {})
    # The children need about a second to start; the window is known before they do (and a
    # first build of the Go client happens before it is fixed).
    prepare_client()
    start_at = time.time() + 1.5
    load_end = start_at + duration_s
    meter = WindowMeter(groups, start_at, load_end)
    meter.begin()
    result: OpenLoopResult = run_openloop(
        urls,
        rate=rate,
        duration_s=duration_s,
        bodies_path=bodies_path,
        processes=processes,
        start_at=start_at,
    )
    cpu_pct, busy = meter.result()
    drain_started = time.monotonic()
    canonical = asyncio.run(wait_canonical(dsn, source, result.ok, drain_deadline_s))
    drain_s = time.monotonic() - drain_started
    used = meter.cpu_seconds_since_start()
    lag_after = scrape_lag([w.base_url for w in workers])
    stats = asyncio.run(canonical_stats(dsn, source, load_end))
    work = per_record(work_before, work_counters(dsn, [w.base_url for w in workers]), result.ok)
    worker_cpu_s = sum(v or 0.0 for k, v in used.items() if k.startswith("worker"))
    # Every measured process's CPU per record over the window and the drain: the workers
    # together, then each server of the stack; the client is not among them.
    split = {"worker": worker_cpu_s}
    split.update({k: v for k, v in used.items() if not k.startswith("worker") and v is not None})
    cpu_ms = {k: 1000 * v / result.ok if result.ok else math.nan for k, v in split.items()}
    bodies_path.unlink()
    return Measurement(
        label=label,
        target_rate=rate,
        workers=len(workers),
        source=source,
        scheduled=result.scheduled,
        accepted=result.ok,
        errors=result.errors,
        accepted_per_s=result.ok_per_second,
        ingest_ms=result.latency_ms,
        late_p99_ms=result.late_ms["p99"],
        e2e=stats,
        behind_at_end=max(0, result.ok - stats.canonical_by_end),
        drained=canonical >= result.ok,
        drain_s=drain_s,
        cpu_pct=cpu_pct,
        worker_cpu_ms_per_record=1000 * worker_cpu_s / result.ok if result.ok else math.nan,
        client_cpu_pct=result.client_cpu_pct,
        client_processes=processes,
        machine_busy_pct=busy,
        loop_lag_ms=lag_summary(lag_before, lag_after),
        extra={"per_record": work, "cpu_ms_per_record": cpu_ms},
    )


# ------------------------------------------------------------------------- output ----

HEADER = (
    f"{'rate':>6}{'acc/s':>8}{'ing p50':>9}{'ing p99':>9}{'e2e p50':>9}{'e2e p95':>9}"
    f"{'e2e p99':>9}{'behind':>8}{'drain s':>8}{'wrk cpu%':>9}{'ms/rec':>8}{'lag p99':>9}"
    f"{'lag max':>9}{'client%':>8}{'busy%':>7}"
)


def format_row(m: Measurement) -> str:
    """One table line; ``!`` after the rate marks a cell outside the SLO's other conditions
    (a request not accepted, or records not canonical by the deadline)."""
    lag = m.loop_lag_ms or {"p99": "n/a", "max": "n/a"}
    worker = sum(v or 0.0 for v in m.worker_cpu_pct())
    mark = "" if m.all_accepted and m.drained else "!"
    return (
        f"{m.target_rate:>5.0f}{mark or ' '}{m.accepted_per_s:>8.1f}{m.ingest_ms['p50']:>9.1f}"
        f"{m.ingest_ms['p99']:>9.1f}{m.e2e.p50_ms:>9.1f}{m.e2e.p95_ms:>9.1f}{m.e2e.p99_ms:>9.1f}"
        f"{m.behind_at_end:>8}{m.drain_s:>8.1f}{worker:>9.0f}{m.worker_cpu_ms_per_record:>8.2f}"
        f"{lag['p99']:>9}{lag['max']:>9}{m.client_cpu_pct:>8.0f}{m.machine_busy_pct:>7.0f}"
    )


def highest_within(rows: Sequence[Measurement], slo_p99_ms: float) -> str:
    """The highest rate whose cell met the SLO, as text."""
    within = [m.target_rate for m in rows if m.within(slo_p99_ms)]
    return f"{max(within):g} req/s" if within else "none of the rates tried"


def print_table(title: str, rows: Sequence[Measurement], slo_p99_ms: float) -> None:
    """A variant's table and its highest rate within the SLO."""
    print(f"\n{title}")
    print(HEADER)
    for m in rows:
        print(format_row(m))
        if m.errors:
            print(f"{'':>6}errors: {m.errors}")
    print(
        "machine CPU per record, ms (window and drain; worker, Postgres, Kafka, S3 server; "
        "the client excluded):"
    )
    for m in rows:
        split = m.extra.get("cpu_ms_per_record") or {}
        if split:
            parts = "  ".join(f"{k} {v:.2f}" for k, v in split.items())
            print(f"{m.target_rate:>6.0f}  total {sum(split.values()):.2f} = {parts}")
    print("work per record (counted by Postgres for this run's database, and by the workers):")
    for m in rows:
        w = m.extra.get("per_record") or {}
        if w:
            print(
                f"{m.target_rate:>6.0f}  pg: {w['xact_commit']:.2f} transactions, rows inserted "
                f"{w['tup_inserted']:.2f} updated {w['tup_updated']:.2f} deleted "
                f"{w['tup_deleted']:.2f}, rows read {w['tup_returned'] + w['tup_fetched']:.1f}, "
                f"blocks {w['blocks']:.1f}, sessions {w['sessions']:.3f}; raw store: put "
                f"{w['put']:.2f}, get {w['get']:.2f} (S3), {w['get_cached']:.2f} (cached), "
                f"delete {w['delete']:.2f}"
            )
            for kind in ("written", "seq_read", "idx_read"):
                top = sorted(
                    ((k.rsplit(".", 1)[0], v) for k, v in w.items() if k.endswith(f".{kind}")),
                    key=lambda kv: -kv[1],
                )[:5]
                shown = ", ".join(f"{t} {v:.2f}" for t, v in top if v > 0)
                print(f"{'':>8}rows {kind.replace('_', ' ')} by table: {shown or 'none'}")
    print(
        f"highest rate with 202→canonical p99 ≤ {slo_p99_ms:g} ms and every request accepted: "
        f"{highest_within(rows, slo_p99_ms)}"
    )


LEGEND = (
    "ms; ing = ingest latency from each request's due time; e2e = 202→canonical "
    "(normalized_at - ingested_at); behind = accepted but not canonical when the load window "
    "closed; drain s = wait after the client's last answer for the last canonical row; "
    "wrk cpu% = worker CPU during the window (% of one core); ms/rec = worker CPU per record "
    "(window and drain); lag = event-loop lag bucket bound (n/a: not exported); "
    "busy% = whole machine; ! = not every request accepted or not every record canonical "
    "by the deadline"
)


# ---------------------------------------------------------------------------- main ----


def alternating(rates: Sequence[float], variants: Sequence[Variant]) -> Iterator[tuple]:
    """(rate, variant) cells: each rate by every variant, the order reversed every other rate
    so that no variant always runs right after another's drain."""
    for i, rate in enumerate(rates):
        for variant in variants if i % 2 == 0 else list(reversed(variants)):
            yield rate, variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,200,300,400,500", help="requests/s, comma list")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per rate")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, per worker, at start")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VAL,...")
    parser.add_argument(
        "--ref",
        metavar="GIT_REF",
        help="also run a worker of this git ref (a temporary worktree) as a variant named after "
        "it, beside the working tree's (variant 'working-tree'), alternating",
    )
    parser.add_argument("--slo-p99-ms", type=float, default=250.0)
    parser.add_argument("--drain-deadline", type=float, default=300.0, help="seconds per rate")
    parser.add_argument("--output", default=str(ROOT / "bench/results/end_to_end.json"))
    args = parser.parse_args()
    host = machine()
    print(host.line(), flush=True)
    rates = [float(r) for r in args.rates.split(",") if r]
    common = parse_env(args.worker_env)
    variants = [parse_variant(v) for v in args.variant] or [Variant("default", {})]
    with contextlib.ExitStack() as stack:
        if args.ref:
            ref = stack.enter_context(GitRef(args.ref))
            if not args.variant:
                variants = [Variant("working-tree", {})]
            variants.append(Variant(args.ref, ref.env()))
        run_variants(args, host, rates, common, variants)


def run_variants(
    args: argparse.Namespace,
    host: Machine,
    rates: list[float],
    common: dict[str, str],
    variants: list[Variant],
) -> None:
    """Every variant's worker at every rate, alternating; the tables and the JSON."""
    if len({v.name for v in variants}) != len(variants):
        raise SystemExit("variant names must differ")

    run = uuid.uuid4().hex[:6]
    slices = {v.name: IsolatedRun(f"e2e-{run}-{i}") for i, v in enumerate(variants)}
    workers: dict[str, WorkerProcess] = {}
    rows: list[Measurement] = []
    try:
        with tempfile.TemporaryDirectory(prefix="end-to-end-") as tmp:
            tmp_path = Path(tmp)
            for v in variants:
                iso = slices[v.name]
                iso.create()
                env = {**common, **v.env, **iso.env()}
                workers[v.name] = start_worker(tmp_path / v.name, env)
                asyncio.run(
                    wait_assigned(
                        iso.settings.broker_list,
                        iso.group,
                        iso.topics["TOPIC_RECORD_INGESTED_V2"],
                        members=1,
                    )
                )
                shown = ", ".join(f"{k}={val}" for k, val in {**common, **v.env}.items())
                pid = workers[v.name].proc.pid if workers[v.name].proc else None
                print(f"variant {v.name}: worker pid {pid} ({shown or 'defaults'})")
            print(
                f"{len(variants)} variant(s), rates {args.rates}, {args.duration:g} s each, "
                f"{args.processes} client processes; warming up {args.warmup:g} s per worker",
                flush=True,
            )
            all_pids = [w.proc.pid for w in workers.values() if w.proc is not None]
            servers = {name: [pid] for name, pid in stack_pids().items()}
            print(f"stack servers measured: {', '.join(servers) or 'none found'}", flush=True)
            for v in variants:
                if args.warmup > 0:
                    measure(
                        [workers[v.name]],
                        run=slices[v.name],
                        rate=min(rates),
                        duration_s=args.warmup,
                        processes=args.processes,
                        workdir=tmp_path,
                        label=f"{v.name}-warmup",
                        idle_pids=all_pids,
                        drain_deadline_s=args.drain_deadline,
                    )
            print(f"{'variant':<12}{HEADER}", flush=True)
            for rate, v in alternating(rates, variants):
                worker = workers[v.name]
                if worker.proc is None or worker.proc.poll() is not None:
                    raise RuntimeError(f"worker {v.name} exited; see {worker.log_path}")
                m = measure(
                    [worker],
                    run=slices[v.name],
                    rate=rate,
                    duration_s=args.duration,
                    processes=args.processes,
                    workdir=tmp_path,
                    label=v.name,
                    others=servers,
                    idle_pids=all_pids,
                    drain_deadline_s=args.drain_deadline,
                )
                m.extra.update(variant=v.name, env={**common, **v.env})
                rows.append(m)
                print(f"{v.name:<12}{format_row(m)}", flush=True)
    finally:
        for worker in workers.values():
            worker.stop()
        for iso in slices.values():
            iso.destroy()

    print(f"\n({LEGEND})")
    for v in variants:
        shown = ", ".join(f"{k}={val}" for k, val in {**common, **v.env}.items()) or "defaults"
        print_table(f"{v.name} ({shown})", [m for m in rows if m.label == v.name], args.slo_p99_ms)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": asdict(host),
                "duration_s": args.duration,
                "processes": args.processes,
                "slo_p99_ms": args.slo_p99_ms,
                "variants": {v.name: {**common, **v.env} for v in variants},
                "highest_within_slo": {
                    v.name: highest_within([m for m in rows if m.label == v.name], args.slo_p99_ms)
                    for v in variants
                },
                "rows": [m.as_dict() for m in rows],
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
