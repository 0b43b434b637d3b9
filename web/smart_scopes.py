"""What ``POST /auth/token`` grants for a requested ``scope``: pure, no I/O.

A recipient asks for the exchange's own scopes (``records:read``, ``export``) or for SMART
system scopes as standard clients send them: v1 ``system/Encounter.read`` (``.*`` is read and
write: read is granted), v2 ``system/Encounter.rs`` (any of ``c r u d s`` in that order: the
read letters ``r`` and ``s`` are granted), per type or ``system/*``. A SMART scope stands for
``records:read`` and ``export`` limited to its types' kinds. The grant is what was asked,
narrowed to what the recipient may have; a word that cannot be granted is left out, and the
answer's ``scope`` says what was granted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from web.auth import RECIPIENT_SCOPES, SMART_PREFIX, SMART_SCOPE_GRANTS

# SMART resource type → the record kind it reads; ``Patient`` is the patient resource itself.
SMART_TYPES = {
    "Encounter": "encounter",
    "Claim": "claim",
    "Observation": "lab_result",
    "Patient": "patient",
}
MAX_SCOPE_BYTES = 2048
_SMART = re.compile(r"system/(\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*|[cruds]{1,5})")
_V2_ORDER = "cruds"


@dataclass(frozen=True)
class Grant:
    """What a token holds: its ``scope`` string and the kinds it may read (None: every kind)."""

    scope: str
    kinds: frozenset[str] | None


def grant(requested: str, allowed: frozenset[str] = RECIPIENT_SCOPES) -> Grant | None:
    """The grant for ``requested`` (space separated) to a recipient that may have ``allowed``;
    None when nothing of it can be granted (``invalid_scope``)."""
    if len(requested.encode()) > MAX_SCOPE_BYTES:
        return None
    granted: list[str] = []
    own_record_scope = False
    kinds: set[str] | None = set()
    for word in requested.split():
        if word in allowed:
            given, own_record_scope = word, True
        else:
            given = _smart(word, allowed)
            if given is None:
                continue
            resource = given[len(SMART_PREFIX) : given.index(".")]
            if resource == "*":
                kinds = None
            elif kinds is not None:
                kinds.add(SMART_TYPES[resource])
        if given not in granted:
            granted.append(given)
    if not granted:
        return None
    # The exchange's own scopes are not limited to kinds: with one of them, the token reads all.
    if own_record_scope or kinds is None:
        return Grant(" ".join(granted), None)
    return Grant(" ".join(granted), frozenset(kinds))


def _smart(word: str, allowed: frozenset[str]) -> str | None:
    """The grantable form of one SMART system scope, or None."""
    if not SMART_SCOPE_GRANTS <= allowed:
        return None
    match = _SMART.fullmatch(word)
    if match is None:
        return None
    resource, access = match.groups()
    if resource != "*" and resource not in SMART_TYPES:
        return None
    if access in ("read", "*"):
        return f"{SMART_PREFIX}{resource}.read"
    if access == "write":
        return None
    if not _in_order(access):
        return None
    letters = "".join(c for c in access if c in "rs")
    return f"{SMART_PREFIX}{resource}.{letters}" if letters else None


def _in_order(letters: str) -> bool:
    """SMART v2 writes each permission once, in the order c, r, u, d, s."""
    positions = [_V2_ORDER.index(c) for c in letters]
    return positions == sorted(set(positions))
