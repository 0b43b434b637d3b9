"""Partner mappings as pure functions: every format and kind, table-driven (docs/CONTRACT.md §4)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from exchange_stream.core.mappings import KIND_FIELDS, MAPPING_VERSION, MappingError, map_payload
from exchange_stream.core.mappings.common import (
    RESULT_TOKENS,
    to_date,
    to_decimal_string,
    to_utc_rfc3339,
)

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
# Patient data a careless mapping or error message could echo; tests plant it and look for it.
PII = "Ada Lovelace"

# --- base payloads: one per format and kind, each with a display or text that must not leak ----


def a1_encounter() -> dict[str, Any]:
    return {
        "encounter_id": "enc-001",
        "facility_id": "fac-001",
        "admit_ts": "2024-03-01T08:30:00Z",
        "discharge_ts": "2024-03-03T10:00:00+02:00",
        "encounter_type": "inpatient",
        "dx_codes": ["E11.9", "I10"],
        "patient_name": PII,
    }


def a1_claim() -> dict[str, Any]:
    return {
        "claim_id": "clm-001",
        "payer_id": "payer-77",
        "service_date": "2024-03-01",
        "total_charge": "1234.50",
        "currency": "USD",
        "cpt_codes": ["99213", "80053"],
        "dx_codes": ["E11.9"],
        "notes": PII,
    }


def a1_lab() -> dict[str, Any]:
    return {
        "order_id": "ord-001",
        "loinc_code": "2345-7",
        "value": 5.4,
        "unit": "mmol/L",
        "ref_low": 3.9,
        "ref_high": "5.5",
        "collected_ts": "2024-03-01T07:15:00-05:00",
        "status": "final",
        "comment": PII,
    }


def a2_encounter() -> dict[str, Any]:
    return {
        "encounter": {
            "id": "enc-002",
            "facility": {"id": "fac-002", "name": "St. Ada Lovelace Clinic"},
            "period": {"start": "2024-03-01T08:30:00+05:30", "end": "2024-03-01T09:00:00Z"},
            "class": "ER",
            "diagnoses": [{"system": ICD, "code": "S09.90XA", "display": PII}],
        }
    }


def a2_claim() -> dict[str, Any]:
    return {
        "claim": {
            "id": "clm-002",
            "payer": {"id": "payer-88", "name": PII},
            "serviceDate": "2024-03-02",
            "total": {"amount": 250, "currency": "eur"},
            "lines": [
                {"procedure": {"system": CPT, "code": "99283", "display": PII}, "charge": 200},
                {"procedure": {"system": CPT, "code": "71045"}, "charge": 50},
            ],
            "diagnoses": [{"system": ICD, "code": "J18.9"}],
        }
    }


def a2_lab() -> dict[str, Any]:
    return {
        "result": {
            "orderId": "ord-002",
            "test": {"system": LOINC, "code": "718-7", "display": PII},
            "value": {"quantity": "13.20", "unit": "g/dL"},
            "referenceRange": {"low": "12.0", "high": "15.5"},
            "collectedAt": "2024-03-01T23:30:00-02:00",
            "status": "Final",
        }
    }


def fhir_encounter() -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-fhir-1",
        "text": {"status": "generated", "div": f"<div>{PII}</div>"},
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1", "display": PII},
        "period": {"start": "2024-03-01T21:20:23-07:00", "end": "2024-03-02T09:00:00-07:00"},
        "reasonCode": [
            {
                "coding": [
                    {"system": SNOMED, "code": "44054006", "display": PII},
                    {"system": ICD, "code": "E11.9"},
                ],
                "text": PII,
            }
        ],
        "serviceProvider": {"reference": "Organization/org-1", "display": PII},
    }


def fhir_claim() -> dict[str, Any]:
    return {
        "resourceType": "Claim",
        "id": "clm-fhir-1",
        "patient": {"reference": "Patient/p1", "display": PII},
        "billablePeriod": {
            "start": "2024-03-01T21:20:23-07:00",
            "end": "2024-03-01T22:00:00-07:00",
        },
        "insurer": {"reference": "Organization/payer-9", "display": PII},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Humana"}}],
        "diagnosis": [
            {"sequence": 1, "diagnosisReference": {"reference": "urn:uuid:cond-1"}},
            {
                "sequence": 2,
                "diagnosisCodeableConcept": {"coding": [{"system": ICD, "code": "I10"}]},
            },
        ],
        "item": [
            {
                "sequence": 1,
                "productOrService": {
                    "coding": [{"system": SNOMED, "code": "410620009", "display": PII}],
                    "text": PII,
                },
            },
            {
                "sequence": 2,
                "productOrService": {
                    "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]
                },
                "net": {"value": 140.52, "currency": "USD"},
            },
        ],
        "total": {"value": 129.16, "currency": "USD"},
    }


def fhir_lab_quantity() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-q-1",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": "2339-0", "display": PII}], "text": PII},
        "subject": {"reference": "Patient/p1", "display": PII},
        "effectiveDateTime": "2024-03-01T10:00:00.250+01:00",
        "valueQuantity": {"value": 95.0, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
        "referenceRange": [{"low": {"value": 70}, "high": {"value": 99}, "text": PII}],
    }


def fhir_lab_coded() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-c-1",
        "status": "final",
        "category": [{"coding": [{"system": "x", "code": "laboratory", "display": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "92142-9"}]},
        "effectiveDateTime": "2020-03-06T20:32:23-08:00",
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": "260385009", "display": PII}],
            "text": PII,
        },
    }


A1, A2, B = "partnerA.v1", "partnerA.v2", "partnerB.v1"
ENC, CLM, LAB = "encounter", "claim", "lab_result"

BASES = {
    ("partnerA.v1", "encounter"): a1_encounter,
    ("partnerA.v1", "claim"): a1_claim,
    ("partnerA.v1", "lab_result"): a1_lab,
    ("partnerA.v2", "encounter"): a2_encounter,
    ("partnerA.v2", "claim"): a2_claim,
    ("partnerA.v2", "lab_result"): a2_lab,
    ("partnerB.v1", "encounter"): fhir_encounter,
    ("partnerB.v1", "claim"): fhir_claim,
    ("partnerB.v1", "lab_result"): fhir_lab_quantity,
}


DELETE = object()


def edited(base: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with each dotted path (``a.b.0.c``) set, or deleted when ``DELETE``."""
    payload = copy.deepcopy(base)
    for path, value in edits.items():
        keys = [int(part) if part.isdigit() else part for part in path.split(".")]
        parent: Any = payload
        for key in keys[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = value
    return payload


# --- whole objects: each base payload maps to exactly this ------------------------------------

EXPECTED = {
    ("partnerA.v1", "encounter"): {
        "encounter_id": "enc-001",
        "facility_id": "fac-001",
        "encounter_class": "inpatient",
        "admit_time": "2024-03-01T08:30:00Z",
        "discharge_time": "2024-03-03T08:00:00Z",
        "diagnosis_codes": [{"system": ICD, "code": "E11.9"}, {"system": ICD, "code": "I10"}],
    },
    ("partnerA.v1", "claim"): {
        "claim_id": "clm-001",
        "payer_id": "payer-77",
        "service_date": "2024-03-01",
        "total_charge": {"amount": "1234.50", "currency": "USD"},
        "procedure_codes": [{"system": CPT, "code": "99213"}, {"system": CPT, "code": "80053"}],
        "diagnosis_codes": [{"system": ICD, "code": "E11.9"}],
    },
    ("partnerA.v1", "lab_result"): {
        "result_id": "ord-001",
        "test_code": {"system": LOINC, "code": "2345-7"},
        "value": {"quantity": "5.4", "unit": "mmol/L"},
        "reference_range": {"low": "3.9", "high": "5.5"},
        "collected_at": "2024-03-01T12:15:00Z",
        "status": "final",
    },
    ("partnerA.v2", "encounter"): {
        "encounter_id": "enc-002",
        "facility_id": "fac-002",
        "encounter_class": "emergency",
        "admit_time": "2024-03-01T03:00:00Z",
        "discharge_time": "2024-03-01T09:00:00Z",
        "diagnosis_codes": [{"system": ICD, "code": "S09.90XA"}],
    },
    ("partnerA.v2", "claim"): {
        "claim_id": "clm-002",
        "payer_id": "payer-88",
        "service_date": "2024-03-02",
        "total_charge": {"amount": "250", "currency": "EUR"},
        "procedure_codes": [{"system": CPT, "code": "99283"}, {"system": CPT, "code": "71045"}],
        "diagnosis_codes": [{"system": ICD, "code": "J18.9"}],
    },
    ("partnerA.v2", "lab_result"): {
        "result_id": "ord-002",
        "test_code": {"system": LOINC, "code": "718-7"},
        "value": {"quantity": "13.20", "unit": "g/dL"},
        "reference_range": {"low": "12.0", "high": "15.5"},
        "collected_at": "2024-03-02T01:30:00Z",
        "status": "final",
    },
    ("partnerB.v1", "encounter"): {
        "encounter_id": "enc-fhir-1",
        "facility_id": "org-1",
        "encounter_class": "inpatient",
        "admit_time": "2024-03-02T04:20:23Z",
        "discharge_time": "2024-03-02T16:00:00Z",
        "diagnosis_codes": [
            {"system": SNOMED, "code": "44054006"},
            {"system": ICD, "code": "E11.9"},
        ],
    },
    ("partnerB.v1", "claim"): {
        "claim_id": "clm-fhir-1",
        "payer_id": "payer-9",
        "service_date": "2024-03-02",
        "total_charge": {"amount": "129.16", "currency": "USD"},
        "procedure_codes": [
            {"system": SNOMED, "code": "410620009"},
            {"system": "http://hl7.org/fhir/sid/cvx", "code": "140"},
        ],
        "diagnosis_codes": [{"system": ICD, "code": "I10"}],
    },
    ("partnerB.v1", "lab_result"): {
        "result_id": "obs-q-1",
        "test_code": {"system": LOINC, "code": "2339-0"},
        "value": {"quantity": "95.0", "unit": "mg/dL"},
        "reference_range": {"low": "70", "high": "99"},
        "collected_at": "2024-03-01T09:00:00.25Z",
        "status": "final",
    },
}


@pytest.mark.parametrize(("hint", "kind"), list(EXPECTED), ids=lambda v: v)
def test_each_format_and_kind_maps_to_the_spec_object(hint: str, kind: str) -> None:
    mapped = map_payload(kind, hint, BASES[hint, kind]())
    assert mapped == EXPECTED[hint, kind]
    assert tuple(mapped) == KIND_FIELDS[kind]
    assert PII.lower() not in json.dumps(mapped).lower()


def test_fhir_observation_with_a_codeable_concept_maps_to_its_first_code() -> None:
    assert map_payload("lab_result", "partnerB.v1", fhir_lab_coded()) == {
        "result_id": "obs-c-1",
        "test_code": {"system": LOINC, "code": "92142-9"},
        "value": {"system": SNOMED, "code": "260385009"},
        "reference_range": None,
        "collected_at": "2020-03-07T04:32:23Z",
        "status": "final",
    }


# --- variants: (case, hint, kind, edits to the base, output key, expected value) -----------------

VARIANTS = [
    # optional fields absent or null
    ("a1-no-discharge", A1, ENC, {"discharge_ts": DELETE}, "discharge_time", None),
    ("a1-null-discharge", A1, ENC, {"discharge_ts": None}, "discharge_time", None),
    ("a1-no-dx", A1, ENC, {"dx_codes": DELETE}, "diagnosis_codes", []),
    ("a1-null-dx", A1, ENC, {"dx_codes": None}, "diagnosis_codes", []),
    (
        "a1-dx-repeated",
        A1,
        ENC,
        {"dx_codes": ["I10", "I10"]},
        "diagnosis_codes",
        [{"system": ICD, "code": "I10"}],
    ),
    ("a1-no-cpt", A1, CLM, {"cpt_codes": DELETE}, "procedure_codes", []),
    ("a1-no-range", A1, LAB, {"ref_low": DELETE, "ref_high": None}, "reference_range", None),
    ("a1-low-only", A1, LAB, {"ref_high": DELETE}, "reference_range", {"low": "3.9", "high": None}),
    (
        "a1-unitless",
        A1,
        LAB,
        {"unit": DELETE, "value": 1.1},
        "value",
        {"quantity": "1.1", "unit": None},
    ),
    ("a2-no-end", A2, ENC, {"encounter.period.end": DELETE}, "discharge_time", None),
    ("a2-no-diagnoses", A2, ENC, {"encounter.diagnoses": DELETE}, "diagnosis_codes", []),
    ("a2-no-lines", A2, CLM, {"claim.lines": DELETE}, "procedure_codes", []),
    ("a2-no-range", A2, LAB, {"result.referenceRange": DELETE}, "reference_range", None),
    (
        "a2-high-only",
        A2,
        LAB,
        {"result.referenceRange.low": DELETE},
        "reference_range",
        {"low": None, "high": "15.5"},
    ),
    (
        "a2-no-unit",
        A2,
        LAB,
        {"result.value.unit": DELETE},
        "value",
        {"quantity": "13.20", "unit": None},
    ),
    ("b-no-end", B, ENC, {"period.end": DELETE}, "discharge_time", None),
    ("b-no-reason", B, ENC, {"reasonCode": DELETE}, "diagnosis_codes", []),
    ("b-no-provider", B, ENC, {"serviceProvider": DELETE}, "facility_id", None),
    ("b-no-insurer", B, CLM, {"insurer": DELETE}, "payer_id", None),
    ("b-no-diagnosis", B, CLM, {"diagnosis": DELETE}, "diagnosis_codes", []),
    ("b-no-range", B, LAB, {"referenceRange": DELETE}, "reference_range", None),
    ("b-range-text-only", B, LAB, {"referenceRange": [{"text": PII}]}, "reference_range", None),
    # timezone offsets and time rendering
    (
        "a1-plus-two",
        A1,
        ENC,
        {"admit_ts": "2024-03-01T10:30:00+02:00"},
        "admit_time",
        "2024-03-01T08:30:00Z",
    ),
    (
        "a1-minus-across-midnight",
        A1,
        ENC,
        {"admit_ts": "2024-12-31T20:00:00-05:00"},
        "admit_time",
        "2025-01-01T01:00:00Z",
    ),
    (
        "a1-half-hour",
        A1,
        ENC,
        {"admit_ts": "2024-03-01T14:00:00+05:30"},
        "admit_time",
        "2024-03-01T08:30:00Z",
    ),
    (
        "a1-fraction-kept",
        A1,
        LAB,
        {"collected_ts": "2024-03-01T07:15:00.120000Z"},
        "collected_at",
        "2024-03-01T07:15:00.12Z",
    ),
    (
        "a1-zero-fraction-dropped",
        A1,
        LAB,
        {"collected_ts": "2024-03-01T07:15:00.000Z"},
        "collected_at",
        "2024-03-01T07:15:00Z",
    ),
    (
        "a2-lower-z",
        A2,
        LAB,
        {"result.collectedAt": "2024-03-01t07:15:00z"},
        "collected_at",
        "2024-03-01T07:15:00Z",
    ),
    (
        "b-instant",
        B,
        LAB,
        {"effectiveDateTime": DELETE, "effectiveInstant": "2024-03-01T00:30:00+01:00"},
        "collected_at",
        "2024-02-29T23:30:00Z",
    ),
    (
        "b-service-date-utc",
        B,
        CLM,
        {"billablePeriod.start": "2024-03-01T23:30:00-01:00"},
        "service_date",
        "2024-03-02",
    ),
    (
        "b-service-date-date",
        B,
        CLM,
        {"billablePeriod.start": "2024-03-01"},
        "service_date",
        "2024-03-01",
    ),
    # encounter classes, case-insensitive; unknown is "other"
    ("a1-er", A1, ENC, {"encounter_type": "ER"}, "encounter_class", "emergency"),
    ("a1-emergency", A1, ENC, {"encounter_type": "Emergency"}, "encounter_class", "emergency"),
    ("a1-outpatient", A1, ENC, {"encounter_type": "OUTPATIENT"}, "encounter_class", "outpatient"),
    ("a1-virtual", A1, ENC, {"encounter_type": "telehealth"}, "encounter_class", "virtual"),
    ("a1-unknown", A1, ENC, {"encounter_type": "hospice"}, "encounter_class", "other"),
    (
        "a2-ambulatory",
        A2,
        ENC,
        {"encounter.class": " ambulatory "},
        "encounter_class",
        "ambulatory",
    ),
    ("b-acute", B, ENC, {"class.code": "ACUTE"}, "encounter_class", "inpatient"),
    ("b-nonac", B, ENC, {"class.code": "NONAC"}, "encounter_class", "inpatient"),
    ("b-amb", B, ENC, {"class.code": "AMB"}, "encounter_class", "ambulatory"),
    ("b-emer", B, ENC, {"class.code": "EMER"}, "encounter_class", "emergency"),
    ("b-vr", B, ENC, {"class.code": "VR"}, "encounter_class", "virtual"),
    ("b-hh", B, ENC, {"class.code": "HH"}, "encounter_class", "other"),
    ("b-fld", B, ENC, {"class.code": "FLD"}, "encounter_class", "other"),
    # amounts: the sender's scale is kept, exponents are expanded
    (
        "a1-int-charge",
        A1,
        CLM,
        {"total_charge": 1200},
        "total_charge",
        {"amount": "1200", "currency": "USD"},
    ),
    (
        "a1-float-charge",
        A1,
        CLM,
        {"total_charge": 129.16},
        "total_charge",
        {"amount": "129.16", "currency": "USD"},
    ),
    (
        "a1-exponent-charge",
        A1,
        CLM,
        {"total_charge": "1.5E3"},
        "total_charge",
        {"amount": "1500", "currency": "USD"},
    ),
    (
        "a1-lower-currency",
        A1,
        CLM,
        {"currency": "usd"},
        "total_charge",
        {"amount": "1234.50", "currency": "USD"},
    ),
    # lab values: numbers, qualitative tokens, codes
    (
        "a1-numeric-text",
        A1,
        LAB,
        {"value": "7.10"},
        "value",
        {"quantity": "7.10", "unit": "mmol/L"},
    ),
    ("a1-token", A1, LAB, {"value": " Not  Detected "}, "value", "not detected"),
    ("a1-token-reactive", A1, LAB, {"value": "NON-REACTIVE"}, "value", "non-reactive"),
    ("a2-token", A2, LAB, {"result.value": "Positive"}, "value", "positive"),
    (
        "a2-coded",
        A2,
        LAB,
        {"result.value": {"system": SNOMED, "code": "10828004", "display": PII}},
        "value",
        {"system": SNOMED, "code": "10828004"},
    ),
    (
        "b-unit-without-code",
        B,
        LAB,
        {"valueQuantity": {"value": 7, "unit": "%"}},
        "value",
        {"quantity": "7", "unit": "%"},
    ),
    (
        "b-code-over-unit",
        B,
        LAB,
        {"valueQuantity": {"value": 4.5, "unit": "x10^9/l", "code": "10*9/L"}},
        "value",
        {"quantity": "4.5", "unit": "10*9/L"},
    ),
    (
        "b-value-string-token",
        B,
        LAB,
        {"valueQuantity": DELETE, "valueString": "Negative"},
        "value",
        "negative",
    ),
    ("b-status-case", B, LAB, {"status": "Amended"}, "status", "amended"),
    # FHIR references: the id, never the display
    (
        "b-urn-uuid",
        B,
        ENC,
        {"serviceProvider": {"reference": "urn:uuid:0f1e"}},
        "facility_id",
        "0f1e",
    ),
    (
        "b-absolute-history",
        B,
        ENC,
        {"serviceProvider.reference": "https://ehr.example/fhir/Organization/42/_history/3"},
        "facility_id",
        "42",
    ),
    (
        "b-conditional",
        B,
        ENC,
        {
            "serviceProvider.reference": "Organization?identifier=https://github.com/synthetichealth/synthea|abc-9"
        },
        "facility_id",
        "abc-9",
    ),
    (
        "b-identifier",
        B,
        CLM,
        {"insurer": {"identifier": {"system": "urn:payers", "value": "P-55"}, "display": PII}},
        "payer_id",
        "P-55",
    ),
    ("b-display-only", B, CLM, {"insurer": {"display": "Humana"}}, "payer_id", None),
    ("b-contained", B, CLM, {"insurer": {"reference": "#payer"}}, "payer_id", None),
    (
        "b-coding-without-system",
        B,
        CLM,
        {"diagnosis.1.diagnosisCodeableConcept.coding": [{"code": "I10"}]},
        "diagnosis_codes",
        [],
    ),
]


@pytest.mark.parametrize(
    ("hint", "kind", "edits", "key", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in VARIANTS],
)
def test_variant_maps_predictably(
    hint: str, kind: str, edits: dict[str, Any], key: str, expected: Any
) -> None:
    mapped = map_payload(kind, hint, edited(BASES[hint, kind](), edits))
    assert mapped[key] == expected
    assert tuple(mapped) == KIND_FIELDS[kind]
    assert PII.lower() not in json.dumps(mapped).lower()


# --- errors: (case, hint, kind, edits, field, reason); planted values must not be in the message --

ERRORS = [
    # missing required ids and times
    ("a1-no-id", A1, ENC, {"encounter_id": DELETE}, "encounter_id", "missing"),
    ("a1-empty-id", A1, ENC, {"encounter_id": ""}, "encounter_id", "missing"),
    ("a1-no-facility", A1, ENC, {"facility_id": None}, "facility_id", "missing"),
    ("a1-no-admit", A1, ENC, {"admit_ts": DELETE}, "admit_ts", "missing"),
    ("a1-no-type", A1, ENC, {"encounter_type": DELETE}, "encounter_type", "missing"),
    ("a1-no-claim-id", A1, CLM, {"claim_id": DELETE}, "claim_id", "missing"),
    ("a1-no-payer", A1, CLM, {"payer_id": DELETE}, "payer_id", "missing"),
    ("a1-no-currency", A1, CLM, {"currency": DELETE}, "currency", "missing"),
    ("a1-no-charge", A1, CLM, {"total_charge": DELETE}, "total_charge", "missing"),
    ("a1-no-order", A1, LAB, {"order_id": DELETE}, "order_id", "missing"),
    ("a1-no-loinc", A1, LAB, {"loinc_code": DELETE}, "loinc_code", "missing"),
    ("a1-no-value", A1, LAB, {"value": None}, "value", "missing"),
    ("a1-no-collected", A1, LAB, {"collected_ts": DELETE}, "collected_ts", "missing"),
    ("a1-no-status", A1, LAB, {"status": DELETE}, "status", "missing"),
    ("a2-no-wrapper", A2, ENC, {"encounter": DELETE}, "encounter", "missing"),
    (
        "a2-no-start",
        A2,
        ENC,
        {"encounter.period.start": DELETE},
        "encounter.period.start",
        "missing",
    ),
    ("a2-no-period", A2, ENC, {"encounter.period": DELETE}, "encounter.period", "missing"),
    (
        "a2-no-facility-id",
        A2,
        ENC,
        {"encounter.facility.id": DELETE},
        "encounter.facility.id",
        "missing",
    ),
    ("a2-no-payer", A2, CLM, {"claim.payer": DELETE}, "claim.payer", "missing"),
    (
        "a2-no-currency",
        A2,
        CLM,
        {"claim.total.currency": DELETE},
        "claim.total.currency",
        "missing",
    ),
    (
        "a2-line-no-procedure",
        A2,
        CLM,
        {"claim.lines.1.procedure": DELETE},
        "claim.lines[1].procedure",
        "missing",
    ),
    (
        "a2-diagnosis-no-system",
        A2,
        CLM,
        {"claim.diagnoses.0.system": DELETE},
        "claim.diagnoses[0].system",
        "missing",
    ),
    (
        "a2-no-quantity",
        A2,
        LAB,
        {"result.value.quantity": None},
        "result.value.quantity",
        "missing",
    ),
    ("a2-no-test", A2, LAB, {"result.test": DELETE}, "result.test", "missing"),
    ("b-no-id", B, ENC, {"id": DELETE}, "id", "missing"),
    ("b-no-start", B, ENC, {"period.start": DELETE}, "period.start", "missing"),
    ("b-no-class", B, ENC, {"class": DELETE}, "class", "missing"),
    ("b-no-resource-type", B, ENC, {"resourceType": DELETE}, "resourceType", "missing"),
    ("b-no-billable", B, CLM, {"billablePeriod": DELETE}, "billablePeriod", "missing"),
    ("b-no-total", B, CLM, {"total": DELETE}, "total", "missing"),
    ("b-no-total-currency", B, CLM, {"total.currency": DELETE}, "total.currency", "missing"),
    ("b-no-effective", B, LAB, {"effectiveDateTime": DELETE}, "effectiveDateTime", "missing"),
    ("b-no-value", B, LAB, {"valueQuantity": DELETE}, "value[x]", "missing"),
    ("b-no-test-coding", B, LAB, {"code": {"text": PII}}, "code.coding", "missing"),
    (
        "b-concept-text-only",
        B,
        LAB,
        {"valueQuantity": DELETE, "valueCodeableConcept": {"text": PII}},
        "valueCodeableConcept.coding",
        "missing",
    ),
    (
        "b-quantity-no-value",
        B,
        LAB,
        {"valueQuantity.value": DELETE},
        "valueQuantity.value",
        "missing",
    ),
    # wrong types and malformed values, each carrying planted patient data
    ("a1-id-with-name", A1, ENC, {"encounter_id": PII}, "encounter_id", "invalid"),
    ("a1-id-bool", A1, ENC, {"encounter_id": True}, "encounter_id", "invalid"),
    ("a1-naive-time", A1, ENC, {"admit_ts": "2024-03-01T08:30:00"}, "admit_ts", "invalid"),
    ("a1-date-as-time", A1, ENC, {"admit_ts": "2024-03-01"}, "admit_ts", "invalid"),
    (
        "a1-time-with-name",
        A1,
        ENC,
        {"discharge_ts": f"{PII} 2024-03-01T08:30:00Z"},
        "discharge_ts",
        "invalid",
    ),
    ("a1-bad-day", A1, ENC, {"admit_ts": "2024-02-30T08:30:00Z"}, "admit_ts", "invalid"),
    ("a1-bad-offset", A1, ENC, {"admit_ts": "2024-02-03T08:30:00+24:00"}, "admit_ts", "invalid"),
    ("a1-epoch-time", A1, ENC, {"admit_ts": 1709281800}, "admit_ts", "invalid"),
    ("a1-type-number", A1, ENC, {"encounter_type": 3}, "encounter_type", "invalid"),
    ("a1-dx-not-list", A1, ENC, {"dx_codes": "E11.9"}, "dx_codes", "invalid"),
    ("a1-dx-item-prose", A1, ENC, {"dx_codes": ["I10", PII]}, "dx_codes[1]", "invalid"),
    ("a1-bool-charge", A1, CLM, {"total_charge": True}, "total_charge", "invalid"),
    ("a1-nan-charge", A1, CLM, {"total_charge": "NaN"}, "total_charge", "invalid"),
    ("a1-huge-charge", A1, CLM, {"total_charge": "1e400"}, "total_charge", "invalid"),
    ("a1-comma-charge", A1, CLM, {"total_charge": "1,234.50"}, "total_charge", "invalid"),
    ("a1-currency-name", A1, CLM, {"currency": "dollars"}, "currency", "invalid"),
    (
        "a1-date-with-time",
        A1,
        CLM,
        {"service_date": "2024-03-01T00:00:00Z"},
        "service_date",
        "invalid",
    ),
    ("a1-date-impossible", A1, CLM, {"service_date": "2024-13-01"}, "service_date", "invalid"),
    ("a1-value-prose", A1, LAB, {"value": f"seen by {PII}"}, "value", "unsupported"),
    ("a1-value-comparator", A1, LAB, {"value": "<0.5"}, "value", "unsupported"),
    ("a1-value-list", A1, LAB, {"value": [1]}, "value", "invalid"),
    ("a1-unit-prose", A1, LAB, {"unit": PII}, "unit", "invalid"),
    ("a1-range-text", A1, LAB, {"ref_low": "below"}, "ref_low", "invalid"),
    ("a1-status-unknown", A1, LAB, {"status": "reviewed by Ada"}, "status", "unsupported"),
    ("a2-wrapper-list", A2, ENC, {"encounter": [PII]}, "encounter", "invalid"),
    (
        "a2-class-object",
        A2,
        ENC,
        {"encounter.class": {"code": "IMP"}},
        "encounter.class",
        "invalid",
    ),
    (
        "a2-naive-end",
        A2,
        ENC,
        {"encounter.period.end": "2024-03-01 09:00:00"},
        "encounter.period.end",
        "invalid",
    ),
    ("a2-line-not-object", A2, CLM, {"claim.lines.0": PII}, "claim.lines[0]", "invalid"),
    ("a2-value-prose", A2, LAB, {"result.value": PII}, "result.value", "unsupported"),
    (
        "a2-range-list",
        A2,
        LAB,
        {"result.referenceRange": [1, 2]},
        "result.referenceRange",
        "invalid",
    ),
    ("b-claim-as-encounter", B, ENC, {"resourceType": "Claim"}, "resourceType", "invalid"),
    ("b-class-list", B, ENC, {"class": [{"code": "AMB"}]}, "class", "invalid"),
    (
        "b-reference-number",
        B,
        ENC,
        {"serviceProvider.reference": 7},
        "serviceProvider.reference",
        "invalid",
    ),
    (
        "b-reference-prose",
        B,
        ENC,
        {"serviceProvider.reference": f"Organization/{PII}"},
        "serviceProvider.reference",
        "invalid",
    ),
    (
        "b-reason-code-prose",
        B,
        ENC,
        {"reasonCode.0.coding.1.code": PII},
        "reasonCode[0].coding[1].code",
        "invalid",
    ),
    ("b-item-not-object", B, CLM, {"item.0": PII}, "item[0]", "invalid"),
    (
        "b-vital-signs",
        B,
        LAB,
        {"category.0.coding.0.code": "vital-signs"},
        "category",
        "unsupported",
    ),
    ("b-no-category", B, LAB, {"category": DELETE}, "category", "unsupported"),
    (
        "b-encounter-as-observation",
        B,
        LAB,
        {"resourceType": "Encounter"},
        "resourceType",
        "invalid",
    ),
    (
        "b-comparator",
        B,
        LAB,
        {"valueQuantity.comparator": "<"},
        "valueQuantity.comparator",
        "unsupported",
    ),
    (
        "b-value-boolean",
        B,
        LAB,
        {"valueQuantity": DELETE, "valueBoolean": True},
        "value[x]",
        "unsupported",
    ),
    (
        "b-value-string-prose",
        B,
        LAB,
        {"valueQuantity": DELETE, "valueString": PII},
        "valueString",
        "unsupported",
    ),
    (
        "b-naive-effective",
        B,
        LAB,
        {"effectiveDateTime": "2024-03-01T10:00:00"},
        "effectiveDateTime",
        "invalid",
    ),
    (
        "b-partial-effective",
        B,
        LAB,
        {"effectiveDateTime": "2024-03"},
        "effectiveDateTime",
        "invalid",
    ),
]


@pytest.mark.parametrize(
    ("hint", "kind", "edits", "field", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in ERRORS],
)
def test_unmappable_payload_names_the_field_and_not_the_value(
    hint: str, kind: str, edits: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(MappingError) as caught:
        map_payload(kind, hint, edited(BASES[hint, kind](), edits))
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert str(caught.value) == f"{reason}: {field}"
    for value in edits.values():
        if isinstance(value, str) and value not in (field, ""):
            assert value.lower() not in repr(caught.value).lower()


@pytest.mark.parametrize(
    ("kind", "hint", "payload", "field", "reason"),
    [
        ("encounter", "partnerC.v9", {}, "schema_hint", "unsupported"),
        ("medication", "partnerA.v1", {}, "record_kind", "unsupported"),
        ("encounter", "partnerA.v1", [PII], "payload", "invalid"),
        ("encounter", "partnerB.v1", PII, "payload", "invalid"),
        ("claim", "partnerA.v2", None, "payload", "invalid"),
    ],
)
def test_unknown_hint_kind_or_non_object_payload_is_a_mapping_error(
    kind: str, hint: str, payload: object, field: str, reason: str
) -> None:
    with pytest.raises(MappingError) as caught:
        map_payload(kind, hint, payload)
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert PII not in str(caught.value)


def test_mapping_error_is_a_permanent_value_error() -> None:
    assert issubclass(MappingError, ValueError)


def _leaves(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}".lstrip("."))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}.{i}")]
    return [path]


ODD_VALUES = [None, "", PII, True, -1, 1e308, [], {}, [PII], {"x": PII}]


@pytest.mark.parametrize(("hint", "kind"), list(BASES), ids=lambda v: v)
def test_any_odd_value_anywhere_maps_or_raises_mapping_error_only(hint: str, kind: str) -> None:
    base = BASES[hint, kind]()
    for path in _leaves(base):
        for odd in ODD_VALUES:
            try:
                mapped = map_payload(kind, hint, edited(base, {path: odd}))
            except MappingError as error:
                assert PII.lower() not in str(error).lower(), path
            else:
                assert tuple(mapped) == KIND_FIELDS[kind], path
                assert PII.lower() not in json.dumps(mapped).lower(), path


@pytest.mark.parametrize(("hint", "kind"), list(BASES), ids=lambda v: v)
def test_mapping_leaves_the_payload_untouched(hint: str, kind: str) -> None:
    payload = BASES[hint, kind]()
    map_payload(kind, hint, payload)
    assert payload == BASES[hint, kind]()


# --- the shared converters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T08:30:00Z", "2024-03-01T08:30:00Z"),
        ("2024-03-01T10:30:00+02:00", "2024-03-01T08:30:00Z"),
        ("2024-03-01T03:30:00-05:00", "2024-03-01T08:30:00Z"),
        ("2024-03-01T08:30:00-00:00", "2024-03-01T08:30:00Z"),
        ("2024-03-01 08:30:00+00:00", "2024-03-01T08:30:00Z"),
        ("2024-03-01T08:30:00.5Z", "2024-03-01T08:30:00.5Z"),
        ("2024-03-01T08:30:00.123456789Z", "2024-03-01T08:30:00.123456Z"),
        ("2024-03-01T08:30:00.000001+01:00", "2024-03-01T07:30:00.000001Z"),
        ("2024-02-29T23:00:00-01:00", "2024-03-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ],
)
def test_times_become_utc_rfc3339(text: str, expected: str) -> None:
    assert to_utc_rfc3339(text, "t") == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-01T08:30:00",
        "2024-03-01T08:30Z",
        "2024-03-01",
        "20240301T083000Z",
        "2024-03-01T08:30:00+0200",
        "2024-03-01T08:30:60Z",
        "2024-03-01T24:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "\uff12\uff10\uff12\uff14-03-01T08:30:00Z",  # full-width digits
        "2024-03-01T08:30:00Z ",
    ],
)
def test_naive_partial_or_malformed_times_are_invalid(text: str) -> None:
    with pytest.raises(MappingError) as caught:
        to_utc_rfc3339(text, "t")
    assert caught.value.reason == "invalid"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1234.50", "1234.50"),
        (1234.5, "1234.5"),
        (129.16, "129.16"),
        (0.1, "0.1"),
        (7, "7"),
        ("-0.00", "0.00"),
        ("+5", "5"),
        ("1E3", "1000"),
        ("2.5e-3", "0.0025"),
        (".5", "0.5"),
        (1e16, "10000000000000000"),
    ],
)
def test_numbers_become_plain_decimal_strings(value: object, expected: str) -> None:
    assert to_decimal_string(value, "n") == expected


@pytest.mark.parametrize(
    "value", [True, False, "NaN", "Infinity", float("inf"), "1_000", " 1", "0x10", "1e18", "1e-19"]
)
def test_non_numbers_and_extreme_magnitudes_are_invalid(value: object) -> None:
    with pytest.raises(MappingError) as caught:
        to_decimal_string(value, "n")
    assert caught.value.reason == "invalid"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("2024-02-29", True), ("2023-02-29", False), ("2024-3-1", False), ("2024-03-01Z", False)],
)
def test_dates_are_calendar_dates_in_yyyy_mm_dd(value: str, ok: bool) -> None:
    if ok:
        assert to_date(value, "d") == value
    else:
        with pytest.raises(MappingError):
            to_date(value, "d")


def test_every_result_token_maps_to_itself() -> None:
    for token in sorted(RESULT_TOKENS):
        payload = edited(a1_lab(), {"value": token.upper()})
        assert map_payload("lab_result", "partnerA.v1", payload)["value"] == token


def test_mapping_version_is_a_dated_counter() -> None:
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\.[1-9][0-9]*", MAPPING_VERSION)
