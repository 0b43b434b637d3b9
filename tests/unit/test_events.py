"""The event, the formats table, replay inference, DLQ envelopes and event parsing: pure code."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from exchange_stream.core import formats
from exchange_stream.core.envelopes import envelope
from exchange_stream.core.errors import ProcessingError, permanent
from exchange_stream.core.events import (
    IngestedEvent,
    RawObject,
    new_event,
    object_key,
    record_id_from_key,
    replay_correlation_id,
)
from exchange_stream.infra.contracts import check_event
from exchange_stream.ops.replay import replay_event
from exchange_stream.pipeline.normalize import canonicalize, parse_event

RID = "0b7c9c1e-5a4b-4f7e-9a43-5bd1d5f0e001"
V2_BODY = {
    "source": "lab-a",
    "record_kind": "lab_result",
    "schema_hint": "partnerA.v1",
    "patient": {"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10"},
    "payload": {
        "order_id": "o-1",
        "loinc_code": "2345-7",
        "value": 95,
        "unit": "mg/dL",
        "collected_ts": "2024-03-01T08:30:00Z",
        "status": "final",
    },
}


def _event(fmt: formats.IngestFormat, raw: bytes = b"{}") -> IngestedEvent:
    return new_event(
        fmt,
        record_id=RID,
        source="lab-a",
        raw_object=RawObject("raw", object_key("lab-a", RID), hashlib.sha256(raw).hexdigest(), 2),
        correlation_id="corr-0001",
        record_kind="claim",
        schema_hint="partnerB.v1",
        occurred_at=datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC),
    )


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
def test_an_event_round_trips_through_its_contract(fmt: formats.IngestFormat) -> None:
    event = _event(fmt)
    doc = event.to_dict()
    check_event(doc)
    assert IngestedEvent.from_dict(doc) == event
    assert doc["occurred_at"] == "2026-11-30T12:00:00.123456Z"
    # Only formats whose events carry the kind name it; v1 leaves it to the raw body.
    assert ("record_kind" in doc) is fmt.event_carries_kind


def test_formats_table_names_routes_topics_and_contracts() -> None:
    assert [(f.label, f.route, f.topic.default, f.dlq_topic.default) for f in formats.FORMATS] == [
        ("v1", "/v1/ingest", "record.ingested.v1", "record.ingested.v1.dlq"),
        ("v2", "/v2/ingest", "record.ingested.v2", "record.ingested.v2.dlq"),
    ]
    assert formats.for_version("1") is formats.V1
    assert formats.for_version(1) is None and formats.for_version("3") is None
    assert formats.V1.body_field("given_name") == "first_name"
    assert formats.V2.identity({"given_name": "a", "family_name": "b", "dob": "d"}) == (
        "a",
        "b",
        "d",
        None,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "record_kind": "claim",
                "schema_hint": "partnerA.v1",
                "patient": {"given_name": "A", "family_name": "B"},
            },
            "2",
        ),
        ({"record_type": "claim", "patient": {"first_name": "A", "last_name": "B"}}, "1"),
        # v2 wins when a body carries both shapes.
        (
            {
                "record_kind": "claim",
                "schema_hint": "x",
                "record_type": "claim",
                "patient": {
                    "given_name": "A",
                    "family_name": "B",
                    "first_name": "A",
                    "last_name": "B",
                },
            },
            "2",
        ),
        ({"record_kind": "claim", "patient": {"given_name": "A", "family_name": "B"}}, None),
        ({"record_type": "claim", "patient": {"first_name": "A"}}, None),
        ({"record_type": "claim", "patient": "A B"}, None),
        (
            {
                "record_kind": "claim",
                "schema_hint": "x",
                "patient": {"given_name": 1, "family_name": "B"},
            },
            None,
        ),
        ({}, None),
        ([1, 2], None),
        ("text", None),
    ],
)
def test_replay_infers_the_format_from_the_body_never_guessing(
    body: object, expected: str | None
) -> None:
    fmt = formats.infer(body)
    assert (fmt.version if fmt else None) == expected


def test_replay_correlation_id_is_the_rfc_4122_name_based_uuid_of_the_record_id() -> None:
    # Pinned, and computed here from RFC 4122 §4.3 (SHA-1 over namespace bytes and name).
    digest = bytearray(hashlib.sha1(uuid.NAMESPACE_URL.bytes + RID.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    assert str(uuid.UUID(bytes=bytes(digest))) == "c94bd97f-ca11-5bdb-abe3-617d95863205"
    assert replay_correlation_id(RID) == "c94bd97f-ca11-5bdb-abe3-617d95863205"
    assert replay_correlation_id(uuid.UUID(RID)) == replay_correlation_id(RID)


def test_object_keys_hold_source_and_record_id() -> None:
    key = object_key("Hospital A", RID)
    assert key == f"Hospital A/{RID}.json"
    assert record_id_from_key(key) == RID
    assert record_id_from_key("a/b/c.json") is None
    assert record_id_from_key(f"a/{RID}.txt") is None


def test_replay_event_keeps_record_id_and_occurred_at_and_refuses_other_shapes() -> None:
    raw = orjson.dumps(V2_BODY)
    key = object_key("lab-a", RID)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = replay_event(key, raw, "raw", "auto", at)
    assert isinstance(event, IngestedEvent)
    assert (event.version, str(event.record_id), event.occurred_at) == ("2", RID, at)
    assert event.correlation_id == replay_correlation_id(RID)
    assert (event.record_kind, event.schema_hint) == ("lab_result", "partnerA.v1")
    assert event.raw_object == RawObject("raw", key, hashlib.sha256(raw).hexdigest(), len(raw))
    assert replay_event(key, raw, "raw", "v1", at) == "incompatible"
    assert replay_event(key, b"{nope", "raw", "auto", at) == "unparseable"
    assert replay_event(key, b'{"a": 1}', "raw", "auto", at) == "uninferable"
    assert replay_event("lab-a/x.json", raw, "raw", "auto", at) == "unrecognised_key"


def test_dlq_envelope_of_an_unparseable_event_keeps_only_hash_and_size() -> None:
    raw = b'{"patient": {"given_name": "Ada"'
    doc = envelope(None, raw, permanent("UnparseableEvent", "parse", "event is not valid JSON"), 1)
    assert doc["original_event"] == {
        "unparseable_event": True,
        "event_sha256": hashlib.sha256(raw).hexdigest(),
        "size_bytes": len(raw),
    }
    assert doc["error"] == {
        "type": "UnparseableEvent",
        "message": "event is not valid JSON",
        "stage": "parse",
    }
    assert doc["attempts"] == 1 and doc["failed_at"].endswith("Z")
    assert b"Ada" not in orjson.dumps(doc)


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        (b"{nope", "UnparseableEvent"),
        (b"[1]", "UnparseableEvent"),
        (b'{"event_version": "9", "event_type": "record.ingested"}', "UnsupportedEvent"),
        (b'{"event_version": "2", "event_type": "other"}', "UnsupportedEvent"),
        (b'{"event_version": "2", "event_type": "record.ingested"}', "InvalidEvent"),
    ],
)
def test_events_that_cannot_be_processed_are_permanent_errors(
    value: bytes, error_type: str
) -> None:
    with pytest.raises(ProcessingError) as caught:
        parse_event(value)
    assert (caught.value.type, caught.value.stage, caught.value.transient) == (
        error_type,
        "parse",
        False,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("record_id", "not-a-uuid"),
        ("occurred_at", "yesterday"),
        ("raw_object", {"bucket": "b", "key": "k", "sha256": "x", "size_bytes": 1}),
        ("raw_object", {"bucket": "b", "key": "k", "sha256": "a" * 64, "size_bytes": "1"}),
        ("source", 7),
        ("record_kind", None),
    ],
)
def test_events_are_checked_by_their_contract_not_by_asserts(field: str, value: object) -> None:
    doc = _event(formats.V2).to_dict()
    doc[field] = value
    with pytest.raises(ProcessingError) as caught:
        parse_event(orjson.dumps(doc))
    assert caught.value.type == "InvalidEvent"
    assert field in caught.value.message


def test_canonicalize_maps_tokenizes_and_refuses_a_changed_object() -> None:
    raw = orjson.dumps(V2_BODY)
    event = new_event(
        formats.V2,
        record_id=RID,
        source="lab-a",
        raw_object=RawObject("raw", "k", hashlib.sha256(raw).hexdigest(), len(raw)),
        correlation_id="corr-0001",
        record_kind="lab_result",
        schema_hint="partnerA.v1",
    )
    row = canonicalize(event, raw, b"k" * 32, datetime.now(UTC))
    assert row["normalized"]["record_kind"] == "lab_result"
    assert len(row["normalized"]["patient_token"]) == 64
    assert b"Lovelace" not in orjson.dumps(row["normalized"])
    with pytest.raises(ProcessingError, match="ChecksumMismatch"):
        canonicalize(event, raw + b" ", b"k" * 32, datetime.now(UTC))
