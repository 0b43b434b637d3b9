"""Authentication for ingest and tokenize: strict HS256 JWTs, or ``Bearer dev`` when local."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt

from exchange_stream.infra.config import Settings

# A real token for this service is a few hundred bytes; refuse absurd ones before parsing.
MAX_TOKEN_BYTES = 4096
DEV_ACTOR = "dev"
# Not a secret: the documented local-only shortcut, refused unless ENV=local.
DEV_TOKEN = "dev"  # noqa: S105


class Unauthorized(Exception):
    """Every authentication failure; the response never says which check failed."""


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


def authenticate(header: str | None, settings: Settings) -> str:
    """The actor name for audit rows, from the Authorization header; raise ``Unauthorized``."""
    if not header or len(header) > MAX_TOKEN_BYTES + 7:
        raise Unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized()
    if token == DEV_TOKEN:
        if settings.is_local:
            return DEV_ACTOR
        raise Unauthorized()
    claims = verify_jwt(token, settings)
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and sub else "jwt"
