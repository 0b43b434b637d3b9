"""Request bodies for tests: one factory per partner format, with unique identities."""

from __future__ import annotations

import uuid
from typing import Any


def patient_v2(**overrides: Any) -> dict[str, Any]:
    return {
        "given_name": "Ada",
        "family_name": "Lovelace",
        "dob": "1815-12-10",
        "ssn": "123-45-6789",
        **overrides,
    }


def patient_v1(**overrides: Any) -> dict[str, Any]:
    return {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "dob": "1815-12-10",
        "ssn": "123-45-6789",
        **overrides,
    }


def partner_a_v1_encounter(encounter_id: str | None = None) -> dict[str, Any]:
    return {
        "encounter_id": encounter_id or f"enc-{uuid.uuid4().hex[:12]}",
        "facility_id": "fac-001",
        "admit_ts": "2024-03-01T08:30:00Z",
        "discharge_ts": "2024-03-03T10:00:00+02:00",
        "encounter_type": "inpatient",
        "dx_codes": ["E11.9", "I10"],
    }


def v1_body(source: str = "hospital-a", **overrides: Any) -> dict[str, Any]:
    body = {
        "source": source,
        "record_type": "encounter",
        "patient": patient_v1(),
        "payload": partner_a_v1_encounter(),
    }
    body.update(overrides)
    return body


def v2_body(source: str = "hospital-b", **overrides: Any) -> dict[str, Any]:
    body = {
        "source": source,
        "record_kind": "encounter",
        "schema_hint": "partnerA.v1",
        "patient": patient_v2(),
        "payload": partner_a_v1_encounter(),
    }
    body.update(overrides)
    return body


def new_key() -> str:
    return f"idem-{uuid.uuid4()}"
