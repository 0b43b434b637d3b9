"""The outbox relay: publish committed ``outbox_events`` rows to Kafka, in every worker.

A batch is claimed with ``FOR UPDATE SKIP LOCKED`` and stays locked while it is published, so
concurrent relays never take the same row; it is marked published in the same transaction once
Kafka has acknowledged every message. A crash between the acknowledgement and the commit
republishes the batch: delivery is at-least-once, and consumers are idempotent by record id.
The relay sleeps on ``LISTEN outbox_events`` (a trigger notifies at commit), with a slow poll as
a safety net for missed notifications.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import mode
import orjson

from exchange_stream.infra import metrics
from exchange_stream.infra.config import Settings
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.sql import q

log = logging.getLogger(__name__)

CHANNEL = "outbox_events"


class OutboxRelay(mode.Service):
    """Drains the outbox whenever woken; survives Kafka and Postgres outages without restart."""

    batch_size = 500
    poll_interval_s = 1.0
    backoff_max_s = 5.0

    def __init__(self, settings: Settings, runtime: Runtime, **kwargs: Any) -> None:
        self.settings = settings
        self.runtime = runtime
        self._wake = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._pending_checked_at = 0.0
        super().__init__(**kwargs)

    async def on_stop(self) -> None:
        await self._close_listener()

    @mode.Service.task
    async def _relay_loop(self) -> None:
        failures = 0
        while not self.should_stop:
            try:
                await self._ensure_listener()
                published = await self.drain()
                failures = 0
                await self._report_pending()
                if not published:
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
        """Publish pending rows batch by batch until none are left; return how many."""
        total = 0
        while not self.should_stop:
            n = await self._publish_batch()
            total += n
            if n < self.batch_size:
                return total
        return total

    async def _publish_batch(self) -> int:
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("outbox_claim"), self.batch_size)
            if not rows:
                return 0
            ids = [r["id"] for r in rows]
            try:
                await self.runtime.publisher.send_many(
                    (r["topic"], r["key"].encode(), orjson.dumps(r["payload"])) for r in rows
                )
            except Exception as exc:
                raise PublishFailed(ids, type(exc).__name__) from exc
            await conn.execute(q("outbox_mark_published"), ids)
        now = time.time()
        for r in rows:
            metrics.outbox_relay_latency_seconds.observe(
                max(0.0, now - r["created_at"].timestamp())
            )
        metrics.outbox_published_total.inc(len(rows))
        return len(rows)

    async def _reset_on_failure(self, exc: Exception) -> None:
        if isinstance(exc, PublishFailed):
            # The claim transaction rolled back; note the attempt on the rows, best effort.
            try:
                async with self.runtime.pool.acquire() as conn:
                    await conn.execute(q("outbox_mark_failed"), exc.ids, exc.error_type)
            except Exception:
                log.warning("could not record outbox failure", exc_info=True)
        else:
            # Postgres trouble: the listener connection is probably gone too.
            await self._close_listener()

    async def _sleep_until_woken(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
        except TimeoutError:
            pass
        self._wake.clear()

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
        async with self.runtime.pool.acquire() as conn:
            metrics.outbox_pending.set(await conn.fetchval(q("outbox_pending_count")))


class PublishFailed(RuntimeError):
    """Kafka did not acknowledge a batch; its rows stay pending."""

    def __init__(self, ids: list[int], error_type: str) -> None:
        super().__init__(error_type)
        self.ids = ids
        self.error_type = error_type
