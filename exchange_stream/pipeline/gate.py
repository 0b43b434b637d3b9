"""The normalizer's gate: closed while a dependency it cannot work without is unreachable.

A record whose S3 read or Postgres statement fails asks the gate whether the dependency itself
is down (``outage``). The gate probes it once: if it answers, the failure was the record's own
and takes the record-level path (bounded retries, then the DLQ). If it does not, the gate closes
(every actor stops taking new work, offsets stay where they are), probes with capped backoff
until the dependency answers, and opens again. One log line marks the pause and one the resume;
``normalizer_paused{dependency}`` shows it meanwhile. Nothing is dead-lettered because a
dependency was down, and nobody has to act.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from exchange_stream.infra import metrics

log = logging.getLogger(__name__)

Probe = Callable[[str], Awaitable[None]]


class DependencyGate:
    """Shared by every normalizer actor of a worker (see the module docstring)."""

    def __init__(
        self, probe: Probe, *, first_delay_s: float = 0.2, max_delay_s: float = 10.0
    ) -> None:
        self._probe = probe
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._open = asyncio.Event()
        self._open.set()
        self._lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[None]] = {}

    @property
    def paused_for(self) -> list[str]:
        """The dependencies the normalizer is waiting for (empty when it works)."""
        return sorted(self._waiting)

    async def wait_open(self) -> None:
        """Return once no dependency outage holds the normalizer."""
        await self._open.wait()

    async def outage(self, dependency: str) -> bool:
        """After a failed call to ``dependency``: if it does not answer a probe, wait until it
        does and return True; if it answers, return False at once."""
        async with self._lock:
            waiting = self._waiting.get(dependency)
            if waiting is None:
                if await self._answers(dependency):
                    return False
                waiting = asyncio.ensure_future(self._until_back(dependency))
                self._waiting[dependency] = waiting
        await asyncio.shield(waiting)
        return True

    async def _answers(self, dependency: str) -> bool:
        try:
            await self._probe(dependency)
        except Exception:
            return False
        return True

    async def _until_back(self, dependency: str) -> None:
        started = time.monotonic()
        self._open.clear()
        metrics.normalizer_paused.labels(dependency).set(1)
        metrics.normalizer_pauses_total.labels(dependency).inc()
        log.warning(
            "normalizer paused: dependency unavailable",
            extra={"fields": {"dependency": dependency}},
        )
        delay = self.first_delay_s
        try:
            while True:
                await asyncio.sleep(delay)
                if await self._answers(dependency):
                    break
                delay = min(delay * 2, self.max_delay_s)
        finally:
            self._waiting.pop(dependency, None)
            metrics.normalizer_paused.labels(dependency).set(0)
            if not self._waiting:
                self._open.set()
        log.warning(
            "normalizer resumed: dependency answers again",
            extra={
                "fields": {
                    "dependency": dependency,
                    "paused_s": round(time.monotonic() - started, 2),
                }
            },
        )
