"""partnerB.v1: one HL7 FHIR R4 resource as EHRs send it (docs/CONTRACT.md §4).

Encounter → encounter, Claim → claim, laboratory Observation → lab_result. Only ``system`` and
``code`` are read from codings; ``display`` and ``text`` are never read, since Synthea's repeat
patient names. Codings without both a system and a code, and references without codes (e.g.
``Claim.diagnosis.diagnosisReference``), are skipped.

References to other parties follow FHIR cardinality (0..1): ``serviceProvider`` and ``insurer``
give ``facility_id`` and ``payer_id`` from their reference id (``Organization/x``, ``urn:uuid:x``,
``Organization?identifier=system|x``) or else ``identifier.value``; absent, or display-only as
Synthea's payer, they map to null rather than to a display string.
"""

from __future__ import annotations

from typing import Any

from exchange_stream.core.mappings.common import (
    INVALID,
    MISSING,
    UNSUPPORTED,
    Code,
    MappingError,
    canonical,
    is_missing,
    items,
    optional,
    section,
    to_code,
    to_encounter_class,
    to_id,
    to_lab_status,
    to_money,
    to_quantity,
    to_reference_range,
    to_result_token,
    to_utc_date,
    to_utc_rfc3339,
    unique_codes,
)


def _expect(resource: dict[str, Any], resource_type: str) -> None:
    """A resource of another type under this record kind is a sender error, not a variant."""
    actual = resource.get("resourceType")
    if is_missing(actual):
        raise MappingError("resourceType", MISSING)
    if actual != resource_type:
        raise MappingError("resourceType", INVALID)


def _reference_id(value: object, field: str) -> str | None:
    """The id a FHIR Reference points at, or None when it carries only a display."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MappingError(field, INVALID)
    reference = value.get("reference")
    if not is_missing(reference):
        if not isinstance(reference, str):
            raise MappingError(f"{field}.reference", INVALID)
        # "#x" names a contained resource: an id local to this payload, not a party's id.
        if not reference.startswith("#"):
            return to_id(_id_in_reference(reference), f"{field}.reference")
    identifier = section(value, "identifier", f"{field}.identifier", required=False)
    return optional(to_id, identifier.get("value"), f"{field}.identifier.value")


def _id_in_reference(reference: str) -> str:
    for prefix in ("urn:uuid:", "urn:oid:"):
        if reference.startswith(prefix):
            return reference[len(prefix) :]
    if "?" in reference:
        # A conditional reference, as in Synthea transaction bundles: Type?identifier=system|id.
        return reference.rpartition("=")[2].rpartition("|")[2]
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-3]
    return parts[-1]


def _concept_codes(concept: object, field: str) -> list[Code]:
    """The complete codings of a CodeableConcept; its ``text`` is never read."""
    if concept is None:
        return []
    if not isinstance(concept, dict):
        raise MappingError(field, INVALID)
    codes = []
    for i, coding in enumerate(items(concept.get("coding"), f"{field}.coding")):
        if not isinstance(coding, dict):
            raise MappingError(f"{field}.coding[{i}]", INVALID)
        system, code = coding.get("system"), coding.get("code")
        if not (is_missing(system) or is_missing(code)):
            path = f"{field}.coding[{i}]"
            codes.append(to_code(system, code, f"{path}.system", f"{path}.code"))
    return codes


def _first_code(concept: object, field: str) -> Code:
    codes = _concept_codes(concept, field)
    if not codes:
        raise MappingError(f"{field}.coding", MISSING)
    return codes[0]


def _codes_in(elements: object, key: str, field: str) -> list[Code]:
    """Codes of ``element[key]`` (a CodeableConcept) across a list of backbone elements."""
    codes = []
    for i, element in enumerate(items(elements, field)):
        if not isinstance(element, dict):
            raise MappingError(f"{field}[{i}]", INVALID)
        codes.extend(_concept_codes(element.get(key), f"{field}[{i}].{key}"))
    return unique_codes(codes)


def encounter(resource: dict[str, Any]) -> dict[str, Any]:
    """The canonical encounter of an Encounter; codes come from ``reasonCode``."""
    _expect(resource, "Encounter")
    period = section(resource, "period", "period")
    return canonical(
        "encounter",
        encounter_id=to_id(resource.get("id"), "id"),
        facility_id=_reference_id(resource.get("serviceProvider"), "serviceProvider"),
        encounter_class=to_encounter_class(
            section(resource, "class", "class").get("code"), "class.code"
        ),
        admit_time=to_utc_rfc3339(period.get("start"), "period.start"),
        discharge_time=optional(to_utc_rfc3339, period.get("end"), "period.end"),
        diagnosis_codes=unique_codes(
            code
            for i, concept in enumerate(items(resource.get("reasonCode"), "reasonCode"))
            for code in _concept_codes(concept, f"reasonCode[{i}]")
        ),
    )


def claim(resource: dict[str, Any]) -> dict[str, Any]:
    """The canonical claim of a Claim; ``service_date`` is the UTC date of billablePeriod.start."""
    _expect(resource, "Claim")
    total = section(resource, "total", "total")
    return canonical(
        "claim",
        claim_id=to_id(resource.get("id"), "id"),
        payer_id=_reference_id(resource.get("insurer"), "insurer"),
        service_date=to_utc_date(
            section(resource, "billablePeriod", "billablePeriod").get("start"),
            "billablePeriod.start",
        ),
        total_charge=to_money(
            total.get("value"), total.get("currency"), "total.value", "total.currency"
        ),
        procedure_codes=_codes_in(resource.get("item"), "productOrService", "item"),
        diagnosis_codes=_codes_in(
            resource.get("diagnosis"), "diagnosisCodeableConcept", "diagnosis"
        ),
    )


def _is_laboratory(resource: dict[str, Any]) -> bool:
    return any(
        code["code"] == "laboratory"
        for i, concept in enumerate(items(resource.get("category"), "category"))
        for code in _concept_codes(concept, f"category[{i}]")
    )


def lab_result(resource: dict[str, Any]) -> dict[str, Any]:
    """The canonical lab result of an Observation whose category is ``laboratory``."""
    _expect(resource, "Observation")
    if not _is_laboratory(resource):
        raise MappingError("category", UNSUPPORTED)
    ranges = items(resource.get("referenceRange"), "referenceRange")
    reference = ranges[0] if ranges else {}
    if not isinstance(reference, dict):
        raise MappingError("referenceRange[0]", INVALID)
    low = section(reference, "low", "referenceRange[0].low", required=False)
    high = section(reference, "high", "referenceRange[0].high", required=False)
    return canonical(
        "lab_result",
        result_id=to_id(resource.get("id"), "id"),
        test_code=_first_code(resource.get("code"), "code"),
        value=_value(resource),
        reference_range=to_reference_range(
            low.get("value"),
            high.get("value"),
            "referenceRange[0].low.value",
            "referenceRange[0].high.value",
        ),
        collected_at=_collected_at(resource),
        status=to_lab_status(resource.get("status"), "status"),
    )


def _value(resource: dict[str, Any]) -> Any:
    """valueQuantity (UCUM ``code`` before ``unit``), valueCodeableConcept, or a token string."""
    if "valueQuantity" in resource:
        quantity = section(resource, "valueQuantity", "valueQuantity")
        if "comparator" in quantity:
            # "<0.5" is not 0.5, and the canonical quantity has no place for the comparator.
            raise MappingError("valueQuantity.comparator", UNSUPPORTED)
        code = quantity.get("code")
        unit, unit_field = (
            (quantity.get("unit"), "valueQuantity.unit")
            if is_missing(code)
            else (code, "valueQuantity.code")
        )
        return to_quantity(quantity.get("value"), unit, "valueQuantity.value", unit_field)
    if "valueCodeableConcept" in resource:
        return _first_code(resource["valueCodeableConcept"], "valueCodeableConcept")
    if "valueString" in resource:
        return to_result_token(resource["valueString"], "valueString")
    if any(key.startswith("value") for key in resource):
        raise MappingError("value[x]", UNSUPPORTED)
    raise MappingError("value[x]", MISSING)


def _collected_at(resource: dict[str, Any]) -> str:
    if "effectiveInstant" in resource:
        return to_utc_rfc3339(resource["effectiveInstant"], "effectiveInstant")
    return to_utc_rfc3339(resource.get("effectiveDateTime"), "effectiveDateTime")


MAPPERS = {"encounter": encounter, "claim": claim, "lab_result": lab_result}
