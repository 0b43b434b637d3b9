"""The read API: ``contracts/graphql/schema.graphql``, executed for one recipient at a time.

Schema first: the executable schema is built from that file with graphql-core (no second
definition in code), and resolvers are attached to its fields by name. Every ``patientToken``
in and out is the caller's recipient token (``read/tokens.py``); the master token never leaves.

Cost is bounded before anything runs: a document is parsed and validated once per distinct
text (cached), then checked for depth and for complexity (each field costs 1, a list's children
cost once per item it may return), and ``first`` must be 1 to 500. Each list is one SQL
statement over one index range, and a page's patient tokens are issued together, so a page of
500 records costs one statement (plus, at most once per ``RECIPIENT_CACHE_TTL_S``, one for the
recipient's keys), never one per item. Errors follow the GraphQL response format; a message is
ours (``ReadError``) or ``internal error``, never an exception's text.
"""

from __future__ import annotations

import base64
import inspect
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import graphql
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

from exchange_stream.core.timefmt import rfc3339
from exchange_stream.infra.contracts import CONTRACTS_DIR
from exchange_stream.infra.sql import q
from exchange_stream.read.plan import Fallback, Plan, compile_plan, run_plan
from exchange_stream.read.tokens import RecipientTokenService

log = logging.getLogger(__name__)

SCHEMA_PATH = CONTRACTS_DIR / "graphql" / "schema.graphql"
MAX_PAGE = 500
# Deep enough for the standard introspection query (15 levels); the schema itself is shallow.
MAX_DEPTH = 15
MAX_COST = 50_000
_DOCUMENT_CACHE = 512
_EPOCH = datetime.fromisoformat("0001-01-01T00:00:00+00:00")
_NIL = uuid.UUID(int=0)
# List fields whose items are bounded by ``first``: their children cost once per item.
_PAGED = {"encounters", "claims", "labResults", "records"}
_KINDS = {"encounter", "claim", "lab_result"}


class ReadError(Exception):
    """A request the API refuses with a message safe to show (it names no value)."""


@cache
def executable_schema(path: Path = SCHEMA_PATH) -> GraphQLSchema:
    """The schema of the contract file, with this module's resolvers attached."""
    schema = graphql.build_schema(path.read_text(encoding="utf-8"))
    query = schema.query_type
    assert query is not None  # noqa: S101  (the contract file declares it; a test checks)
    for name, resolver in _ROOT_RESOLVERS.items():
        query.fields[name].resolve = resolver
    value = schema.type_map["LabValue"]
    value.resolve_type = _lab_value_type  # type: ignore[attr-defined]
    for listed in ("Encounter", "Claim", "LabResult"):
        schema.type_map[listed].fields["cursor"].resolve = _cursor_field  # type: ignore[attr-defined]
    return schema


@dataclass
class Request:
    """One request's context: who reads, with what, and how many statements it cost."""

    recipient: str
    pool: asyncpg.Pool
    tokens: RecipientTokenService
    statements: int = 0
    issued: dict[str, str] = field(default_factory=dict)

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await self.pool.fetch(q(name), *args)

    async def fetchval(self, name: str, *args: Any) -> Any:
        self.statements += 1
        return await self.pool.fetchval(q(name), *args)

    async def master_of(self, token: object) -> str | None:
        return await self.tokens.resolve(self.recipient, token)

    async def tokens_for(self, masters: list[str]) -> list[str]:
        """The caller's current tokens for ``masters``, in order (one issue for a page)."""
        wanted = [m for m in dict.fromkeys(masters) if m not in self.issued]
        if wanted:
            issued = await self.tokens.issue_many(self.recipient, wanted)
            self.issued.update(zip(wanted, issued, strict=False))
        return [self.issued.get(m, "") for m in masters]


# Cursors ------------------------------------------------------------------------------------


def encode_cursor(ingested_at: datetime, record_id: uuid.UUID) -> str:
    """An opaque position in receipt order: no patient data, just time and record id."""
    raw = f"{ingested_at.isoformat()}|{record_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID]:
    if cursor is None:
        return _EPOCH, _NIL
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        when, _, rid = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None:
            raise ValueError("no offset")
        return moment, uuid.UUID(rid)
    except (ValueError, UnicodeError):
        raise ReadError("invalid cursor") from None


def _page_size(first: object) -> int:
    if not isinstance(first, int) or not 1 <= first <= MAX_PAGE:
        raise ReadError(f"first must be between 1 and {MAX_PAGE}")
    return first


# Shapes: canonical snake_case objects to the schema's camelCase ----------------------------------


def _codes(values: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return list(values or [])


def encounter(obj: dict[str, Any], token: str, position: Position) -> dict[str, Any]:
    return {
        "encounterId": obj["encounter_id"],
        "patientToken": token,
        "facilityId": obj.get("facility_id"),
        "admitTime": obj.get("admit_time"),
        "dischargeTime": obj.get("discharge_time"),
        "encounterClass": obj.get("encounter_class"),
        "diagnosisCodes": _codes(obj.get("diagnosis_codes")),
        "_position": position,
    }


def claim(obj: dict[str, Any], token: str, position: Position) -> dict[str, Any]:
    return {
        "claimId": obj["claim_id"],
        "patientToken": token,
        "payerId": obj.get("payer_id"),
        "serviceDate": obj.get("service_date"),
        "totalCharge": obj.get("total_charge"),
        "procedureCodes": _codes(obj.get("procedure_codes")),
        "diagnosisCodes": _codes(obj.get("diagnosis_codes")),
        "_position": position,
    }


def lab_result(obj: dict[str, Any], token: str, position: Position) -> dict[str, Any]:
    value = obj.get("value")
    return {
        "resultId": obj["result_id"],
        "patientToken": token,
        "testCode": obj.get("test_code"),
        "value": {"result": value} if isinstance(value, str) else value,
        "referenceRange": obj.get("reference_range"),
        "collectedAt": obj.get("collected_at"),
        "status": obj.get("status"),
        "_position": position,
    }


Position = tuple[datetime, uuid.UUID]


def _cursor_field(item: dict[str, Any], *_: Any) -> str:
    # Encoded only when a query selects ``cursor``: most lists are read without it.
    return encode_cursor(*item["_position"])


_SHAPE: dict[str, Callable[[dict[str, Any], str, Position], dict[str, Any]]] = {
    "encounter": encounter,
    "claim": claim,
    "lab_result": lab_result,
}
_FIELD_OF_KIND = {"encounter": "encounter", "claim": "claim", "lab_result": "labResult"}


def _lab_value_type(value: dict[str, Any], *_: Any) -> str:
    if "quantity" in value:
        return "Quantity"
    if "system" in value:
        return "Code"
    return "QualitativeResult"


# Root resolvers ----------------------------------------------------------------------------


async def _patient(_: None, info: graphql.GraphQLResolveInfo, patientToken: str) -> Any:
    req: Request = info.context
    master = await req.master_of(patientToken)
    if master is None or not await req.fetchval("read_patient_exists", master):
        return None
    (token,) = await req.tokens_for([master])
    return {"patientToken": token, "dob": None}


def _per_patient(kind: str) -> Callable[..., Any]:
    shape = _SHAPE[kind]

    async def resolve(
        _: None,
        info: graphql.GraphQLResolveInfo,
        patientToken: str,
        first: int = MAX_PAGE,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        req: Request = info.context
        limit = _page_size(first)
        since = decode_cursor(after)
        master = await req.master_of(patientToken)
        if master is None:
            return []
        rows = await req.fetch("read_patient_kind", master, kind, *since, limit)
        if not rows:
            return []
        (token,) = await req.tokens_for([master])
        return [shape(r["object"], token, (r["ingested_at"], r["record_id"])) for r in rows]

    return resolve


async def _records(
    _: None,
    info: graphql.GraphQLResolveInfo,
    source: str | None = None,
    kind: str | None = None,
    first: int = 100,
    after: str | None = None,
) -> dict[str, Any]:
    req: Request = info.context
    limit = _page_size(first)
    if kind is not None and kind not in _KINDS:
        raise ReadError("kind must be encounter, claim or lab_result")
    since = decode_cursor(after)
    if source is None:
        rows = await req.fetch("read_records", *since, limit + 1, kind)
    else:
        rows = await req.fetch("read_records_of_source", *since, limit + 1, kind, source)
    more = len(rows) > limit
    rows = rows[:limit]
    tokens = await req.tokens_for([r["normalized"].get("patient_token") or "" for r in rows])
    items = []
    for r, token in zip(rows, tokens, strict=True):
        position = (r["ingested_at"], r["record_id"])
        record_kind = r["record_kind"]
        item: dict[str, Any] = {
            "recordId": str(r["record_id"]),
            "patientToken": token,
            "kind": record_kind,
            "source": r["source"],
            "schemaHint": r["schema_hint"],
            "mappingVersion": (r["normalized"].get("meta") or {}).get("mapping_version", ""),
            "ingestedAt": rfc3339(r["ingested_at"]),
            "normalizedAt": rfc3339(r["normalized_at"]),
            "encounter": None,
            "claim": None,
            "labResult": None,
        }
        obj = r["normalized"].get(record_kind)
        if record_kind in _SHAPE and isinstance(obj, dict):
            item[_FIELD_OF_KIND[record_kind]] = _SHAPE[record_kind](obj, token, position)
        items.append(item)
    last = rows[-1] if rows else None
    next_cursor = encode_cursor(last["ingested_at"], last["record_id"]) if more and last else None
    return {"items": items, "nextCursor": next_cursor}


_ROOT_RESOLVERS: dict[str, Callable[..., Any]] = {
    "patient": _patient,
    "encounters": _per_patient("encounter"),
    "claims": _per_patient("claim"),
    "labResults": _per_patient("lab_result"),
    "records": _records,
}


# Documents: parse and validate once per text, then bound depth and cost ------------------------


@dataclass(frozen=True)
class Prepared:
    document: DocumentNode | None
    errors: tuple[GraphQLError, ...]
    plan: Plan | None = None


class Documents:
    """A bounded cache of parsed and validated documents, keyed by their text."""

    def __init__(self, schema: GraphQLSchema, *, introspection: bool, size: int = _DOCUMENT_CACHE):
        self.schema = schema
        self.rules = [*graphql.specified_rules]
        if not introspection:
            self.rules.append(graphql.validation.NoSchemaIntrospectionCustomRule)
        self.size = size
        self._cache: OrderedDict[str, Prepared] = OrderedDict()

    def prepare(self, text: str) -> Prepared:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        try:
            document = graphql.parse(text, max_tokens=5_000)
        except GraphQLError as exc:
            prepared = Prepared(None, (GraphQLError(f"syntax error: {exc.message}"),))
        else:
            errors = graphql.validate(self.schema, document, self.rules, max_errors=10)
            if not errors:
                errors = _bounds(document)
            plan = None if errors else compile_plan(self.schema, document)
            prepared = Prepared(None if errors else document, tuple(errors), plan)
        self._cache[text] = prepared
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return prepared


def _bounds(document: DocumentNode) -> list[GraphQLError]:
    """Depth and complexity of each operation, counted over fragments too."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    errors: list[GraphQLError] = []
    for op in document.definitions:
        if not isinstance(op, OperationDefinitionNode):
            continue
        depth, cost = _measure(op.selection_set, fragments, 1)
        if depth > MAX_DEPTH:
            errors.append(GraphQLError(f"query is deeper than {MAX_DEPTH} levels"))
        if cost > MAX_COST:
            errors.append(GraphQLError(f"query is too complex (cost over {MAX_COST})"))
    return errors


def _measure(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    level: int,
) -> tuple[int, int]:
    if selections is None:
        return level - 1, 0
    depth, cost = level, 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            child_depth, child_cost = _measure(node.selection_set, fragments, level + 1)
            if node.name.value in _PAGED:
                child_cost *= _first_of(node)
            depth, cost = max(depth, child_depth), cost + 1 + child_cost
        elif isinstance(node, InlineFragmentNode):
            child_depth, child_cost = _measure(node.selection_set, fragments, level)
            depth, cost = max(depth, child_depth), cost + child_cost
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                child_depth, child_cost = _measure(fragment.selection_set, fragments, level)
                depth, cost = max(depth, child_depth), cost + child_cost
    return depth, cost


def _first_of(node: FieldNode) -> int:
    """The page size a list field asks for; a variable counts as the largest page."""
    for arg in node.arguments:
        if arg.name.value == "first" and isinstance(arg.value, graphql.IntValueNode):
            return max(1, min(int(arg.value.value), MAX_PAGE))
    return MAX_PAGE if node.name.value != "records" else 100


# Execution --------------------------------------------------------------------------------


async def execute(
    documents: Documents,
    request: Request,
    text: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
) -> dict[str, Any]:
    """The GraphQL response (``data`` and/or ``errors``) for one query of one recipient."""
    prepared = documents.prepare(text)
    if prepared.document is None:
        return {"errors": [_public(e) for e in prepared.errors]}
    if prepared.plan is not None and operation_name in (None, _name_of(prepared.plan)):
        try:
            return await run_plan(documents.schema, prepared.plan, request, variables)
        except Fallback:
            pass  # graphql-core answers it in full, errors included
    outcome = graphql.execute(
        documents.schema,
        prepared.document,
        context_value=request,
        variable_values=variables,
        operation_name=operation_name,
    )
    # A query that touches no async resolver (introspection) is answered at once.
    result = await outcome if inspect.isawaitable(outcome) else outcome
    response: dict[str, Any] = {"data": result.data}
    if result.errors:
        response["errors"] = [_public(e) for e in result.errors]
    return response


def _name_of(plan: Plan) -> str | None:
    return plan.operation.name.value if plan.operation.name else None


def _public(error: GraphQLError) -> dict[str, Any]:
    """A GraphQL error as the caller sees it: our own message, or ``internal error``."""
    original = error.original_error
    if original is None or isinstance(original, ReadError):
        message = str(original) if original is not None else error.message
    else:
        log.error(
            "read resolver failed",
            exc_info=(type(original), original, original.__traceback__),
            extra={"fields": {"path": [str(p) for p in error.path or []]}},
        )
        message = "internal error"
    shown: dict[str, Any] = {"message": message}
    if error.locations:
        shown["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        shown["path"] = list(error.path)
    return shown
