"""Patient tokenization: canonicalise identity, then keyed HMAC-SHA256 (docs/API.md).

Tokens must stay byte-identical with the deployed tokenizer, whose rules differ from Python's
standard library in four places, each handled explicitly below: the whitespace set, simple
(context-free) lower-casing, ASCII-only digits, and dates of year 0000.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

# The Unicode White_Space property. Python's str.split()/strip() also treat U+001C..U+001F as
# whitespace; the deployed tokenizer does not, so neither do we.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_WS_RUN = re.compile(f"[{re.escape(WHITE_SPACE)}]+")
_DOB = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NOT_ASCII_DIGIT = re.compile(r"[^0-9]")

# Days of each month in a common year; February has 29 in a leap year.
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# str.lower() applies full case mapping (U+0130 -> "i\u0307") and the Final_Sigma context rule
# (Σ -> ς at a word end). Mapping these two first leaves only simple, per-code-point mappings,
# which str.lower() then applies; a test checks this over every code point.
_SIMPLE_LOWER_FIRST = str.maketrans({"\u0130": "i", "\u03a3": "\u03c3"})


class IdentityError(ValueError):
    """An identity field is missing or invalid; ``field`` names it, the value is never kept."""

    def __init__(self, field: str, reason: str = "invalid") -> None:
        super().__init__(f"{reason} field: {field}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Canonical identity; exists only transiently, in memory, on the way to a token."""

    given_name: str
    family_name: str
    dob: str
    ssn: str

    def message(self) -> bytes:
        return (
            f"given_name={self.given_name}|family_name={self.family_name}"
            f"|dob={self.dob}|ssn={self.ssn}"
        ).encode()


def simple_lower(text: str) -> str:
    """Per-code-point simple lower-case mapping of UnicodeData, without context."""
    return text.translate(_SIMPLE_LOWER_FIRST).lower()


def collapse_whitespace(text: str) -> str:
    """Trim White_Space at both ends and collapse inner runs to one space."""
    return _WS_RUN.sub(" ", text).strip(" ")


def canonical_name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise IdentityError(field, "missing" if value is None else "invalid")
    name = simple_lower(collapse_whitespace(value))
    if not name:
        raise IdentityError(field)
    return name


def is_leap_year(year: int) -> bool:
    """Proleptic Gregorian rule: divisible by 4, and not by 100 unless by 400 (so year 0 is)."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def is_real_date(year: int, month: int, day: int) -> bool:
    """Whether the day exists in the proleptic Gregorian calendar, year 0 included."""
    if not 1 <= month <= 12:
        return False
    last = 29 if month == 2 and is_leap_year(year) else _DAYS_IN_MONTH[month - 1]
    return 1 <= day <= last


def canonical_dob(value: object, field: str = "dob") -> str:
    """Exactly ``YYYY-MM-DD`` (ASCII digits) naming a real calendar date, ``0000`` included."""
    if not isinstance(value, str):
        raise IdentityError(field, "missing" if value is None else "invalid")
    dob = collapse_whitespace(value)
    # datetime.date starts at year 1, but the deployed tokenizer accepts 0000-01-01: the
    # calendar is checked here rather than by constructing a date.
    if not _DOB.fullmatch(dob) or not is_real_date(int(dob[0:4]), int(dob[5:7]), int(dob[8:10])):
        raise IdentityError(field)
    return dob


def canonical_ssn(value: object, field: str = "ssn") -> str:
    """ASCII digits only; absent, null and empty are all the empty string."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise IdentityError(field)
    return _NOT_ASCII_DIGIT.sub("", value)


def canonical_identity(
    given_name: object, family_name: object, dob: object, ssn: object = None, *, prefix: str = ""
) -> Identity:
    """Canonicalise the four identity fields; errors name ``<prefix><field>``."""
    return Identity(
        given_name=canonical_name(given_name, f"{prefix}given_name"),
        family_name=canonical_name(family_name, f"{prefix}family_name"),
        dob=canonical_dob(dob, f"{prefix}dob"),
        ssn=canonical_ssn(ssn, f"{prefix}ssn"),
    )


def token_for(identity: Identity, secret: str | bytes) -> str:
    """Hex HMAC-SHA256 of the canonical identity string under ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, identity.message(), hashlib.sha256).hexdigest()


class Tokenizer:
    """The token function bound to one secret, shared by /tokenize and the normalizer."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def token(
        self, given_name: object, family_name: object, dob: object, ssn: object = None
    ) -> str:
        return token_for(canonical_identity(given_name, family_name, dob, ssn), self._key)
