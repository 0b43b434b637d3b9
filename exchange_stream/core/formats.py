"""The ingest formats, v1 and v2: everything that differs between them, in one table.

A format is one version of the ingest API and of its ``record.ingested`` event: the request schema
that validates its bodies, the names of the identity fields in its ``patient`` object, where the
record's kind and schema hint come from, the topic its events go to and the DLQ of that topic,
and the body shape that replay recognises. Ingest, the normalizer, replay, reconcile and DLQ
redrive read these fields instead of branching on a version. A new version is a new entry here,
plus its request schema in ``contracts/api/ingest-openapi.yaml`` and its event schema in
``contracts/events/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TopicName:
    """A topic's configuration variable and its default name."""

    env: str
    default: str


@dataclass(frozen=True)
class IngestFormat:
    """One version of ``POST /v<N>/ingest`` and of its event (see the module docstring)."""

    version: str  # the event's ``event_version``
    request_schema: str  # components.schemas entry of the OpenAPI contract
    topic: TopicName
    dlq_topic: TopicName
    given_name_field: str
    family_name_field: str
    kind_field: str  # the body field naming the record kind
    hint_field: str | None  # the body field naming the schema hint, if the format has one
    fixed_hint: str | None  # the schema hint of every record, if the format has none
    # v2 events carry record_kind and schema_hint; v1 events leave them to the raw body.
    event_carries_kind: bool

    @property
    def label(self) -> str:
        """``v1``, ``v2``: how routes, CLI options and messages name the format."""
        return f"v{self.version}"

    @property
    def route(self) -> str:
        return f"/{self.label}/ingest"

    @property
    def event_contract(self) -> str:
        """The event's JSON Schema, relative to ``contracts/``."""
        return f"events/{self.label}.record_ingested.json"

    def kind_and_hint(self, body: Mapping[str, Any]) -> tuple[Any, Any]:
        """The record kind and schema hint a request body names (unvalidated values)."""
        hint = body.get(self.hint_field) if self.hint_field else self.fixed_hint
        return body.get(self.kind_field), hint

    def identity(self, patient: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
        """The tokenizer's four fields (given, family, dob, ssn) from a ``patient`` object."""
        return (
            patient.get(self.given_name_field),
            patient.get(self.family_name_field),
            patient.get("dob"),
            patient.get("ssn"),
        )

    def body_field(self, identity_field: str) -> str:
        """This format's name for one of the tokenizer's fields (``given_name`` → ``first_name``
        in v1), so errors name the field the client sent."""
        return {"given_name": self.given_name_field, "family_name": self.family_name_field}.get(
            identity_field, identity_field
        )

    def recognises(self, body: object) -> bool:
        """Whether a stored raw body has this format's shape: its kind (and hint) fields and its
        two name fields, all strings. Replay infers versions with this, never guessing."""
        if not isinstance(body, dict):
            return False
        patient = body.get("patient")
        if not isinstance(patient, dict):
            return False
        fields = [body.get(self.kind_field)]
        if self.hint_field:
            fields.append(body.get(self.hint_field))
        fields += [patient.get(self.given_name_field), patient.get(self.family_name_field)]
        return all(isinstance(f, str) for f in fields)


V1 = IngestFormat(
    version="1",
    request_schema="V1IngestRequest",
    topic=TopicName("TOPIC_RECORD_INGESTED_V1", "record.ingested.v1"),
    dlq_topic=TopicName("KAFKA_DLQ_TOPIC_V1", "record.ingested.v1.dlq"),
    given_name_field="first_name",
    family_name_field="last_name",
    kind_field="record_type",
    hint_field=None,
    fixed_hint="partnerA.v1",
    event_carries_kind=False,
)
V2 = IngestFormat(
    version="2",
    request_schema="V2IngestRequest",
    topic=TopicName("TOPIC_RECORD_INGESTED_V2", "record.ingested.v2"),
    dlq_topic=TopicName("KAFKA_DLQ_TOPIC_V2", "record.ingested.v2.dlq"),
    given_name_field="given_name",
    family_name_field="family_name",
    kind_field="record_kind",
    hint_field="schema_hint",
    fixed_hint=None,
    event_carries_kind=True,
)

FORMATS: tuple[IngestFormat, ...] = (V1, V2)
_BY_VERSION = {f.version: f for f in FORMATS}
_BY_LABEL = {f.label: f for f in FORMATS}


def for_version(version: object) -> IngestFormat | None:
    """The format of an ``event_version`` (``"1"``), or None."""
    return _BY_VERSION.get(version) if isinstance(version, str) else None


def for_label(label: str) -> IngestFormat:
    """The format called ``v1``/``v2`` (CLI options, routes); KeyError otherwise."""
    return _BY_LABEL[label]


class FormatUnknown(ValueError):
    """A label that names no format: ``field`` names where it was given, ``wants`` the labels."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.wants = "one of " + ", ".join(_BY_LABEL)
        super().__init__(f"invalid field: {field} ({self.wants})")


def check_label(label: str, field: str) -> None:
    """Raise ``FormatUnknown`` unless ``label`` is a format's (``v1``, ``v2``...)."""
    if label not in _BY_LABEL:
        raise FormatUnknown(field)


def infer(body: object) -> IngestFormat | None:
    """The format a raw body has, newest first; None when it has none (never a guess)."""
    for fmt in reversed(FORMATS):
        if fmt.recognises(body):
            return fmt
    return None
