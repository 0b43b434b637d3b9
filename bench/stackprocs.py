"""CPU of process trees (a worker, the stack's Postgres, Kafka and S3 server) over an interval.

Imported by bench/end_to_end.py and bench/scaling.py. A Postgres server is a postmaster and
backends that come and go; a process tree's CPU is counted as the root's own time, the time of
the children it has already reaped (``cutime``/``cstime`` of ``/proc/<pid>/stat``) and the
trees of its live children, so a backend that exits between two samples is still counted once.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wrk import CLOCK_TICKS, machine_busy_ticks


@dataclass(frozen=True)
class _Stat:
    ppid: int
    self_ticks: int  # utime + stime
    reaped_ticks: int  # cutime + cstime: children already waited for


def _read_stat(pid: int) -> _Stat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces; the fields after its closing parenthesis do not.
    fields = text[text.rindex(")") + 2 :].split()
    return _Stat(
        ppid=int(fields[1]),
        self_ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
    )


def _all_stats() -> dict[int, _Stat]:
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _read_stat(int(entry.name))) is not None:
            stats[int(entry.name)] = stat
    return stats


def tree_cpu_seconds(roots: list[int], stats: dict[int, _Stat] | None = None) -> float | None:
    """CPU seconds of the process trees under ``roots`` (see the module docstring); None when a
    root has gone."""
    stats = _all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    total = 0
    for root in roots:
        if root not in stats:
            return None
        todo = [root]
        while todo:
            pid = todo.pop()
            total += stats[pid].self_ticks + stats[pid].reaped_ticks
            todo.extend(children.get(pid, ()))
    return total / CLOCK_TICKS


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pid_file(path: Path, expect: str) -> int | None:
    """The pid in ``path`` if that process runs a command line containing ``expect``."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if expect in _cmdline(pid) else None


def stack_dir() -> Path:
    """The stack of the environment (``STACK_DIR``, default ``.stack`` of the checkout)."""
    return Path(os.environ.get("STACK_DIR") or Path(__file__).resolve().parents[1] / ".stack")


def stack_pids(stack: Path | None = None) -> dict[str, int]:
    """Root pids of the stack's servers: ``postgres`` (the postmaster of its data dir),
    ``kafka`` (the broker's JVM) and ``s3`` (versitygw). A server not found is left out."""
    stack = (stack or stack_dir()).resolve()
    found: dict[str, int] = {}
    data = str(stack / "postgres" / "data")
    stats = _all_stats()
    # The postmaster is the process started with the data dir whose parent was not.
    with_data = {pid for pid in stats if data in _cmdline(pid)}
    for pid in sorted(with_data):
        if stats[pid].ppid not in with_data:
            found["postgres"] = pid
            break
    kafka = _pid_file(stack / "kafka.pid", "kafka.Kafka")
    if kafka is None:
        kafka = next(
            (p for p in stats if "kafka.Kafka" in (c := _cmdline(p)) and str(stack) in c), None
        )
    if kafka is not None:
        found["kafka"] = kafka
    s3 = _pid_file(stack / "s3.pid", "versitygw")
    if s3 is None:
        s3 = next((p for p in stats if "versitygw" in (c := _cmdline(p)) and str(stack) in c), None)
    if s3 is not None:
        found["s3"] = s3
    return found


class TreeMeter:
    """CPU of named process trees, as % of one core, and the machine's busy % between
    ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def _sample(self) -> dict[str, float | None]:
        stats = _all_stats()
        return {name: tree_cpu_seconds(pids, stats) for name, pids in self.groups.items()}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = self._sample()
        self._machine0 = machine_busy_ticks()

    def cpu_seconds_since_start(self) -> dict[str, float | None]:
        """CPU seconds of each group since ``start()`` (None for a group that has gone)."""
        now = self._sample()
        return {
            name: None if (a := now[name]) is None or (b := self._cpu0[name]) is None else a - b
            for name in self.groups
        }

    def stop(self) -> tuple[dict[str, float | None], float]:
        """Per-group CPU % of one core and the machine's busy % since ``start()``."""
        wall = time.monotonic() - self._t0
        used = self.cpu_seconds_since_start()
        busy1, total1 = machine_busy_ticks()
        busy0, total0 = self._machine0
        machine = 100 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        pct = {name: None if s is None else 100 * s / wall for name, s in used.items()}
        return pct, machine


class WindowMeter:
    """A TreeMeter started and stopped by a thread at two epoch times (a load window known in
    advance), while the caller blocks on the load itself."""

    def __init__(self, groups: dict[str, list[int]], start_at: float, end_at: float) -> None:
        self.meter = TreeMeter(groups)
        self.start_at = start_at
        self.end_at = end_at
        self._result: tuple[dict[str, float | None], float] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.time()))
        self.meter.start()
        time.sleep(max(0.0, self.end_at - time.time()))
        self._result = self.meter.stop()

    def begin(self) -> None:
        """Start the thread; call before the window opens."""
        self._thread.start()

    def result(self) -> tuple[dict[str, float | None], float]:
        """Per-group CPU % of one core and the machine's busy % over the window (waits for its
        end)."""
        self._thread.join()
        if self._result is None:
            raise RuntimeError("the window meter did not finish")
        return self._result

    def cpu_seconds_since_start(self) -> dict[str, float | None]:
        """CPU seconds of each group since the window opened (for work that outlasts it)."""
        return self.meter.cpu_seconds_since_start()
