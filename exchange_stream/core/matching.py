"""Match normalisation: the attributes record linkage compares, from a ``patient`` object.

The master patient token (``identity.py``) links two records only when given name, family name,
date of birth and SSN are identical after a light canonicalisation, which must stay
byte-compatible with the deployed tokenizer. Linking records of one person across feeds needs a
more forgiving view of the same fields; that view is :class:`MatchAttributes`, and this module
is the only place that computes it. Match tokens (``match_tokens.py``) are keyed hashes of
combinations of these attributes; the plaintext exists only in memory, on the way to a token.

Input: the ``patient`` object of either ingest format, with the identity fields that
``formats.py`` names (v2 ``given_name``/``family_name``, v1 ``first_name``/``last_name``) plus
``dob``, ``ssn``, and the optional ``sex`` and ``postal_code``. Every attribute is normalised on
its own, and an attribute that is absent, malformed or a known placeholder is *missing*
(``None``): normalisation never raises for a value, so that a bad field costs the rules that use
it and nothing else.

Names (``given``, ``family``):

1. Case-fold (``str.casefold``: "ß" → "ss"), decompose (NFKD) and drop combining marks, so
   "José Núñez" → "jose nunez"; letters NFKD does not decompose are mapped (ø → o, ł → l,
   æ → ae, œ → oe, đ/ð → d, þ → th, the dotless i U+0131 → i).
2. Words are split at whitespace, commas, periods, semicolons, slashes and underscores.
   Apostrophes, hyphens and every other character that is not a letter or a digit are deleted
   *inside* a word, so "O'Brien" → "obrien" and "Smith-Jones" → "smithjones".
3. Titles (mr, mrs, ms, miss, mx, dr, prof, rev, sir, fr, sister) are dropped from the front of
   a name, and generational and professional suffixes (jr, sr, ii, iii, iv, v, 2nd, 3rd, md, phd,
   dds, dmd, dvm, rn, np, esq, cpa, mba) from its end, several of either, but never the last
   word left. "I", "DO" and "PA" are not in the list: they are also family names ("Do").
   Digits are then deleted too ("Smith2" → "smith"), and a word of digits alone is dropped.
4. ``given`` is the first remaining word (a middle name in the given field is dropped:
   "Mary Ann" → "mary"; a hyphenated given name is one word: "Jean-Luc" → "jeanluc").
   ``family`` is every remaining word, concatenated: "Smith-Jones", "Smith Jones" and
   "SmithJones" are one family name ("smithjones"), and "García Márquez" is "garciamarquez".
   A compound family name is deliberately not split into alternatives here ("Smith-Jones" is not
   also "Jones"): the rules compare the beginning and the end of the family name
   (``match_tokens.py``), so "smithjones" agrees with "smith" on its first four letters and with
   "jones" on its last four, each together with the given name and date of birth; and a
   person who took another family name altogether links through the rules that leave the
   family name out (SSN and date of birth; given name, ZIP3 and date of birth).
5. Placeholders are missing: a given name of "unknown", "unk", "none", "null", "na", "nn",
   "fnu", "baby", "babyboy", "babygirl", "boy", "girl", "infant", "newborn", "twin", "test",
   "patient", "xxx"; a family name of "unknown", "unk", "none", "null", "na", "nn", "lnu",
   "test", "patient", "xxx"; and both names of "John Doe" and "Jane Doe" (a "Doe" with another
   given name is a real name). "Baby Boy" is checked on the whole given field, before the first
   word is taken.

``given_canonical`` is the given name's canonical form from the ``nicknames`` package (the
carltonnorthern/nicknames dataset, a list of "formal name has nickname" pairs), so that "Bill",
"Billy", "Will" and "William" all give "william", and "Peggy", "Peg" and "Margaret" give
"margaret". The dataset is a relation, not a function: "al" is listed under 14 formal names,
and some pairs are listed both ways ("bill" has nickname "william"). The choice is
deterministic: a name moves to one of the names that list it as a nickname *and have more
nicknames of their own* (a formal name has many, a nickname few), choosing the one that shares
the longest run of letters with it, then the one with most nicknames, then the alphabetically
first; the move is repeated from the chosen name until no candidate has more nicknames (a
strictly rising count, so it ends). A name the dataset does not list is its own canonical
form. The classes this makes are coarse in places ("andrew" and "andrea" share "andrea",
"michael" and "miguel" share "miguel"): canonical forms are labels for agreement, not names to
show.

Date of birth (``dob``): ``YYYY-MM-DD`` naming a real date, as the tokenizer accepts it
(``identity.canonical_dob``); ``1900-01-01``, which systems write for an unknown date, and
dates before it are missing.

SSN (``ssn``): the ASCII digits of the value (an integer is read with its leading zeros,
``12345678`` → ``012345678``), which must then be nine; missing when the area is 000, 666 or
900-999, the group 00 or the serial 0000, when all nine digits are one digit, and for the
well-known invalid numbers 123-45-6789 (a placeholder), 078-05-1120 (the wallet card's) and
219-09-9999 (an advertisement's).

Postal code (``zip3``): a US ZIP code, ``12345``, ``12345-6789`` or ``123456789`` (spaces
ignored), reduced to its first three digits, the ZIP3. The ZIP3s that HIPAA's Safe Harbor
method suppresses for their small population (036, 059, 102, 203, 205, 369, 556, 692, 753, 772,
821, 823, 878, 879, 884, 890, 893) and ``000`` are missing, as is any other value.

Sex (``sex``): ``male``, ``female`` or ``other``, case-insensitive, the FHIR
``AdministrativeGender`` codes being the same words; ``unknown`` and any other value are
missing.

Sex is normalised for completeness, though no rule of ``match_tokens.py`` uses it: most lab and
claims feeds do not send it, and where both records have it the given name already says as
much. Phonetic codes are not part of the attributes: a rule derives them (``match_tokens.py``
uses Soundex, from ``jellyfish``, which bench/linkage.py showed to pay for itself).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cache, lru_cache
from typing import Any

from nicknames import NickNamer

from exchange_stream.core.formats import V1, V2, IngestFormat
from exchange_stream.core.identity import IdentityError, canonical_dob

__all__ = [
    "SUPPRESSED_ZIP3",
    "MatchAttributes",
    "canonical_given_name",
    "match_attributes",
    "normalise_dob",
    "normalise_family_name",
    "normalise_given_name",
    "normalise_sex",
    "normalise_ssn",
    "normalise_zip3",
]

TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "rev", "sir", "fr", "sister"})
SUFFIXES = frozenset(
    {"jr", "sr", "ii", "iii", "iv", "v", "2nd", "3rd", "md", "phd", "dds", "dmd", "dvm"}
    | {"rn", "np", "esq", "cpa", "mba"}
)
PLACEHOLDER_GIVEN = frozenset(
    {"unknown", "unk", "none", "null", "na", "nn", "fnu", "baby", "babyboy", "babygirl", "boy"}
    | {"girl", "infant", "newborn", "twin", "test", "patient", "xxx"}
)
PLACEHOLDER_FAMILY = frozenset(
    {"unknown", "unk", "none", "null", "na", "nn", "lnu", "test", "patient", "xxx"}
)
# Both names are missing when the pair is one of these (a lone "doe" is a real family name).
PLACEHOLDER_PAIRS = frozenset({("john", "doe"), ("jane", "doe")})

SUPPRESSED_ZIP3 = frozenset(
    {"036", "059", "102", "203", "205", "369", "556", "692", "753", "772", "821", "823"}
    | {"878", "879", "884", "890", "893"}
)
INVALID_SSNS = frozenset({"123456789", "078051120", "219099999"})
SEXES = frozenset({"male", "female", "other"})
UNKNOWN_DOB = "1900-01-01"

# Letters that NFKD leaves whole, mapped to what a keyboard without them would type.
_UNDECOMPOSED = str.maketrans(
    {"ø": "o", "ł": "l", "æ": "ae", "œ": "oe", "đ": "d", "ð": "d", "þ": "th", "\u0131": "i"}
)
_WORD_BREAK = re.compile(r"[\s,.;/_]+")
_ZIP = re.compile(r"([0-9]{5})(?:-?[0-9]{4})?")
_NOT_ASCII_DIGIT = re.compile(r"[^0-9]")


@dataclass(frozen=True)
class MatchAttributes:
    """A record's normalised match attributes (module docstring); ``None`` is missing."""

    given: str | None
    given_canonical: str | None
    family: str | None
    dob: str | None
    ssn: str | None
    sex: str | None
    zip3: str | None

    def __repr__(self) -> str:
        # The values are patient identifiers: a repr shows which are present, never what.
        present = ", ".join(
            f"{name}={'<set>' if getattr(self, name) is not None else None}"
            for name in self.__dataclass_fields__
        )
        return f"MatchAttributes({present})"


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.translate(_UNDECOMPOSED)


def _name_words(value: object) -> list[str]:
    """The words of a name: folded, titles and suffixes stripped, then letters only."""
    if not isinstance(value, str):
        return []
    # Digits stay until the affixes are gone, so that "3rd" is recognised as a suffix.
    words = ("".join(c for c in w if c.isalnum()) for w in _WORD_BREAK.split(_fold(value)))
    kept = [w for w in words if w]
    start, end = 0, len(kept)
    while end - start > 1 and kept[start] in TITLES:
        start += 1
    while end - start > 1 and kept[end - 1] in SUFFIXES:
        end -= 1
    letters = ("".join(c for c in w if c.isalpha()) for w in kept[start:end])
    return [w for w in letters if w]


def normalise_given_name(value: object) -> str | None:
    """The given name's first word, folded, without titles; None if missing or a placeholder."""
    words = _name_words(value)
    if not words or "".join(words) in PLACEHOLDER_GIVEN or words[0] in PLACEHOLDER_GIVEN:
        return None
    return words[0]


def normalise_family_name(value: object) -> str | None:
    """The family name's words, folded and concatenated, without titles and suffixes."""
    family = "".join(_name_words(value))
    return None if not family or family in PLACEHOLDER_FAMILY else family


@cache
def _nicknamer() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    namer = NickNamer()
    return namer.nickname_lookup, namer.canonical_lookup


def _longest_common_run(a: str, b: str) -> int:
    return SequenceMatcher(None, a, b, autojunk=False).find_longest_match().size


@lru_cache(maxsize=65536)
def canonical_given_name(name: str) -> str:
    """The canonical form of a normalised given name (the rule in the module docstring)."""
    nicknames_of, formal_names_of = _nicknamer()
    current = name
    while True:
        count = len(nicknames_of.get(current, ()))
        candidates = [c for c in formal_names_of.get(current, ()) if len(nicknames_of[c]) > count]
        if not candidates:
            return current
        # A total order: longest common run, then most nicknames, then alphabetically first.
        current = min(
            candidates,
            key=lambda c, n=current: (-_longest_common_run(n, c), -len(nicknames_of[c]), c),
        )


def normalise_dob(value: object) -> str | None:
    """``YYYY-MM-DD`` of a real date after 1900-01-01, else None."""
    try:
        dob = canonical_dob(value)
    except IdentityError:
        return None
    return None if dob <= UNKNOWN_DOB else dob


def normalise_ssn(value: object) -> str | None:
    """Nine digits of a number the SSA could have issued, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:09d}"
    if not isinstance(value, str):
        return None
    ssn = _NOT_ASCII_DIGIT.sub("", value)
    if len(ssn) != 9 or ssn in INVALID_SSNS or len(set(ssn)) == 1:
        return None
    area, group, serial = ssn[:3], ssn[3:5], ssn[5:]
    if area in ("000", "666") or area >= "900" or group == "00" or serial == "0000":
        return None
    return ssn


def normalise_zip3(value: object) -> str | None:
    """The ZIP3 of a US ZIP or ZIP+4, None if missing, not a ZIP, or suppressed by Safe Harbor."""
    if not isinstance(value, str):
        return None
    match = _ZIP.fullmatch("".join(value.split()))
    if match is None:
        return None
    zip3 = match[1][:3]
    return None if zip3 in SUPPRESSED_ZIP3 or zip3 == "000" else zip3


def normalise_sex(value: object) -> str | None:
    """``male``, ``female`` or ``other``; ``unknown`` and anything else are None."""
    if not isinstance(value, str):
        return None
    sex = value.strip().casefold()
    return sex if sex in SEXES else None


def format_of(patient: Mapping[str, Any]) -> IngestFormat:
    """The format whose names a ``patient`` object uses: v2 with a v2 name field, else v1."""
    if V2.given_name_field in patient or V2.family_name_field in patient:
        return V2
    return V1


def match_attributes(
    patient: Mapping[str, Any], fmt: IngestFormat | None = None
) -> MatchAttributes:
    """The match attributes of a ``patient`` object of format ``fmt``.

    Without ``fmt``, a patient with a v2 name field (``given_name``, ``family_name``) is read
    as v2 and any other as v1. Raises ``TypeError`` only when ``patient`` is not a mapping.
    """
    if not isinstance(patient, Mapping):
        raise TypeError("patient is not an object")
    fmt = fmt or format_of(patient)
    given, family, dob, ssn = fmt.identity(patient)
    given_name = normalise_given_name(given)
    family_name = normalise_family_name(family)
    if (given_name, family_name) in PLACEHOLDER_PAIRS:
        given_name = family_name = None
    return MatchAttributes(
        given=given_name,
        given_canonical=canonical_given_name(given_name) if given_name else None,
        family=family_name,
        dob=normalise_dob(dob),
        ssn=normalise_ssn(ssn),
        sex=normalise_sex(patient.get("sex")),
        zip3=normalise_zip3(patient.get("postal_code")),
    )
