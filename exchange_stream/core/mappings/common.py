"""Shared pieces of the partner mappings: the error, value converters and the output allow-list.

Every converter takes the raw value and the dotted ``field`` path it came from, and either returns
a canonical value or raises :class:`MappingError`. Absent, ``None`` and ``""`` all count as
missing. Nothing here reads a ``display``, ``text`` or any key outside the
canonical shapes (docs/CONTRACT.md §4).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar

MISSING = "missing"
INVALID = "invalid"
UNSUPPORTED = "unsupported"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"

Code = dict[str, str]
T = TypeVar("T")


class MappingError(ValueError):
    """A payload that cannot be mapped: permanent, never retried.

    ``field`` is the dotted path inside the payload and ``reason`` is one of ``missing``,
    ``invalid`` or ``unsupported``. The message is built from those two only, because payload
    values may be patient data.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{reason}: {field}")
        self.field = field
        self.reason = reason


# The allow-list: a canonical object has exactly these keys, in this order (docs/CONTRACT.md §4).
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "encounter": (
        "encounter_id",
        "facility_id",
        "encounter_class",
        "admit_time",
        "discharge_time",
        "diagnosis_codes",
    ),
    "claim": (
        "claim_id",
        "payer_id",
        "service_date",
        "total_charge",
        "procedure_codes",
        "diagnosis_codes",
    ),
    "lab_result": (
        "result_id",
        "test_code",
        "value",
        "reference_range",
        "collected_at",
        "status",
    ),
}


def canonical(kind: str, **fields: Any) -> dict[str, Any]:
    """Build the canonical object of ``kind``; any key not named in the contract is a bug."""
    keys = KIND_FIELDS[kind]
    if len(fields) != len(keys):
        raise TypeError(f"{kind} takes exactly the fields {keys}")
    return {key: fields[key] for key in keys}


def is_missing(value: object) -> bool:
    return value is None or value == ""


def optional(convert: Callable[[Any, str], T], value: object, field: str) -> T | None:
    """``convert(value, field)``, or None when the value is absent."""
    return None if is_missing(value) else convert(value, field)


def section(obj: dict[str, Any], key: str, field: str, *, required: bool = True) -> dict[str, Any]:
    """The nested object ``obj[key]``; an absent optional one reads as empty."""
    value = obj.get(key)
    if value is None:
        if required:
            raise MappingError(field, MISSING)
        return {}
    if not isinstance(value, dict):
        raise MappingError(field, INVALID)
    return value


def items(value: object, field: str) -> list[Any]:
    """A list field; absent or null is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MappingError(field, INVALID)
    return value


# Ids and codes are printable ASCII without whitespace: a guard against names or prose in them.
_TOKEN = re.compile(r"[!-~]{1,128}", re.ASCII)
# Units may be non-ASCII ("µg/L") but never contain whitespace, which rules out prose.
_UNIT = re.compile(r"[^\s\x00-\x1f\x7f]{1,32}")


def to_id(value: object, field: str) -> str:
    """An identifier: a string token, or an integer rendered in decimal."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise MappingError(field, INVALID)
    return value


def to_code(system: object, code: object, system_field: str, code_field: str) -> Code:
    """The canonical code object ``{system, code}``."""
    return {"system": to_id(system, system_field), "code": to_id(code, code_field)}


def to_code_object(value: object, field: str) -> Code:
    """A partner ``{"system", "code"}`` object (other keys, e.g. ``display``, are ignored)."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, dict):
        raise MappingError(field, INVALID)
    return to_code(value.get("system"), value.get("code"), f"{field}.system", f"{field}.code")


def codes_from_strings(value: object, system: str, field: str) -> list[Code]:
    """A list of bare code strings, all in ``system``."""
    return unique_codes(
        {"system": system, "code": to_id(code, f"{field}[{i}]")}
        for i, code in enumerate(items(value, field))
    )


def codes_from_objects(value: object, field: str) -> list[Code]:
    """A list of ``{"system", "code"}`` objects."""
    return unique_codes(
        to_code_object(item, f"{field}[{i}]") for i, item in enumerate(items(value, field))
    )


def unique_codes(codes: Iterable[Code]) -> list[Code]:
    """Codes in first-seen order without repeats: the same code twice says nothing more."""
    seen: set[tuple[str, str]] = set()
    result = []
    for code in codes:
        key = (code["system"], code["code"])
        if key not in seen:
            seen.add(key)
            result.append(code)
    return result


# RFC 3339 date-time: "T", "t" or a space between date and time, seconds required, and a
# mandatory offset. Up to nine fractional digits are accepted (Java and Go emit nanoseconds).
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", re.ASCII)


def to_utc_rfc3339(value: object, field: str) -> str:
    """An RFC 3339 date-time converted to UTC, rendered ``YYYY-MM-DDTHH:MM:SS[.f]Z``.

    Fractional seconds appear only when non-zero, truncated to microseconds with trailing zeros
    trimmed (``.175``). A time without an offset is "invalid": the sender's zone is unknown and
    guessing would shift the record silently, so the partner must say.
    """
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, str):
        raise MappingError(field, INVALID)
    match = _DATETIME.fullmatch(value)
    if match is None:
        raise MappingError(field, INVALID)
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        moment = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro
        )
    except ValueError:
        raise MappingError(field, INVALID) from None
    if sign is not None:
        hours, minutes = int(off_h), int(off_m)
        if hours > 23 or minutes > 59:
            raise MappingError(field, INVALID)
        offset = dt.timedelta(hours=hours, minutes=minutes)
        try:
            moment = moment - offset if sign == "+" else moment + offset
        except OverflowError:
            raise MappingError(field, INVALID) from None
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def to_date(value: object, field: str) -> str:
    """A calendar date, ``YYYY-MM-DD`` only."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, str):
        raise MappingError(field, INVALID)
    match = _DATE.fullmatch(value)
    if match is None:
        raise MappingError(field, INVALID)
    try:
        dt.date(*(int(part) for part in match.groups()))
    except ValueError:
        raise MappingError(field, INVALID) from None
    return value


def to_utc_date(value: object, field: str) -> str:
    """A date, or the UTC date part of a date-time (FHIR ``dateTime`` may be either)."""
    if isinstance(value, str) and len(value) == 10:
        return to_date(value, field)
    return to_utc_rfc3339(value, field)[:10]


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# Amounts and lab values never need more; the bound keeps the rendered string short.
_MAX_DIGITS = 18


def is_number_text(value: str) -> bool:
    return _NUMBER.fullmatch(value) is not None


def to_decimal_string(value: object, field: str) -> str:
    """A number as a plain decimal string: no exponent, the sender's scale kept ("1234.50").

    Floats go through their shortest repr, so 129.16 stays "129.16". Booleans, NaN, infinities,
    and more than 18 digits either side of the point are "invalid".
    """
    if is_missing(value):
        raise MappingError(field, MISSING)
    if isinstance(value, bool):
        raise MappingError(field, INVALID)
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        number = Decimal(value)
    else:
        raise MappingError(field, INVALID)
    exponent = number.as_tuple().exponent
    if number.adjusted() >= _MAX_DIGITS or (isinstance(exponent, int) and -exponent > _MAX_DIGITS):
        raise MappingError(field, INVALID)
    if number.is_zero():
        number = number.copy_abs()  # "-0" is "0"
    return format(number, "f")


def to_unit(value: object, field: str) -> str:
    """A unit of measure (UCUM code or the partner's unit string)."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, str) or not _UNIT.fullmatch(value):
        raise MappingError(field, INVALID)
    return value


def to_quantity(value: object, unit: object, field: str, unit_field: str) -> dict[str, Any]:
    """``{quantity, unit}``; a unitless result (pH, INR) has unit null."""
    return {
        "quantity": to_decimal_string(value, field),
        "unit": optional(to_unit, unit, unit_field),
    }


_CURRENCY = re.compile(r"[A-Za-z]{3}", re.ASCII)  # ISO 4217 alphabetic code


def to_money(amount: object, currency: object, field: str, currency_field: str) -> dict[str, str]:
    """``{amount, currency}``. No format documents a default currency, so none is assumed."""
    if is_missing(currency):
        raise MappingError(currency_field, MISSING)
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise MappingError(currency_field, INVALID)
    return {"amount": to_decimal_string(amount, field), "currency": currency.upper()}


def to_reference_range(
    low: object, high: object, low_field: str, high_field: str
) -> dict[str, str | None] | None:
    """``{low, high}`` with either end open, or None when neither is given."""
    if is_missing(low) and is_missing(high):
        return None
    return {
        "low": optional(to_decimal_string, low, low_field),
        "high": optional(to_decimal_string, high, high_field),
    }


# Partner words and HL7 v3 ActCodes (FHIR Encounter.class), lower-cased. Anything else, e.g.
# home health (HH) or field (FLD), is "other": a class we cannot place is still a valid encounter.
_ENCOUNTER_CLASSES = {
    "inpatient": "inpatient",
    "in-patient": "inpatient",
    "ip": "inpatient",
    "imp": "inpatient",
    "acute": "inpatient",
    "nonac": "inpatient",
    "outpatient": "outpatient",
    "out-patient": "outpatient",
    "op": "outpatient",
    "emergency": "emergency",
    "er": "emergency",
    "ed": "emergency",
    "emer": "emergency",
    "ambulatory": "ambulatory",
    "amb": "ambulatory",
    "virtual": "virtual",
    "vr": "virtual",
    "telehealth": "virtual",
    "other": "other",
}


def to_encounter_class(value: object, field: str) -> str:
    """One of inpatient | outpatient | emergency | ambulatory | virtual | other."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, str):
        raise MappingError(field, INVALID)
    return _ENCOUNTER_CLASSES.get(value.strip().lower(), "other")


# A string result is allowed only as one of these qualitative tokens: free text may name people.
RESULT_TOKENS = frozenset(
    {
        "positive",
        "negative",
        "detected",
        "not detected",
        "reactive",
        "non-reactive",
        "indeterminate",
        "equivocal",
        "inconclusive",
        "normal",
        "abnormal",
        "present",
        "absent",
        "trace",
    }
)


def to_result_token(value: object, field: str) -> str:
    """A qualitative result from :data:`RESULT_TOKENS`, lower-case with single spaces."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, str):
        raise MappingError(field, INVALID)
    token = " ".join(value.split()).lower() if len(value) <= 32 else ""
    if token not in RESULT_TOKENS:
        raise MappingError(field, UNSUPPORTED)
    return token


def to_scalar_result(value: object, unit: object, field: str, unit_field: str) -> Any:
    """A flat result value: a number (with its unit) or a qualitative token."""
    if isinstance(value, str) and not is_number_text(value):
        return to_result_token(value, field)
    return to_quantity(value, unit, field, unit_field)


# FHIR ObservationStatus; other formats use the same words.
LAB_STATUSES = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)


def to_lab_status(value: object, field: str) -> str:
    """A result status from :data:`LAB_STATUSES`, compared case-insensitively."""
    if is_missing(value):
        raise MappingError(field, MISSING)
    if not isinstance(value, str):
        raise MappingError(field, INVALID)
    status = value.lower()
    if status not in LAB_STATUSES:
        raise MappingError(field, UNSUPPORTED)
    return status
