"""The outbox relay: publish committed ``outbox_events`` rows to Kafka, in every worker.

A batch is claimed with ``FOR UPDATE SKIP LOCKED`` and stays locked while it is published, so
concurrent relays never take the same row; the rows Kafka acknowledged are marked published in the
same transaction. A crash between the acknowledgement and the commit republishes them: delivery is
at-least-once, and consumers are idempotent by record id.
One bad row never holds back the others: a row whose topic Kafka does not have (looked up before
sending, so it costs no wait) or whose message Kafka refuses is set aside with ``attempts + 1``,
its error type and a ``next_attempt_at`` that backs off exponentially, while the rest of the batch
is published. When Kafka takes none of the batch, it is an outage: the rows stay due and the relay
as a whole backs off until Kafka answers again.
The relay sleeps on ``LISTEN outbox_events`` (a trigger notifies at commit), with a slow poll as
a safety net for missed notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import mode
import orjson

from exchange_stream.infra import metrics
from exchange_stream.infra.config import Settings
from exchange_stream.infra.kafka import UNKNOWN_TOPIC, producer_failed, refused_message
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.sql import q

log = logging.getLogger(__name__)

CHANNEL = "outbox_events"


class OutboxRelay(mode.Service):
    """Drains the outbox whenever woken; survives Kafka and Postgres outages without restart."""

    batch_size = 500
    poll_interval_s = 1.0
    backoff_max_s = 5.0
    # A row that failed on its own waits 1 s, 2 s, 4 s... up to 5 min: soon enough once an
    # operator has created its topic, rare enough to cost nothing meanwhile.
    row_retry_base_s = 1.0
    row_retry_max_s = 300.0

    def __init__(self, settings: Settings, runtime: Runtime, **kwargs: Any) -> None:
        self.settings = settings
        self.runtime = runtime
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._pending_checked_at = 0.0
        self.linger_s = settings.outbox_linger_ms / 1000
        super().__init__(**kwargs)

    async def on_stop(self) -> None:
        await self._close_listener()

    @mode.Service.task
    async def _relay_loop(self) -> None:
        failures = 0
        while not self.should_stop:
            try:
                await self._ensure_listener()
                await self.drain()
                failures = 0
                await self._report_pending()
                # Even after a drain that published: rows committed meanwhile have notified, so
                # the wake is set and the next drain comes one linger later, as one batch.
                # Draining again at once took them a few at a time, and each batch costs the
                # same four round trips and a produce request whatever its size; on one event
                # loop with the ingest requests, that work showed as their latency.
                await self._sleep_until_woken()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                metrics.outbox_publish_failures_total.inc()
                delay = min(self.backoff_max_s, 0.1 * 2 ** min(failures, 8))
                log.warning(
                    "outbox relay failed; retrying",
                    extra={"fields": {"error_type": type(exc).__name__, "retry_in_s": delay}},
                )
                await self._reset_on_failure(exc)
                await self.sleep(delay)

    async def drain(self) -> int:
        """Publish due rows batch by batch until none are left; return how many were claimed."""
        total = 0
        while not self.should_stop:
            n = await self._publish_batch()
            total += n
            if n < self.batch_size:
                return total
        return total

    async def _publish_batch(self) -> int:
        async with self.runtime.work_pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("outbox_claim"), self.batch_size)
            if not rows:
                return 0
            outcome = await self._publish(rows)
            if outcome.published:
                await conn.execute(q("outbox_mark_published"), [r["id"] for r in outcome.published])
            if outcome.set_aside:
                await conn.execute(
                    q("outbox_mark_retry"),
                    [r["id"] for r, _ in outcome.set_aside],
                    [error_type for _, error_type in outcome.set_aside],
                    self.row_retry_base_s,
                    self.row_retry_max_s,
                )
        self._count(outcome)
        if outcome.outage:
            # Committed above: what Kafka took stays published; the rest waits for the relay.
            raise PublishFailed([r["id"] for r in outcome.outage], outcome.outage_error)
        return len(rows)

    async def _publish(self, rows: list[asyncpg.Record]) -> BatchOutcome:
        """Send the claimed rows; sort each into published, set aside or waiting out an outage."""
        ids = [r["id"] for r in rows]
        publisher = self.runtime.publisher
        try:
            missing = await publisher.missing_topics({r["topic"] for r in rows})
            sendable = [r for r in rows if r["topic"] not in missing]
            errors = await publisher.send_each(
                [(r["topic"], r["key"].encode(), orjson.dumps(r["payload"])) for r in sendable]
            )
        except Exception as exc:
            # Kafka did not answer (or the producer could not start): nothing went out.
            raise PublishFailed(ids, type(exc).__name__) from exc
        return sort_batch(rows, missing, errors)

    def _count(self, outcome: BatchOutcome) -> None:
        now = time.time()
        for r in outcome.published:
            metrics.outbox_relay_latency_seconds.observe(
                max(0.0, now - r["created_at"].timestamp())
            )
        metrics.outbox_published_total.inc(len(outcome.published))
        if not outcome.set_aside:
            return
        by_topic = Counter(r["topic"] for r, _ in outcome.set_aside)
        for topic, n in by_topic.items():
            metrics.outbox_row_failures_total.labels(topic).inc(n)
        log.warning(
            "outbox rows failed on their own; retrying them later",
            extra={
                "fields": {
                    "rows": len(outcome.set_aside),
                    "topics": sorted(by_topic),
                    "error_types": sorted({e for _, e in outcome.set_aside}),
                }
            },
        )

    async def _reset_on_failure(self, exc: Exception) -> None:
        if isinstance(exc, PublishFailed):
            # The rows stay pending and due; note the attempt on them, best effort.
            try:
                async with self.runtime.work_pool.acquire() as conn:
                    await conn.execute(q("outbox_mark_failed"), exc.ids, exc.error_type)
            except Exception:
                log.warning("could not record outbox failure", exc_info=True)
        else:
            # Postgres trouble: the listener connection is probably gone too.
            await self._close_listener()

    async def _sleep_until_woken(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
        # Read the event, not the timeout: a notification that lands as the poll fires counts.
        cause = "notify" if self._wake.is_set() else "poll"
        self._wake.clear()
        metrics.outbox_relay_wakeups_total.labels(cause).inc()
        if cause == "notify" and self.linger_s:
            # Commits come in bursts: waiting a little (OUTBOX_LINGER_MS, 30 ms by default) makes
            # one batch of them, and each batch costs the same four round trips whatever its
            # size. bench/end_to_end.py: at 400-450 req/s, 202->canonical p99 77-100 ms with
            # 30 ms against 89-375 ms with 5 ms.
            await asyncio.sleep(self.linger_s)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.settings.dsn, timeout=5)
        await self._listener.add_listener(CHANNEL, self._on_notify)
        # Rows committed while we were not listening are picked up by the drain that follows.

    async def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                await self._listener.close(timeout=2)
            except Exception:
                self._listener.terminate()
            self._listener = None

    async def _report_pending(self) -> None:
        now = time.monotonic()
        if now - self._pending_checked_at < 1.0:
            return
        self._pending_checked_at = now
        async with self.runtime.work_pool.acquire() as conn:
            counts = await conn.fetchrow(q("outbox_pending_count"))
        metrics.outbox_pending.set(counts["pending"])
        metrics.outbox_waiting_retry.set(counts["waiting_retry"])


@dataclass
class BatchOutcome:
    """What became of each row of a claimed batch."""

    published: list[Mapping[str, Any]] = field(default_factory=list)
    # Rows that failed on their own, with their error type: they wait for their next attempt.
    set_aside: list[tuple[Mapping[str, Any], str]] = field(default_factory=list)
    # Rows Kafka did not take because it took nothing: the relay backs off as a whole.
    outage: list[Mapping[str, Any]] = field(default_factory=list)
    outage_error: str = ""


def sort_batch(
    rows: Sequence[Mapping[str, Any]],
    missing: set[str],
    errors: Sequence[BaseException | None],
) -> BatchOutcome:
    """Sort a claimed batch: ``missing`` are the topics Kafka does not have (their rows were not
    sent), ``errors`` the send outcomes of the other rows, in order (``None``: acknowledged)."""
    outcome = BatchOutcome()
    outcome.set_aside = [(r, UNKNOWN_TOPIC) for r in rows if r["topic"] in missing]
    sent = [r for r in rows if r["topic"] not in missing]
    # Kafka answered if it took any message of the batch; then what it did not take failed on its
    # own. If it took none, only a refusal of the message itself is the row's fault.
    answered = any(e is None for e in errors)
    for row, error in zip(sent, errors, strict=True):
        if error is None:
            outcome.published.append(row)
        elif refused_message(error) or (answered and not producer_failed(error)):
            outcome.set_aside.append((row, type(error).__name__))
        else:
            outcome.outage.append(row)
            outcome.outage_error = outcome.outage_error or type(error).__name__
    return outcome


class PublishFailed(RuntimeError):
    """Kafka did not acknowledge these rows of a batch; they stay pending and due."""

    def __init__(self, ids: list[int], error_type: str) -> None:
        super().__init__(error_type)
        self.ids = ids
        self.error_type = error_type
