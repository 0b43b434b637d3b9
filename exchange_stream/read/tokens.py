"""Issuing and resolving recipients' tokens, with the recipient's key versions cached.

The one place that turns master patient tokens into a recipient's tokens and back. A recipient's
status and resolvable key versions come from Postgres once per ``RECIPIENT_CACHE_TTL_S`` (a page
of 500 tokens costs one round trip, not 500); the cryptography is ``core/recipient_token.py``.
A revocation, rotation or retirement therefore takes effect on every worker within the TTL.

Resolving never says why a token does not resolve: another recipient's token, a retired
version, a revoked recipient, a forged or altered token, garbage — all are ``None``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import mode

from exchange_stream.core.recipient_token import RecipientTokens
from exchange_stream.infra.sql import q

log = logging.getLogger(__name__)

# The recipient that ``Authorization: Bearer dev`` stands for when ENV=local.
LOCAL_DEV_RECIPIENT = "local-dev"


@dataclass(frozen=True)
class RecipientKeys:
    """What a worker knows of one recipient: whether it is active and which versions resolve."""

    recipient: str
    active: bool
    versions: tuple[int, ...]

    @property
    def current(self) -> int | None:
        """The version new tokens are issued under; None for a revoked recipient."""
        return max(self.versions) if self.active and self.versions else None

    @property
    def resolvable(self) -> tuple[int, ...]:
        return self.versions if self.active else ()


class RecipientTokenService(mode.Service):
    """Issues and resolves recipients' tokens for the read API; one per worker."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        secret: str,
        *,
        ttl_s: float = 5.0,
        register_local_dev: bool = False,
        **kwargs: Any,
    ) -> None:
        self._pool = pool
        self._tokens = RecipientTokens(secret)
        self.ttl_s = ttl_s
        self.register_local_dev = register_local_dev
        self._cache: dict[str, tuple[float, RecipientKeys | None]] = {}
        self._loading: dict[str, asyncio.Future[RecipientKeys | None]] = {}
        super().__init__(**kwargs)

    async def on_started(self) -> None:
        if not self.register_local_dev:
            return
        try:
            await self._pool().execute(q("recipients_ensure"), LOCAL_DEV_RECIPIENT)
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
            loading.add_done_callback(lambda _: self._loading.pop(recipient, None))
        return await asyncio.shield(loading)

    async def _load(self, recipient: str) -> RecipientKeys | None:
        row = await self._pool().fetchrow(q("recipient_state"), recipient)
        keys = (
            None
            if row is None
            else RecipientKeys(recipient, row["status"] == "active", tuple(row["versions"]))
        )
        self._cache[recipient] = (time.monotonic() + self.ttl_s, keys)
        return keys

    def forget(self, recipient: str | None = None) -> None:
        """Drop cached key states (one recipient, or all): the next use reads them again."""
        if recipient is None:
            self._cache.clear()
        else:
            self._cache.pop(recipient, None)

    async def issue_many(self, recipient: str, master_tokens: Sequence[str]) -> list[str]:
        """The recipient's tokens for ``master_tokens``, under its current key version; an
        empty list for a recipient that is unknown or revoked."""
        keys = await self.keys(recipient)
        if keys is None or keys.current is None:
            return []
        return self._tokens.issue_many(master_tokens, recipient, keys.current)

    async def issue(self, recipient: str, master_token: str) -> str | None:
        tokens = await self.issue_many(recipient, [master_token])
        return tokens[0] if tokens else None

    async def resolve_many(self, recipient: str, tokens: Sequence[object]) -> list[str | None]:
        """The master token of each of the recipient's ``tokens``, or None for each that does
        not resolve (see the module docstring)."""
        keys = await self.keys(recipient)
        versions = keys.resolvable if keys is not None else ()
        return self._tokens.resolve_many(tokens, recipient, versions)

    async def resolve(self, recipient: str, token: object) -> str | None:
        return (await self.resolve_many(recipient, [token]))[0]
