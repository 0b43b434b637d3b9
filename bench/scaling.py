"""Scaling by partitions: 1, 2 and 3 full workers in one consumer group on 6 partitions.

    .venv/bin/python bench/scaling.py [--workers 1,2,3] [--rate 400] [--duration 20]
        [--max-steps 4] [--step 100] [--warmup 5] [--partitions 6] [--worker-env KEY=VALUE ...]
        [--slo-p99-ms 250] [--drain-deadline 300]

    # the fixed step only, shorter:
    .venv/bin/python bench/scaling.py --max-steps 0 --duration 10

The workers are the default deployment (ingest + outbox relay + normalizer) on the stack of the
environment (STACK_DIR, POSTGRES_PORT, KAFKA_BROKERS, MINIO_ENDPOINT, as for the tests), on
topics, a consumer group (APP_ID) and a database of their own, made here (``exchange-stream
create-topics`` with TOPIC_PARTITIONS, ``exchange-stream migrate``) and removed at the end. The
workers are started one by one; before each worker count is measured, every worker answers
/readyz and the group is stable with that many members holding all the partitions of the v2
topic between them.

Per worker count, two steps of open-loop v2 ingest (bench/openloop.py), the load spread evenly
over the workers' URLs (one or more client processes per worker):
  fixed  ``--rate`` requests/s in total
  max    the highest total rate with 202->canonical p99 <= ``--slo-p99-ms`` and every request
         accepted, found by stepping ``--step`` up from the fixed rate (down when the fixed rate
         misses) for at most ``--max-steps`` steps
Each step waits until every accepted record has a canonical row (a deadline, no fixed sleep),
then reports accepted/s, ingest p99, 202->canonical p50/p99 (``normalized_at - ingested_at``
from the database), the CPU of each worker, of Postgres (the postmaster of the stack's data dir
and its backends), Kafka (the broker's JVM), the S3 server (versitygw) and the client, as % of
one core over the load window, the machine's busy %, and the resource that saturates: the
machine when it is at least 95 % busy, else any process near a whole core (>= 90 %; the client
per process). JSON goes to bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from end_to_end import (
    IsolatedRun,
    Measurement,
    measure,
    parse_env,
    start_worker,
    wait_assigned,
)
from harness import ROOT, machine, wait_ready
from stackprocs import stack_dir, stack_pids

from tests.support import WorkerProcess

NEAR_A_CORE_PCT = 90.0
MACHINE_SATURATED_PCT = 95.0


def saturated(m: Measurement) -> str:
    """What limits the step: the processes near 100 % of a core (the client per process), and
    the machine when it is at least 95 % busy; otherwise ``none`` and the busiest process."""
    loads = {name: pct for name, pct in m.cpu_pct.items() if pct is not None}
    loads["client process"] = m.client_cpu_pct / max(1, m.client_processes)
    busiest = max(loads.items(), key=lambda kv: kv[1])
    near = sorted(((p, n) for n, p in loads.items() if p >= NEAR_A_CORE_PCT), reverse=True)
    parts = [f"{name} ({pct:.0f} % of a core)" for pct, name in near]
    if round(m.machine_busy_pct) >= MACHINE_SATURATED_PCT:  # as the table shows it
        parts.append(f"machine (busy {m.machine_busy_pct:.0f} %)")
        if not near:
            parts[-1] += f"; busiest {busiest[0]} {busiest[1]:.0f} %"
    return ", ".join(parts) or f"none (busiest {busiest[0]} {busiest[1]:.0f} %)"


@dataclass
class Step:
    """A measured step: which search it belongs to and the measurement."""

    workers: int
    kind: str  # "fixed" or "search"
    m: Measurement

    def as_dict(self) -> dict[str, object]:
        return {
            "workers": self.workers,
            "kind": self.kind,
            "saturates": saturated(self.m),
            **self.m.as_dict(),
        }


@dataclass
class Cell:
    """What every step of one worker count shares: the workers, the database, the clients."""

    workers: list[WorkerProcess]
    run: IsolatedRun
    processes: int
    workdir: Path
    others: dict[str, list[int]]
    drain_deadline_s: float

    def measure(self, rate: float, seconds: float, label: str) -> Measurement:
        """One open-loop step at ``rate`` requests/s in total (see end_to_end.measure)."""
        return measure(
            self.workers,
            run=self.run,
            rate=rate,
            duration_s=seconds,
            processes=self.processes,
            workdir=self.workdir,
            label=label,
            others=self.others,
            drain_deadline_s=self.drain_deadline_s,
        )


def find_max(
    first: Measurement,
    measure_at: Callable[[float], Measurement],
    *,
    step: float,
    max_steps: int,
    slo_p99_ms: float,
) -> tuple[Measurement | None, list[Measurement]]:
    """Step up from ``first`` while the SLO holds (down while it does not), at most
    ``max_steps`` more measurements; the best rate within the SLO and the steps taken."""
    tried: list[Measurement] = []
    rate = first.target_rate
    going_up = first.within(slo_p99_ms)
    for _ in range(max_steps):
        rate = rate + step if going_up else rate - step
        if rate <= 0:
            break
        m = measure_at(rate)
        tried.append(m)
        if m.within(slo_p99_ms) != going_up:
            break
    within = [m for m in (first, *tried) if m.within(slo_p99_ms)]
    return max(within, key=lambda m: m.target_rate, default=None), tried


HEADER = (
    f"{'workers':>7} {'step':<6}{'rate':>6}{'acc/s':>8}{'ing p99':>9}{'e2e p50':>9}"
    f"{'e2e p99':>9}  {'worker cpu%':<14}{'pg%':>5}{'kafka%':>7}{'s3%':>5}{'client%':>8}"
    f"{'busy%':>6}  saturates"
)


def format_row(workers: int, step: str, m: Measurement | None, lowest: float = 0.0) -> str:
    """One line of the table (``m`` None: no rate met the SLO, down to ``lowest``)."""
    if m is None:
        return f"{workers:>7} {step:<6}  no rate met the SLO, down to {lowest:g} req/s"

    def pct(name: str) -> str:
        v = m.cpu_pct.get(name)
        return "-" if v is None else f"{v:.0f}"

    per_worker = "/".join(f"{v:.0f}" if v is not None else "-" for v in m.worker_cpu_pct())
    mark = "" if m.all_accepted and m.drained else "!"
    return (
        f"{workers:>7} {step:<6}{m.target_rate:>5.0f}{mark or ' '}{m.accepted_per_s:>8.1f}"
        f"{m.ingest_ms['p99']:>9.1f}{m.e2e.p50_ms:>9.1f}{m.e2e.p99_ms:>9.1f}  {per_worker:<14}"
        f"{pct('postgres'):>5}{pct('kafka'):>7}{pct('s3'):>5}{m.client_cpu_pct:>8.0f}"
        f"{m.machine_busy_pct:>6.0f}  {saturated(m)}"
    )


def client_processes(workers: int, per_worker: int) -> int:
    """A multiple of ``workers`` (each worker gets the same share), at least two."""
    wanted = max(2, workers * per_worker)
    return math.ceil(wanted / workers) * workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3", help="worker counts, ascending")
    parser.add_argument("--rate", type=float, default=400.0, help="total requests/s, fixed step")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per step")
    parser.add_argument("--max-steps", type=int, default=4, help="steps of the max search")
    parser.add_argument("--step", type=float, default=100.0, help="requests/s per search step")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds, per worker count")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--processes-per-worker", type=int, default=1, help="client processes")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--slo-p99-ms", type=float, default=250.0)
    parser.add_argument("--drain-deadline", type=float, default=300.0, help="seconds per step")
    parser.add_argument("--output", default=str(ROOT / "bench/results/scaling.json"))
    args = parser.parse_args()
    host = machine()
    print(host.line(), flush=True)
    counts = sorted({int(c) for c in args.workers.split(",") if c})
    if not counts or counts[0] < 1:
        raise SystemExit("--workers: positive counts, e.g. 1,2,3")
    if counts[-1] > args.partitions:
        raise SystemExit(f"{counts[-1]} workers would leave some without a partition")
    common = parse_env(args.worker_env)

    stack = stack_pids()
    missing = {"postgres", "kafka", "s3"} - set(stack)
    if missing:
        print(
            f"not found in {stack_dir()}: {sorted(missing)} (their CPU shows as -)", file=sys.stderr
        )
    others = {name: [pid] for name, pid in stack.items()}

    iso = IsolatedRun(f"scale-{uuid.uuid4().hex[:6]}", partitions=args.partitions)
    topic = iso.topics["TOPIC_RECORD_INGESTED_V2"]
    workers: list[WorkerProcess] = []
    steps: list[Step] = []
    summary: list[tuple[int, Measurement, Measurement | None, float]] = []
    try:
        iso.create()
        with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
            tmp_path = Path(tmp)
            print(
                f"workers {counts} on {args.partitions} partitions; fixed {args.rate:g} req/s, "
                f"max search by {args.step:g} for up to {args.max_steps} steps; "
                f"{args.duration:g} s per step; stack pids {stack}",
                flush=True,
            )
            print(HEADER, flush=True)
            for count in counts:
                while len(workers) < count:
                    env = {**common, **iso.env()}
                    workers.append(start_worker(tmp_path / f"worker-{len(workers) + 1}", env))
                for w in workers:
                    if w.proc is None or w.proc.poll() is not None:
                        raise RuntimeError(f"a worker exited; see {w.log_path}")
                    asyncio.run(wait_ready(w.base_url, w.log_path))
                held = asyncio.run(
                    wait_assigned(iso.settings.broker_list, iso.group, topic, members=count)
                )
                print(
                    f"{count} worker(s): partitions of {topic} per member "
                    f"{sorted(len(p) for p in held.values())}",
                    flush=True,
                )
                cell = Cell(
                    workers=list(workers),
                    run=iso,
                    processes=client_processes(count, args.processes_per_worker),
                    workdir=tmp_path,
                    others=others,
                    drain_deadline_s=args.drain_deadline,
                )
                if args.warmup > 0:
                    cell.measure(args.rate / 2, args.warmup, f"w{count}-warmup")
                fixed = cell.measure(args.rate, args.duration, f"w{count}")
                steps.append(Step(count, "fixed", fixed))
                print(format_row(count, "fixed", fixed), flush=True)

                def search(rate: float, cell: Cell = cell, count: int = count) -> Measurement:
                    m = cell.measure(rate, args.duration, f"w{count}")
                    steps.append(Step(count, "search", m))
                    print(format_row(count, "search", m), flush=True)
                    return m

                best, tried = find_max(
                    fixed,
                    search,
                    step=args.step,
                    max_steps=args.max_steps,
                    slo_p99_ms=args.slo_p99_ms,
                )
                lowest = min(m.target_rate for m in (fixed, *tried))
                summary.append((count, fixed, best, lowest))
    finally:
        for w in workers:
            w.stop()
        iso.destroy()

    print(
        "\nper worker count (ms; e2e = 202→canonical; CPU in % of one core over the load "
        "window; worker cpu% one figure per worker; busy% = whole machine; ! = not every "
        "request accepted or not every record canonical by the deadline)"
    )
    print(HEADER)
    for count, fixed, best, lowest in summary:
        print(format_row(count, "fixed", fixed))
        print(format_row(count, "max", best, lowest))
    for count, _, best, lowest in summary:
        found = f"{best.target_rate:g} req/s" if best else f"none, down to {lowest:g} req/s"
        print(
            f"{count} worker(s): highest total rate with 202→canonical p99 ≤ "
            f"{args.slo_p99_ms:g} ms and every request accepted: {found}"
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": asdict(host),
                "partitions": args.partitions,
                "rate": args.rate,
                "duration_s": args.duration,
                "slo_p99_ms": args.slo_p99_ms,
                "worker_env": common,
                "stack_pids": stack,
                "max": {
                    str(count): best.target_rate if best else None for count, _, best, _ in summary
                },
                "steps": [s.as_dict() for s in steps],
            },
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
