"""Ingest: validate a partner request, keep its raw bytes, and record it durably (SPEC §4).

``parse_request`` and ``build_event`` are pure. ``accept`` runs the one transaction of a request:
advisory lock and key lookup, the S3 write, then manifest, outbox, audit and idempotency rows in one
statement. Four database round trips on the happy path: BEGIN, lock+lookup, insert, COMMIT.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from exchange_stream.config import Settings
from exchange_stream.contracts import ContractViolation, check_event, check_request
from exchange_stream.sql import q
from exchange_stream.storage import RawStore, StorageUnavailable
from exchange_stream.tokenizer import IdentityError, canonical_identity

_SCHEMA = {"1": "V1IngestRequest", "2": "V2IngestRequest"}
# v1 bodies name the identity fields differently; both map onto the tokenizer's four fields.
_PATIENT_FIELDS = {
    "1": ("first_name", "last_name"),
    "2": ("given_name", "family_name"),
}


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
    version: str
    source: str
    record_kind: str
    schema_hint: str | None
    body: bytes
    sha256: str


@dataclass(frozen=True)
class Accepted:
    response: dict[str, str]
    replayed: bool


def parse_request(version: str, body: bytes) -> IngestRequest:
    """Validate a v1/v2 body against the contract and the identity rules; never echo a value."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    try:
        check_request(_SCHEMA[version], doc)
    except ContractViolation as exc:
        raise BadRequest(str(exc)) from None
    patient = doc["patient"]
    given, family = _PATIENT_FIELDS[version]
    try:
        # The normalizer tokenizes later; refusing now what it could not tokenize keeps
        # unprocessable identities out of the pipeline.
        canonical_identity(
            patient.get(given), patient.get(family), patient.get("dob"), patient.get("ssn")
        )
    except IdentityError as exc:
        field = {"given_name": given, "family_name": family}.get(exc.field, exc.field)
        raise BadRequest(f"{exc.reason} field: patient.{field}") from None
    return IngestRequest(
        version=version,
        source=doc["source"],
        record_kind=doc["record_type"] if version == "1" else doc["record_kind"],
        schema_hint=None if version == "1" else doc["schema_hint"],
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
    )


def object_key(source: str, record_id: uuid.UUID | str) -> str:
    return f"{source}/{record_id}.json"


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_event(
    *,
    version: str,
    record_id: str,
    source: str,
    bucket: str,
    key: str,
    sha256: str,
    size_bytes: int,
    correlation_id: str,
    record_kind: str | None = None,
    schema_hint: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """The ``record.ingested`` event of SPEC §5 for one raw object."""
    event: dict[str, Any] = {
        "event_version": version,
        "event_type": "record.ingested",
        "event_id": event_id or str(uuid.uuid4()),
        "occurred_at": rfc3339(occurred_at or datetime.now(UTC)),
        "correlation_id": correlation_id,
        "source": source,
        "record_id": record_id,
        "raw_object": {"bucket": bucket, "key": key, "sha256": sha256, "size_bytes": size_bytes},
    }
    if version == "2":
        event["record_kind"] = record_kind
        event["schema_hint"] = schema_hint
    return event


# Errors that mean "Postgres is not answering", as opposed to a bug in a statement.
POSTGRES_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    # A pooled connection whose server went away mid-restart: "protocol is in the failed state".
    asyncpg.exceptions.InternalClientError,
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
    route = f"/v{req.version}/ingest"
    try:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("ingest_lock_and_lookup"), idempotency_key)
            if row is not None:
                if row["request_sha256"] == req.sha256:
                    return Accepted(response=row["response"], replayed=True)
                raise IdempotencyConflict()
            record_id = str(uuid.uuid4())
            key = object_key(req.source, record_id)
            await store.put(key, req.body, sha256=req.sha256)
            event = build_event(
                version=req.version,
                record_id=record_id,
                source=req.source,
                bucket=store.bucket,
                key=key,
                sha256=req.sha256,
                size_bytes=len(req.body),
                correlation_id=correlation_id,
                record_kind=req.record_kind,
                schema_hint=req.schema_hint,
            )
            check_event(event)
            response = {"record_id": record_id, "correlation_id": correlation_id}
            await conn.execute(
                q("ingest_record"),
                uuid.UUID(record_id),
                req.source,
                store.bucket,
                key,
                req.sha256,
                len(req.body),
                settings.ingest_topic_for(req.version),
                event,
                correlation_id,
                actor,
                {"route": route, "size_bytes": len(req.body), "event_id": event["event_id"]},
                idempotency_key,
                response,
                route,
            )
        return Accepted(response=response, replayed=False)
    except StorageUnavailable:
        raise Unavailable("s3") from None
    except POSTGRES_UNAVAILABLE:
        raise Unavailable("postgres") from None
