"""Closed-loop HTTP load with ``wrk``: /v2/ingest at a fixed number of connections.

    .venv/bin/python bench/wrk.py --url http://127.0.0.1:8080 [--connections 1,8,32,64]
                                  [--duration 8] [--threads N] [--server-pid PID]

``wrk`` (Debian's package: ``apt-get install -y wrk``) runs ``bench/wrk/ingest.lua``, which gives
every request a fresh Idempotency-Key and cycles through the 150 FHIR v2 bodies of
``harness.bodies()``. Each row also shows the CPU that wrk itself used (from its rusage), as a
percentage of one core, so a saturated client is visible beside the figures; and, when a server
pid is given, the server's CPU over the same interval (from ``/proc/<pid>/stat``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = ROOT / "bench" / "wrk" / "ingest.lua"
INSTALL_HINT = "wrk is missing: install it with `apt-get install -y wrk` (Debian's package)"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class WrkResult:
    """One wrk run. Latencies are in ms; ``ok`` counts 2xx/3xx responses."""

    url: str
    connections: int
    threads: int
    seconds: float
    requests: int
    ok: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    client_cpu_pct: float
    server_cpu_pct: float | None = None
    machine_busy_pct: float | None = None
    label: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, with the derived rate."""
        return {**asdict(self), "ok_per_second": self.ok_per_second}


def require_wrk() -> str:
    """The path of ``wrk``, or exit with how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(INSTALL_HINT)
    return path


def write_bodies(path: Path) -> Path:
    """Write the benchmark's v2 bodies to ``path``, one JSON document per line (for the Lua)."""
    from harness import bodies  # the FHIR fixtures; imported late so --help works without them

    payloads = bodies()
    # The Lua reads line by line: a body must not contain a newline (compact JSON never does).
    if any(b"\n" in body for body in payloads):
        raise ValueError("a body contains a newline")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(payloads) + b"\n")
    return path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (all its threads), from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; the fields after its closing parenthesis do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user time
    return total - idle, total


class CpuMeter:
    """CPU of some processes and of the whole machine between ``start()`` and ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {pid: _cpu_or_none(pid) for pid in self.pids}
        self._machine0 = machine_busy_ticks()

    def stop(self) -> tuple[dict[int, float | None], float]:
        """Per-pid CPU % of one core (None for a vanished process) and machine busy %."""
        wall = time.monotonic() - self._t0
        per_pid: dict[int, float | None] = {}
        for pid, before in self._cpu0.items():
            after = _cpu_or_none(pid)
            per_pid[pid] = (
                None if before is None or after is None else 100 * (after - before) / wall
            )
        busy1, total1 = machine_busy_ticks()
        busy0, total0 = self._machine0
        machine = 100 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        return per_pid, machine


def _cpu_or_none(pid: int) -> float | None:
    try:
        return process_cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


@dataclass
class WrkOutput:
    """What wrk printed: counts, the run's length, errors by kind, latency percentiles in ms."""

    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]


_WRK_JSON = re.compile(r"^wrk-json (\{.*\})$", re.MULTILINE)
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk_output(text: str) -> WrkOutput:
    """Requests, errors and latency (ms) from wrk's output.

    The Lua ``done()`` line is preferred (it has p99.9 and exact counts); without it, the
    ``--latency`` distribution and the summary lines are parsed.
    """
    match = _WRK_JSON.search(text)
    if match:
        data = json.loads(match.group(1))
        lat = {k: v / 1000 for k, v in data["latency_us"].items()}
        return WrkOutput(data["requests"], data["duration_us"] / 1e6, data["errors"], lat)
    summary = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if summary is None:
        raise ValueError(f"no wrk summary in output:\n{text}")
    latency = {
        f"p{int(pct) if float(pct).is_integer() else pct}": float(value) * _UNITS_MS[unit]
        for pct, value, unit in re.findall(r"^\s+([\d.]+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    }
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket:
        for name, value in zip(
            ("connect", "read", "write", "timeout"), socket.groups(), strict=True
        ):
            errors[name] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors["status"] = int(non2xx.group(1))
    seconds = float(summary.group(2)) * _UNITS_MS[summary.group(3)] / 1000
    return WrkOutput(int(summary.group(1)), seconds, errors, latency)


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    bodies_path: Path,
    threads: int | None = None,
    timeout_s: float = 10.0,
    server_pids: list[int] | None = None,
    label: str = "",
    key_prefix: str | None = None,
) -> WrkResult:
    """Run wrk once against ``url`` (``/v2/ingest`` unless the URL has another path).

    ``threads`` defaults to min(connections, cores): more threads than cores only adds
    contention with the server on these small machines. The timeout is long (10 s) because
    wrk leaves timed-out requests out of its latency figures.
    """
    wrk = require_wrk()
    threads = threads or max(1, min(connections, os.cpu_count() or 1))
    prefix = key_prefix or f"wrk-{uuid.uuid4().hex[:12]}"
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies_path),
        prefix,
    ]
    meter = CpuMeter(server_pids or [])
    with tempfile.TemporaryFile() as out:
        meter.start()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        # wait4 gives the rusage of this one child, so other children (workers) never count.
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        per_pid, machine = meter.stop()
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{text}")
    parsed = parse_wrk_output(text)
    server = [v for v in per_pid.values() if v is not None]
    return WrkResult(
        url=url,
        connections=connections,
        threads=threads,
        seconds=parsed.seconds,
        requests=parsed.requests,
        ok=parsed.requests - parsed.errors.get("status", 0),
        errors=parsed.errors,
        latency_ms=parsed.latency_ms,
        client_cpu_pct=100 * (rusage.ru_utime + rusage.ru_stime) / wall,
        server_cpu_pct=sum(server) if server else None,
        machine_busy_pct=machine,
        label=label,
    )


def format_row(r: WrkResult) -> str:
    """One line: label, connections, ok req/s, p50/p90/p99/p99.9 ms, errors, CPU."""
    lat = r.latency_ms
    bad = sum(r.errors.values())
    server = f"{r.server_cpu_pct:6.0f}" if r.server_cpu_pct is not None else f"{'-':>6}"
    return (
        f"{r.label:<24}{r.connections:>5}{r.ok_per_second:>9.1f}{lat.get('p50', 0):>8.1f}"
        f"{lat.get('p90', 0):>8.1f}{lat.get('p99', 0):>8.1f}{lat.get('p99.9', 0):>8.1f}"
        f"{bad:>7}{r.client_cpu_pct:>8.1f}{server}{r.machine_busy_pct or 0:>7.0f}"
    )


HEADER = (
    f"{'system':<24}{'conn':>5}{'req/s':>9}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}"
    f"{'errors':>7}{'client%':>8}{'srv%':>6}{'busy%':>7}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, or the full URL of the endpoint")
    parser.add_argument("--connections", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per row")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    require_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        bodies_path = write_bodies(Path(tmp) / "bodies.jsonl")
        print(HEADER + "   (ms; CPU in % of one core; busy% = whole machine)")
        for c in (int(x) for x in args.connections.split(",")):
            row = run_wrk(
                args.url,
                connections=c,
                duration_s=args.duration,
                bodies_path=bodies_path,
                threads=args.threads,
                server_pids=args.server_pid,
                label=args.label or args.url,
            )
            print(format_row(row), flush=True)


if __name__ == "__main__":
    main()
