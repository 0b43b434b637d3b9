"""Ingest: validate a partner request, keep its raw bytes, and record it durably.

``parse_request`` is pure. ``accept`` makes a request durable in two steps. First the S3 write of
the body under a fresh record id. Then one statement, which Postgres runs as its own transaction
(one round trip, its commit included): it takes the key's advisory lock, looks the key up and, if
it is new, writes the manifest, outbox, audit and idempotency rows. The object is stored before
any row can name it, so no committed row ever names an object that was not stored.

When the key was stored before (a retry, or a conflict), nothing was written, and the object is
deleted before the answer; with S3 down, such a key is looked up and answered all the same. When
the statement fails, the object is deleted only if nothing can have been written: the connection
could not be had, or the server refused the statement (its transaction rolled back). A connection
lost during the statement leaves its outcome unknown, so the object stays, as after a crash, for
``reconcile`` (docs/CONTRACT.md §2).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass

import asyncpg
import orjson

from exchange_stream.core.events import RawObject, new_event, object_key
from exchange_stream.core.formats import IngestFormat
from exchange_stream.core.identity import IdentityError, canonical_identity
from exchange_stream.infra.config import Settings
from exchange_stream.infra.contracts import ContractViolation, check_request
from exchange_stream.infra.db import POSTGRES_UNAVAILABLE
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import RawStore, StorageUnavailable

# A source names the first segment of its objects' keys. Anything partners send is accepted
# (the contract refuses "/", "." and "..", and control characters); a key segment must also fit
# in one file name of a POSIX-backed store (255 bytes). JSON Schema counts characters, not bytes,
# so the contract states this limit in words and as ``x-max-utf8-bytes``, and it is checked here.
MAX_SOURCE_BYTES = 255


class BadRequest(ValueError):
    """The request cannot be accepted as sent; ``reason`` is safe to return to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdempotencyConflict(Exception):
    """The key was used before with a different body."""


class Unavailable(Exception):
    """A dependency did not answer; the client should retry with the same key."""

    def __init__(self, dependency: str) -> None:
        super().__init__(dependency)
        self.dependency = dependency


@dataclass(frozen=True)
class IngestRequest:
    format: IngestFormat
    source: str
    record_kind: str
    schema_hint: str | None
    body: bytes
    sha256: str


@dataclass(frozen=True)
class Accepted:
    response: dict[str, str]
    replayed: bool


def parse_request(fmt: IngestFormat, body: bytes) -> IngestRequest:
    """Validate a body of format ``fmt`` against the contract and the identity rules; errors
    name a field, never a value."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    try:
        check_request(fmt.request_schema, doc)
    except ContractViolation as exc:
        raise BadRequest(str(exc)) from None
    if len(doc["source"].encode()) > MAX_SOURCE_BYTES:
        raise BadRequest("invalid field: source")
    try:
        # The normalizer tokenizes later; refusing now what it could not tokenize keeps
        # unprocessable identities out of the pipeline. The contract's patterns state the same
        # rules (a real date, a name not only white space), so this refuses nothing they pass.
        canonical_identity(*fmt.identity(doc["patient"]))
    except IdentityError as exc:
        raise BadRequest(f"{exc.reason} field: patient.{fmt.body_field(exc.field)}") from None
    kind, hint = fmt.kind_and_hint(doc)
    return IngestRequest(
        format=fmt,
        source=doc["source"],
        record_kind=kind,
        schema_hint=hint,
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
    )


async def accept(
    pool: asyncpg.Pool,
    store: RawStore,
    settings: Settings,
    req: IngestRequest,
    *,
    idempotency_key: str,
    correlation_id: str,
    actor: str,
) -> Accepted:
    """Run the request's transaction; see the module docstring for the order of effects."""
    route = req.format.route
    record_id = str(uuid.uuid4())
    key = object_key(req.source, record_id)
    event = new_event(
        req.format,
        record_id=record_id,
        source=req.source,
        raw_object=RawObject(store.bucket, key, req.sha256, len(req.body)),
        correlation_id=correlation_id,
        record_kind=req.record_kind,
        schema_hint=req.schema_hint,
    )
    response = {"record_id": record_id, "correlation_id": correlation_id}
    try:
        await store.put(key, req.body, sha256=req.sha256)
    except StorageUnavailable:
        # A key stored before needs no object: its retry is answered while S3 is down.
        stored = await _stored(pool, idempotency_key)
        if stored is None:
            raise Unavailable("s3") from None
        return _answer_again(stored, req)
    try:
        conn = await pool.acquire()
    except POSTGRES_UNAVAILABLE:
        await _discard(store, key)
        raise Unavailable("postgres") from None
    try:
        row = await conn.fetchrow(
            q("ingest_once"),
            uuid.UUID(record_id),
            req.source,
            store.bucket,
            key,
            req.sha256,
            len(req.body),
            settings.ingest_topic_for(req.format.version),
            event.to_dict(),
            correlation_id,
            actor,
            {"route": route, "size_bytes": len(req.body), "event_id": event.event_id},
            idempotency_key,
            response,
            route,
        )
    except POSTGRES_UNAVAILABLE:
        # Lost during the statement: it may have committed, so the object stays.
        raise Unavailable("postgres") from None
    except asyncpg.PostgresError:
        # Refused by the server: the statement's transaction rolled back.
        await _discard(store, key)
        raise
    finally:
        await pool.release(conn)
    if row["inserted"]:
        return Accepted(response=response, replayed=False)
    # The key was stored before: the object written for this request belongs to no record.
    try:
        await store.delete(key)
    except StorageUnavailable:
        raise Unavailable("s3") from None
    return _answer_again(row, req)


def _answer_again(stored: asyncpg.Record, req: IngestRequest) -> Accepted:
    """The stored response for the same body; a conflict for another."""
    if stored["request_sha256"] != req.sha256:
        raise IdempotencyConflict()
    return Accepted(response=stored["response"], replayed=True)


async def _stored(pool: asyncpg.Pool, idempotency_key: str) -> asyncpg.Record | None:
    """The key's stored hash and response; None when it is new or Postgres does not answer."""
    try:
        return await pool.fetchrow(q("idempotency_lookup"), idempotency_key)
    except POSTGRES_UNAVAILABLE:
        return None


async def _discard(store: RawStore, key: str) -> None:
    """Delete an object no row names, best effort: one that S3 fails to delete is left to
    ``reconcile``, like a crash's."""
    with contextlib.suppress(StorageUnavailable):
        await store.delete(key)
