"""POST /graphql (and GET for queries): the read API for recipients.

A caller needs a JWT with a ``recipient`` claim naming a registered, active recipient and the
``records:read`` scope (or, when local, ``Bearer dev``): no or bad credentials → 401, anything
else missing → 403. Errors are GraphQL-shaped (``{"errors": [{"message": ...}]}``), and the
HTTP ones also carry the service's ``{"error": ...}``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from exchange_stream.infra import metrics
from exchange_stream.read.audit import audit_row
from exchange_stream.read.graphql import Documents, Request, executable_schema, execute
from web.auth import READ_RECORDS, Unauthorized, authenticate
from web.context import CONTEXT, WebContext
from web.ingest import correlation_id_from
from web.responses import json_response

ROUTE = "/graphql"
MAX_QUERY_BYTES = 64 * 1024
_DOCUMENTS = web.AppKey("graphql_documents", Documents)


def install(web_app: web.Application, context: WebContext) -> None:
    web_app[_DOCUMENTS] = Documents(
        executable_schema(), introspection=context.settings.graphql_introspection
    )
    web_app.router.add_post(ROUTE, graphql_view)
    web_app.router.add_get(ROUTE, graphql_view)


def _refused(status: int, message: str) -> web.Response:
    return json_response({"error": message, "errors": [{"message": message}]}, status=status)


async def graphql_view(request: web.Request) -> web.Response:
    started = time.perf_counter()
    response, statements = await _graphql(request)
    metrics.graphql_requests_total.labels(str(response.status)).inc()
    metrics.graphql_latency_seconds.observe(time.perf_counter() - started)
    if statements is not None:
        metrics.graphql_sql_statements.observe(statements)
    return response


async def _graphql(request: web.Request) -> tuple[web.Response, int | None]:
    ctx = request.app[CONTEXT]
    try:
        principal = authenticate(request.headers.get("Authorization"), ctx.settings)
    except Unauthorized:
        return _refused(401, "unauthorized"), None
    if principal.recipient is None or not principal.can(READ_RECORDS):
        return _refused(403, "forbidden"), None
    keys = await ctx.tokens.keys(principal.recipient)
    if keys is None or not keys.active:
        return _refused(403, "forbidden"), None
    try:
        text, variables, operation = await _query_of(request)
    except _BadQuery as exc:
        return _refused(exc.status, exc.message), None
    read = Request(
        recipient=principal.recipient,
        pool=ctx.read_pool,
        tokens=ctx.tokens,
        kinds=principal.kinds,
        grants=keys.grants,
    )
    started = time.perf_counter()
    result = await execute(request.app[_DOCUMENTS], read, text, variables, operation)
    status = 400 if "data" not in result else 200
    ctx.audit.record(
        audit_row(
            principal.recipient,
            _operation_of(result),
            read.kinds_read,
            read.rows,
            time.perf_counter() - started,
            "ok" if status == 200 and not result.get("errors") else "error",
            _correlation_id(request),
        )
    )
    return json_response(result, status=status), read.statements


def _correlation_id(request: web.Request) -> str | None:
    """The client's correlation id for the audit row, when it sent one (none is made up)."""
    header = request.headers.get("X-Correlation-Id")
    return correlation_id_from(header) if header else None


def _operation_of(result: dict[str, Any]) -> str:
    """What the audit calls a query: the root fields it answered, in order (never arguments);
    ``invalid`` for one refused before it ran."""
    data = result.get("data")
    if not isinstance(data, dict) or not data:
        return "invalid"
    return ",".join(sorted(data))


class _BadQuery(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _query_of(request: web.Request) -> tuple[str, dict[str, Any] | None, str | None]:
    """The query text, variables and operation name of a POST body or GET parameters."""
    if request.method == "GET":
        params: dict[str, Any] = dict(request.query)
        if isinstance(params.get("variables"), str):
            try:
                params["variables"] = orjson.loads(params["variables"])
            except orjson.JSONDecodeError:
                raise _BadQuery(400, "variables must be a JSON object") from None
    else:
        if request.content_length is not None and request.content_length > MAX_QUERY_BYTES:
            raise _BadQuery(413, "request too large")
        body = await request.content.read(MAX_QUERY_BYTES + 1)
        if len(body) > MAX_QUERY_BYTES:
            raise _BadQuery(413, "request too large")
        try:
            params = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _BadQuery(400, "body must be JSON") from None
        if not isinstance(params, dict):
            raise _BadQuery(400, "body must be a JSON object")
    text = params.get("query")
    if not isinstance(text, str) or not text.strip():
        raise _BadQuery(400, "query is required")
    if len(text.encode()) > MAX_QUERY_BYTES:
        raise _BadQuery(413, "request too large")
    variables = params.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise _BadQuery(400, "variables must be a JSON object")
    operation = params.get("operationName")
    if operation is not None and not isinstance(operation, str):
        raise _BadQuery(400, "operationName must be a string")
    return text, variables, operation
