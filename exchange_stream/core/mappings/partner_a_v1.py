"""partnerA.v1: flat snake_case payloads (docs/CONTRACT.md §4); v1 events use this mapping too.

Every field the format lists is required except ``discharge_ts``, ``dx_codes``, ``cpt_codes``,
``unit`` and the reference range ends. ``value`` is a number (with ``unit``) or a qualitative
token such as "negative"; ``dx_codes`` are ICD-10-CM and ``cpt_codes`` CPT code strings.
"""

from __future__ import annotations

from typing import Any

from exchange_stream.core.mappings.common import (
    CPT,
    ICD10CM,
    LOINC,
    canonical,
    codes_from_strings,
    optional,
    to_code,
    to_date,
    to_encounter_class,
    to_id,
    to_lab_status,
    to_money,
    to_reference_range,
    to_scalar_result,
    to_utc_rfc3339,
)


def encounter(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical encounter of a partnerA.v1 encounter payload."""
    return canonical(
        "encounter",
        encounter_id=to_id(payload.get("encounter_id"), "encounter_id"),
        facility_id=to_id(payload.get("facility_id"), "facility_id"),
        encounter_class=to_encounter_class(payload.get("encounter_type"), "encounter_type"),
        admit_time=to_utc_rfc3339(payload.get("admit_ts"), "admit_ts"),
        discharge_time=optional(to_utc_rfc3339, payload.get("discharge_ts"), "discharge_ts"),
        diagnosis_codes=codes_from_strings(payload.get("dx_codes"), ICD10CM, "dx_codes"),
    )


def claim(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical claim of a partnerA.v1 claim payload."""
    return canonical(
        "claim",
        claim_id=to_id(payload.get("claim_id"), "claim_id"),
        payer_id=to_id(payload.get("payer_id"), "payer_id"),
        service_date=to_date(payload.get("service_date"), "service_date"),
        total_charge=to_money(
            payload.get("total_charge"), payload.get("currency"), "total_charge", "currency"
        ),
        procedure_codes=codes_from_strings(payload.get("cpt_codes"), CPT, "cpt_codes"),
        diagnosis_codes=codes_from_strings(payload.get("dx_codes"), ICD10CM, "dx_codes"),
    )


def lab_result(payload: dict[str, Any]) -> dict[str, Any]:
    """The canonical lab result of a partnerA.v1 lab_result payload."""
    return canonical(
        "lab_result",
        result_id=to_id(payload.get("order_id"), "order_id"),
        test_code=to_code(LOINC, payload.get("loinc_code"), "loinc_code", "loinc_code"),
        value=to_scalar_result(payload.get("value"), payload.get("unit"), "value", "unit"),
        reference_range=to_reference_range(
            payload.get("ref_low"), payload.get("ref_high"), "ref_low", "ref_high"
        ),
        collected_at=to_utc_rfc3339(payload.get("collected_ts"), "collected_ts"),
        status=to_lab_status(payload.get("status"), "status"),
    )


MAPPERS = {"encounter": encounter, "claim": claim, "lab_result": lab_result}
