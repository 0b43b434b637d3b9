"""Authentication: strict HS256 JWTs, or ``Bearer dev`` when local, to a ``Principal``.

A JWT may name a ``recipient`` (a registered recipient id) and carry a ``scope`` claim (space
separated, as OAuth writes scopes). Ingest and /tokenize accept any valid JWT, with or without
them; the read API needs ``records:read`` and a recipient. ``Bearer dev`` (ENV=local only) is
recipient ``local-dev`` with every scope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from exchange_stream.core.recipient_token import RECIPIENT_ID_PATTERN
from exchange_stream.infra.config import Settings

# A real token for this service is a few hundred bytes; refuse absurd ones before parsing.
MAX_TOKEN_BYTES = 4096
DEV_ACTOR = "dev"
# Not a secret: the documented local-only shortcut, refused unless ENV=local.
DEV_TOKEN = "dev"  # noqa: S105


READ_RECORDS = "records:read"
# Every scope this service knows: what ``Bearer dev`` holds.
SCOPES = frozenset({READ_RECORDS})
DEV_RECIPIENT = "local-dev"
_RECIPIENT = re.compile(RECIPIENT_ID_PATTERN)


class Unauthorized(Exception):
    """Every authentication failure; the response never says which check failed."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the actor for audit rows, the recipient it reads as, its scopes."""

    actor: str
    recipient: str | None
    scopes: frozenset[str]

    def can(self, scope: str) -> bool:
        return scope in self.scopes


def verify_jwt(token: str, settings: Settings) -> Mapping[str, Any]:
    """Claims of a valid token: HS256 only, signed with JWT_SECRET, iss/aud/exp all required."""
    try:
        return jwt.decode(
            token,
            key=settings.jwt_secret,
            algorithms=["HS256"],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iss", "aud"], "verify_signature": True},
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Unauthorized() from None


def authenticate(header: str | None, settings: Settings) -> Principal:
    """The caller named by the Authorization header; raise ``Unauthorized``."""
    if not header or len(header) > MAX_TOKEN_BYTES + 7:
        raise Unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized()
    if token == DEV_TOKEN:
        if settings.is_local:
            return Principal(DEV_ACTOR, DEV_RECIPIENT, SCOPES)
        raise Unauthorized()
    claims = verify_jwt(token, settings)
    sub = claims.get("sub")
    recipient = claims.get("recipient")
    scope = claims.get("scope", "")
    if recipient is not None and not (
        isinstance(recipient, str) and _RECIPIENT.fullmatch(recipient)
    ):
        raise Unauthorized()
    if not isinstance(scope, str):
        raise Unauthorized()
    return Principal(
        actor=sub if isinstance(sub, str) and sub else "jwt",
        recipient=recipient,
        scopes=frozenset(scope.split()),
    )
