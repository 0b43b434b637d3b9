"""The Synthea FHIR R4 bundles in ``shared/fixtures/fhir``, as ingestible partnerB.v1 records.

The bundles sit next to the repository (``<repo>/../shared/fixtures/fhir``); when that directory
does not exist, ``EXCHANGE_FIXTURES_DIR`` names the directory that holds them.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

FIXTURES_ENV = "EXCHANGE_FIXTURES_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "fhir"

RECORD_KINDS = {"Encounter": "encounter", "Claim": "claim", "Observation": "lab_result"}


def fixtures_dir() -> Path:
    """The directory of bundles; a missing one fails loudly rather than skipping the PII checks."""
    if DEFAULT_DIR.is_dir():
        return DEFAULT_DIR
    configured = os.environ.get(FIXTURES_ENV)
    if configured and Path(configured).is_dir():
        return Path(configured)
    raise FileNotFoundError(f"no FHIR fixtures at {DEFAULT_DIR}; set {FIXTURES_ENV}")


@functools.cache
def _bundles() -> tuple[dict[str, Any], ...]:
    paths = sorted(fixtures_dir().glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no *.json bundles in {fixtures_dir()}")
    return tuple(json.loads(path.read_text(encoding="utf-8")) for path in paths)


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry]


def bundle_patients() -> list[dict[str, Any]]:
    """The Patient resource of each bundle, in file-name order."""
    patients = []
    for bundle in _bundles():
        found = [r for r in _resources(bundle) if r["resourceType"] == "Patient"]
        assert len(found) == 1, "each fixture bundle holds exactly one Patient"
        patients.append(found[0])
    return patients


def is_laboratory(resource: dict[str, Any]) -> bool:
    return any(
        coding.get("code") == "laboratory"
        for category in resource.get("category", [])
        for coding in category.get("coding", [])
    )


def _patient(bundle_patient: dict[str, Any]) -> dict[str, str | None]:
    """The tokenizer identity of a Patient: official (else first) name, birth date, SSN."""
    names = bundle_patient.get("name", [])
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    return {
        "given_name": (name.get("given") or [None])[0],
        "family_name": name.get("family"),
        "dob": bundle_patient.get("birthDate"),
        "ssn": next(
            (
                identifier.get("value")
                for identifier in bundle_patient.get("identifier", [])
                if any(c.get("code") == "SS" for c in identifier.get("type", {}).get("coding", []))
            ),
            None,
        ),
    }


def fhir_records() -> list[dict[str, Any]]:
    """Every Encounter, Claim and laboratory Observation, with its bundle's patient.

    Each item is ``{"record_kind", "resource", "patient": {given_name, family_name, dob, ssn},
    "bundle_patient"}``. Resources are shared between calls: tests must not modify them.
    """
    records = []
    for bundle, bundle_patient in zip(_bundles(), bundle_patients(), strict=True):
        patient = _patient(bundle_patient)
        for resource in _resources(bundle):
            kind = RECORD_KINDS.get(resource["resourceType"])
            if kind is None or (kind == "lab_result" and not is_laboratory(resource)):
                continue
            records.append(
                {
                    "record_kind": kind,
                    "resource": resource,
                    "patient": patient,
                    "bundle_patient": bundle_patient,
                }
            )
    return records


def patient_identifiers(bundle_patient: dict[str, Any]) -> list[str]:
    """Strings that must never appear in canonical output for this patient.

    Every name part (including the mother's maiden name), the birth date, every identifier value
    (SSN, driver's licence, passport, record number), telecom values, and address lines, city and
    postal code, including the birthplace's.
    """
    found: list[str] = []
    for name in bundle_patient.get("name", []):
        found += name.get("given", [])
        found.append(name.get("family"))
    found.append(bundle_patient.get("birthDate"))
    found += [identifier.get("value") for identifier in bundle_patient.get("identifier", [])]
    found += [telecom.get("value") for telecom in bundle_patient.get("telecom", [])]
    addresses = list(bundle_patient.get("address", []))
    for extension in bundle_patient.get("extension", []):
        if "valueAddress" in extension:
            addresses.append(extension["valueAddress"])
        if extension.get("url", "").endswith("patient-mothersMaidenName"):
            found += extension["valueString"].split()
    for address in addresses:
        found += address.get("line", [])
        found += [address.get("city"), address.get("postalCode")]
    return sorted({value for value in found if value})
