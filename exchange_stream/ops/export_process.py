"""An export runs in a process of its own, at a lower CPU priority than the worker.

The worker serves requests and drains its topics on one event loop. An export builds and writes
a resource a row for as long as it runs: in that loop, each request served meanwhile would wait
behind the export's slices of work, its garbage collections and its page reads, and both would
share the CPU as equals. In a child process niced by ``EXPORT_NICE`` (added to the worker's own
niceness), the kernel gives the worker the CPU first and the export what is left, and the
export's pauses are its own. The worker keeps everything the framework does for the run (claim,
heartbeats, takeover, ``job_runs``); the child does the run's own writes, fenced as ever by the
run's execution (``ops/export.py``).

The protocol, one JSON object a line: the worker writes the claim on the child's stdin
(``export.claim_message``) and keeps stdin open; the child writes ``{"progress": {...}}`` as it
goes (at most every ``PROGRESS_EVERY_S``), then one outcome: ``{"result": {...}}``,
``{"failed": message, "summary": {...}}`` (``OperationFailed``), ``{"fenced": true}``, or
``{"error": type name}``. Its log lines go to the worker's stderr. The child ends when its
parent does: the kernel SIGKILLs it (``PR_SET_PDEATHSIG``, Linux) and, everywhere, it exits when
its stdin reaches end of file. A child that exits without an outcome is ``ProcessStopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import orjson

from exchange_stream.infra.config import Settings
from exchange_stream.ops.framework import Fenced, OperationFailed

CHILD_MODULE = "exchange_stream.ops.export_child"
PROGRESS_EVERY_S = 0.5
# A line of the child: progress and outcomes are small, a summary at most a few KiB.
LINE_LIMIT = 1 << 20
_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


class ProcessStopped(RuntimeError):
    """The export process exited (or was killed) before it gave an outcome."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"the export process exited with code {code}")
        self.code = code


async def run_child(
    settings: Settings,
    claim: dict[str, Any],
    progress: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    """Run the export of ``claim`` in a child process; its result, or the exception it ended
    with (``Fenced``, ``OperationFailed``, ``RuntimeError`` naming the type)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        CHILD_MODULE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
        env={**os.environ, "EXPORT_NICE": str(settings.export_nice)},
    )
    if proc.stdin is None or proc.stdout is None:
        raise RuntimeError("the export process has no pipes")
    outcome: dict[str, Any] | None = None
    try:
        proc.stdin.write(orjson.dumps(claim) + b"\n")
        await proc.stdin.drain()
        async for line in proc.stdout:
            message = orjson.loads(line)
            if "progress" in message:
                await progress(message["progress"])
            else:
                outcome = message
        code = await proc.wait()
    except BaseException:
        # Cancelled (the worker stops) or failing: the child must not outlive this run.
        await asyncio.shield(_stop(proc))
        raise
    finally:
        proc.stdin.close()
    if outcome is None:
        raise ProcessStopped(code)
    if "result" in outcome:
        return dict(outcome["result"])
    if outcome.get("fenced"):
        raise Fenced("the export's run was taken over")
    if "failed" in outcome:
        raise OperationFailed(str(outcome["failed"]), outcome.get("summary") or {})
    raise RuntimeError(f"{outcome.get('error', 'Exception')} in the export process")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# The child's side ------------------------------------------------------------------------


def die_with_parent() -> None:
    """In the child, first thing: end when the parent does (SIGKILL from the kernel on Linux;
    end of file on stdin everywhere, see ``watch_stdin``)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before the prctl: then this process has a new parent.
    if os.getppid() != parent:
        os._exit(1)


def lower_priority(nice: int) -> None:
    """Add ``nice`` to this process's niceness (0: as the worker)."""
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)


def watch_stdin(stdin: IO[bytes]) -> None:
    """Exit at once when stdin closes: the parent is gone (or gave up on this run)."""

    def wait() -> None:
        stdin.read()
        os._exit(1)

    threading.Thread(target=wait, name="export-parent-watch", daemon=True).start()


class Reporter:
    """The child's lines on stdout: progress at most every ``PROGRESS_EVERY_S``, then one
    outcome."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._sent_at = 0.0

    async def progress(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._sent_at >= PROGRESS_EVERY_S or progress.get("percent") == 100:
            self._sent_at = now
            self.send({"progress": progress})

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(message, default=str) + b"\n")
        self.out.flush()
