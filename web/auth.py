"""Authentication: the exchange's access tokens, HS256 JWTs, or ``Bearer dev`` when local, to a
``Principal`` with a role (partner or recipient) and scopes.

A credential that names a ``recipient`` is a recipient's; any other is a partner's. Scopes are
space separated, as OAuth writes them, and the routes need the ones of the table in docs/API.md
("Credentials, roles and scopes"). A partner JWT without a ``scope`` claim holds the partner's
defaults (``ingest`` and ``tokenize``: deployed partners keep working), a recipient's holds
exactly what it says. ``Bearer dev`` (ENV=local only) is recipient ``local-dev`` with every scope.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from exchange_stream.core.access_token import ALGORITHM as ACCESS_TOKEN_ALGORITHM
from exchange_stream.core.access_token import signing_key
from exchange_stream.core.recipient_token import RECIPIENT_ID_PATTERN

# The scope table lives in the pure core, where the CLI reads it too (docs/API.md has who gets
# which); the routes import the names from here, so ``__all__`` re-exports them.
from exchange_stream.core.scopes import (
    EXPORT,
    INGEST,
    OPS_READ,
    OPS_WRITE,
    OPTOUTS_WRITE,
    PARTNER_DEFAULT_SCOPES,
    READ_RECORDS,
    RECIPIENT_SCOPES,
    SCOPES,
    SMART_SCOPE_GRANTS,
    TOKENIZE,
)
from exchange_stream.infra.config import Settings

__all__ = [
    "DEV_ACTOR",
    "DEV_RECIPIENT",
    "DEV_TOKEN",
    "EXPORT",
    "INGEST",
    "KINDS",
    "MAX_SOURCES",
    "MAX_TOKEN_BYTES",
    "OPS_READ",
    "OPS_WRITE",
    "OPTOUTS_WRITE",
    "PARTNER_DEFAULT_SCOPES",
    "READ_RECORDS",
    "RECIPIENT_SCOPES",
    "SCOPES",
    "SMART_PREFIX",
    "SMART_SCOPE_GRANTS",
    "TOKENIZE",
    "Principal",
    "Unauthorized",
    "authenticate",
    "verify_access_token",
    "verify_jwt",
]

# A real token for this service is a few hundred bytes; refuse absurd ones before parsing.
MAX_TOKEN_BYTES = 4096
DEV_ACTOR = "dev"
# Not a secret: the documented local-only shortcut, refused unless ENV=local.
DEV_TOKEN = "dev"  # noqa: S105

# An access token's SMART scopes start with it; they stand for ``SMART_SCOPE_GRANTS``.
SMART_PREFIX = "system/"
# What ``kinds`` may name: the record kinds, and ``patient`` for SMART's Patient type.
KINDS = frozenset({"encounter", "claim", "lab_result", "patient"})
MAX_SOURCES = 100

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
    # The record kinds (``encounter``, ``claim``, ``lab_result``, and ``patient`` for SMART's
    # Patient) a recipient's credential may read; None: every kind. A SMART scope such as
    # ``system/Encounter.read`` narrows it.
    kinds: frozenset[str] | None = None
    # The ``source`` values a partner may send; None: any.
    sources: frozenset[str] | None = None

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    def may_send(self, source: str) -> bool:
        return self.sources is None or source in self.sources


def verify_jwt(token: str, settings: Settings) -> Mapping[str, Any]:
    """Claims of a valid HS256 token: signed with JWT_SECRET, iss/aud/exp all required."""
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


def verify_access_token(token: str, settings: Settings) -> Mapping[str, Any]:
    """Claims of an access token the exchange issued (EdDSA, its own key)."""
    try:
        return signing_key(settings.access_token_signing_key).verify(
            token, issuer=settings.jwt_issuer, audience=settings.jwt_audience
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
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        raise Unauthorized() from None
    # The header only picks which verification to run; each pins its own algorithm and key.
    if alg == ACCESS_TOKEN_ALGORITHM:
        return _access_principal(verify_access_token(token, settings))
    if alg == "HS256" and settings.jwt_hs256:
        return _jwt_principal(verify_jwt(token, settings))
    raise Unauthorized()


def _jwt_principal(claims: Mapping[str, Any]) -> Principal:
    sub = claims.get("sub")
    recipient = claims.get("recipient")
    if recipient is not None and not (
        isinstance(recipient, str) and _RECIPIENT.fullmatch(recipient)
    ):
        raise Unauthorized()
    if "scope" in claims:
        scopes = _words(claims["scope"])
    else:
        scopes = frozenset() if recipient is not None else PARTNER_DEFAULT_SCOPES
    return Principal(
        actor=sub if isinstance(sub, str) and sub else "jwt",
        recipient=recipient,
        scopes=scopes,
        sources=_sources(claims.get("sources")),
    )


def _access_principal(claims: Mapping[str, Any]) -> Principal:
    recipient, sub = claims.get("recipient"), claims.get("sub")
    if not (isinstance(recipient, str) and _RECIPIENT.fullmatch(recipient)) or sub != recipient:
        raise Unauthorized()
    granted = _words(claims.get("scope", ""))
    scopes = {s for s in granted if s in RECIPIENT_SCOPES}
    if any(s.startswith(SMART_PREFIX) for s in granted):
        scopes |= SMART_SCOPE_GRANTS
    kinds = claims.get("kinds")
    if kinds is not None:
        if not isinstance(kinds, list) or not all(k in KINDS for k in kinds):
            raise Unauthorized()
        kinds = frozenset(kinds)
    return Principal(
        actor=f"recipient:{recipient}", recipient=recipient, scopes=frozenset(scopes), kinds=kinds
    )


def _words(scope: Any) -> frozenset[str]:
    if not isinstance(scope, str):
        raise Unauthorized()
    return frozenset(scope.split())


def _sources(sources: Any) -> frozenset[str] | None:
    if sources is None:
        return None
    if (
        not isinstance(sources, list)
        or len(sources) > MAX_SOURCES
        or not all(isinstance(s, str) and s for s in sources)
    ):
        raise Unauthorized()
    return frozenset(sources)
