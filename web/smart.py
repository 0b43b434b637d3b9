"""SMART Backend Services for recipients: discovery, the token endpoint, the exchange's JWKS.

``POST /auth/token`` takes a client-credentials request authenticated by a JWT assertion
(RFC 7523 ``private_key_jwt``) that the recipient signed, RS384 or ES384, with a key of the
JWKS registered for it (``recipients add --jwks`` / ``recipients set-jwks``), and answers an
access token the exchange signs (``core/access_token.py``), valid for 5 minutes. Errors are
RFC 6749 §5.2's ``{"error", "error_description"}`` with fixed descriptions: no submitted value
is echoed, and every failure of the assertion is the same ``invalid_client``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import jwt
from aiohttp import web

from exchange_stream.core.access_token import issue_access_token, signing_key
from exchange_stream.core.jwks import ALGORITHMS, JwksInvalid, public_key
from exchange_stream.core.recipient_token import RECIPIENT_ID_PATTERN
from exchange_stream.core.scopes import RECIPIENT_SCOPES
from exchange_stream.infra.sql import q
from web.context import CONTEXT
from web.responses import json_response
from web.smart_scopes import SMART_TYPES, grant

log = logging.getLogger(__name__)

TOKEN_PATH = "/auth/token"  # noqa: S105 (a route, not a secret)
JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATHS = ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration")
GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SIGNING_ALGORITHMS = ("RS384", "ES384")
# SMART: an assertion's exp is at most five minutes ahead; the access token lives as long.
MAX_ASSERTION_LIFETIME_S = 300
ACCESS_TOKEN_LIFETIME_S = 300
MAX_FORM_BYTES = 16 * 1024
MAX_JTI_CHARS = 255
# Expired jtis are purged at most this often per worker, this many rows at a time.
PURGE_EVERY_S = 60.0
PURGE_ROWS = 1000
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_RECIPIENT = re.compile(RECIPIENT_ID_PATTERN)
_purged_at = 0.0


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: its code, a fixed description, and the HTTP status."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def base_url(request: web.Request) -> str:
    """Where the exchange is reached: ``PUBLIC_BASE_URL``, or the request's scheme and host."""
    configured = request.app[CONTEXT].settings.public_base_url
    return configured or f"{request.scheme}://{request.host}"


def scopes_supported() -> list[str]:
    """The scopes a recipient may ask for, as the discovery document lists them."""
    smart = [f"system/{t}.{a}" for t in ("*", *SMART_TYPES) for a in ("read", "rs")]
    return [*sorted(RECIPIENT_SCOPES), *smart]


async def smart_configuration(request: web.Request) -> web.Response:
    """SMART App Launch 2.x discovery (``.well-known/smart-configuration``), backend services."""
    base = base_url(request)
    return json_response(
        {
            "token_endpoint": f"{base}{TOKEN_PATH}",
            "jwks_uri": f"{base}{JWKS_PATH}",
            "grant_types_supported": [GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
            "scopes_supported": scopes_supported(),
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        }
    )


async def jwks(request: web.Request) -> web.Response:
    """The public key(s) the exchange's access tokens are signed with."""
    key = signing_key(request.app[CONTEXT].settings.access_token_signing_key)
    return json_response({"keys": [key.public_jwk]})


async def token(request: web.Request) -> web.Response:
    """``POST /auth/token``: an access token for a recipient's signed client assertion."""
    try:
        body = await _issue(request)
    except OAuthError as exc:
        log.info("token refused", extra={"fields": {"error": exc.code}})
        headers = dict(_NO_STORE)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
        return json_response(
            {"error": exc.code, "error_description": exc.description},
            status=exc.status,
            headers=headers,
        )
    return json_response(body, headers=_NO_STORE)


async def _issue(request: web.Request) -> dict[str, Any]:
    ctx = request.app[CONTEXT]
    form = await _form(request)
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise OAuthError("invalid_request", "missing parameter: grant_type")
    if grant_type != GRANT_TYPE:
        raise OAuthError("unsupported_grant_type", "grant_type must be client_credentials")
    for name in ("client_assertion_type", "client_assertion"):
        if not form.get(name):
            raise OAuthError("invalid_request", f"missing parameter: {name}")
    if form["client_assertion_type"] != ASSERTION_TYPE:
        raise _invalid_client("client_assertion_type must be jwt-bearer (RFC 7523)")
    token_url = f"{base_url(request)}{TOKEN_PATH}"
    recipient = await _authenticate_client(ctx.pool, form["client_assertion"], token_url)
    given = grant(form.get("scope", ""))
    if given is None:
        raise OAuthError("invalid_scope", "no requested scope can be granted to this client")
    await _purge_now_and_then(ctx.pool)
    key = signing_key(ctx.settings.access_token_signing_key)
    access_token = issue_access_token(
        key,
        issuer=ctx.settings.jwt_issuer,
        audience=ctx.settings.jwt_audience,
        recipient=recipient,
        scope=given.scope,
        issued_at=int(time.time()),
        lifetime_s=ACCESS_TOKEN_LIFETIME_S,
        kinds=given.kinds,
    )
    log.info("token issued", extra={"fields": {"recipient": recipient}})
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ACCESS_TOKEN_LIFETIME_S,
        "scope": given.scope,
    }


async def _form(request: web.Request) -> dict[str, str]:
    """The form parameters; each may appear once (RFC 6749 §3.2)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    raw = await request.content.read(MAX_FORM_BYTES + 1)
    if len(raw) > MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "the request is too large")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not a form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", "a parameter is repeated")
        form[name] = value
    return form


async def _authenticate_client(pool: Any, assertion: str, token_url: str) -> str:
    """The recipient that signed ``assertion``; ``invalid_client`` otherwise."""
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _invalid_client("the client assertion is not a JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in SIGNING_ALGORITHMS:
        raise _invalid_client("the client assertion must be signed RS384 or ES384")
    recipient = unverified.get("iss")
    if not isinstance(recipient, str) or not _RECIPIENT.fullmatch(recipient):
        raise _invalid_client("iss must be a registered client's id")
    if unverified.get("sub") != recipient:
        raise _invalid_client("sub must equal iss")
    row = await pool.fetchrow(q("recipient_client"), recipient)
    if row is None or row["status"] != "active" or row["jwks"] is None:
        raise _invalid_client("unknown client, revoked, or without registered keys")
    candidates = [
        k
        for k in row["jwks"]["keys"]
        if ALGORITHMS.get(k.get("kty")) == alg and (kid is None or k.get("kid") == kid)
    ]
    claims = _verified(assertion, alg, candidates, recipient, token_url)
    jti = claims["jti"]
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_CHARS:
        raise _invalid_client("jti must be a string of 1 to 255 characters")
    expires = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    if await pool.fetchval(q("recipient_client_jti_use"), recipient, jti, expires) is None:
        raise _invalid_client("the client assertion was used before")
    return recipient


def _verified(
    assertion: str, alg: str, candidates: list[Mapping[str, Any]], recipient: str, aud: str
) -> Mapping[str, Any]:
    """The claims, checked with the first candidate key whose signature matches."""
    for jwk in candidates:
        try:
            key = public_key(jwk)
        except JwksInvalid:
            continue
        try:
            claims = jwt.decode(
                assertion,
                key=key,
                algorithms=[alg],
                audience=aud,
                issuer=recipient,
                # iat is not required by SMART; a client clock a second ahead must not fail.
                options={"require": ["exp", "iss", "sub", "aud", "jti"], "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise _invalid_client("the client assertion has expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid_client("aud must be the token endpoint's URL") from None
        except jwt.PyJWTError:
            raise _invalid_client("the client assertion's claims are invalid") from None
        if claims["exp"] - time.time() > MAX_ASSERTION_LIFETIME_S:
            raise _invalid_client("exp must be at most 5 minutes ahead")
        return claims
    raise _invalid_client("no registered key verifies the client assertion")


async def _purge_now_and_then(pool: Any) -> None:
    """Forget expired jtis, at most once a minute per worker and a bounded batch at a time."""
    global _purged_at
    now = time.monotonic()
    if now - _purged_at < PURGE_EVERY_S:
        return
    _purged_at = now
    await pool.execute(q("recipient_client_jtis_purge"), PURGE_ROWS)


def install(web_app: web.Application) -> None:
    """The SMART routes: discovery (under the FHIR base and at the root), token, JWKS."""
    for path in DISCOVERY_PATHS:
        web_app.router.add_get(path, smart_configuration)
    web_app.router.add_get(JWKS_PATH, jwks)
    web_app.router.add_post(TOKEN_PATH, token)
