"""The contract files drive validation: events, requests and commands, with safe messages."""

from __future__ import annotations

import pytest

from exchange_stream.core.events import RawObject, new_event
from exchange_stream.core.formats import for_version
from exchange_stream.infra.contracts import (
    ContractViolation,
    check_event,
    check_request,
    command_params,
)


def _event(version: str = "2") -> dict:
    return new_event(
        for_version(version),
        record_id="0b7c9c1e-5a4b-4f7e-9a43-5bd1d5f0e001",
        source="s",
        raw_object=RawObject("b", "s/k.json", "a" * 64, 10),
        correlation_id="corr-0001",
        record_kind="claim",
        schema_hint="partnerB.v1",
    ).to_dict()


@pytest.mark.parametrize("version", ["1", "2"])
def test_built_events_match_their_schema(version: str) -> None:
    check_event(_event(version))


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda e: e.update(event_id="not-a-uuid"), "event_id", "invalid"),
        (lambda e: e.pop("occurred_at"), "occurred_at", "missing"),
        (lambda e: e["raw_object"].update(sha256="XYZ"), "raw_object.sha256", "invalid"),
        (lambda e: e.update(extra=1), "extra", "unknown"),
        (lambda e: e.update(schema_hint="partnerZ"), "schema_hint", "invalid"),
    ],
)
def test_events_outside_the_schema_are_refused(mutate, field: str, reason: str) -> None:
    event = _event()
    mutate(event)
    with pytest.raises(ContractViolation) as exc:
        check_event(event)
    assert (exc.value.field, exc.value.reason) == (field, reason)


def test_request_violation_names_the_field_not_the_value() -> None:
    with pytest.raises(ContractViolation) as exc:
        check_request(
            "TokenizeRequest",
            {"given_name": "Sentinel-Given", "family_name": 7, "dob": "2000-01-01"},
        )
    assert str(exc.value) == "invalid field: family_name"


def test_command_params_fill_defaults_from_the_contract() -> None:
    assert command_params("replay", {"source": "a"}) == {
        "source": "a",
        "prefix": "",
        "emit_version": "auto",
        "dry_run": False,
        "verify": False,
    }
    with pytest.raises(ContractViolation):
        command_params("replay", {"source": "a", "emit_version": "latest"})
    # The contract takes any label; which labels exist is the formats table's (ops check it).
    assert command_params("replay", {"source": "a", "emit_version": "v9"})["emit_version"] == "v9"
