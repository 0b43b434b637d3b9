"""Issuing and resolving recipients' tokens and scoped ids, with the recipient's keys cached.

The one place that turns master patient tokens into a recipient's tokens and back, and record
ids, person ids, item ids and cursors into the recipient's own (``core/scoped_ids.py``). A
recipient's status and resolvable key versions come from Postgres once, then stay cached until a
notification says the recipient changed (or, as a backstop, ``RECIPIENT_CACHE_TTL_S`` passes):
a page of 500 tokens costs no round trip, and a revocation, rotation or retirement reaches every
worker at once. The cryptography is ``core/recipient_token.py`` and ``core/scoped_ids.py``.

Resolving never says why a token does not resolve: another recipient's token, a retired
version, a revoked recipient, a forged or altered token, garbage — all are ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import mode

from exchange_stream.core.recipient_token import RecipientTokens
from exchange_stream.core.scoped_ids import ScopedIds
from exchange_stream.infra.sql import q
from exchange_stream.read.grants import NO_GRANTS, Grants

log = logging.getLogger(__name__)

# The recipient that ``Authorization: Bearer dev`` stands for when ENV=local.
LOCAL_DEV_RECIPIENT = "local-dev"
# Notified with a recipient id whenever its row, keys or credentials change (migration 0013).
CHANNEL = "recipients_changed"
# The listening connection's application_name, as pg_stat_activity shows it.
LISTENER_NAME = "exchange-stream recipients listener"


@dataclass(frozen=True)
class RecipientKeys:
    """What a worker knows of one recipient: whether it is active, which versions resolve, and
    what its grants allow."""

    recipient: str
    active: bool
    versions: tuple[int, ...]
    grants: Grants = NO_GRANTS

    @property
    def current(self) -> int | None:
        """The version new tokens are issued under; None for a revoked recipient."""
        return max(self.versions) if self.active and self.versions else None

    @property
    def resolvable(self) -> tuple[int, ...]:
        return self.versions if self.active else ()


class RecipientTokenService(mode.Service):
    """Issues and resolves recipients' tokens for the read API; one per worker.

    With a ``dsn`` it listens on ``recipients_changed`` on a connection of its own (migration
    0013 notifies, at commit, the id of every recipient whose row or keys change), and drops that
    recipient's cached state at once: a revocation, rotation or retirement takes effect on every
    worker as soon as the notification arrives. The TTL is only the backstop: while that
    connection is down (it is retried, with backoff) entries still expire, and every cached state
    is dropped when it is lost and again once it listens, so none outlives a missed notification
    by more than the TTL.
    """

    listen_retry_max_s = 5.0
    # How often an idle listening connection is checked; a dead one is then replaced.
    listen_check_s = 10.0

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        secret: str,
        *,
        ttl_s: float = 5.0,
        register_local_dev: bool = False,
        dsn: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._pool = pool
        self._tokens = RecipientTokens(secret)
        self._ids = ScopedIds(secret)
        self.ttl_s = ttl_s
        self.register_local_dev = register_local_dev
        self.dsn = dsn
        self._cache: dict[str, tuple[float, RecipientKeys | None]] = {}
        self._loading: dict[str, asyncio.Future[RecipientKeys | None]] = {}
        # Bumped by every forget(): a load that began before a change is not cached after it.
        self._generation = 0
        self.listening = asyncio.Event()
        self._listener_pid: int | None = None
        super().__init__(**kwargs)

    async def on_started(self) -> None:
        if not self.register_local_dev:
            return
        try:
            await self._pool().execute(q("recipients_ensure"), LOCAL_DEV_RECIPIENT)
            await self._pool().execute(q("recipients_ensure_grant"), LOCAL_DEV_RECIPIENT)
        except Exception as exc:
            # Postgres down or not migrated yet: the worker still starts; dev reads will 403.
            log.warning(
                "could not register the local-dev recipient",
                extra={"fields": {"error_type": type(exc).__name__}},
            )

    async def keys(self, recipient: str) -> RecipientKeys | None:
        """The recipient's key state (cached for ``ttl_s``); None when it is not registered."""
        now = time.monotonic()
        cached = self._cache.get(recipient)
        if cached is not None and cached[0] > now:
            return cached[1]
        loading = self._loading.get(recipient)
        if loading is None:
            # Concurrent requests for one recipient share one query.
            loading = asyncio.ensure_future(self._load(recipient))
            self._loading[recipient] = loading
            loading.add_done_callback(lambda done: self._loaded(recipient, done))
        return await asyncio.shield(loading)

    def _loaded(self, recipient: str, done: asyncio.Future[RecipientKeys | None]) -> None:
        if self._loading.get(recipient) is done:
            del self._loading[recipient]

    async def _load(self, recipient: str) -> RecipientKeys | None:
        generation = self._generation
        row = await self._pool().fetchrow(q("recipient_state"), recipient)
        keys = (
            None
            if row is None
            else RecipientKeys(
                recipient,
                row["status"] == "active",
                tuple(row["versions"]),
                Grants.of(row["grants"]),
            )
        )
        if generation == self._generation:
            self._cache[recipient] = (time.monotonic() + self.ttl_s, keys)
        return keys

    def forget(self, recipient: str | None = None) -> None:
        """Drop cached key states (one recipient, or all): the next use reads them again."""
        self._generation += 1
        if recipient is None:
            self._cache.clear()
            self._loading.clear()
        else:
            self._cache.pop(recipient, None)
            # A load under way may have read the state before the change: later callers wait
            # for one of their own.
            self._loading.pop(recipient, None)

    # Notifications ---------------------------------------------------------------------------

    @property
    def listener_pid(self) -> int | None:
        """The Postgres backend pid of the listening connection, while it listens."""
        return self._listener_pid if self.listening.is_set() else None

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.forget(payload or None)

    @mode.Service.task
    async def _listen_loop(self) -> None:
        if self.dsn is None:
            return
        failures = 0
        while not self.should_stop:
            try:
                await self._listen_once(reconnected=failures > 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(self.listen_retry_max_s, 0.1 * 2 ** min(failures, 8))
                log.warning(
                    "not listening for recipient changes; cached keys expire by their TTL",
                    extra={"fields": {"error_type": type(exc).__name__, "retry_in_s": delay}},
                )
                await self.sleep(delay)
            else:
                failures = 0

    async def _listen_once(self, *, reconnected: bool) -> None:
        """Listen on one connection until it is lost (raises) or the service stops."""
        lost = asyncio.Event()

        def on_lost(_: object) -> None:
            lost.set()
            # Whatever was notified from now on is missed: nothing cached may rely on it.
            self.forget()

        conn = await asyncpg.connect(
            self.dsn, timeout=5, server_settings={"application_name": LISTENER_NAME}
        )
        try:
            conn.add_termination_listener(on_lost)
            await conn.add_listener(CHANNEL, self._on_notify)
            # Changes committed before LISTEN took effect notified nobody.
            self.forget()
            self._listener_pid = conn.get_server_pid()
            self.listening.set()
            if reconnected:
                log.info("listening for recipient changes again")
            while not self.should_stop:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=self.listen_check_s)
                if lost.is_set():
                    raise ConnectionError("the listening connection was lost")
                # A connection that died silently (no FIN) only shows when it is used.
                await conn.execute("SELECT 1", timeout=5)
        finally:
            if self.listening.is_set():
                self.listening.clear()
                self.forget()
            self._listener_pid = None
            conn.terminate()

    async def _current(self, recipient: str) -> int | None:
        """The key version new values are issued under; None for an unknown or revoked
        recipient."""
        keys = await self.keys(recipient)
        return None if keys is None else keys.current

    async def _resolvable(self, recipient: str) -> tuple[int, ...]:
        """The key versions whose values still open; none for an unknown recipient."""
        keys = await self.keys(recipient)
        return keys.resolvable if keys is not None else ()

    async def issue_many(self, recipient: str, master_tokens: Sequence[str]) -> list[str]:
        """The recipient's tokens for ``master_tokens``, under its current key version; an
        empty list for a recipient that is unknown or revoked."""
        version = await self._current(recipient)
        if version is None:
            return []
        return self._tokens.issue_many(master_tokens, recipient, version)

    async def issue(self, recipient: str, master_token: str) -> str | None:
        tokens = await self.issue_many(recipient, [master_token])
        return tokens[0] if tokens else None

    async def resolve_many(self, recipient: str, tokens: Sequence[object]) -> list[str | None]:
        """The master token of each of the recipient's ``tokens``, or None for each that does
        not resolve (see the module docstring)."""
        versions = await self._resolvable(recipient)
        return self._tokens.resolve_many(tokens, recipient, versions)

    async def resolve(self, recipient: str, token: object) -> str | None:
        return (await self.resolve_many(recipient, [token]))[0]

    # Identifiers of the recipient's own ------------------------------------------------------

    async def record_ids(self, recipient: str, ids: Sequence[uuid.UUID]) -> list[str]:
        """The recipient's record id for each of ``ids``, in order, under its current key
        version; an empty list for a recipient that is unknown or revoked (like ``issue_many``)."""
        version = await self._current(recipient)
        if version is None:
            return []
        return self._ids.record_ids(ids, recipient, version)

    async def open_record_id(self, recipient: str, text: object) -> uuid.UUID | None:
        """The record id behind one of the recipient's record ids; None if it is not one."""
        versions = await self._resolvable(recipient)
        return self._ids.open_record_id(text, recipient, versions)

    async def person_ids(self, recipient: str, ids: Sequence[int]) -> list[str]:
        """The recipient's person id (``rp1.…``) for each person id of ``ids``, in order, under
        its current key version; an empty list for a recipient that is unknown or revoked."""
        version = await self._current(recipient)
        if version is None:
            return []
        return self._ids.person_ids(ids, recipient, version)

    async def open_person_id(self, recipient: str, text: object) -> int | None:
        """The person id behind one of the recipient's person ids; None if it is not one."""
        versions = await self._resolvable(recipient)
        return self._ids.open_person_id(text, recipient, versions)

    async def item_ids(self, recipient: str, kind: str, values: Sequence[str]) -> list[str]:
        """The recipient's id for each partner id of ``kind`` (encounter, claim, lab_result), in
        order; an empty list for a recipient that is unknown or revoked."""
        version = await self._current(recipient)
        if version is None:
            return []
        return self._ids.item_ids(kind, values, recipient, version)

    async def open_item_id(self, recipient: str, kind: str, text: object) -> str | None:
        """The partner id behind one of the recipient's ids of ``kind``; None if it is not one."""
        versions = await self._resolvable(recipient)
        return self._ids.open_item_id(text, kind, recipient, versions)

    async def seal_cursor(self, recipient: str, payload: bytes) -> str:
        """The recipient's opaque, authenticated cursor for ``payload`` (at most 63 bytes).
        Raises ``RecipientUnavailable`` for a recipient that is unknown or revoked."""
        return (await self.seal_cursors(recipient, [payload]))[0]

    async def seal_cursors(self, recipient: str, payloads: Sequence[bytes]) -> list[str]:
        """``seal_cursor`` for each of a page's ``payloads``, the keys looked up once."""
        if not payloads:
            return []
        version = await self._current(recipient)
        if version is None:
            raise RecipientUnavailable(recipient)
        return [self._ids.seal_cursor(p, recipient, version) for p in payloads]

    async def open_cursor(self, recipient: str, text: object) -> bytes | None:
        """The payload of one of the recipient's cursors; None for anything else (another
        recipient's, a retired version's, altered, forged, not a string)."""
        versions = await self._resolvable(recipient)
        return self._ids.open_cursor(text, recipient, versions)


class RecipientUnavailable(LookupError):
    """The recipient is unknown or revoked: nothing can be issued for it."""
