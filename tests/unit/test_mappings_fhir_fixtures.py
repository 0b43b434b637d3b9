"""Real Synthea FHIR R4 resources through the partnerB.v1 mapping: all map, none leaks."""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

import pytest

from exchange_stream.core.mappings import KIND_FIELDS, map_payload
from tests.fhir_fixtures import bundle_patients, fhir_records, patient_identifiers

RECORDS = fhir_records()
# Clinical dates and times: a newborn's first visit falls on the birth date, so the birth date
# may appear here as the visit's own date. The mapping never sees the Patient, so it cannot copy
# the birth date from it; every other field must still be free of it.
TIME_FIELDS = {"admit_time", "discharge_time", "service_date", "collected_at"}


def _dump(mapped: dict[str, Any], *, without: Container[str] = ()) -> str:
    return json.dumps({k: v for k, v in mapped.items() if k not in without}).lower()


def _prose(value: Any) -> list[str]:
    """Every ``display``, ``text`` and narrative string in a resource."""
    if isinstance(value, list):
        return [text for item in value for text in _prose(item)]
    if not isinstance(value, dict):
        return []
    found = [v for k, v in value.items() if k in ("display", "text", "div") and isinstance(v, str)]
    return found + [text for v in value.values() for text in _prose(v)]


def test_fixtures_hold_every_kind() -> None:
    kinds = {record["record_kind"] for record in RECORDS}
    assert kinds == set(KIND_FIELDS)
    assert len(bundle_patients()) >= 1


@pytest.mark.parametrize(
    "record",
    RECORDS,
    ids=[f"{r['record_kind']}-{r['resource']['id']}" for r in RECORDS],
)
def test_fixture_resource_maps_without_patient_data(record: dict[str, Any]) -> None:
    kind = record["record_kind"]
    mapped = map_payload(kind, "partnerB.v1", record["resource"])

    assert tuple(mapped) == KIND_FIELDS[kind]
    bundle_patient = record["bundle_patient"]
    dob = bundle_patient["birthDate"]
    full, without_times = _dump(mapped), _dump(mapped, without=TIME_FIELDS)
    leaked = [
        value
        for value in patient_identifiers(bundle_patient)
        if value.lower() in (without_times if value == dob else full)
    ]
    assert not leaked, f"{kind} {record['resource']['id']} carries patient data: {leaked}"
    displays = [text for text in _prose(record["resource"]) if text.lower() in full]
    assert not displays, f"{kind} {record['resource']['id']} carries display text: {displays}"


def test_identifiers_cover_the_identity_used_for_tokens() -> None:
    for record in RECORDS:
        identifiers = patient_identifiers(record["bundle_patient"])
        assert all(value in identifiers for value in record["patient"].values() if value)
