"""Validation against the files in ``contracts/``, which are the single source of each shape.

Validators are compiled once. A failure is reported as a field path and a reason, never with the
offending value, because the value may be patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
OPENAPI_PATH = CONTRACTS_DIR / "api" / "ingest-openapi.yaml"
_OPENAPI_URI = "urn:exchange-stream:openapi"


@dataclass(frozen=True)
class ContractViolation(ValueError):
    """``field`` is a dotted path (``patient.dob``); ``reason`` is ``missing`` or ``invalid``."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} field: {self.field}"


@cache
def openapi() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))


@cache
def _request_validator(schema_name: str) -> Draft202012Validator:
    doc = openapi()
    if schema_name not in doc["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {OPENAPI_PATH.name}")
    registry = Registry().with_resource(_OPENAPI_URI, Resource(doc, specification=DRAFT202012))
    return Draft202012Validator(
        {"$ref": f"{_OPENAPI_URI}#/components/schemas/{schema_name}"},
        registry=registry,
        format_checker=FormatChecker(),
    )


@cache
def _event_validator(event_version: str) -> Draft202012Validator:
    path = CONTRACTS_DIR / "events" / f"v{event_version}.record_ingested.json"
    schema = orjson.loads(path.read_bytes())
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _first_violation(errors: list[ValidationError]) -> ContractViolation:
    def where(e: ValidationError) -> tuple[int, str]:
        return (len(e.absolute_path), ".".join(str(p) for p in e.absolute_path))

    err = min(errors, key=where)
    path = [str(p) for p in err.absolute_path]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [name for name in err.validator_value if name not in err.instance]
        return ContractViolation(".".join([*path, missing[0]]), "missing")
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        return ContractViolation(".".join([*path, extra[0]]), "unknown")
    return ContractViolation(".".join(path) or "body", "invalid")


def check_request(schema_name: str, body: Any) -> None:
    """Raise ``ContractViolation`` unless ``body`` matches ``components.schemas[schema_name]``."""
    errors = list(_request_validator(schema_name).iter_errors(body))
    if errors:
        raise _first_violation(errors)


def check_event(event: dict[str, Any]) -> None:
    """Raise ``ContractViolation`` unless ``event`` matches its version's event schema."""
    version = event.get("event_version")
    if version not in ("1", "2"):
        raise ContractViolation("event_version", "invalid")
    errors = list(_event_validator(version).iter_errors(event))
    if errors:
        raise _first_violation(errors)


@cache
def _command_validator(name: str) -> Draft202012Validator:
    path = CONTRACTS_DIR / "commands" / f"{name}.json"
    return Draft202012Validator(orjson.loads(path.read_bytes()), format_checker=FormatChecker())


def check_command(doc: Any) -> None:
    """Raise ``ContractViolation`` unless ``doc`` is a command envelope."""
    if not isinstance(doc, dict):
        raise ContractViolation("command", "invalid")
    errors = list(_command_validator("command").iter_errors(doc))
    if errors:
        raise _first_violation(errors)


def command_params(command: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against ``contracts/commands/<command>.json``, defaults filled in."""
    validator = _command_validator(command)
    errors = list(validator.iter_errors(params))
    if errors:
        raise _first_violation(errors)
    defaults = {
        name: spec["default"]
        for name, spec in validator.schema.get("properties", {}).items()
        if "default" in spec
    }
    return {**defaults, **params}


def check_result(doc: dict[str, Any]) -> None:
    """Raise ``ContractViolation`` unless ``doc`` is a control result message."""
    errors = list(_command_validator("result").iter_errors(doc))
    if errors:
        raise _first_violation(errors)
