"""FHIR R4 resources from canonical records: every builder's output validates against the R4
(4.0.1) models of fhir.resources, and holds nothing but what the builder was given."""

from __future__ import annotations

import base64
import copy
import re
import uuid
from typing import Any

import orjson
import pytest
from fhir.resources import __fhir_version__ as MODELS_FHIR_VERSION
from fhir.resources.capabilitystatement import CapabilityStatement
from fhir.resources.claim import Claim
from fhir.resources.encounter import Encounter
from fhir.resources.observation import Observation
from fhir.resources.operationoutcome import OperationOutcome
from fhir.resources.patient import Patient
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange_stream.core import fhir
from exchange_stream.core.mappings import map_payload
from exchange_stream.core.scoped_ids import ScopedIds
from tests.fhir_fixtures import fhir_records

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

MODELS = {
    "Patient": Patient,
    "Encounter": Encounter,
    "Claim": Claim,
    "Observation": Observation,
    "OperationOutcome": OperationOutcome,
    "CapabilityStatement": CapabilityStatement,
}

# Real recipient-scoped ids, as the export job passes them.
_ids = ScopedIds("fhir-test-secret-0123456789")
RECORD_TOKEN = _ids.record_ids([uuid.UUID(int=7)], "local-dev", 1)[0]
PERSON_TOKEN = _ids.person_ids([42], "local-dev", 1)[0]
ITEM_ID = _ids.item_ids("encounter", ["enc-001"], "local-dev", 1)[0]
LAST_UPDATED = "2024-03-04T05:06:07.123456Z"
IDS = {
    "id": fhir.fhir_id(RECORD_TOKEN),
    "patient": fhir.fhir_id(PERSON_TOKEN),
    "item_id": ITEM_ID,
    "last_updated": LAST_UPDATED,
}

# Every string a builder may write that it was not given. A new one fails the leak test on
# purpose: whoever adds it decides here that it identifies no one.
CONSTANTS = {
    *fhir.RESOURCE_TYPES,
    *("finished", "in-progress", "IMP", "AMB", "EMER", "VR", "OTH", "Organization"),
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
    *("active", "claim", "institutional", "professional", "unknown", DAR),
    "http://terminology.hl7.org/CodeSystem/claim-type",
    *("registered", "preliminary", "final", "amended", "corrected", "cancelled"),
    *("entered-in-error", "laboratory"),
    "http://terminology.hl7.org/CodeSystem/observation-category",
    *("urn:exchange-stream:encounter-id", "urn:exchange-stream:claim-id"),
    *("urn:exchange-stream:result-id", "urn:exchange-stream:facility-id"),
    "urn:exchange-stream:payer-id",
    *(ICD, PCS, CPT, LOINC, SNOMED, UCUM, "http://hl7.org/fhir/sid/icd-10"),
}
# Keys that would identify a patient or carry prose; no builder may ever write one.
FORBIDDEN_KEYS = {
    "name",
    "birthDate",
    "address",
    "telecom",
    "gender",
    "photo",
    "contact",
    "maritalStatus",
    "deceasedBoolean",
    "deceasedDateTime",
    "multipleBirthBoolean",
    "communication",
    "text",
    "display",
    "note",
    "comment",
}


# --- canonical inputs ------------------------------------------------------------------------


def enc(**overrides: Any) -> dict[str, Any]:
    return {
        "encounter_id": "enc-001",
        "facility_id": "fac-001",
        "encounter_class": "inpatient",
        "admit_time": "2024-03-01T08:30:00Z",
        "discharge_time": "2024-03-03T08:00:00.5Z",
        "diagnosis_codes": [{"system": ICD, "code": "E11.9"}, {"system": ICD, "code": "I10"}],
        **overrides,
    }


def clm(**overrides: Any) -> dict[str, Any]:
    return {
        "claim_id": "clm-001",
        "payer_id": "payer-9",
        "service_date": "2024-03-01",
        "total_charge": {"amount": "1234.50", "currency": "USD"},
        "procedure_codes": [{"system": CPT, "code": "99213"}, {"system": CPT, "code": "80053"}],
        "diagnosis_codes": [{"system": ICD, "code": "E11.9"}],
        **overrides,
    }


def lab(**overrides: Any) -> dict[str, Any]:
    return {
        "result_id": "ord-001",
        "test_code": {"system": LOINC, "code": "2345-7"},
        "value": {"quantity": "98.5", "unit": "mg/dL"},
        "reference_range": {"low": "70", "high": "99"},
        "collected_at": "2024-03-01T08:30:00Z",
        "status": "final",
        **overrides,
    }


CLASSES = ["inpatient", "outpatient", "emergency", "ambulatory", "virtual", "other"]
STATUSES = sorted(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
    | {"entered-in-error", "unknown"}
)

ENCOUNTERS = {
    **{f"{c}-discharged": enc(encounter_class=c) for c in CLASSES},
    **{f"{c}-open": enc(encounter_class=c, discharge_time=None) for c in CLASSES},
    "no-diagnoses": enc(diagnosis_codes=[]),
    "no-facility": enc(facility_id=None),
    "snomed-reason": enc(diagnosis_codes=[{"system": SNOMED, "code": "44054006"}]),
    "named-systems": enc(
        diagnosis_codes=[
            {"system": "ICD-10-CM", "code": "E11.9"},
            {"system": "urn:oid:2.16.840.1.113883.6.96", "code": "44054006"},
            {"system": "LOCAL", "code": "X1"},
            {"system": "1.2.3.4", "code": "Y2"},
        ]
    ),
    "unplaced-class": enc(encounter_class="home-health"),
}

CLAIMS = {
    "cpt-professional": clm(),
    "pcs-institutional": clm(
        procedure_codes=[{"system": CPT, "code": "99223"}, {"system": PCS, "code": "0DTJ4ZZ"}]
    ),
    "snomed-unknown-type": clm(procedure_codes=[{"system": SNOMED, "code": "410620009"}]),
    "no-codes": clm(procedure_codes=[], diagnosis_codes=[]),
    "no-payer": clm(payer_id=None),
    "integral-amount": clm(total_charge={"amount": "250", "currency": "EUR"}),
    "zero-amount": clm(total_charge={"amount": "0", "currency": "USD"}),
    "large-amount": clm(total_charge={"amount": "123456789012.34", "currency": "USD"}),
    "negative-amount": clm(total_charge={"amount": "-12.5", "currency": "USD"}),
}

OBSERVATIONS = {
    **{f"status-{s}": lab(status=s) for s in STATUSES},
    "unitless-quantity": lab(
        test_code={"system": LOINC, "code": "2756-5"},
        value={"quantity": "6.5", "unit": None},
        reference_range={"low": "5.0", "high": "8.0"},
    ),
    "non-ucum-unit": lab(value={"quantity": "12", "unit": "µg/L"}),
    "coded-value": lab(
        test_code={"system": LOINC, "code": "94500-6"},
        value={"system": SNOMED, "code": "260385009"},
        reference_range=None,
    ),
    "string-value": lab(value="not detected", reference_range=None),
    "no-range": lab(reference_range=None),
    "low-only": lab(reference_range={"low": "3.5", "high": None}),
    "high-only": lab(reference_range={"low": None, "high": "200"}),
    "empty-range": lab(reference_range={"low": None, "high": None}),
    "range-without-unit-value": lab(value="positive", reference_range={"low": "1", "high": None}),
    "unknown-status": lab(status="superseded"),
}

CASES = [
    *(
        pytest.param(fhir.encounter, obj, id=f"encounter-{name}")
        for name, obj in ENCOUNTERS.items()
    ),
    *(pytest.param(fhir.claim, obj, id=f"claim-{name}") for name, obj in CLAIMS.items()),
    *(pytest.param(fhir.observation, obj, id=f"lab-{name}") for name, obj in OBSERVATIONS.items()),
]


# --- checks ----------------------------------------------------------------------------------


def _walk(value: Any, path: str = "$") -> list[tuple[str, Any]]:
    """Every (path, node) of a JSON value, containers included."""
    nodes = [(path, value)]
    if isinstance(value, dict):
        for key, item in value.items():
            nodes += _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            nodes += _walk(item, f"{path}[{i}]")
    return nodes


# What R4 requires that the fhir.resources models do not check: codes of required bindings,
# decimals as JSON numbers, ISO 4217 currencies, qty-3, and the dateTime and instant patterns.
REQUIRED_CODES = {
    ("Encounter", "status"): {
        *("planned", "arrived", "triaged", "in-progress", "onleave", "finished"),
        *("cancelled", "entered-in-error", "unknown"),
    },
    ("Claim", "status"): {"active", "cancelled", "draft", "entered-in-error"},
    ("Claim", "use"): {"claim", "preauthorization", "predetermination"},
    ("Observation", "status"): set(STATUSES),
    ("CapabilityStatement", "status"): {"draft", "active", "retired", "unknown"},
    ("CapabilityStatement", "kind"): {"instance", "capability", "requirements"},
}
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TIME = (
    r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
    r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
DATE_TIME = re.compile(
    _YEAR + r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T" + _TIME + r")?)?)?"
)
INSTANT = re.compile(_YEAR + r"-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T" + _TIME)
DATE_TIME_KEYS = {"start", "end", "created", "effectiveDateTime", "date"}
QUANTITY_KEYS = {"valueQuantity", "low", "high", "total"}


def assert_valid(resource: dict[str, Any]) -> None:
    """Valid R4: the fhir.resources model accepts it, and the rules that model does not check
    (ele-1: no empty or null element; see REQUIRED_CODES) hold too."""
    for path, node in _walk(resource):
        assert node is not None and node != "" and node != [] and node != {}, path
        key = path.rsplit(".", 1)[-1]
        if key in DATE_TIME_KEYS:
            assert DATE_TIME.fullmatch(node), path
        elif key == "lastUpdated":
            assert INSTANT.fullmatch(node), path
        elif key in QUANTITY_KEYS:
            assert type(node["value"]) in (int, float), path
            assert "code" not in node or "system" in node, path  # qty-3
            assert key != "total" or re.fullmatch("[A-Z]{3}", node["currency"]), path
    for (resource_type, key), codes in REQUIRED_CODES.items():
        if resource["resourceType"] == resource_type:
            assert resource[key] in codes, key
    assert orjson.loads(orjson.dumps(resource)) == resource  # plain JSON types only
    MODELS[resource["resourceType"]].parse_obj(copy.deepcopy(resource))


def strings_of(value: Any) -> set[str]:
    return {node for _, node in _walk(value) if isinstance(node, str)}


def build(builder: fhir.Builder, obj: dict[str, Any]) -> dict[str, Any]:
    return builder(obj, **IDS)


# --- the models are R4 -----------------------------------------------------------------------


def test_validating_models_are_fhir_r4_4_0_1() -> None:
    assert MODELS_FHIR_VERSION == "4.0.1"


def test_the_models_reject_a_claim_without_insurance() -> None:
    resource = build(fhir.claim, clm())
    del resource["insurance"]
    with pytest.raises(ValueError, match="insurance"):
        Claim.parse_obj(resource)


# --- every builder validates -----------------------------------------------------------------


@pytest.mark.parametrize(("builder", "obj"), CASES)
def test_resource_validates_against_r4(builder: fhir.Builder, obj: dict[str, Any]) -> None:
    assert_valid(build(builder, obj))


@pytest.mark.parametrize(("builder", "obj"), CASES)
def test_resource_holds_only_its_inputs(builder: fhir.Builder, obj: dict[str, Any]) -> None:
    planted = {**obj, "patient_name": "Ada Lovelace", "dob": "1815-12-10"}
    resource = build(builder, planted)
    supplied = strings_of(obj) | set(IDS.values()) | {"Patient/" + IDS["patient"]}
    extra = strings_of(resource) - supplied - CONSTANTS
    # Systems the exchange spelled out from a name or an OID, and nothing else.
    assert all(s.startswith(("urn:exchange-stream:code-system:", "urn:oid:")) for s in extra)
    assert not FORBIDDEN_KEYS & {path.rsplit(".", 1)[-1] for path, _ in _walk(resource)}
    text = orjson.dumps(resource).decode()
    assert "Ada" not in text
    assert "1815" not in text
    decimals = {float(s) for s in strings_of(obj) if _is_decimal(s)}
    numbers = {n for _, n in _walk(resource) if type(n) in (int, float)}
    listed = max(len(obj.get("procedure_codes", [])), len(obj.get("diagnosis_codes", [])))
    sequences = set(range(1, listed + 1)) | {1}  # items, diagnoses and the one insurance
    assert numbers <= decimals | sequences


def _is_decimal(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("builder", "obj"), CASES)
def test_builder_leaves_its_input_alone(builder: fhir.Builder, obj: dict[str, Any]) -> None:
    before = copy.deepcopy(obj)
    first, second = build(builder, obj), build(builder, obj)
    assert obj == before
    assert first == second
    shared = {id(n) for _, n in _walk(first) if isinstance(n, dict | list)} & {
        id(n) for _, n in _walk(second) if isinstance(n, dict | list)
    }
    assert not shared  # one resource's mutation never shows in another


def test_item_id_absent_means_no_identifier() -> None:
    for builder, obj in ((fhir.encounter, enc()), (fhir.claim, clm()), (fhir.observation, lab())):
        resource = builder(obj, **{**IDS, "item_id": None})
        assert "identifier" not in resource
        assert_valid(resource)


@pytest.mark.parametrize(
    ("builder", "obj", "system"),
    [
        (fhir.encounter, enc(), "urn:exchange-stream:encounter-id"),
        (fhir.claim, clm(), "urn:exchange-stream:claim-id"),
        (fhir.observation, lab(), "urn:exchange-stream:result-id"),
    ],
)
def test_scoped_ids_land_where_a_client_looks(
    builder: fhir.Builder, obj: dict[str, Any], system: str
) -> None:
    resource = build(builder, obj)
    assert resource["id"] == IDS["id"]
    assert resource["meta"] == {"lastUpdated": LAST_UPDATED}
    assert resource["identifier"] == [{"system": system, "value": ITEM_ID}]
    subject = resource["patient" if builder is fhir.claim else "subject"]
    assert subject == {"reference": f"Patient/{IDS['patient']}"}


# --- what each resource says -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("encounter_class", "system", "code"),
    [
        ("inpatient", "v3-ActCode", "IMP"),
        ("outpatient", "v3-ActCode", "AMB"),
        ("ambulatory", "v3-ActCode", "AMB"),
        ("emergency", "v3-ActCode", "EMER"),
        ("virtual", "v3-ActCode", "VR"),
        ("other", "v3-NullFlavor", "OTH"),
        ("home-health", "v3-NullFlavor", "OTH"),
    ],
)
def test_encounter_class_is_an_act_code(encounter_class: str, system: str, code: str) -> None:
    resource = build(fhir.encounter, enc(encounter_class=encounter_class))
    assert resource["class"] == {
        "system": f"http://terminology.hl7.org/CodeSystem/{system}",
        "code": code,
    }


def test_open_encounter_is_in_progress_without_an_end() -> None:
    resource = build(fhir.encounter, enc(discharge_time=None))
    assert resource["status"] == "in-progress"
    assert resource["period"] == {"start": "2024-03-01T08:30:00Z"}
    closed = build(fhir.encounter, enc())
    assert closed["status"] == "finished"
    assert closed["period"] == {"start": "2024-03-01T08:30:00Z", "end": "2024-03-03T08:00:00.5Z"}


def test_encounter_diagnoses_and_facility() -> None:
    resource = build(fhir.encounter, enc())
    assert resource["reasonCode"] == [
        {"coding": [{"system": ICD, "code": "E11.9"}]},
        {"coding": [{"system": ICD, "code": "I10"}]},
    ]
    assert resource["serviceProvider"] == {
        "type": "Organization",
        "identifier": {"system": "urn:exchange-stream:facility-id", "value": "fac-001"},
    }
    bare = build(fhir.encounter, enc(diagnosis_codes=[], facility_id=None))
    assert "reasonCode" not in bare
    assert "serviceProvider" not in bare


@pytest.mark.parametrize(
    ("system", "uri"),
    [
        (ICD, ICD),
        ("ICD-10-CM", ICD),
        ("icd10cm", ICD),
        ("2.16.840.1.113883.6.90", ICD),
        ("urn:oid:2.16.840.1.113883.6.90", ICD),
        ("CPT", CPT),
        ("LOINC", LOINC),
        ("https://loinc.org/", LOINC),
        ("SNOMED-CT", SNOMED),
        ("SCT", SNOMED),
        ("ICD-10-PCS", PCS),
        ("ICD10", "http://hl7.org/fhir/sid/icd-10"),
        ("http://example.org/codes", "http://example.org/codes"),
        ("urn:oid:1.2.3.4", "urn:oid:1.2.3.4"),
        ("1.2.3.4", "urn:oid:1.2.3.4"),
        ("LOCAL", "urn:exchange-stream:code-system:LOCAL"),
        ("a|b", "urn:exchange-stream:code-system:a%7Cb"),
    ],
)
def test_code_systems_become_fhir_uris(system: str, uri: str) -> None:
    assert fhir.system_uri(system) == uri


def test_claim_required_elements_unknown_are_data_absent() -> None:
    resource = build(fhir.claim, clm())
    absent = {"extension": [{"url": DAR, "valueCode": "unknown"}]}
    assert resource["provider"] == absent
    assert resource["priority"] == absent
    assert resource["insurance"] == [{"sequence": 1, "focal": True, "coverage": absent}]
    assert resource["status"] == "active"
    assert resource["use"] == "claim"
    assert resource["created"] == "2024-03-01"
    assert resource["billablePeriod"] == {"start": "2024-03-01", "end": "2024-03-01"}
    assert resource["insurer"] == {
        "type": "Organization",
        "identifier": {"system": "urn:exchange-stream:payer-id", "value": "payer-9"},
    }


@pytest.mark.parametrize(
    ("case", "claim_type"),
    [
        ("cpt-professional", "professional"),
        ("pcs-institutional", "institutional"),
        ("snomed-unknown-type", None),
        ("no-codes", None),
    ],
)
def test_claim_type_is_read_off_the_procedure_coding(case: str, claim_type: str | None) -> None:
    resource = build(fhir.claim, CLAIMS[case])
    if claim_type is None:
        assert resource["type"] == {"extension": [{"url": DAR, "valueCode": "unknown"}]}
    else:
        assert resource["type"] == {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": claim_type}
            ]
        }


def test_claim_items_and_diagnoses_are_numbered_in_order() -> None:
    resource = build(fhir.claim, clm(diagnosis_codes=[{"system": ICD, "code": c} for c in "AB"]))
    assert resource["item"] == [
        {"sequence": 1, "productOrService": {"coding": [{"system": CPT, "code": "99213"}]}},
        {"sequence": 2, "productOrService": {"coding": [{"system": CPT, "code": "80053"}]}},
    ]
    assert [(d["sequence"], d["diagnosisCodeableConcept"]) for d in resource["diagnosis"]] == [
        (1, {"coding": [{"system": ICD, "code": "A"}]}),
        (2, {"coding": [{"system": ICD, "code": "B"}]}),
    ]
    bare = build(fhir.claim, CLAIMS["no-codes"])
    assert "item" not in bare
    assert "diagnosis" not in bare


@pytest.mark.parametrize(
    ("amount", "value"),
    [("1234.50", 1234.5), ("250", 250), ("0", 0), ("-12.5", -12.5), ("0.01", 0.01)],
)
def test_claim_total_is_a_json_number(amount: str, value: float) -> None:
    total = build(fhir.claim, clm(total_charge={"amount": amount, "currency": "USD"}))["total"]
    assert total == {"value": value, "currency": "USD"}
    assert type(total["value"]) is type(value)
    assert orjson.dumps(total["value"]).decode() == repr(value)


@pytest.mark.parametrize("status", STATUSES)
def test_observation_status_is_fhirs(status: str) -> None:
    assert build(fhir.observation, lab(status=status))["status"] == status


def test_observation_unknown_status_reads_unknown() -> None:
    assert build(fhir.observation, lab(status="superseded"))["status"] == "unknown"


def test_observation_is_a_laboratory_result() -> None:
    resource = build(fhir.observation, lab())
    assert resource["category"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        }
    ]
    assert resource["code"] == {"coding": [{"system": LOINC, "code": "2345-7"}]}
    assert resource["effectiveDateTime"] == "2024-03-01T08:30:00Z"


MG_DL = {"unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
UG_L = {"unit": "µg/L"}  # not UCUM (UCUM is ASCII: "ug/L"), so no system or code
NEGATIVE = {"system": SNOMED, "code": "260385009"}


@pytest.mark.parametrize(
    ("case", "value_key", "value", "reference_range"),
    [
        (
            "status-final",
            "valueQuantity",
            {"value": 98.5, **MG_DL},
            [{"low": {"value": 70, **MG_DL}, "high": {"value": 99, **MG_DL}}],
        ),
        (
            "unitless-quantity",
            "valueQuantity",
            {"value": 6.5},
            [{"low": {"value": 5.0}, "high": {"value": 8.0}}],
        ),
        (
            "non-ucum-unit",
            "valueQuantity",
            {"value": 12, **UG_L},
            [{"low": {"value": 70, **UG_L}, "high": {"value": 99, **UG_L}}],
        ),
        ("coded-value", "valueCodeableConcept", {"coding": [NEGATIVE]}, None),
        ("string-value", "valueString", "not detected", None),
        ("low-only", "valueQuantity", None, [{"low": {"value": 3.5, **MG_DL}}]),
        ("high-only", "valueQuantity", None, [{"high": {"value": 200, **MG_DL}}]),
        ("range-without-unit-value", "valueString", "positive", [{"low": {"value": 1}}]),
        ("no-range", "valueQuantity", None, None),
        ("empty-range", "valueQuantity", None, None),
    ],
)
def test_observation_value_and_range(
    case: str, value_key: str, value: Any, reference_range: list[dict[str, Any]] | None
) -> None:
    resource = build(fhir.observation, OBSERVATIONS[case])
    assert {k for k in resource if k.startswith("value")} == {value_key}
    if value is not None:
        assert resource[value_key] == value
    assert resource.get("referenceRange") == reference_range


# --- Patient ---------------------------------------------------------------------------------


@pytest.mark.parametrize("last_updated", [LAST_UPDATED, None])
def test_patient_is_only_an_id(last_updated: str | None) -> None:
    resource = fhir.patient(id=IDS["patient"], last_updated=last_updated)
    assert_valid(resource)
    expected: dict[str, Any] = {"resourceType": "Patient", "id": IDS["patient"]}
    if last_updated:
        expected["meta"] = {"lastUpdated": last_updated}
    assert resource == expected


# --- real records: Synthea through partnerB.v1, partner A payloads ----------------------------

SYNTHEA = fhir_records()


@pytest.mark.parametrize(
    "record", SYNTHEA, ids=[f"{r['record_kind']}-{r['resource']['id'][:8]}" for r in SYNTHEA]
)
def test_synthea_records_validate_after_mapping(record: dict[str, Any]) -> None:
    canonical = map_payload(record["record_kind"], "partnerB.v1", record["resource"])
    resource = build(fhir.BUILDERS[record["record_kind"]], canonical)
    assert_valid(resource)
    assert resource["resourceType"] in fhir.KIND_OF_TYPE
    assert fhir.KIND_OF_TYPE[resource["resourceType"]] == record["record_kind"]
    leaked = strings_of(resource) & set(
        filter(None, (record["patient"]["given_name"], record["patient"]["family_name"]))
    )
    assert not leaked


PARTNER_A = [
    (
        "encounter",
        "partnerA.v1",
        {
            "encounter_id": "enc-1",
            "facility_id": "fac-001",
            "admit_ts": "2024-03-01T08:30:00Z",
            "discharge_ts": "2024-03-03T10:00:00+02:00",
            "encounter_type": "ER",
            "dx_codes": ["E11.9", "I10"],
        },
    ),
    (
        "claim",
        "partnerA.v1",
        {
            "claim_id": "clm-1",
            "payer_id": "payer-1",
            "service_date": "2024-03-01",
            "total_charge": 129.16,
            "currency": "usd",
            "cpt_codes": ["99213"],
            "dx_codes": ["I10"],
        },
    ),
    (
        "lab_result",
        "partnerA.v1",
        {
            "order_id": "ord-1",
            "loinc_code": "2345-7",
            "value": 5.4,
            "unit": "mmol/L",
            "ref_low": 3.9,
            "ref_high": None,
            "collected_ts": "2024-03-01T08:30:00-05:00",
            "status": "FINAL",
        },
    ),
    (
        "lab_result",
        "partnerA.v1",
        {
            "order_id": "ord-2",
            "loinc_code": "94500-6",
            "value": "Not Detected",
            "unit": None,
            "ref_low": None,
            "ref_high": None,
            "collected_ts": "2024-03-01T08:30:00Z",
            "status": "preliminary",
        },
    ),
    (
        "encounter",
        "partnerA.v2",
        {
            "encounter": {
                "id": "enc-2",
                "facility": {"id": "fac-2"},
                "period": {"start": "2024-03-01T08:30:00Z"},
                "class": "telehealth",
                "diagnoses": [{"system": "ICD-10-CM", "code": "J45.909"}],
            }
        },
    ),
    (
        "claim",
        "partnerA.v2",
        {
            "claim": {
                "id": "clm-2",
                "payer": {"id": "payer-2"},
                "serviceDate": "2024-03-02",
                "total": {"amount": "88.00", "currency": "USD"},
                "lines": [{"procedure": {"system": "CPT", "code": "80053"}, "charge": "88.00"}],
            }
        },
    ),
    (
        "lab_result",
        "partnerA.v2",
        {
            "result": {
                "orderId": "ord-3",
                "test": {"system": "LOINC", "code": "94500-6"},
                "value": {"system": "SNOMED-CT", "code": "260385009"},
                "collectedAt": "2024-03-01T08:30:00Z",
                "status": "amended",
            }
        },
    ),
]


@pytest.mark.parametrize(("kind", "hint", "payload"), PARTNER_A, ids=lambda v: str(v)[:20])
def test_partner_a_records_validate_after_mapping(
    kind: str, hint: str, payload: dict[str, Any]
) -> None:
    resource = build(fhir.BUILDERS[kind], map_payload(kind, hint, payload))
    assert_valid(resource)
    for _, node in _walk(resource):
        if isinstance(node, dict) and "system" in node:
            assert node["system"].startswith(("http://", "urn:")), node


def test_the_export_tables_agree() -> None:
    assert fhir.RESOURCE_TYPES == ("Patient", "Encounter", "Claim", "Observation")
    assert set(fhir.KIND_OF_TYPE) == set(fhir.RESOURCE_TYPES) - {"Patient"}
    assert set(fhir.BUILDERS) == set(fhir.KIND_OF_TYPE.values())
    for resource_type, kind in fhir.KIND_OF_TYPE.items():
        sample = {"encounter": enc(), "claim": clm(), "lab_result": lab()}[kind]
        assert build(fhir.BUILDERS[kind], sample)["resourceType"] == resource_type


# --- ids -------------------------------------------------------------------------------------


def test_scoped_tokens_become_fhir_ids_and_back() -> None:
    records = _ids.record_ids([uuid.UUID(int=n) for n in range(200)], "local-dev", 1)
    persons = _ids.person_ids(list(range(1, 201)), "acme-research", 3)
    for token in records + persons:
        value = fhir.fhir_id(token)
        assert len(value) == len(token) == 36
        assert "_" not in value
        assert fhir.token_of_fhir_id(value) == token
        Patient.parse_obj({"resourceType": "Patient", "id": value})


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(["rr1.", "rp1.", "rx9."]),
    payload=st.binary(min_size=1, max_size=45),
)
def test_any_base64url_payload_round_trips(prefix: str, payload: bytes) -> None:
    token = prefix + base64.urlsafe_b64encode(payload).decode().rstrip("=")
    value = fhir.fhir_id(token)
    assert fhir.token_of_fhir_id(value) == token
    assert fhir.fhir_id(fhir.token_of_fhir_id(value) or "") == value


@pytest.mark.parametrize(
    "token",
    [
        "",
        "rr1.",
        "rr1",
        "xr1.abc",
        "rr1-abc",
        "r11.abc",
        "rra.abc",
        "rr1.a.b",  # a payload never holds ".": it would not come back
        "rr1.a+b",
        "rr1.a=b",
        "rr1.ab c",
        "rr1.é",
        "rt1.local-dev.1.abc",  # a patient token: not a FHIR id's shape
        "rr1." + "A" * 61,
    ],
)
def test_other_strings_are_not_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="recipient-scoped"):
        fhir.fhir_id(token)


@pytest.mark.parametrize(
    "value",
    ["", "rr1.", "rr1", "Patient", "rr1-abc", "rr1.a_b", "rr1.a/b", "xr1.abc", "rr1." + "A" * 61],
)
def test_other_ids_open_to_nothing(value: str) -> None:
    assert fhir.token_of_fhir_id(value) is None


def test_a_non_string_opens_to_nothing() -> None:
    assert fhir.token_of_fhir_id(None) is None  # type: ignore[arg-type]


# --- OperationOutcome ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "issues",
    [
        [("error", "not-supported", "_outputFormat text/csv is not supported")],
        [("information", "informational", "_typeFilter on Claim ignored")],
        [("fatal", "exception", "export failed"), ("warning", "processing", "")],
    ],
)
def test_operation_outcome_validates(issues: list[tuple[str, str, str]]) -> None:
    resource = fhir.operation_outcome(issues)
    assert_valid(resource)
    assert [(i["severity"], i["code"], i.get("diagnostics", "")) for i in resource["issue"]] == (
        issues
    )


@pytest.mark.parametrize(
    "issues",
    [[], [("severe", "exception", "x")], [("error", "oops", "x")]],
)
def test_operation_outcome_refuses_what_a_client_would(issues: list[tuple[str, str, str]]) -> None:
    with pytest.raises(ValueError):
        fhir.operation_outcome(issues)


# --- CapabilityStatement ---------------------------------------------------------------------


def _statement(**kwargs: Any) -> dict[str, Any]:
    return fhir.capability_statement(
        "https://exchange.example/fhir", software_version="0.1.0", date="2026-11-26", **kwargs
    )


def test_capability_statement_validates_and_names_the_exports() -> None:
    resource = _statement()
    assert_valid(resource)
    assert resource["fhirVersion"] == "4.0.1"
    assert resource["kind"] == "instance"
    assert resource["instantiates"] == [
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    ]
    assert resource["implementation"]["url"] == "https://exchange.example/fhir"
    assert resource["software"] == {"name": "exchange-stream", "version": "0.1.0"}
    (rest,) = resource["rest"]
    assert rest["operation"] == [
        {
            "name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
        }
    ]
    resources = {entry["type"]: entry for entry in rest["resource"]}
    assert list(resources) == list(fhir.RESOURCE_TYPES)
    assert resources["Patient"]["operation"] == [
        {
            "name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        }
    ]


@pytest.mark.parametrize(
    ("base_url", "token_url", "expected"),
    [
        ("https://exchange.example/fhir", None, "https://exchange.example/auth/token"),
        ("http://127.0.0.1:8080/fhir/", None, "http://127.0.0.1:8080/auth/token"),
        ("https://x.example/fhir", "https://auth.example/token", "https://auth.example/token"),
    ],
)
def test_capability_statement_names_the_smart_token_endpoint(
    base_url: str, token_url: str | None, expected: str
) -> None:
    resource = fhir.capability_statement(
        base_url, software_version="1", date="2026-11-26T00:00:00Z", token_url=token_url
    )
    assert_valid(resource)
    security = resource["rest"][0]["security"]
    assert security["service"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                }
            ]
        }
    ]
    assert security["extension"] == [
        {
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": expected}],
        }
    ]
