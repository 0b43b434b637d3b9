"""The read audit: who read what, one ``read_audit`` row per GraphQL request and per export.

A row says the recipient, the operation (the root fields a query read, or ``export``), the
record kinds the answer held, how many records, when, how long, and the outcome. Never a
token, an argument, a cursor or a value: nothing in it could be joined to a patient.

Reads must keep their latency, so a request only appends its row to memory; the rows gathered
are written together (one COPY) at most ``READ_AUDIT_FLUSH_MS`` later, and at the worker's
stop. The cost is the window: rows not yet written when a worker is killed (SIGKILL) are lost,
at most one flush interval of them. A write that fails (Postgres away) keeps its rows for the
next flush, up to ``MAX_PENDING`` rows, past which the oldest are dropped and counted in the
``read_audit_dropped_total`` metric, so an outage never grows the worker without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import mode

from exchange_stream.infra import metrics

log = logging.getLogger(__name__)

COLUMNS = (
    "occurred_at",
    "recipient_id",
    "operation",
    "kinds",
    "rows",
    "duration_ms",
    "status",
    "correlation_id",
)
MAX_PENDING = 100_000


def audit_row(
    recipient: str,
    operation: str,
    kinds: Iterable[str],
    rows: int,
    duration_s: float,
    status: str,
    correlation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> tuple[Any, ...]:
    """One ``read_audit`` row, in ``COLUMNS`` order."""
    return (
        occurred_at or datetime.now(UTC),
        recipient,
        operation,
        sorted(set(kinds)),
        rows,
        round(duration_s * 1000, 3),
        status,
        correlation_id,
    )


class ReadAudit(mode.Service):
    """Gathers audit rows and writes them in batches (see the module docstring)."""

    def __init__(
        self, pool: Callable[[], asyncpg.Pool], *, flush_ms: int = 500, **kwargs: Any
    ) -> None:
        self._pool = pool
        self.flush_s = flush_ms / 1000
        self._pending: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        super().__init__(**kwargs)

    def record(self, row: tuple[Any, ...]) -> None:
        """Keep ``row`` for the next write; never waits."""
        self._pending.append(row)
        if len(self._pending) > MAX_PENDING:
            dropped = len(self._pending) - MAX_PENDING
            del self._pending[:dropped]
            metrics.read_audit_dropped_total.inc(dropped)
        self._wake.set()

    @mode.Service.task
    async def _writer(self) -> None:
        while not self.should_stop:
            await self._wake.wait()
            # Let the rows of the next interval gather into the same write.
            await self.sleep(self.flush_s)
            self._wake.clear()
            await self.flush()
            if self._pending:
                self._wake.set()  # a failed write: try again after the next interval

    async def flush(self) -> int:
        """Write what was gathered; return how many rows were written."""
        rows, self._pending = self._pending, []
        if not rows:
            return 0
        try:
            await self._pool().copy_records_to_table("read_audit", records=rows, columns=COLUMNS)
        except Exception as exc:
            # Kept for the next flush (record() bounds how many wait).
            self._pending[:0] = rows
            log.warning(
                "read audit write failed; rows kept for the next write",
                extra={"fields": {"rows": len(rows), "error_type": type(exc).__name__}},
            )
            return 0
        metrics.read_audit_rows_total.inc(len(rows))
        return len(rows)

    async def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
