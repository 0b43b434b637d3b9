"""FHIR R4 (4.0.1) resources built from canonical records, for the Bulk Data export and its
discovery: plain dicts, ready for ``orjson.dumps``.

Each builder takes the kind's canonical object (``normalized[kind]``) and the ids the caller has
already scoped to the recipient. Nothing is invented: no patient identifier, name, birth date or
display string appears in any resource, and an element R4 requires but the canonical record does
not hold (a claim's provider, priority and coverage) carries the data-absent-reason extension
instead of a guess. Organisations (facility, payer) are shared ids, so they are referenced by
identifier rather than given Organization resources of their own.

The builders sit on the export's hot path (tens of thousands of resources a second on one core):
they are dict literals over dict lookups, with no validation, no regex and no copies of the
input beyond the strings themselves. Outputs share no mutable objects with each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import quote

__all__ = [
    "BUILDERS",
    "FHIR_VERSION",
    "KIND_OF_TYPE",
    "RESOURCE_TYPES",
    "Builder",
    "capability_statement",
    "claim",
    "encounter",
    "fhir_id",
    "observation",
    "operation_outcome",
    "patient",
    "system_uri",
    "token_of_fhir_id",
]

FHIR_VERSION = "4.0.1"

RESOURCE_TYPES = ("Patient", "Encounter", "Claim", "Observation")  # export order
KIND_OF_TYPE = {"Encounter": "encounter", "Claim": "claim", "Observation": "lab_result"}

# Identifier systems of the exchange's own values: a URN needs no host that must resolve.
ENCOUNTER_ID_SYSTEM = "urn:exchange-stream:encounter-id"
CLAIM_ID_SYSTEM = "urn:exchange-stream:claim-id"
RESULT_ID_SYSTEM = "urn:exchange-stream:result-id"
FACILITY_ID_SYSTEM = "urn:exchange-stream:facility-id"
PAYER_ID_SYSTEM = "urn:exchange-stream:payer-id"
# A code system the exchange received only by a bare, unknown name ("LOCAL", "ICD-11"): the name
# is kept, under a namespace that says it is the sender's label and not a registered URI.
NAMED_CODE_SYSTEM = "urn:exchange-stream:code-system:"

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
UCUM = "http://unitsofmeasure.org"
RESTFUL_SECURITY = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
BULK_DATA_IG = "http://hl7.org/fhir/uv/bulkdata/ImplementationGuide/hl7.fhir.uv.bulkdata"
BULK_DATA_CAPABILITIES = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
EXPORT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
PATIENT_EXPORT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
ICD9CM = "http://hl7.org/fhir/sid/icd-9-cm"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "urn:oid:2.16.840.1.113883.6.285"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
CVX = "http://hl7.org/fhir/sid/cvx"


# --- ids -------------------------------------------------------------------------------------

_MAX_ID = 64  # FHIR id: [A-Za-z0-9\-\.]{1,64}


def fhir_id(token: str) -> str:
    """A recipient-scoped token (``rr1.…``, ``rp1.…``) as a FHIR id: each ``_`` written ``.``.

    Reversible by :func:`token_of_fhir_id` because the base64url payload after the four-character
    ``rXN.`` prefix never contains a ``.``. Anything else raises ``ValueError``: an id that is not
    a valid FHIR id would make the whole file unreadable to a client.
    """
    payload = token[4:]
    if not (
        4 < len(token) <= _MAX_ID
        and token.isascii()
        and token[0] == "r"
        and token[1].isalpha()
        and token[2].isdigit()
        and token[3] == "."
        and payload.replace("-", "").replace("_", "").isalnum()
    ):
        raise ValueError("not a recipient-scoped token")
    return token[:4] + payload.replace("_", ".")


def token_of_fhir_id(value: str) -> str | None:
    """The token :func:`fhir_id` wrote as ``value``; None if ``value`` is not of that shape."""
    if not (
        isinstance(value, str)
        and 4 < len(value) <= _MAX_ID
        and value.isascii()
        and value[0] == "r"
        and value[1].isalpha()
        and value[2].isdigit()
        and value[3] == "."
    ):
        return None
    payload = value[4:]
    if not payload.replace("-", "").replace(".", "").isalnum():
        return None
    return value[:4] + payload.replace(".", "_")


# --- code systems ----------------------------------------------------------------------------

# Names, OIDs and URIs (lower case, no trailing slash, http) senders use, to the URI FHIR R4
# prefers. A bare "ICD10" is read literally as WHO ICD-10: guessing the US variant could be wrong.
_SYSTEM_ALIASES = {
    **dict.fromkeys(
        ("icd-10-cm", "icd10cm", "icd10-cm", "icd-10cm", "2.16.840.1.113883.6.90"), ICD10CM
    ),
    **dict.fromkeys(("icd-10", "icd10", "2.16.840.1.113883.6.3"), ICD10),
    **dict.fromkeys(("icd-10-pcs", "icd10pcs", "icd10-pcs", "2.16.840.1.113883.6.4"), ICD10PCS),
    **dict.fromkeys(("icd-9-cm", "icd9cm", "icd9-cm", "2.16.840.1.113883.6.103"), ICD9CM),
    **dict.fromkeys(("cpt", "cpt-4", "cpt4", "2.16.840.1.113883.6.12"), CPT),
    **dict.fromkeys(("hcpcs", "2.16.840.1.113883.6.285"), HCPCS),
    **dict.fromkeys(("loinc", "lnc", "2.16.840.1.113883.6.1"), LOINC),
    **dict.fromkeys(
        ("snomed", "snomed-ct", "snomedct", "snomed ct", "sct", "2.16.840.1.113883.6.96"), SNOMED
    ),
    **dict.fromkeys(("rxnorm", "2.16.840.1.113883.6.88"), RXNORM),
    **dict.fromkeys(("ndc", "2.16.840.1.113883.6.69"), NDC),
    **dict.fromkeys(("cvx", "2.16.840.1.113883.12.292"), CVX),
    **dict.fromkeys(("ucum", "2.16.840.1.113883.6.8"), UCUM),
}
_PREFERRED = (ICD10CM, ICD10, ICD10PCS, ICD9CM, CPT, HCPCS, LOINC, SNOMED, RXNORM, NDC, CVX, UCUM)
_SYSTEM_ALIASES.update({uri.lower(): uri for uri in _PREFERRED})
# The hot path: the exact strings the mappings store (URIs already) answer with one dict lookup.
_EXACT_SYSTEMS = {uri: uri for uri in _PREFERRED}


def system_uri(system: str) -> str:
    """The FHIR system URI of a canonical code's ``system``: known names and OIDs mapped, other
    URIs passed through, an unknown bare name kept under :data:`NAMED_CODE_SYSTEM`."""
    uri = _EXACT_SYSTEMS.get(system)
    return uri if uri is not None else _other_system_uri(system)


@lru_cache(maxsize=1024)  # systems are few; a cache bounded anyway, since senders choose them
def _other_system_uri(system: str) -> str:
    key = system.strip().lower().rstrip("/").replace("https://", "http://", 1)
    key = key.removeprefix("urn:oid:")
    known = _SYSTEM_ALIASES.get(key)
    if known is not None:
        return known
    if ":" in system:
        return system
    if key.replace(".", "").isdigit():
        return "urn:oid:" + system
    return NAMED_CODE_SYSTEM + quote(system, safe="-._~")


def _concepts(codes: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One CodeableConcept per canonical code (each code is its own reason or diagnosis)."""
    exact = _EXACT_SYSTEMS
    return [
        {
            "coding": [
                {
                    "system": exact.get(c["system"]) or _other_system_uri(c["system"]),
                    "code": c["code"],
                }
            ]
        }
        for c in codes
    ]


def _number(text: str) -> int | float:
    """A canonical decimal string as a JSON number (FHIR decimals are JSON numbers).

    Integers stay exact; a fraction becomes the nearest double, exact in its text up to 15
    significant digits (amounts and lab values carry far fewer). Trailing zeros ("12.50") go.
    """
    return float(text) if "." in text else int(text)


# --- resources -------------------------------------------------------------------------------

# Canonical encounter class → v3 ActCode. ActCode has no "outpatient": an outpatient visit is an
# ambulatory encounter (AMB). A class the exchange could not place is NullFlavor "other".
_OTHER_CLASS = (NULL_FLAVOR, "OTH")
_ENCOUNTER_CLASSES = {
    "inpatient": (ACT_CODE, "IMP"),
    "outpatient": (ACT_CODE, "AMB"),
    "ambulatory": (ACT_CODE, "AMB"),
    "emergency": (ACT_CODE, "EMER"),
    "virtual": (ACT_CODE, "VR"),
    "other": _OTHER_CLASS,
}


def encounter(
    obj: Mapping[str, Any], *, id: str, patient: str, item_id: str | None, last_updated: str
) -> dict[str, Any]:
    """An Encounter: ``finished`` once discharged, else ``in-progress``; diagnoses as reasonCode."""
    system, code = _ENCOUNTER_CLASSES.get(obj["encounter_class"], _OTHER_CLASS)
    discharged = obj["discharge_time"]
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": id,
        "meta": {"lastUpdated": last_updated},
        "status": "finished" if discharged else "in-progress",
        "class": {"system": system, "code": code},
        "subject": {"reference": "Patient/" + patient},
        "period": (
            {"start": obj["admit_time"], "end": discharged}
            if discharged
            else {"start": obj["admit_time"]}
        ),
    }
    if item_id:
        resource["identifier"] = [{"system": ENCOUNTER_ID_SYSTEM, "value": item_id}]
    codes = obj["diagnosis_codes"]
    if codes:
        resource["reasonCode"] = _concepts(codes)
    facility = obj["facility_id"]
    if facility:
        resource["serviceProvider"] = {
            "type": "Organization",
            "identifier": {"system": FACILITY_ID_SYSTEM, "value": facility},
        }
    return resource


# Claim.type read off the procedures' coding, never assumed (the canonical claim does not record
# its form): ICD-10-PCS is coded only on hospital inpatient, i.e. institutional, claims; CPT and
# HCPCS bill services on professional claims; with neither the type is unknown.
_PROFESSIONAL_SYSTEMS = frozenset({CPT, HCPCS})


def claim(
    obj: Mapping[str, Any], *, id: str, patient: str, item_id: str | None, last_updated: str
) -> dict[str, Any]:
    """A Claim (use ``claim``, status ``active``) for the service date, with one item per
    procedure and one diagnosis per diagnosis code; provider, priority and coverage unknown."""
    day = obj["service_date"]
    charge = obj["total_charge"]
    exact = _EXACT_SYSTEMS
    items = []
    form = None
    for n, code in enumerate(obj["procedure_codes"], 1):
        system = exact.get(code["system"]) or _other_system_uri(code["system"])
        if system == ICD10PCS:
            form = "institutional"
        elif form is None and system in _PROFESSIONAL_SYSTEMS:
            form = "professional"
        items.append(
            {
                "sequence": n,
                "productOrService": {"coding": [{"system": system, "code": code["code"]}]},
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Claim",
        "id": id,
        "meta": {"lastUpdated": last_updated},
        "status": "active",
        "type": (
            {"coding": [{"system": CLAIM_TYPE, "code": form}]}
            if form
            else {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}
        ),
        "use": "claim",
        "patient": {"reference": "Patient/" + patient},
        "billablePeriod": {"start": day, "end": day},
        "created": day,
        "provider": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]},
        "priority": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]},
        "insurance": [
            {
                "sequence": 1,
                "focal": True,
                "coverage": {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]},
            }
        ],
        "total": {"value": _number(charge["amount"]), "currency": charge["currency"]},
    }
    if item_id:
        resource["identifier"] = [{"system": CLAIM_ID_SYSTEM, "value": item_id}]
    payer = obj["payer_id"]
    if payer:
        resource["insurer"] = {
            "type": "Organization",
            "identifier": {"system": PAYER_ID_SYSTEM, "value": payer},
        }
    diagnoses = obj["diagnosis_codes"]
    if diagnoses:
        resource["diagnosis"] = [
            {
                "sequence": n,
                "diagnosisCodeableConcept": {
                    "coding": [
                        {
                            "system": exact.get(code["system"])
                            or _other_system_uri(code["system"]),
                            "code": code["code"],
                        }
                    ]
                },
            }
            for n, code in enumerate(diagnoses, 1)
        ]
    if items:
        resource["item"] = items
    return resource


# Canonical statuses are already FHIR's ObservationStatus words; anything else reads "unknown".
_OBSERVATION_STATUSES = {
    status: status
    for status in (
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    )
}


def _quantity(value: str, unit: str | None) -> dict[str, Any]:
    """A Quantity; a unit is given as a UCUM code too unless it cannot be one (UCUM is ASCII)."""
    if not unit:
        return {"value": _number(value)}
    if unit.isascii():
        return {"value": _number(value), "unit": unit, "system": UCUM, "code": unit}
    return {"value": _number(value), "unit": unit}


def observation(
    obj: Mapping[str, Any], *, id: str, patient: str, item_id: str | None, last_updated: str
) -> dict[str, Any]:
    """A laboratory Observation with valueQuantity, valueCodeableConcept or valueString."""
    test = obj["test_code"]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id,
        "meta": {"lastUpdated": last_updated},
        "status": _OBSERVATION_STATUSES.get(obj["status"], "unknown"),
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": system_uri(test["system"]), "code": test["code"]}]},
        "subject": {"reference": "Patient/" + patient},
        "effectiveDateTime": obj["collected_at"],
    }
    if item_id:
        resource["identifier"] = [{"system": RESULT_ID_SYSTEM, "value": item_id}]
    value = obj["value"]
    unit = None
    if isinstance(value, str):
        resource["valueString"] = value
    elif "quantity" in value:
        unit = value.get("unit")
        resource["valueQuantity"] = _quantity(value["quantity"], unit)
    else:
        resource["valueCodeableConcept"] = {
            "coding": [{"system": system_uri(value["system"]), "code": value["code"]}]
        }
    bounds = obj["reference_range"]
    if bounds:
        # The canonical range has no unit of its own: partners state it in the result's unit.
        low, high = bounds["low"], bounds["high"]
        if low is not None or high is not None:
            reference: dict[str, Any] = {}
            if low is not None:
                reference["low"] = _quantity(low, unit)
            if high is not None:
                reference["high"] = _quantity(high, unit)
            resource["referenceRange"] = [reference]
    return resource


def patient(*, id: str, last_updated: str | None) -> dict[str, Any]:
    """A Patient that is only an id: the exchange gives recipients nothing that identifies one."""
    if last_updated is None:
        return {"resourceType": "Patient", "id": id}
    return {"resourceType": "Patient", "id": id, "meta": {"lastUpdated": last_updated}}


class Builder(Protocol):
    """The shape of :func:`encounter`, :func:`claim` and :func:`observation`."""

    def __call__(
        self,
        obj: Mapping[str, Any],
        /,
        *,
        id: str,
        patient: str,
        item_id: str | None,
        last_updated: str,
    ) -> dict[str, Any]: ...


BUILDERS: dict[str, Builder] = {"encounter": encounter, "claim": claim, "lab_result": observation}


# --- OperationOutcome and CapabilityStatement ------------------------------------------------

_SEVERITIES = frozenset({"fatal", "error", "warning", "information"})
_ISSUE_TYPES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)


def operation_outcome(issues: list[tuple[str, str, str]]) -> dict[str, Any]:
    """An OperationOutcome of ``(severity, code, diagnostics)`` issues (R4 IssueSeverity and
    IssueType codes; an empty diagnostics is left out). ``ValueError`` on no issue or a bad code,
    since a client would reject the outcome rather than read it."""
    if not issues:
        raise ValueError("an OperationOutcome has at least one issue")
    rendered = []
    for severity, code, diagnostics in issues:
        if severity not in _SEVERITIES:
            raise ValueError(f"not an IssueSeverity: {severity!r}")
        if code not in _ISSUE_TYPES:
            raise ValueError(f"not an IssueType: {code!r}")
        issue = {"severity": severity, "code": code}
        if diagnostics:
            issue["diagnostics"] = diagnostics
        rendered.append(issue)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def _token_url_of(base_url: str) -> str:
    """``/auth/token`` at the root the FHIR base (``…/fhir``) hangs from."""
    root = base_url.rstrip("/")
    return root.removesuffix("/fhir") + "/auth/token"


def capability_statement(
    base_url: str, *, software_version: str, date: str, token_url: str | None = None
) -> dict[str, Any]:
    """The server's CapabilityStatement (``GET [base]/metadata``): a Bulk Data Provider with
    system and Patient-level ``$export``, secured by SMART Backend Services at ``token_url``
    (default: ``/auth/token`` beside ``base_url``'s ``/fhir``)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "instantiates": [BULK_DATA_CAPABILITIES],
        "software": {"name": "exchange-stream", "version": software_version},
        "implementation": {"description": "exchange-stream FHIR Bulk Data export", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json"],
        "implementationGuide": [BULK_DATA_IG],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "token", "valueUri": token_url or _token_url_of(base_url)}
                            ],
                        }
                    ],
                    "service": [
                        {"coding": [{"system": RESTFUL_SECURITY, "code": "SMART-on-FHIR"}]}
                    ],
                },
                # The IG names the Patient-level operation "export" on the Patient resource.
                "resource": [
                    {
                        "type": "Patient",
                        "operation": [{"name": "export", "definition": PATIENT_EXPORT_OPERATION}],
                    },
                    *({"type": kind} for kind in RESOURCE_TYPES[1:]),
                ],
                "operation": [{"name": "export", "definition": EXPORT_OPERATION}],
            }
        ],
    }
