"""Ingest: validate a partner request, keep its raw bytes, and record it durably.

``parse_request`` is pure. ``accept`` runs the one transaction of a request. The S3 write of the
body under a fresh record id starts at once; beside it, BEGIN and one statement that takes the
key's advisory lock, looks the key up and, if it is new, writes the manifest, outbox, audit and
idempotency rows. COMMIT once both have succeeded: rows of an open transaction are seen by no one,
so no committed row ever names an object that was not stored, and a request waits for the slower
of the two instead of their sum. Three database round trips: BEGIN, the statement, COMMIT. When
the key was stored before (a retry, or a conflict), nothing was written, and the object stored
beside the lookup is deleted before the answer.
"""

from __future__ import annotations

import asyncio
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
# in one file name of a POSIX-backed store (255 bytes).
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
        # unprocessable identities out of the pipeline.
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
        async with pool.acquire() as conn:
            tx = conn.transaction()

            async def write() -> asyncpg.Record:
                await tx.start()
                return await conn.fetchrow(
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

            # Both run to the end before the transaction ends (a statement in flight cannot be
            # rolled back); a failure of either rolls the rows back.
            row, stored = await asyncio.gather(
                write(), store.put(key, req.body, sha256=req.sha256), return_exceptions=True
            )
            if isinstance(row, BaseException) or not row["inserted"]:
                await _end(tx)
            elif isinstance(stored, BaseException):
                await _end(tx)
                raise stored
            else:
                # If the commit fails its outcome is unknown: the object stays (reconcile's).
                await tx.commit()
                return Accepted(response=response, replayed=False)
        if isinstance(row, BaseException):
            if not isinstance(stored, BaseException):
                # Nothing names the object now; keep it out of reconcile's orphans if S3 lets us.
                with contextlib.suppress(StorageUnavailable):
                    await store.delete(key)
            raise row
        # The key was stored before: the object written beside the lookup belongs to no record.
        if not isinstance(stored, BaseException):
            await store.delete(key)
        if row["request_sha256"] != req.sha256:
            raise IdempotencyConflict()
        return Accepted(response=row["response"], replayed=True)
    except StorageUnavailable:
        raise Unavailable("s3") from None
    except POSTGRES_UNAVAILABLE:
        raise Unavailable("postgres") from None


async def _end(tx: asyncpg.transaction.Transaction) -> None:
    """Roll ``tx`` back if it started; a connection that broke is the pool's to replace."""
    with contextlib.suppress(*POSTGRES_UNAVAILABLE):
        await tx.rollback()
