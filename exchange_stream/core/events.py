"""The ``record.ingested`` event as a typed value, and the raw-object key layout it points to.

An event is built once (``new_event``) by ingest, replay or reconcile, travels as JSON through
the outbox and Kafka, and is read back by the normalizer, which validates the JSON against the
format's compiled event contract before ``IngestedEvent.from_dict``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exchange_stream.core.formats import IngestFormat, for_version
from exchange_stream.core.timefmt import parse_time, rfc3339

EVENT_TYPE = "record.ingested"

_KEY = re.compile(
    r"^(?P<source>[^/]+)/(?P<record_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
    r"[0-9a-f]{4}-[0-9a-f]{12})\.json$"
)


def object_key(source: str, record_id: uuid.UUID | str) -> str:
    """Where a record's raw body is kept: ``<source>/<record_id>.json``."""
    return f"{source}/{record_id}.json"


def record_id_from_key(key: str) -> str | None:
    """The record id of a ``<source>/<record_id>.json`` key, else None."""
    match = _KEY.match(key)
    return match.group("record_id") if match else None


def replay_correlation_id(record_id: str | uuid.UUID) -> str:
    """UUIDv5 in the URL namespace over the record id: the same for every replay of a record."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, str(record_id)))


@dataclass(frozen=True, slots=True)
class RawObject:
    bucket: str
    key: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class IngestedEvent:
    """One ``record.ingested`` event of any format."""

    format: IngestFormat
    event_id: str
    occurred_at: datetime
    correlation_id: str
    source: str
    record_id: uuid.UUID
    raw_object: RawObject
    # Carried by formats whose events name them (v2); None otherwise.
    record_kind: str | None = None
    schema_hint: str | None = None

    @property
    def version(self) -> str:
        return self.format.version

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON shape (``contracts/events/<label>.record_ingested.json``)."""
        doc: dict[str, Any] = {
            "event_version": self.format.version,
            "event_type": EVENT_TYPE,
            "event_id": self.event_id,
            "occurred_at": rfc3339(self.occurred_at),
            "correlation_id": self.correlation_id,
            "source": self.source,
            "record_id": str(self.record_id),
            "raw_object": {
                "bucket": self.raw_object.bucket,
                "key": self.raw_object.key,
                "sha256": self.raw_object.sha256,
                "size_bytes": self.raw_object.size_bytes,
            },
        }
        if self.format.event_carries_kind:
            doc["record_kind"] = self.record_kind
            doc["schema_hint"] = self.schema_hint
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> IngestedEvent:
        """The event of a JSON object that passed its format's event contract; ``ValueError``
        for what a contract cannot check (an unknown version, an unparseable time)."""
        fmt = for_version(doc.get("event_version"))
        if fmt is None:
            raise ValueError("unknown event_version")
        raw = doc["raw_object"]
        return cls(
            format=fmt,
            event_id=doc["event_id"],
            occurred_at=parse_time(doc["occurred_at"]),
            correlation_id=doc["correlation_id"],
            source=doc["source"],
            record_id=uuid.UUID(doc["record_id"]),
            raw_object=RawObject(raw["bucket"], raw["key"], raw["sha256"], raw["size_bytes"]),
            record_kind=doc.get("record_kind"),
            schema_hint=doc.get("schema_hint"),
        )


def new_event(
    fmt: IngestFormat,
    *,
    record_id: uuid.UUID | str,
    source: str,
    raw_object: RawObject,
    correlation_id: str,
    record_kind: str | None = None,
    schema_hint: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> IngestedEvent:
    """A new event for one raw object (a fresh event id, occurring now unless told)."""
    carries = fmt.event_carries_kind
    return IngestedEvent(
        format=fmt,
        event_id=event_id or str(uuid.uuid4()),
        occurred_at=occurred_at or datetime.now(UTC),
        correlation_id=correlation_id,
        source=source,
        record_id=record_id if isinstance(record_id, uuid.UUID) else uuid.UUID(record_id),
        raw_object=raw_object,
        record_kind=record_kind if carries else None,
        schema_hint=schema_hint if carries else None,
    )
