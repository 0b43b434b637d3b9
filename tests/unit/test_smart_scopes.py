"""What POST /auth/token grants for a requested scope (web/smart_scopes.py), without a server."""

from __future__ import annotations

import pytest

from web.auth import READ_RECORDS
from web.smart_scopes import grant

ALL = None


@pytest.mark.parametrize(
    ("requested", "scope", "kinds"),
    [
        ("records:read", "records:read", ALL),
        ("export records:read", "export records:read", ALL),
        ("system/Encounter.read", "system/Encounter.read", {"encounter"}),
        ("system/Encounter.rs", "system/Encounter.rs", {"encounter"}),
        ("system/Claim.r", "system/Claim.r", {"claim"}),
        ("system/Observation.s", "system/Observation.s", {"lab_result"}),
        ("system/Patient.read", "system/Patient.read", {"patient"}),
        # Write access is never granted; the read part of a wider ask is.
        ("system/Encounter.cruds", "system/Encounter.rs", {"encounter"}),
        ("system/Encounter.cud system/Claim.rs", "system/Claim.rs", {"claim"}),
        ("system/Encounter.*", "system/Encounter.read", {"encounter"}),
        ("system/*.read", "system/*.read", ALL),
        ("system/*.rs", "system/*.rs", ALL),
        (
            "system/Encounter.read system/Observation.rs",
            "system/Encounter.read system/Observation.rs",
            {"encounter", "lab_result"},
        ),
        # Narrowed: what the recipient may not have is left out.
        ("ingest system/Claim.read tokenize", "system/Claim.read", {"claim"}),
        ("system/MedicationRequest.read system/Encounter.rs", "system/Encounter.rs", {"encounter"}),
        ("system/Encounter.read system/Encounter.read", "system/Encounter.read", {"encounter"}),
        # The exchange's own scope reads every kind.
        ("records:read system/Encounter.read", "records:read system/Encounter.read", ALL),
    ],
)
def test_grants_what_was_asked_narrowed(requested: str, scope: str, kinds: set | None) -> None:
    given = grant(requested)
    assert given is not None
    assert given.scope == scope
    assert given.kinds == (None if kinds is None else frozenset(kinds))


@pytest.mark.parametrize(
    "requested",
    [
        "",
        "ingest tokenize ops:write",
        "system/Encounter.write",
        "system/Encounter.cud",
        "system/Encounter.sr",  # v2 letters out of order
        "system/Encounter.rrs",
        "patient/Encounter.read",
        "user/*.read",
        "system/Encounter.rs?status=finished",
        "system/MedicationRequest.read",
        "openid launch offline_access",
        "records:read " + "x" * 3000,
    ],
)
def test_nothing_grantable_is_none(requested: str) -> None:
    assert grant(requested) is None


def test_a_recipient_allowed_less_gets_less() -> None:
    assert grant("system/Encounter.read", frozenset({READ_RECORDS})) is None
    given = grant("records:read export", frozenset({READ_RECORDS}))
    assert given is not None and given.scope == "records:read"
