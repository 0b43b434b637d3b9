"""Shared benchmark plumbing: closed-loop load at a fixed concurrency, percentiles, tables."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fhir_fixtures import fhir_records  # noqa: E402
from tests.support import free_port  # noqa: E402


@dataclass
class Result:
    name: str
    concurrency: int
    ops: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


CALIBRATION_COMMAND = (
    'python3 -c "import time;t=time.time();[0 for _ in range(10_000_000)];print(time.time()-t)"'
)


def calibration_s() -> float:
    """Seconds of a fixed pure-Python loop (``CALIBRATION_COMMAND``), printed beside absolute
    figures: machines of one kind here differ about 3x in it, and times scale with it."""
    started = time.time()
    [0 for _ in range(10_000_000)]
    return time.time() - started


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what the platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Machine:
    """What a figure was taken on: the CPU, its cores, and the calibration loop's time."""

    cpu: str
    cores: int
    calibration_s: float

    def line(self) -> str:
        return (
            f"machine: {self.cpu}, {self.cores} cores; calibration {self.calibration_s:.2f} s "
            f"for `{CALIBRATION_COMMAND}` (times scale with it)"
        )


def machine() -> Machine:
    """The machine of this run, with a fresh calibration (print ``.line()`` beside figures)."""
    return Machine(cpu_model(), os.cpu_count() or 0, calibration_s())


class GitRef:
    """A git ref of this repository checked out in a temporary worktree, whose code a worker
    runs (``PYTHONPATH`` puts it before the editable install), so a bench compares it with the
    working tree in one run on one machine."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.path = Path(tempfile.mkdtemp(prefix="bench-ref-")) / "tree"
        self.commit = ""

    def __enter__(self) -> GitRef:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(self.path), self.ref],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        self.commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=self.path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return self

    def env(self) -> dict[str, str]:
        """What a worker of this ref needs in its environment."""
        return {"PYTHONPATH": str(self.path)}

    def __exit__(self, *exc: object) -> None:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(self.path)],
            cwd=ROOT,
            capture_output=True,
        )


def percentile(samples: list[float], pct: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def closed_loop(
    name: str,
    concurrency: int,
    op: Callable[[int], Awaitable[bool]],
    *,
    duration_s: float,
    warmup_ops: int = 20,
) -> Result:
    """``concurrency`` workers call ``op(i)`` back to back for ``duration_s``; ``op`` returns
    whether the call succeeded. Latency is per call; throughput counts successes only."""
    for i in range(warmup_ops):
        await op(-1 - i)
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            counter += 1
            started = time.perf_counter()
            ok = await op(counter)
            elapsed = time.perf_counter() - started
            if ok:
                latencies.append(elapsed * 1000)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return Result(
        name=name,
        concurrency=concurrency,
        ops=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
    )


def print_table(title: str, rows: list[Result], extra: dict[str, str] | None = None) -> None:
    print(f"\n{title}")
    print(
        f"{'what':<34}{'conc':>5}{'ops/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    for r in rows:
        print(
            f"{r.name:<34}{r.concurrency:>5}{r.per_second:>10.1f}{r.p50_ms:>9.2f}"
            f"{r.p95_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
        )
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def default(o: object) -> object:
        if isinstance(o, Result):
            return {**asdict(o), "per_second": o.per_second}
        raise TypeError(type(o))

    path.write_text(json.dumps(payload, indent=2, default=default))
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def bodies() -> list[bytes]:
    """Real FHIR resources as /v2/ingest bodies (about 1-3 KiB each)."""
    out = []
    for rec in fhir_records():
        out.append(
            orjson.dumps(
                {
                    "source": "bench-partner",
                    "record_kind": rec["record_kind"],
                    "schema_hint": "partnerB.v1",
                    "patient": rec["patient"],
                    "payload": rec["resource"],
                }
            )
        )
    return out


def spawn_worker(workdir: Path, **env_overrides: str) -> tuple[subprocess.Popen, str]:
    """An ``exchange-stream worker`` on a free port, logging to ``workdir/worker.log``."""
    port = free_port()
    env = {**os.environ, "WEB_PORT": str(port), "DATA_DIR": str(workdir / "data"), **env_overrides}
    log = (workdir / "worker.log").open("wb")
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/exchange-stream"), "worker"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, log_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"worker did not become ready; see {log_path}")
