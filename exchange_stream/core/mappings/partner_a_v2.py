"""partnerA.v2: nested camelCase payloads, one wrapper object per kind (docs/CONTRACT.md §4).

Required: the wrapper, its ids, ``period.start``, ``class``, ``serviceDate``, ``total`` with
``currency``, ``test``, ``value``, ``collectedAt`` and ``status``. Optional: ``period.end``,
``diagnoses``, ``lines``, ``referenceRange`` and ``value.unit``. A line's ``charge`` is not part
of the canonical claim and is not read.
"""

from __future__ import annotations

from typing import Any

from exchange_stream.core.mappings.common import (
    INVALID,
    MISSING,
    MappingError,
    canonical,
    codes_from_objects,
    is_missing,
    items,
    optional,
    section,
    to_code_object,
    to_date,
    to_encounter_class,
    to_id,
    to_lab_status,
    to_money,
    to_quantity,
    to_reference_range,
    to_result_token,
    to_utc_rfc3339,
    unique_codes,
)


def encounter(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical encounter of a partnerA.v2 ``{"encounter": {...}}`` payload."""
    enc = section(payload, "encounter", "encounter")
    facility = section(enc, "facility", "encounter.facility")
    period = section(enc, "period", "encounter.period")
    return canonical(
        "encounter",
        encounter_id=to_id(enc.get("id"), "encounter.id"),
        facility_id=to_id(facility.get("id"), "encounter.facility.id"),
        encounter_class=to_encounter_class(enc.get("class"), "encounter.class"),
        admit_time=to_utc_rfc3339(period.get("start"), "encounter.period.start"),
        discharge_time=optional(to_utc_rfc3339, period.get("end"), "encounter.period.end"),
        diagnosis_codes=codes_from_objects(enc.get("diagnoses"), "encounter.diagnoses"),
    )


def claim(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical claim of a partnerA.v2 ``{"claim": {...}}`` payload."""
    body = section(payload, "claim", "claim")
    payer = section(body, "payer", "claim.payer")
    total = section(body, "total", "claim.total")
    return canonical(
        "claim",
        claim_id=to_id(body.get("id"), "claim.id"),
        payer_id=to_id(payer.get("id"), "claim.payer.id"),
        service_date=to_date(body.get("serviceDate"), "claim.serviceDate"),
        total_charge=to_money(
            total.get("amount"),
            total.get("currency"),
            "claim.total.amount",
            "claim.total.currency",
        ),
        procedure_codes=_line_procedures(body.get("lines")),
        diagnosis_codes=codes_from_objects(body.get("diagnoses"), "claim.diagnoses"),
    )


def _line_procedures(lines: object) -> list[dict[str, str]]:
    codes = []
    for i, line in enumerate(items(lines, "claim.lines")):
        if not isinstance(line, dict):
            raise MappingError(f"claim.lines[{i}]", INVALID)
        codes.append(to_code_object(line.get("procedure"), f"claim.lines[{i}].procedure"))
    return unique_codes(codes)


def lab_result(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical lab result of a partnerA.v2 ``{"result": {...}}`` payload."""
    result = section(payload, "result", "result")
    reference = section(result, "referenceRange", "result.referenceRange", required=False)
    return canonical(
        "lab_result",
        result_id=to_id(result.get("orderId"), "result.orderId"),
        test_code=to_code_object(result.get("test"), "result.test"),
        value=_value(result.get("value")),
        reference_range=to_reference_range(
            reference.get("low"),
            reference.get("high"),
            "result.referenceRange.low",
            "result.referenceRange.high",
        ),
        collected_at=to_utc_rfc3339(result.get("collectedAt"), "result.collectedAt"),
        status=to_lab_status(result.get("status"), "result.status"),
    )


def _value(value: object) -> Any:
    """``{quantity, unit}`` as documented; a coded or token result in its canonical shape."""
    if is_missing(value):
        raise MappingError("result.value", MISSING)
    if isinstance(value, str):
        return to_result_token(value, "result.value")
    if not isinstance(value, dict):
        raise MappingError("result.value", INVALID)
    if "quantity" in value:
        return to_quantity(
            value["quantity"], value.get("unit"), "result.value.quantity", "result.value.unit"
        )
    return to_code_object(value, "result.value")


MAPPERS = {"encounter": encounter, "claim": claim, "lab_result": lab_result}
