"""Validation against the files in ``contracts/``, which are the single source of each shape.

Schemas are compiled to Python once (fastjsonschema): about 10 µs per request body, where an
interpreting validator took over a millisecond on the ingest hot path. A failure is reported as a
field path and a reason, never with the offending value, because the value may be patient data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import yaml

from exchange_stream.core.formats import for_version

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
OPENAPI_PATH = CONTRACTS_DIR / "api" / "ingest-openapi.yaml"

# Formats the contracts use beyond fastjsonschema's built-in ones.
_FORMATS = {
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}

Validator = Callable[[Any], Any]


@dataclass(frozen=True)
class ContractViolation(ValueError):
    """``field`` is a dotted path (``patient.dob``); ``reason`` is missing, invalid or unknown."""

    field: str
    reason: str
    # What the contract asks of the field ("at least 1", "one of v1, v2"), from the schema only.
    wants: str | None = None

    def __str__(self) -> str:
        return f"{self.reason} field: {self.field}"

    def explained(self) -> str:
        """``str(self)`` with what the contract wants, for operators at a terminal."""
        return f"{self} ({self.wants})" if self.wants else str(self)


@cache
def openapi() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))


def _compile(schema: dict[str, Any]) -> Validator:
    return fastjsonschema.compile(schema, formats=_FORMATS, use_default=False)


@cache
def _request_validator(schema_name: str) -> Validator:
    schemas = openapi()["components"]["schemas"]
    if schema_name not in schemas:
        raise KeyError(f"no schema {schema_name!r} in {OPENAPI_PATH.name}")
    # The OpenAPI components travel with the entry point, so "#/components/..." refs resolve.
    return _compile(
        {"$ref": f"#/components/schemas/{schema_name}", "components": {"schemas": schemas}}
    )


@cache
def _file_schema(relative: str) -> dict[str, Any]:
    return orjson.loads((CONTRACTS_DIR / relative).read_bytes())


@cache
def _file_validator(relative: str) -> Validator:
    return _compile(_file_schema(relative))


def _violation(exc: fastjsonschema.JsonSchemaValueException) -> ContractViolation:
    path = [str(p) for p in (exc.path or [])[1:]]  # the first element is "data", the root
    value, definition = exc.value, exc.definition or {}
    if exc.rule == "required" and isinstance(value, dict):
        missing = next(n for n in exc.rule_definition if n not in value)
        return ContractViolation(".".join([*path, missing]), "missing")
    if exc.rule == "additionalProperties" and isinstance(value, dict):
        allowed = set(definition.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed)
        return ContractViolation(".".join([*path, extra[0]]), "unknown")
    wants = _wants(exc.rule, exc.rule_definition)
    if exc.rule == "pattern" and isinstance(definition.get("x-hint"), str):
        # A contract may say in words what its pattern asks for.
        wants = definition["x-hint"]
    return ContractViolation(".".join(path) or "body", "invalid", wants)


def _wants(rule: str | None, definition: Any) -> str | None:
    """The schema's own words for a failed rule; never the offending value."""
    if rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        word = {
            "minimum": "at least",
            "exclusiveMinimum": "more than",
            "maximum": "at most",
            "exclusiveMaximum": "less than",
        }[rule]
        return f"{word} {definition}"
    if rule == "enum" and isinstance(definition, list):
        return "one of " + ", ".join(str(v) for v in definition)
    if rule == "type":
        return f"a {definition}" if isinstance(definition, str) else None
    if rule in ("minLength", "maxLength", "pattern"):
        return {"minLength": "not empty", "maxLength": "shorter", "pattern": "a valid value"}[rule]
    return None


def _check(validator: Validator, doc: Any) -> None:
    try:
        validator(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _violation(exc) from None


def check_request(schema_name: str, body: Any) -> None:
    """Raise ``ContractViolation`` unless ``body`` matches ``components.schemas[schema_name]``."""
    _check(_request_validator(schema_name), body)


def check_event(event: dict[str, Any]) -> None:
    """Raise ``ContractViolation`` unless ``event`` matches its version's event schema."""
    fmt = for_version(event.get("event_version"))
    if fmt is None:
        raise ContractViolation("event_version", "invalid")
    _check(_file_validator(fmt.event_contract), event)


def check_command(doc: Any) -> None:
    """Raise ``ContractViolation`` unless ``doc`` is a command envelope."""
    if not isinstance(doc, dict):
        raise ContractViolation("command", "invalid")
    _check(_file_validator("commands/command.json"), doc)


def command_schema(command: str) -> dict[str, Any]:
    """The parameter schema ``contracts/commands/<command>.json``."""
    return _file_schema(f"commands/{command}.json")


def command_params(command: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against ``contracts/commands/<command>.json``, defaults filled in."""
    relative = f"commands/{command}.json"
    _check(_file_validator(relative), params)
    defaults = {
        name: spec["default"]
        for name, spec in command_schema(command)["properties"].items()
        if "default" in spec
    }
    return {**defaults, **params}


def check_result(doc: dict[str, Any]) -> None:
    """Raise ``ContractViolation`` unless ``doc`` is a control result message."""
    _check(_file_validator("commands/result.json"), doc)
