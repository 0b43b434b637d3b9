"""POST /v1/opt-outs and POST /v1/opt-outs/remove: record or remove patients' opt-outs.

The body is ``{"patients": [<patient>, ...]}`` (1 to 1000 identity objects, the fields of
ingest's ``patient``). Each identity is tokenized in this request (``core/optouts.py``) and
only its tokens are written; a bad identity refuses the whole request (400 naming the field,
never a value) before anything is written. The answer is ``{"accepted": n}``, the number of
identities given: it never says whether one had records, or had opted out before. Needs the
``optouts:write`` scope (recipients and partners alike hold it only when granted it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import orjson
from aiohttp import web

from exchange_stream.core.identity import IdentityError
from exchange_stream.core.optouts import OptOutTokens, tokenize_identity
from exchange_stream.infra.contracts import ContractViolation, check_request
from exchange_stream.ops.optouts import record_opt_outs, remove_opt_outs
from web.auth import OPTOUTS_WRITE, Unauthorized, authenticate
from web.context import CONTEXT
from web.ingest import correlation_id_from, read_body
from web.responses import error, json_response

ROUTE = "/v1/opt-outs"
REMOVE_ROUTE = "/v1/opt-outs/remove"

Apply = Callable[[asyncpg.Pool, Sequence[OptOutTokens], str, str | None], Awaitable[int]]


def view(apply: Apply) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        ctx = request.app[CONTEXT]
        try:
            principal = authenticate(request.headers.get("Authorization"), ctx.settings)
        except Unauthorized:
            return error(401, "unauthorized")
        if not principal.can(OPTOUTS_WRITE):
            return error(403, "forbidden")
        try:
            doc = orjson.loads(await read_body(request))
        except web.HTTPRequestEntityTooLarge:
            return error(413, "payload too large")
        except orjson.JSONDecodeError:
            return error(400, "invalid JSON")
        if not isinstance(doc, dict):
            return error(400, "body must be a JSON object")
        try:
            check_request("OptOutRequest", doc)
        except ContractViolation as exc:
            # An unknown key is the client's own text: never echo it.
            return error(400, "unknown field" if exc.reason == "unknown" else str(exc))
        patients = doc["patients"]
        try:
            identities = [
                tokenize_identity(p, ctx.tokenizer, ctx.match_keys, prefix=f"patients[{i}].")
                for i, p in enumerate(patients)
            ]
        except IdentityError as exc:
            return error(400, str(exc))
        correlation_id = correlation_id_from(request.headers.get("X-Correlation-Id"))
        accepted = await apply(ctx.pool, identities, principal.actor, correlation_id)
        return json_response({"accepted": accepted})

    return handle


def install(web_app: web.Application) -> None:
    web_app.router.add_post(ROUTE, view(record_opt_outs))
    web_app.router.add_post(REMOVE_ROUTE, view(remove_opt_outs))
