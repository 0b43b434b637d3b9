"""Request validation on ``parse_request`` directly: every bad field is named, never its value."""

from __future__ import annotations

import copy

import orjson
import pytest

from exchange_stream.core import formats
from exchange_stream.pipeline.ingest import BadRequest, parse_request
from tests.payloads import v1_body, v2_body

V1_CASES = [
    ("source", "missing", lambda b: b.pop("source")),
    ("source", "invalid", lambda b: b.update(source="")),
    ("source", "invalid", lambda b: b.update(source="../etc")),
    ("record_type", "missing", lambda b: b.pop("record_type")),
    ("record_type", "invalid", lambda b: b.update(record_type="surgery")),
    ("patient", "missing", lambda b: b.pop("patient")),
    ("patient", "invalid", lambda b: b.update(patient="Ada Lovelace")),
    ("patient.first_name", "missing", lambda b: b["patient"].pop("first_name")),
    ("patient.first_name", "invalid", lambda b: b["patient"].update(first_name="   ")),
    ("patient.last_name", "invalid", lambda b: b["patient"].update(last_name=7)),
    ("patient.dob", "missing", lambda b: b["patient"].pop("dob")),
    ("patient.dob", "invalid", lambda b: b["patient"].update(dob="1815-02-30")),
    ("patient.dob", "invalid", lambda b: b["patient"].update(dob="10/12/1815")),
    ("patient.ssn", "invalid", lambda b: b["patient"].update(ssn=123456789)),
    ("payload", "missing", lambda b: b.pop("payload")),
    ("payload", "invalid", lambda b: b.update(payload=[1, 2])),
]
V2_CASES = [
    ("source", "missing", lambda b: b.pop("source")),
    ("record_kind", "missing", lambda b: b.pop("record_kind")),
    ("record_kind", "invalid", lambda b: b.update(record_kind="Encounter")),
    ("schema_hint", "missing", lambda b: b.pop("schema_hint")),
    ("schema_hint", "invalid", lambda b: b.update(schema_hint="partnerC.v9")),
    ("patient.given_name", "missing", lambda b: b["patient"].pop("given_name")),
    ("patient.family_name", "invalid", lambda b: b["patient"].update(family_name="")),
    ("patient.dob", "invalid", lambda b: b["patient"].update(dob="2021-W01-1")),
    ("patient.ssn", "invalid", lambda b: b["patient"].update(ssn=["1"])),
    ("payload", "invalid", lambda b: b.update(payload="text")),
]


@pytest.mark.parametrize(
    ("version", "field", "reason", "mutate"),
    [("1", *c) for c in V1_CASES] + [("2", *c) for c in V2_CASES],
)
def test_each_invalid_field_is_refused_naming_it(version, field, reason, mutate) -> None:
    body = copy.deepcopy(v1_body() if version == "1" else v2_body())
    mutate(body)
    with pytest.raises(BadRequest) as caught:
        parse_request(formats.for_version(version), orjson.dumps(body))
    assert caught.value.reason == f"{reason} field: {field}"


# What partners already send is accepted; refused is only what would make `<source>/<id>.json`
# unsafe or ambiguous as an object key.
ACCEPTED_SOURCES = ["Hospital A", "clinique-été", "a.b", "x" * 255, "\u20ac" * 85]
REFUSED_SOURCES = {
    "empty": "",
    "slash": "a/b",
    "dot": ".",
    "dot dot": "..",
    "tab": "tab\there",
    "delete": "del\x7f",
    "C1 control": "nel\x85",
    "256 ASCII characters": "x" * 256,
    "86 characters, 258 bytes": "\u20ac" * 86,
}


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize("source", ACCEPTED_SOURCES, ids=lambda s: s[:12])
def test_any_source_a_partner_sends_is_accepted(fmt: formats.IngestFormat, source: str) -> None:
    body = v1_body(source=source) if fmt is formats.V1 else v2_body(source=source)
    assert parse_request(fmt, orjson.dumps(body)).source == source


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize("name", sorted(REFUSED_SOURCES))
def test_a_source_unsafe_as_a_key_segment_is_refused(fmt: formats.IngestFormat, name: str) -> None:
    body = v1_body() if fmt is formats.V1 else v2_body()
    body["source"] = REFUSED_SOURCES[name]
    with pytest.raises(BadRequest) as caught:
        parse_request(fmt, orjson.dumps(body))
    assert caught.value.reason == "invalid field: source"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2, 3]", "body must be a JSON object"),
        (b"", "invalid JSON"),
        (b'"text"', "body must be a JSON object"),
    ],
)
def test_bad_json_and_non_objects_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(formats.V2, data)
    assert caught.value.reason == error


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
def test_a_valid_body_is_parsed_with_its_kind_hint_and_hash(fmt: formats.IngestFormat) -> None:
    body = v1_body() if fmt is formats.V1 else v2_body()
    raw = orjson.dumps(body)
    req = parse_request(fmt, raw)
    assert (req.format, req.source, req.body) == (fmt, body["source"], raw)
    kind, hint = fmt.kind_and_hint(body)
    assert (req.record_kind, req.schema_hint) == (kind, hint)
    assert req.schema_hint in ("partnerA.v1", "partnerA.v2", "partnerB.v1")
    assert len(req.sha256) == 64


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
def test_a_dob_in_year_0000_is_accepted(fmt: formats.IngestFormat) -> None:
    body = v1_body() if fmt is formats.V1 else v2_body()
    body["patient"]["dob"] = "0000-01-01"
    assert parse_request(fmt, orjson.dumps(body)).body == orjson.dumps(body)


def test_errors_never_echo_patient_values() -> None:
    body = v1_body()
    body["patient"]["dob"] = "Sentinel-Dob-Zq9"
    with pytest.raises(BadRequest) as caught:
        parse_request(formats.V1, orjson.dumps(body))
    assert "Sentinel" not in caught.value.reason
