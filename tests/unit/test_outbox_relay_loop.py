"""When the relay drains: at a wake (a commit's notification, then the linger), never again at
once after a drain that published. Draining straight away took the rows committed during the
previous batch a few at a time, and each batch costs the same round trips whatever its size.

The relay's loop runs on the test's event loop with its Postgres and Kafka parts replaced (the
real drain is covered by tests/test_outbox_relay.py): nothing else runs there, so a drain that
was due would happen within a few turns of the loop.
"""

from __future__ import annotations

import asyncio

from exchange_stream.infra.config import Settings
from exchange_stream.pipeline.outbox import OutboxRelay

TURNS = 200  # turns of the event loop given to a drain that should not come


class _Relay(OutboxRelay):
    """The relay with its I/O replaced: every drain publishes ``published`` rows."""

    def __init__(self, published: int) -> None:
        super().__init__(Settings.from_env({"ENV": "local", "OUTBOX_LINGER_MS": "0"}), None)
        self.published = published
        self.drains = 0
        self.poll_interval_s = 3600.0  # no poll during the test: only notifications wake it

    async def _ensure_listener(self) -> None:
        return None

    async def _report_pending(self) -> None:
        return None

    async def drain(self) -> int:
        self.drains += 1
        await asyncio.sleep(0)  # a real drain awaits its I/O
        return self.published


async def _turns(n: int = TURNS) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _run(relay: _Relay) -> asyncio.Task:
    task = asyncio.create_task(OutboxRelay._relay_loop.fun(relay))
    await _turns()
    return task


async def test_a_drain_that_published_waits_for_the_next_notification() -> None:
    relay = _Relay(published=7)
    task = await _run(relay)
    try:
        assert relay.drains == 1  # the first drain at start, then nothing until a wake
        relay._on_notify()
        await _turns()
        assert relay.drains == 2
        await _turns()
        assert relay.drains == 2
    finally:
        task.cancel()


async def test_notifications_during_a_drain_make_one_more_drain_not_one_each() -> None:
    relay = _Relay(published=7)
    task = await _run(relay)
    try:
        for _ in range(5):
            relay._on_notify()
        await _turns()
        assert relay.drains == 2
    finally:
        task.cancel()
