"""POST /v1/ingest and /v2/ingest: authenticate, validate, and hand over to the ingest stage."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from exchange_stream import ingest, metrics
from exchange_stream.app import MAX_BODY_BYTES
from exchange_stream.logs import correlation_id_var
from web.auth import Unauthorized, authenticate
from web.keys import FAUST_APP
from web.responses import error, json_response

log = logging.getLogger(__name__)

RETRY_AFTER_S = "2"
_KEY_MIN, _HEADER_MAX = 8, 255


def correlation_id_from(header: str | None) -> str:
    """The client's id when it has 8 to 255 printable ASCII characters, otherwise a new UUID."""
    if (
        header
        and _KEY_MIN <= len(header) <= _HEADER_MAX
        and header.isascii()
        and header.isprintable()
    ):
        return header
    return str(uuid.uuid4())


def _is_utf8(value: str) -> bool:
    """False for a header that was not UTF-8: aiohttp keeps such bytes as surrogate escapes, which
    Postgres text cannot store (the key would fail the lookup with a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def read_body(request: web.Request) -> bytes:
    """The body, refusing anything over the limit before reading it when the length is declared."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length)
    return await request.read()


def _handler(version: str):
    route = f"/v{version}/ingest"

    async def view(request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await _ingest(request, version)
        metrics.ingest_requests_total.labels(route, str(response.status)).inc()
        metrics.ingest_latency_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    return view


async def _ingest(request: web.Request, version: str) -> web.Response:
    app = request.app[FAUST_APP]
    settings = app.settings
    try:
        actor = authenticate(request.headers.get("Authorization"), settings)
    except Unauthorized:
        return error(401, "unauthorized")
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return error(400, "missing header: Idempotency-Key")
    if not (_KEY_MIN <= len(key) <= _HEADER_MAX) or not _is_utf8(key):
        return error(400, "invalid header: Idempotency-Key")
    correlation_id = correlation_id_from(request.headers.get("X-Correlation-Id"))
    correlation_id_var.set(correlation_id)
    try:
        body = await read_body(request)
    except web.HTTPRequestEntityTooLarge:
        return error(413, "payload too large")
    try:
        req = ingest.parse_request(version, body)
    except ingest.BadRequest as exc:
        return error(400, exc.reason)
    try:
        result = await ingest.accept(
            app.runtime.pool,
            app.runtime.store,
            settings,
            req,
            idempotency_key=key,
            correlation_id=correlation_id,
            actor=actor,
        )
    except ingest.IdempotencyConflict:
        return error(409, "idempotency conflict")
    except ingest.Unavailable as exc:
        log.warning("ingest unavailable", extra={"fields": {"dependency": exc.dependency}})
        return error(503, f"{exc.dependency} unavailable", headers={"Retry-After": RETRY_AFTER_S})
    fields = {"record_id": result.response["record_id"], "replayed": result.replayed}
    log.info("ingest accepted", extra={"fields": fields})
    return json_response(result.response, status=202)


ingest_v1 = _handler("1")
ingest_v2 = _handler("2")
