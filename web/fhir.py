"""The FHIR Bulk Data Access API (v3.0.0, "Flat FHIR") for recipients, under ``/fhir``.

- ``GET /fhir/metadata``: the CapabilityStatement (no credential needed, as FHIR clients expect).
- ``GET|POST /fhir/$export`` and ``/fhir/Patient/$export``: the kick-off. The parameters are
  read by ``core/bulk_request.py``; on success the export row and the command that runs it
  (``ops/export.py``, through the outbox) are written in one transaction, and the answer is 202
  with the absolute status URL in ``Content-Location``. A recipient with
  ``EXPORT_MAX_RUNNING`` exports accepted or running gets 429 and ``Retry-After``.
- ``GET /fhir/exports/{id}``: 202 with ``X-Progress`` and ``Retry-After`` while the export is
  live, 200 with the manifest once completed, 500 once failed; ``DELETE``: 202, the export is
  cancelled and its files expire at once. A gone export (cancelled, deleted, expired) and one of
  another recipient are the same 404.
- ``GET /fhir/exports/{id}/files/{n}``: one NDJSON file, streamed from the export bucket chunk
  by chunk (gzip on the fly when the client accepts it); ``/errors/0``: the export's
  informational OperationOutcomes, one a line.

Every route but metadata needs a recipient's credential with the ``export`` scope, naming a
registered, active recipient: no or bad credentials → 401, anything else → 403. Every error is an
OperationOutcome (``application/fhir+json``) with a fixed diagnostic: no submitted value, patient
data or internal detail is ever in one. The export run writes the export's read-audit row;
downloads are logged.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import uuid
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from email.utils import format_datetime
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from exchange_stream.core.bulk_request import (
    KIND_OF,
    ExportRequest,
    Refusal,
    manifest,
    parameters_pairs,
    parse_kickoff,
    progress_text,
    types_of_kinds,
)
from exchange_stream.core.fhir import capability_statement, operation_outcome
from exchange_stream.core.timefmt import now_rfc3339
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import ObjectMissing, StorageUnavailable
from web.auth import EXPORT, Principal, Unauthorized, authenticate
from web.context import CONTEXT
from web.smart import TOKEN_PATH, base_url

log = logging.getLogger(__name__)

BASE = "/fhir"
# The system-level kick-off, and the Patient-level one (all patients: every exported resource
# belongs to one), with whether it is the latter.
KICKOFF_PATHS = {f"{BASE}/$export": False, f"{BASE}/Patient/$export": True}
STATUS_PATH = f"{BASE}/exports"
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
MAX_BODY_BYTES = 64 * 1024
# How long a client should wait before polling again, and before kicking off again after a 429.
POLL_AFTER_S = 2
KICKOFF_RETRY_AFTER_S = 30
GZIP_LEVEL = 6
_STARTED = web.AppKey("fhir_started", str)


def _outcome(
    status: int,
    issues: list[tuple[str, str, str]],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(operation_outcome(issues)),
        status=status,
        headers=headers,
        content_type=FHIR_JSON,
    )


def _error(
    status: int, code: str, diagnostics: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return _outcome(status, [("error", code, diagnostics)], headers)


def _not_found() -> web.Response:
    return _error(404, "not-found", "no such export")


async def _caller(request: web.Request) -> Principal | web.Response:
    """The recipient calling with the ``export`` scope, or the refusal to answer."""
    ctx = request.app[CONTEXT]
    try:
        principal = authenticate(request.headers.get("Authorization"), ctx.settings)
    except Unauthorized:
        return _error(401, "login", "unauthorized", {"WWW-Authenticate": "Bearer"})
    if principal.recipient is None or not principal.can(EXPORT):
        return _error(403, "forbidden", "forbidden")
    keys = await ctx.tokens.keys(principal.recipient)
    if keys is None or not keys.active:
        return _error(403, "forbidden", "forbidden")
    return principal


def _status_url(request: web.Request, export_id: uuid.UUID) -> str:
    return f"{base_url(request)}{STATUS_PATH}/{export_id}"


def _export_id(request: web.Request) -> uuid.UUID | None:
    text = request.match_info["export_id"]
    try:
        export_id = uuid.UUID(text)
    except ValueError:
        return None
    return export_id if str(export_id) == text.lower() else None


# --- metadata --------------------------------------------------------------------------------


async def metadata(request: web.Request) -> web.Response:
    """``GET /fhir/metadata``: the CapabilityStatement, at this server's absolute URLs."""
    base = base_url(request)
    try:
        version = importlib.metadata.version("exchange-stream")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    statement = capability_statement(
        f"{base}{BASE}",
        software_version=version,
        date=request.app[_STARTED],
        token_url=f"{base}{TOKEN_PATH}",
    )
    return web.Response(body=orjson.dumps(statement), content_type=FHIR_JSON)


# --- kick-off --------------------------------------------------------------------------------


def kickoff(patient_level: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``$export`` view of one kick-off path."""

    async def view(request: web.Request) -> web.Response:
        caller = await _caller(request)
        if isinstance(caller, web.Response):
            return caller
        return await _kickoff(request, caller, patient_level)

    return view


async def _kickoff(request: web.Request, caller: Principal, patient_level: bool) -> web.Response:
    """Read the request, then create the export and its run's command."""
    recipient = caller.recipient or ""
    pairs = await _kickoff_pairs(request)
    if isinstance(pairs, Refusal):
        return _outcome(pairs.status, list(pairs.issues))
    parsed = parse_kickoff(
        pairs,
        prefer=request.headers.getall("Prefer", []),
        accept=request.headers.get("Accept"),
        patient_level=patient_level,
        allowed_types=types_of_kinds(caller.kinds),
    )
    if isinstance(parsed, Refusal):
        return _outcome(parsed.status, list(parsed.issues))
    export_id = uuid.uuid4()
    created = await _create(request, recipient, export_id, parsed)
    if isinstance(created, web.Response):
        return created
    issues = [("information", "informational", "export accepted"), *parsed.ignored]
    return _outcome(202, issues, {"Content-Location": _status_url(request, export_id)})


async def _kickoff_pairs(request: web.Request) -> list[tuple[str, str]] | Refusal:
    """The kick-off's parameters: the query string, and for a POST its body (a FHIR
    ``Parameters`` resource, or a form)."""
    pairs = list(request.query.items())
    if request.method != "POST" or not request.can_read_body:
        return pairs
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return Refusal(413, (("error", "too-costly", "the body is too large"),))
    body = await request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return Refusal(413, (("error", "too-costly", "the body is too large"),))
    if not body.strip():
        return pairs
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            return pairs + parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return Refusal(400, (("error", "invalid", "the body is not a form"),))
    if request.content_type not in (FHIR_JSON, "application/json"):
        return Refusal(415, (("error", "not-supported", "the body must be FHIR JSON"),))
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Refusal(400, (("error", "invalid", "the body is not JSON"),))
    body_pairs = parameters_pairs(doc)
    if isinstance(body_pairs, Refusal):
        return body_pairs
    return pairs + body_pairs


async def _create(
    request: web.Request, recipient: str, export_id: uuid.UUID, parsed: ExportRequest
) -> web.Response | None:
    """The export row and its run's command in one transaction; a refusal when the recipient
    has gone or already runs as many exports as it may."""
    ctx = request.app[CONTEXT]
    settings = ctx.settings
    command = {
        "command_id": f"export:{export_id}",
        "command": "export",
        "params": {"export_id": str(export_id)},
        "requested_by": f"recipient:{recipient}",
    }
    request_url = f"{base_url(request)}{request.rel_url.raw_path_qs}"
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(q("export_lock_recipient"), recipient) != "active":
            return _error(403, "forbidden", "forbidden")
        created = await conn.fetchval(
            q("export_create"),
            recipient,
            export_id,
            request_url,
            parsed.params(),
            parsed.outcomes(),
            settings.export_max_running,
        )
        if created is None:
            return _error(
                429,
                "throttled",
                "too many exports are running for this client; retry later",
                {"Retry-After": str(KICKOFF_RETRY_AFTER_S)},
            )
        await conn.execute(
            q("outbox_enqueue"), [settings.topic_exports], [str(export_id)], [command]
        )
    log.info(
        "export accepted",
        extra={"fields": {"recipient": recipient, "export_id": str(export_id)}},
    )
    return None


# --- status and cancel -----------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    """The status URL: progress while live, the manifest once completed."""
    caller = await _caller(request)
    if isinstance(caller, web.Response):
        return caller
    export_id = _export_id(request)
    if export_id is None:
        return _not_found()
    ctx = request.app[CONTEXT]
    row = await ctx.read_pool.fetchrow(q("export_status"), export_id, caller.recipient)
    if row is None or row["gone"]:
        return _not_found()
    state = row["status"]
    if state in ("accepted", "running"):
        return web.Response(
            status=202,
            headers={
                "X-Progress": progress_text(state, row["progress"]),
                "Retry-After": str(POLL_AFTER_S),
                "Cache-Control": "no-store",
            },
        )
    if state == "failed":
        return _error(500, "exception", "the export failed; start a new one")
    headers = {"Cache-Control": "no-store"}
    if row["expires_at"] is not None:
        headers["Expires"] = format_datetime(row["expires_at"], usegmt=True)
    body = manifest(
        status_url=_status_url(request, export_id),
        request_url=row["request_url"],
        transaction_time=row["transaction_time"],
        output=row["output"],
        errors=row["errors"],
    )
    return web.Response(body=orjson.dumps(body), headers=headers, content_type="application/json")


async def cancel(request: web.Request) -> web.Response:
    """``DELETE`` of the status URL: the export stops and its files are deleted."""
    caller = await _caller(request)
    if isinstance(caller, web.Response):
        return caller
    export_id = _export_id(request)
    if export_id is None:
        return _not_found()
    ctx = request.app[CONTEXT]
    if await ctx.pool.fetchval(q("export_cancel"), export_id, caller.recipient) is None:
        return _not_found()
    log.info(
        "export deleted",
        extra={"fields": {"recipient": caller.recipient, "export_id": str(export_id)}},
    )
    return _outcome(202, [("information", "informational", "export deleted")])


# --- files -----------------------------------------------------------------------------------


def _accepts_gzip(header: str | None) -> bool:
    for item in (header or "").split(","):
        coding, *params = (p.strip().lower() for p in item.split(";"))
        if coding in ("gzip", "x-gzip") and not any(p.replace(" ", "") == "q=0" for p in params):
            return True
    return False


async def download(request: web.Request) -> web.StreamResponse:
    """One output file, streamed from the export bucket; never whole in memory."""
    caller = await _caller(request)
    if isinstance(caller, web.Response):
        return caller
    export_id = _export_id(request)
    index = request.match_info["index"]
    if export_id is None or not index.isdigit() or len(index) > 6:
        return _not_found()
    ctx = request.app[CONTEXT]
    item = await ctx.read_pool.fetchval(q("export_file"), export_id, caller.recipient, int(index))
    if not isinstance(item, dict):
        return _not_found()
    if caller.kinds is not None and KIND_OF.get(item["type"]) not in caller.kinds:
        return _error(403, "forbidden", "the access token's scopes do not cover this file")
    gzip = _accepts_gzip(request.headers.get("Accept-Encoding"))
    store = ctx.export_store
    chunks = store.stream(item["key"])
    try:
        length = None if gzip else await store.size(item["key"])
        first = await anext(chunks, b"")
    except ObjectMissing:
        await chunks.aclose()
        return _not_found()
    except StorageUnavailable:
        await chunks.aclose()
        return _error(503, "transient", "storage unavailable; retry", {"Retry-After": "5"})
    response = web.StreamResponse(
        headers={"Content-Type": NDJSON, "Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    )
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
    else:
        response.content_length = length
    written = await _stream(request, response, first, chunks, gzip)
    log.info(
        "export file downloaded",
        extra={
            "fields": {
                "recipient": caller.recipient,
                "export_id": str(export_id),
                "index": int(index),
                "bytes": written,
                "gzip": gzip,
            }
        },
    )
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    first: bytes,
    chunks: AsyncGenerator[bytes, None],
    gzip: bool,
) -> int:
    """Send the chunks as they come (compressed off the event loop); the bytes read. A storage
    failure once the answer has begun cuts the connection: the client sees a short file, never
    a complete-looking one."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
    written = 0
    try:
        await response.prepare(request)
        chunk = first
        while chunk:
            written += len(chunk)
            data = await asyncio.to_thread(compressor.compress, chunk) if compressor else chunk
            if data:
                await response.write(data)
            chunk = await anext(chunks, b"")
        if compressor is not None:
            await response.write(compressor.flush())
        await response.write_eof()
    except (StorageUnavailable, ObjectMissing):
        log.warning("export file download cut: storage failed", exc_info=False)
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:
        pass  # the client went away
    finally:
        await chunks.aclose()
    return written


async def errors_file(request: web.Request) -> web.Response:
    """The export's informational OperationOutcomes as NDJSON (what lenient handling set aside,
    and what the run reported)."""
    caller = await _caller(request)
    if isinstance(caller, web.Response):
        return caller
    export_id = _export_id(request)
    if export_id is None or request.match_info["index"] != "0":
        return _not_found()
    ctx = request.app[CONTEXT]
    outcomes = await ctx.read_pool.fetchval(q("export_errors"), export_id, caller.recipient)
    if not outcomes:
        return _not_found()
    body = b"".join(orjson.dumps(o) + b"\n" for o in outcomes)
    return web.Response(body=body, headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})


async def group_export(request: web.Request) -> web.Response:
    """``Group/[id]/$export``: there are no groups here, only every patient."""
    return _error(404, "not-supported", "Group-level export is not supported; use Patient/$export")


def install(web_app: web.Application) -> None:
    """The Bulk Data routes under ``/fhir``."""
    web_app[_STARTED] = now_rfc3339()
    web_app.router.add_get(f"{BASE}/metadata", metadata)
    for path, patient_level in KICKOFF_PATHS.items():
        view = kickoff(patient_level)
        web_app.router.add_get(path, view, allow_head=False)
        web_app.router.add_post(path, view)
    web_app.router.add_get(f"{BASE}/Group/{{group_id}}/$export", group_export, allow_head=False)
    web_app.router.add_post(f"{BASE}/Group/{{group_id}}/$export", group_export)
    status_path = f"{STATUS_PATH}/{{export_id}}"
    web_app.router.add_get(status_path, status, allow_head=False)
    web_app.router.add_delete(status_path, cancel)
    web_app.router.add_get(f"{status_path}/files/{{index}}", download, allow_head=False)
    web_app.router.add_get(f"{status_path}/errors/{{index}}", errors_file, allow_head=False)
