"""Open-loop (fixed-rate) load on /v2/ingest, with latency counted from each scheduled send time.

    .venv/bin/python bench/openloop.py --url http://127.0.0.1:8080 --rate 100,200,400
                                       [--duration 15] [--client go|python] [--processes N]
                                       [--slo-p99-ms 250]

wrk is closed-loop: when the server slows down, it sends less, and the requests it did not send
never show up in its latency (coordinated omission). Here every request has a due time fixed in
advance, and its latency is measured from that due time, so a stall counts for every request
that should have been sent during it. ``late p99`` says how far behind schedule the client
itself started sending: if it is large while the client's CPU is high, the client, not the
server, is the limit. Each row shows the clients' CPU (rusage of the child processes) as % of
one core.

The client is ``bench/loadgen`` (Go, standard library only), built on first use into
``.cache/bin/loadgen`` (again whenever its source is newer) when ``go`` is on PATH or at
/usr/local/go/bin/go: one process (``--processes`` more interleave their schedules), one
thread around epoll. At 600 requests/s on the 2-core bench machine it costs 3-4 % of a core
(start-up and the 1.5 s lead included), where the Python client (``--client python``: aiohttp,
two processes by default, each sending ``rate / processes`` per second on interleaved
schedules) costs 25-40 %, CPU taken from the server it measures. Both take the FHIR fixtures of
``harness``; the Python client needs aiohttp (a project dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "aiohttp is missing: run `make venv` (or `.venv/bin/pip install aiohttp`)"
LOADGEN_SOURCE = ROOT / "bench" / "loadgen"
LOADGEN_BINARY = ROOT / ".cache" / "bin" / "loadgen"
GO_FALLBACK = Path("/usr/local/go/bin/go")
CLIENTS = ("go", "python")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class OpenLoopResult:
    """One fixed-rate run. Latencies in ms from the scheduled send time; CPU in % of one core."""

    url: str
    target_rate: float
    processes: int
    seconds: float
    scheduled: int
    ok: int
    errors: dict[str, int]
    latency_ms: dict[str, float]
    late_ms: dict[str, float]
    client_cpu_pct: float
    server_cpu_pct: float | None = None
    machine_busy_pct: float | None = None
    label: str = ""
    # Epoch seconds of the first due time: the load window is [started_at, started_at + seconds).
    started_at: float = 0.0
    client: str = ""

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, with the achieved rate."""
        return {**asdict(self), "ok_per_second": self.ok_per_second}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9 and max by the nearest-rank method (NaN when there are no samples)."""
    if not samples:
        return {**{_name(p): math.nan for p in PERCENTILES}, "max": math.nan}
    ordered = sorted(samples)
    out = {}
    for p in PERCENTILES:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[_name(p)] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def _name(p: float) -> str:
    return f"p{p:g}"


# ---------------------------------------------------------------- one client process ----


async def _client(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, object]:
    """Send ``args.rate`` requests per second for ``args.duration`` seconds on a fixed schedule."""
    import aiohttp

    headers = {"Authorization": "Bearer dev", "Content-Type": "application/json"}
    latencies: list[float] = []
    late: list[float] = []
    outcomes: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    interval = 1.0 / args.rate  # between two sends of this process: N / total rate
    # Process i of N sends at (k * N + i) / total rate: the processes interleave evenly.
    first_due = loop.time() + (args.start_at - time.time()) + args.phase * interval / args.processes
    count = int(args.duration * args.rate)

    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def send(k: int, due: float) -> None:
            late.append((loop.time() - due) * 1000)
            h = {**headers, "Idempotency-Key": f"{args.prefix}-{k}"}
            try:
                async with http.post(args.url, data=bodies[k % len(bodies)], headers=h) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1
                return
            if 200 <= status < 300:
                # Waiting for a connection or for the loop is part of the latency, as it should.
                latencies.append((loop.time() - due) * 1000)
                outcomes["ok"] += 1
            else:
                outcomes[f"http {status}"] += 1

        tasks: set[asyncio.Task[None]] = set()
        for k in range(count):
            due = first_due + k * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(k, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=args.drain)
            for task in pending:
                task.cancel()
            if pending:
                outcomes["unfinished"] += len(pending)
    return {"latencies_ms": latencies, "late_ms": late, "outcomes": dict(outcomes)}


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("--url", "--bodies", "--prefix"):
        parser.add_argument(name, required=True)
    for name in ("--rate", "--duration", "--start-at", "--timeout", "--drain"):
        parser.add_argument(name, type=float, required=True)
    for name in ("--phase", "--processes", "--connections"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args(argv)
    bodies = [line for line in Path(args.bodies).read_bytes().splitlines() if line]
    result = asyncio.run(_client(args, bodies))
    sys.stdout.write(json.dumps(result))


# ---------------------------------------------------------------------- the clients ----


def go_tool() -> str | None:
    """The ``go`` command: on PATH, else where the Go tarball installs it; None without Go."""
    found = shutil.which("go")
    if found:
        return found
    return str(GO_FALLBACK) if GO_FALLBACK.exists() else None


def default_client() -> str:
    """``go`` when Go is installed (the binary is built from bench/loadgen), else ``python``."""
    return "go" if go_tool() else "python"


def loadgen_binary() -> Path:
    """``.cache/bin/loadgen``, built first when missing or older than its source."""
    sources = [*LOADGEN_SOURCE.glob("*.go"), LOADGEN_SOURCE / "go.mod"]
    newest = max(p.stat().st_mtime for p in sources)
    if LOADGEN_BINARY.exists() and LOADGEN_BINARY.stat().st_mtime >= newest:
        return LOADGEN_BINARY
    go = go_tool()
    if go is None:
        raise SystemExit("go is missing: install Go or pass --client python")
    LOADGEN_BINARY.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(ROOT / ".cache" / "go-build")
    # Built beside the binary, then renamed: a concurrent run never executes half a file.
    partial = LOADGEN_BINARY.with_name(f"loadgen.{os.getpid()}.tmp")
    started = time.monotonic()
    built = subprocess.run(
        [go, "build", "-o", str(partial), "."],
        cwd=LOADGEN_SOURCE,
        env=env,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {LOADGEN_SOURCE} failed:\n{built.stderr}")
    os.replace(partial, LOADGEN_BINARY)
    print(
        f"built {LOADGEN_BINARY.relative_to(ROOT)} in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return LOADGEN_BINARY


def prepare_client(client: str | None = None) -> str:
    """Resolve ``client`` (None: the default) and make it ready to start at once.

    A caller that fixes the first due time before calling ``run_openloop`` calls this first,
    so that a build of the Go client does not eat into the lead.
    """
    client = client or default_client()
    if client == "go":
        loadgen_binary()
    elif client == "python":
        try:
            import aiohttp  # noqa: F401  (the children need it; fail here with a hint)
        except ImportError:
            raise SystemExit(INSTALL_HINT) from None
    else:
        raise ValueError(f"client {client!r}: one of {', '.join(CLIENTS)}")
    return client


# --------------------------------------------------------------------- the driver ----


def run_openloop(
    url: str | Sequence[str],
    *,
    rate: float,
    duration_s: float,
    bodies_path: Path,
    processes: int | None = None,
    connections_per_process: int = 256,
    timeout_s: float = 30.0,
    server_pids: list[int] | None = None,
    label: str = "",
    start_at: float | None = None,
    client: str | None = None,
) -> OpenLoopResult:
    """Send ``rate`` requests/s to ``url`` for ``duration_s`` from ``processes`` processes.

    ``client`` is ``go`` (bench/loadgen; the default when Go is installed) or ``python``
    (aiohttp); ``processes`` defaults to 1 for the first and 2 for the second. ``url`` is the
    endpoint itself (e.g. ``http://127.0.0.1:8080/v2/ingest``), or several endpoints: the Go
    client sends request n of the whole schedule to ``url[n % len(url)]``; Python client
    process i sends to ``url[i % len(url)]``, so with a multiple of their number as
    ``processes`` the load is spread evenly. Requests still running ``timeout_s`` after the
    schedule ends are counted as ``unfinished``. ``start_at`` (epoch seconds) is the first due
    time, by default 1.5 s from now; a caller that sets it knows the load window (and calls
    ``prepare_client`` before choosing it).
    """
    from wrk import CpuMeter

    client = prepare_client(client)
    if processes is None:
        processes = 1 if client == "go" else 2
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no URL to send to")
    prefix = f"open-{uuid.uuid4().hex[:12]}"
    if start_at is not None and start_at < time.time():
        print(
            f"openloop: starting {time.time() - start_at:.1f} s after the first due time "
            "(call prepare_client before choosing start_at)",
            file=sys.stderr,
        )
    if start_at is None:
        # Time for the children to import aiohttp and read the bodies before the first due time.
        start_at = time.time() + 1.5
    procs = []
    outputs = []
    meter = CpuMeter(server_pids or [])
    meter.start()
    for i in range(processes):
        out = tempfile.TemporaryFile()
        outputs.append(out)
        if client == "go":
            # Every process gets every URL and spreads its requests over them itself.
            head = [str(LOADGEN_BINARY), *(f"--url={u}" for u in urls)]
        else:
            head = [sys.executable, str(Path(__file__).resolve()), "--child"]
            head += ["--url", urls[i % len(urls)]]
        cmd = [
            *head,
            *("--prefix", f"{prefix}-p{i}", "--bodies", str(bodies_path)),
            *("--rate", f"{rate / processes!r}", "--duration", str(duration_s)),
            *("--start-at", repr(start_at), "--timeout", str(timeout_s)),
            *("--drain", str(timeout_s), "--phase", str(i), "--processes", str(processes)),
            *("--connections", str(connections_per_process)),
        ]
        procs.append(subprocess.Popen(cmd, stdout=out))
    cpu = 0.0
    failed = []
    for proc in procs:
        # wait4: this child's own rusage, whatever else this process has started.
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += rusage.ru_utime + rusage.ru_stime
        if proc.returncode != 0:
            failed.append(proc.returncode)
    wall = time.time() - start_at
    per_pid, machine = meter.stop()
    if failed:
        raise RuntimeError(f"open-loop client exited with {failed}")
    latencies: list[float] = []
    late: list[float] = []
    outcomes: Counter[str] = Counter()
    for out in outputs:
        out.seek(0)
        data = json.loads(out.read())
        out.close()
        latencies += data["latencies_ms"]
        late += data["late_ms"]
        outcomes.update(data["outcomes"])
    ok = outcomes.pop("ok", 0)
    server = [v for v in per_pid.values() if v is not None]
    return OpenLoopResult(
        url=",".join(urls),
        target_rate=rate,
        processes=processes,
        seconds=duration_s,
        scheduled=processes * int(duration_s * rate / processes),
        ok=ok,
        errors={k: v for k, v in outcomes.items() if v},
        latency_ms=percentiles(latencies),
        late_ms=percentiles(late),
        # Over the whole life of the children (start-up included), so a slight overestimate.
        client_cpu_pct=100 * cpu / max(wall, duration_s),
        server_cpu_pct=sum(server) if server else None,
        machine_busy_pct=machine,
        label=label,
        started_at=start_at,
        client=client,
    )


HEADER = (
    f"{'target/s':>9}{'ok/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>8}"
    f"{'errors':>7}{'late p99':>9}{'client%':>8}{'srv%':>6}{'busy%':>7}"
)


def format_row(r: OpenLoopResult) -> str:
    """One line: target and achieved rate, latency from due time (ms), lateness, CPU."""
    lat, server = r.latency_ms, r.server_cpu_pct
    return (
        f"{r.target_rate:>9.0f}{r.ok_per_second:>8.1f}{lat['p50']:>8.1f}{lat['p90']:>8.1f}"
        f"{lat['p99']:>8.1f}{lat['p99.9']:>8.1f}{lat['max']:>8.1f}{sum(r.errors.values()):>7}"
        f"{r.late_ms['p99']:>9.1f}{r.client_cpu_pct:>8.1f}"
        f"{f'{server:.0f}' if server is not None else '-':>6}{r.machine_busy_pct or 0:>7.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL; /v2/ingest is added to a bare one")
    parser.add_argument("--rate", default="100,200,400", help="requests/s, comma list")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per rate")
    parser.add_argument(
        "--client", choices=CLIENTS, help=f"default: {default_client()} (go when Go is installed)"
    )
    parser.add_argument("--processes", type=int, help="client processes (go: 1, python: 2)")
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument("--slo-p99-ms", type=float, default=250.0)
    parser.add_argument("--output", default=str(ROOT / "bench/results/openloop.json"))
    args = parser.parse_args()
    from wrk import write_bodies

    url = args.url if args.url.rstrip("/").count("/") > 2 else args.url.rstrip("/") + "/v2/ingest"
    client = prepare_client(args.client)
    processes = args.processes or (1 if client == "go" else 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bodies_path = write_bodies(Path(tmp) / "bodies.jsonl")
        print(f"{url}, {client} client, {processes} process(es), {args.duration:g} s per rate")
        print(HEADER + "   (ms from the due time; CPU in % of one core)")
        for rate in (float(x) for x in args.rate.split(",")):
            row = run_openloop(
                url,
                rate=rate,
                duration_s=args.duration,
                bodies_path=bodies_path,
                processes=processes,
                server_pids=args.server_pid,
                client=client,
            )
            rows.append(row)
            print(format_row(row), flush=True)
    within = [
        r.target_rate
        for r in rows
        if r.latency_ms["p99"] <= args.slo_p99_ms and not r.errors and r.ok >= 0.99 * r.scheduled
    ]
    best = f"{max(within):g} req/s" if within else "none of the rates tried"
    print(f"highest rate with every request accepted and p99 <= {args.slo_p99_ms:g} ms: {best}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": [r.as_dict() for r in rows]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(sys.argv[2:])
    else:
        main()
