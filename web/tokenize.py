"""POST /tokenize: the patient token for an identity, computed by the shared tokenizer."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from exchange_stream.core.identity import IdentityError
from exchange_stream.infra import metrics
from exchange_stream.infra.contracts import ContractViolation, check_request
from web.auth import TOKENIZE, Unauthorized, authenticate
from web.context import CONTEXT
from web.ingest import read_body
from web.responses import error, json_response

ROUTE = "/tokenize"


async def tokenize(request: web.Request) -> web.Response:
    started = time.perf_counter()
    response = await _tokenize(request)
    metrics.ingest_requests_total.labels(ROUTE, str(response.status)).inc()
    metrics.ingest_latency_seconds.labels(ROUTE).observe(time.perf_counter() - started)
    return response


async def _tokenize(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        principal = authenticate(request.headers.get("Authorization"), ctx.settings)
    except Unauthorized:
        return error(401, "unauthorized")
    if not principal.can(TOKENIZE):
        return error(403, "forbidden")
    try:
        body = await read_body(request)
    except web.HTTPRequestEntityTooLarge:
        return error(413, "payload too large")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error(400, "invalid JSON")
    if not isinstance(doc, dict):
        return error(400, "body must be a JSON object")
    try:
        check_request("TokenizeRequest", doc)
        token = ctx.tokenizer.token(
            doc["given_name"], doc["family_name"], doc["dob"], doc.get("ssn")
        )
    except ContractViolation as exc:
        return error(400, _reason(exc))
    except IdentityError as exc:
        return error(400, str(exc))
    return json_response({"patient_token": token})


def _reason(exc: ContractViolation) -> str:
    # An unknown key is the client's own text (a name, say): never echo it.
    if exc.reason == "unknown":
        return "unknown field"
    return str(exc)
