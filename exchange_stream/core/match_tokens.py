"""Match tokens, and the decision rule that says which records are one person.

A record's match tokens are keyed hashes of combinations of its match attributes
(``matching.MatchAttributes``), one token per rule, in the spirit of Truveta OpenToken's T1-T5.
Two records of one person written differently by two feeds (a nickname, a typo, a married name,
a missing SSN, day and month swapped) still agree on at least one rule in most cases; two
people seldom agree on any. The rules were chosen by bench/linkage.py, which measures them
against the master token and Splink on synthetic feeds: on 20,000 people (56,000 records) the
decision rule below finds about 96 % of the pairs of records of one person at a precision
of 99.99 % or more, where the master token finds 34 %. Rules with sex, with a given-name
initial (they join twins) or with ZIP3 in the name rules (most feeds send none) were measured
and did not pay; Soundex (M6) did, by about 0.7 points of recall (NYSIIS, by less).

Precision falls as the population grows, because the name rules compare only parts of names:
more people born on one day means more of them who share "smit", "joh" and a birth date. On
200,000 people the bench measures 99.91 %. A population much larger than that needs the rules
re-measured (longer parts, or a ZIP3 in them) before it relies on them. Twins whose names
share their first or last three letters ("Marco"/"Maria") are joined by M1 or M2.

Derived keys (computed here from the attributes; ``None`` when the attribute is missing):

    dob~         the date of birth with day and month in either order: ``YYYY-LL-HH`` where LL
                 and HH are the lower and the higher of the month and the day as two digits, so
                 1980-03-07 and 1980-07-03 agree (and a date whose day is over 12 is unchanged)
    family[:4]   the first four letters of the family name (all of it when shorter)
    given[:3]    the first three letters of the given name (all of it when shorter)
    given[-3:]   the last three letters of the given name (all of it when shorter)
    family[-4:]  the last four letters of the family name (all of it when shorter)
    given~       the given name's canonical form (nicknames: "bill" → "william")
    sx(family)   the American Soundex code of the family name (``jellyfish.soundex``: its first
                 letter, upper-cased, and three digits: "smith" and "smyth" are both S530)
    sx(given~)   the Soundex code of the given name's canonical form

Names here are the normalised ones (letters only, no spaces), so "Smith-Jones" is "smithjones"
and its family[:4] is "smit".

The rules (``RULES``), fixed: a rule's name always means these attributes in this order; a rule
that changes gets a new name, and its old tokens simply stop agreeing with new ones.

    M1  family[:4] | given[:3]  | dob~   both names' beginnings: a typo late in either name,
                                         a compound family name against its first part
    M2  family[:4] | given[-3:] | dob~   family beginning and given ending: a typo early in
                                         the given name
    M3  given~ | family[-4:] | dob~      canonical given name and family ending: nicknames, a
                                         typo early in the family name, a compound family name
                                         against its last part
    M4  ssn | dob~                       SSN and date of birth: any change of name
    M5  given~ | zip3 | dob~             canonical given name, ZIP3 and date of birth: a
                                         changed family name without an SSN
    M6  sx(family) | sx(given~) | dob~   both names by sound: spelling variants and typos that
                                         keep the consonants ("Smyth", "Jonson")

Only M5 uses the postal code and none uses sex, so records of lab and claims feeds link by
names and date of birth (M1-M3, M6) and by SSN and date of birth (M4). A rule with any
attribute missing yields no token; a record may have no token at all (it then stays alone).

Keys. Each rule has a key of its own, 32 bytes from HKDF-SHA256 (RFC 5869) of
``MATCH_TOKEN_SECRET`` with no salt and the info ``b"exchange-stream/match-token/v1" 0x00
<rule name, ASCII>``, so a token of one rule says nothing about another rule's tokens, and a
token of one secret nothing about another secret's. ``MatchKeys`` derives them once.

Token input. The rule's values in the rule's order, each as UTF-8 prefixed by its length in
bytes (4 bytes, big-endian): ``("ab", "c")`` and ``("a", "bc")`` are different inputs. The token
is HMAC-SHA256 of that input under the rule's key: 32 raw bytes.

The decision rule (``link``), for the database version as much as for this one:

    Two records are one person when they have an equal token of the same rule, for any rule of
    the linking set (all six rules; tokens under any other name are ignored). "One person" is
    then closed transitively: the persons are the connected components of the graph whose
    nodes are the records and whose edges are those agreements.

So no rule is weaker than another, none needs a second agreement, and a disagreement (two SSNs)
never separates records that agree elsewhere. A record that agrees with records of two groups
(by one rule or by two) merges the groups into one person, with every record of both: a
bridging record merges. The partition depends on the set of (record, rule, token) triples
only, never on their order. In SQL this is one table ``(record_id, rule, token)`` and connected
components over its self-join on ``(rule, token)``; an incremental version unions the groups
that a new record's tokens reach. Unions cannot be undone: when a record is deleted or its
tokens change, the persons it touched are computed again from their remaining records (it may
have been the bridge that made them one).

Pure code: no I/O, no configuration; the caller passes the secret. Tokens are patient-derived:
never log them, and never put a token or an attribute value in an exception message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import jellyfish
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange_stream.core.matching import MatchAttributes

__all__ = [
    "HKDF_PURPOSE",
    "KEY_BYTES",
    "LINKING_RULES",
    "RULES",
    "MatchKeys",
    "Rule",
    "derive_key",
    "encode_values",
    "link",
    "linking_rows",
    "match_tokens",
    "rule_values",
]

HKDF_PURPOSE = b"exchange-stream/match-token/v1"
KEY_BYTES = 32

R = TypeVar("R", bound=Hashable)


def _dob_unordered(a: MatchAttributes) -> str | None:
    if a.dob is None:
        return None
    month, day = a.dob[5:7], a.dob[8:10]
    low, high = sorted((month, day))
    return f"{a.dob[:4]}-{low}-{high}"


def _soundex(text: str | None) -> str | None:
    return jellyfish.soundex(text) if text else None


def _head(text: str | None, n: int) -> str | None:
    return text[:n] if text else None


def _tail(text: str | None, n: int) -> str | None:
    return text[-n:] if text else None


# The derived keys of the module docstring, by the names the rules use.
KEYS: dict[str, Callable[[MatchAttributes], str | None]] = {
    "dob~": _dob_unordered,
    "family[:4]": lambda a: _head(a.family, 4),
    "given[:3]": lambda a: _head(a.given, 3),
    "given[-3:]": lambda a: _tail(a.given, 3),
    "family[-4:]": lambda a: _tail(a.family, 4),
    "given~": lambda a: a.given_canonical,
    "sx(family)": lambda a: _soundex(a.family),
    "sx(given~)": lambda a: _soundex(a.given_canonical),
    "ssn": lambda a: a.ssn,
    "zip3": lambda a: a.zip3,
}


@dataclass(frozen=True)
class Rule:
    """A match rule: its name, the derived keys it hashes (in order), what it is for."""

    name: str
    attributes: tuple[str, ...]
    description: str


RULES: tuple[Rule, ...] = (
    Rule("M1", ("family[:4]", "given[:3]", "dob~"), "both names' beginnings, date of birth"),
    Rule("M2", ("family[:4]", "given[-3:]", "dob~"), "family beginning, given ending, dob"),
    Rule("M3", ("given~", "family[-4:]", "dob~"), "canonical given name, family ending, dob"),
    Rule("M4", ("ssn", "dob~"), "SSN and date of birth"),
    Rule("M5", ("given~", "zip3", "dob~"), "canonical given name, ZIP3 and date of birth"),
    Rule("M6", ("sx(family)", "sx(given~)", "dob~"), "both names' Soundex codes, date of birth"),
)
_BY_NAME = {rule.name: rule for rule in RULES}
# The rules whose agreement links two records (the decision rule of the module docstring).
LINKING_RULES: frozenset[str] = frozenset(_BY_NAME)


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the match token secret is empty")
    return key


def derive_key(secret: str | bytes, rule: str) -> bytes:
    """The 32-byte HMAC key of ``rule`` under ``secret`` (HKDF-SHA256, the documented info)."""
    if rule not in _BY_NAME:
        raise ValueError("unknown match rule")
    info = HKDF_PURPOSE + b"\x00" + rule.encode("ascii")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
    return hkdf.derive(_secret_bytes(secret))


class MatchKeys:
    """The keys of every rule under one secret, derived once."""

    def __init__(self, secret: str | bytes) -> None:
        key = _secret_bytes(secret)
        self._keys = {rule.name: derive_key(key, rule.name) for rule in RULES}

    def __repr__(self) -> str:
        return "MatchKeys(<secret>)"

    def key(self, rule: str) -> bytes:
        """The key of ``rule``; KeyError for a name that is not a rule."""
        return self._keys[rule]


def rule_values(attrs: MatchAttributes, rule: Rule) -> tuple[str, ...] | None:
    """The values a rule hashes, in order; None when any of them is missing."""
    values = tuple(KEYS[name](attrs) for name in rule.attributes)
    return None if any(v is None for v in values) else values  # type: ignore[return-value]


def encode_values(values: Iterable[str]) -> bytes:
    """Each value as its UTF-8 length (4 bytes, big-endian) followed by its UTF-8 bytes."""
    out = bytearray()
    for value in values:
        data = value.encode("utf-8")
        out += len(data).to_bytes(4, "big")
        out += data
    return bytes(out)


def match_tokens(attrs: MatchAttributes, keys: MatchKeys) -> dict[str, bytes]:
    """Rule name → 32-byte token, for each rule whose attributes ``attrs`` all has."""
    tokens: dict[str, bytes] = {}
    for rule in RULES:
        values = rule_values(attrs, rule)
        if values is not None:
            message = encode_values(values)
            tokens[rule.name] = hmac.new(keys.key(rule.name), message, hashlib.sha256).digest()
    return tokens


def link(
    records: Iterable[tuple[R, Mapping[str, bytes]]],
    rules: Iterable[str] = LINKING_RULES,
) -> frozenset[frozenset[R]]:
    """The persons among ``records``: the decision rule of the module docstring.

    ``records`` are (record id, tokens) pairs, the tokens as ``match_tokens`` gives them; a
    record id given twice is one record with the union of its tokens. ``rules`` narrows the
    linking set (the bench measures each rule alone). The result is the partition of the record
    ids, each set one person; it is the same whatever the order of ``records``.
    """
    linking = frozenset(rules)
    parent: dict[R, R] = {}

    def find(x: R) -> R:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    first_holder: dict[tuple[str, bytes], R] = {}
    for record_id, tokens in records:
        parent.setdefault(record_id, record_id)
        for rule, token in tokens.items():
            if rule not in linking:
                continue
            holder = first_holder.setdefault((rule, token), record_id)
            a, b = find(holder), find(record_id)
            if a != b:
                parent[a] = b
    persons: dict[R, set[R]] = {}
    for record_id in parent:
        persons.setdefault(find(record_id), set()).add(record_id)
    return frozenset(frozenset(members) for members in persons.values())


def linking_rows(
    records: Iterable[tuple[R, Mapping[str, bytes]]],
) -> tuple[list[R], list[str], list[bytes]]:
    """The tokens of the linking rules of ``records`` ((record id, tokens) pairs) as the three
    parallel arrays the database's ``link_records`` takes: owner, rule, token."""
    owners: list[R] = []
    rules: list[str] = []
    tokens: list[bytes] = []
    for record_id, found in records:
        for rule, token in found.items():
            if rule in LINKING_RULES:
                owners.append(record_id)
                rules.append(rule)
                tokens.append(token)
    return owners, rules, tokens
