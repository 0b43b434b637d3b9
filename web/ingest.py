"""POST /v<N>/ingest, a view per format: authenticate, validate, hand over to the ingest stage."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from exchange_stream.core.formats import IngestFormat
from exchange_stream.infra import metrics
from exchange_stream.infra.logs import correlation_id_var
from exchange_stream.pipeline import ingest
from web.auth import INGEST, Unauthorized, authenticate
from web.context import CONTEXT, MAX_BODY_BYTES
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


def handler(fmt: IngestFormat) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The view of ``POST /v<N>/ingest`` for one format."""
    route = fmt.route

    async def view(request: web.Request) -> web.Response:
        started = time.perf_counter()
        response = await _ingest(request, fmt)
        metrics.ingest_requests_total.labels(route, str(response.status)).inc()
        metrics.ingest_latency_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    return view


async def _ingest(request: web.Request, fmt: IngestFormat) -> web.Response:
    ctx = request.app[CONTEXT]
    settings = ctx.settings
    try:
        principal = authenticate(request.headers.get("Authorization"), settings)
    except Unauthorized:
        return error(401, "unauthorized")
    if not principal.can(INGEST):
        return error(403, "forbidden")
    backlog = ctx.backlog
    if backlog is not None and backlog.shedding():
        # Before the body is read: a refused request costs the worker almost nothing, and
        # nothing is written, so the client's retry with the same key works later.
        metrics.ingest_shed_total.labels(fmt.route).inc()
        return error(
            503, "normalizer backlog over its limit", headers={"Retry-After": backlog.retry_after()}
        )
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
        req = ingest.parse_request(fmt, body)
    except ingest.BadRequest as exc:
        return error(400, exc.reason)
    if not principal.may_send(req.source):
        # Checked on the parsed body, before anything is written: no round trip, no side effect.
        return error(403, "forbidden")
    try:
        result = await ingest.accept(
            ctx.pool,
            ctx.store,
            settings,
            req,
            idempotency_key=key,
            correlation_id=correlation_id,
            actor=principal.actor,
        )
    except ingest.IdempotencyConflict:
        return error(409, "idempotency conflict")
    except ingest.Unavailable as exc:
        log.warning("ingest unavailable", extra={"fields": {"dependency": exc.dependency}})
        return error(503, f"{exc.dependency} unavailable", headers={"Retry-After": RETRY_AFTER_S})
    fields = {"record_id": result.response["record_id"], "replayed": result.replayed}
    # DEBUG: every accepted request is already an audit_log row, and a log line per request
    # (formatted, then written and flushed on the request's path) cost a third of its latency.
    log.debug("ingest accepted", extra={"fields": fields})
    return json_response(result.response, status=202)
