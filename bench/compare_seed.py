"""/v2/ingest of the seed's Go ingest-api beside an ingest-only and a full worker, in one run.

    .venv/bin/python bench/compare_seed.py --seed-url http://127.0.0.1:28080 [--seed-pid PID]
        [--connections 1,8,32,64] [--duration 8] [--rounds 2] [--systems seed,ingest-only,full]

The seed is the original system (github:joshuakerndev/datavant-style-exchange); build and start
its ingest-api outside this repository, against its own database, bucket and topics, and pass
its URL (or set SEED_URL; SEED_PID lets its CPU be shown). Without it, its rows are skipped.

This script starts two workers on the stack of the environment (POSTGRES_PORT, KAFKA_BROKERS,
MINIO_ENDPOINT, as for the tests), both kept running for the whole run:
  ingest-only  consumes a topic nobody publishes to (KAFKA_TOPICS), so it never normalizes; it
               has its own database (``<POSTGRES_DB>_bench_ingest_only``, migrated here) and its
               events go to a topic nobody reads, so the other worker's relay and normalizer
               never do part of its work
  full         ingest + outbox relay + normalizer, on a topic of its own for this run, on the
               stack's database (POSTGRES_DB, migrated here)
At each connection count the systems take turns (the order reverses every round). Before each
cell, the script waits until every measured process is idle, so a normalizer still draining the
previous cell does not take CPU from the next. The client is ``wrk`` with bench/wrk/ingest.lua;
every row shows wrk's own CPU and the server's (% of one core) and how busy the machine was.
Results are also written as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness import ROOT, machine, wait_ready
from wrk import (
    HEADER,
    WrkResult,
    format_row,
    process_cpu_seconds,
    require_wrk,
    run_wrk,
    write_bodies,
)

from tests.support import WorkerProcess

SYSTEMS = ("seed", "ingest-only", "full")
TITLES = {
    "seed": "seed Go ingest-api",
    "ingest-only": "ingest-only worker",
    "full": "full worker (ingest + relay + normalizer)",
}
IDLE_CPU_PCT = 15.0  # an idle worker (heartbeats, metrics) stays well under this


@dataclass
class System:
    """A system under test: where to send requests and which process serves them."""

    name: str
    url: str
    pid: int | None


def seed_reachable(url: str) -> str | None:
    """None when the seed answers ``/healthz`` with 200; otherwise why not."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=3) as r:
            return None if r.status == 200 else f"/healthz answered {r.status}"
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)


def database_env(name: str) -> dict[str, str]:
    """Environment that points a worker or ``migrate`` at database ``name`` of the same server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        parts = urllib.parse.urlsplit(url)
        return {"DATABASE_URL": urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))}
    return {"POSTGRES_DB": name}


async def ensure_database(name: str) -> None:
    """Create database ``name`` on the configured server unless it exists."""
    import asyncpg

    url = os.environ.get("DATABASE_URL")
    conn = await (
        asyncpg.connect(url)
        if url
        else asyncpg.connect(
            host=os.environ.get("POSTGRES_HOST", "127.0.0.1"),
            port=int(os.environ.get("POSTGRES_PORT", "5432")),
            user=os.environ.get("POSTGRES_USER", "exchange"),
            password=os.environ.get("POSTGRES_PASSWORD", "exchange"),
            database=os.environ.get("POSTGRES_DB", "exchange"),
        )
    )
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            # Identifiers cannot be bind parameters; the name is built by this script.
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def migrate(env: dict[str, str]) -> None:
    """Apply the project's migrations with its own CLI, to the database named in ``env``."""
    cli = Path(sys.executable).parent / "exchange-stream"
    done = subprocess.run(
        [str(cli), "migrate"], env={**os.environ, **env}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"migrate failed:\n{done.stdout}\n{done.stderr}")


async def topics(action: str, names: list[str]) -> None:
    """Create (``action='create'``) or delete this run's topics."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    brokers = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092").split(",")
    partitions = int(os.environ.get("TOPIC_PARTITIONS", "6"))
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        if action == "create":
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        else:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def settle(pids: list[int], max_wait_s: float) -> float:
    """Wait until each process uses under IDLE_CPU_PCT of a core over 0.5 s; return the wait."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = {pid: process_cpu_seconds(pid) for pid in pids}
        time.sleep(0.5)
        busy = [
            pid for pid in pids if 200 * (process_cpu_seconds(pid) - before[pid]) >= IDLE_CPU_PCT
        ]
        if not busy:
            break
    return time.monotonic() - started


def start_worker(workdir: Path, env: dict[str, str]) -> WorkerProcess:
    """Start an ``exchange-stream worker`` and wait until it is ready (S3 and Postgres answer)."""
    worker = WorkerProcess(workdir, env_overrides=env)
    worker.start()
    asyncio.run(worker.wait_healthy(timeout=120))
    asyncio.run(wait_ready(worker.base_url, worker.log_path))
    return worker


def cell_text(r: WrkResult) -> str:
    """A table cell: req/s, p50, p99 (ms), client CPU %."""
    lat = r.latency_ms
    errors = sum(r.errors.values())
    text = (
        f"{r.ok_per_second:.0f} req/s, p50 {lat['p50']:.1f}, p99 {lat['p99']:.1f}, "
        f"client {r.client_cpu_pct:.0f} %"
    )
    return text + (f", {errors} errors" if errors else "")


def print_tables(rows: list[WrkResult], systems: list[str], levels: list[int]) -> None:
    """Every cell as measured, then one Markdown row per connection count (rounds joined by /)."""
    print("\nall cells (latency in ms; CPU in % of one core; busy% = whole machine)")
    print(HEADER)
    for r in rows:
        print(format_row(r))
    print("\nreq/s of 2xx answers, p50 and p99 in ms, client CPU in % of one core")
    print("| clients | " + " | ".join(TITLES[s] for s in systems) + " |")
    print("|---|" + "---|" * len(systems))
    for c in levels:
        cells = []
        for s in systems:
            mine = [r for r in rows if r.label == s and r.connections == c]
            cells.append(" / ".join(cell_text(r) for r in mine) or "skipped")
        print(f"| {c} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-url", default=os.environ.get("SEED_URL"))
    parser.add_argument("--seed-pid", type=int, default=os.environ.get("SEED_PID"))
    parser.add_argument("--connections", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per system, at start")
    parser.add_argument("--settle-max", type=float, default=30.0)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--output", default=str(ROOT / "bench/results/compare_seed.json"))
    args = parser.parse_args()
    host = machine()
    print(host.line(), flush=True)
    require_wrk()
    levels = [int(c) for c in args.connections.split(",")]
    wanted = [s for s in args.systems.split(",") if s]
    if unknown := set(wanted) - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")

    skipped: dict[str, str] = {}
    if "seed" in wanted:
        why = (
            "no --seed-url (or SEED_URL) given"
            if not args.seed_url
            else seed_reachable(args.seed_url)
        )
        if why:
            skipped["seed"] = why
            print(
                f"seed rows skipped: {why}. Build the seed's services/ingest-api-go outside this "
                "repository, start it on its own database, bucket and topics, and pass "
                "--seed-url http://HOST:PORT (and --seed-pid to show its CPU).",
                file=sys.stderr,
            )
            wanted.remove("seed")
    if not wanted:
        raise SystemExit("nothing left to measure")

    run = uuid.uuid4().hex[:8]
    full_topic, sink_topic, idle_topic = (f"bench.cmp.{run}.{t}" for t in ("v2", "sink", "idle"))
    ingest_db = f"{os.environ.get('POSTGRES_DB', 'exchange')}_bench_ingest_only"
    run_topics = [full_topic, sink_topic, idle_topic]
    workers: dict[str, WorkerProcess] = {}
    rows: list[WrkResult] = []
    if workers_wanted := [s for s in wanted if s != "seed"]:
        asyncio.run(topics("create", run_topics))
    try:
        with tempfile.TemporaryDirectory(prefix="compare-seed-") as tmp:
            tmp_path = Path(tmp)
            bodies_path = write_bodies(tmp_path / "bodies.jsonl")
            if "ingest-only" in wanted:
                asyncio.run(ensure_database(ingest_db))
                migrate(database_env(ingest_db))
                workers["ingest-only"] = start_worker(
                    tmp_path / "ingest-only",
                    {
                        **database_env(ingest_db),
                        "APP_ID": f"bench-cmp-{run}-ingest",
                        "TOPIC_RECORD_INGESTED_V2": sink_topic,
                        "KAFKA_TOPICS": idle_topic,
                    },
                )
            if "full" in wanted:
                # The stack's own database (POSTGRES_DB): on a fresh stack nothing migrated it.
                migrate({})
                workers["full"] = start_worker(
                    tmp_path / "full",
                    {
                        "APP_ID": f"bench-cmp-{run}-full",
                        "TOPIC_RECORD_INGESTED_V2": full_topic,
                        "KAFKA_TOPICS": full_topic,
                    },
                )
            systems = {
                name: System(name, w.base_url, w.proc.pid if w.proc else None)
                for name, w in workers.items()
            }
            if "seed" in wanted:
                systems["seed"] = System("seed", args.seed_url.rstrip("/"), args.seed_pid)
            order = [s for s in SYSTEMS if s in systems]
            watched = [s.pid for s in systems.values() if s.pid is not None]
            print(
                f"{len(order)} systems, connections {levels}, {args.duration:g} s per cell, "
                f"{args.rounds} round(s); warming up {args.warmup:g} s each",
                flush=True,
            )
            for name in order:
                run_wrk(
                    systems[name].url,
                    connections=8,
                    duration_s=args.warmup,
                    bodies_path=bodies_path,
                )
            print(HEADER + "   settle s", flush=True)
            for round_no in range(args.rounds):
                turn = order if round_no % 2 == 0 else order[::-1]
                for c in levels:
                    for name in turn:
                        system = systems[name]
                        for worker in workers.values():
                            if worker.proc is None or worker.proc.poll() is not None:
                                raise RuntimeError(f"a worker exited; see {worker.log_path}")
                        waited = settle(watched, args.settle_max)
                        row = run_wrk(
                            system.url,
                            connections=c,
                            duration_s=args.duration,
                            bodies_path=bodies_path,
                            server_pids=[system.pid] if system.pid else [],
                            label=name,
                        )
                        row.extra = {"round": round_no + 1, "settle_s": round(waited, 1)}
                        rows.append(row)
                        print(f"{format_row(row)}{waited:>9.1f}", flush=True)
    finally:
        for worker in workers.values():
            worker.stop()
        if workers_wanted:
            asyncio.run(topics("delete", run_topics))

    print_tables(rows, [s for s in SYSTEMS if s in wanted], levels)
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": asdict(host),
                "duration_s": args.duration,
                "rounds": args.rounds,
                "connections": levels,
                "seed_url": args.seed_url,
                "skipped": skipped,
                "rows": [r.as_dict() for r in rows],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
