"""The read API: ``contracts/graphql/schema.graphql``, executed for one recipient at a time.

Schema first: the executable schema is built from that file with graphql-core (no second
definition in code), and resolvers are attached to its fields by name. Every ``patientToken``
in and out is the caller's recipient token, and every identifier that could join two
recipients' extracts (``recordId``, ``personToken``, ``encounterId``, ``claimId``,
``resultId``, cursors) is the caller's own (``read/tokens.py``); the master token, the
exchange's record and person ids and the match tokens never leave.

``records`` is a feed in commit order: canonical rows by ``(insert_xid, record_id)``, read only
below the oldest transaction still running (``sql/queries/read.sql``), so a cursor never passes
a row whose transaction has yet to commit. The per-patient lists and a person's records
(``person(personToken) { records }``: the records the normalizer linked to one person, across
sources) stay in receipt order. A person token names the person a record was linked to when it
was issued; after a merge it resolves to the person that one became (``persons.merged_into``).

Cost is bounded before anything runs: a document is parsed and validated once per distinct text
(cached), then checked for depth, for root fields (at most ``MAX_ROOT_FIELDS``, aliases and
fragments counted; as many lists of a person's records, each a statement) and for complexity (each
field costs 1, a list's children cost once per item it may return; a variable ``first`` counts as
500), and ``first`` must be 1 to 500. Each list is one SQL statement over one index range, and a
page's tokens and identifiers are issued together (one call per kind of identifier), so a page of
500 records costs one statement (plus, at most once per ``RECIPIENT_CACHE_TTL_S``, one for the
recipient's keys), never one per item; a ``personToken`` costs one more statement for the page's
persons, and only when selected. The credential's record kinds (``Principal.kinds``) are a
condition of every statement. A document that selects a person's records is executed by
graphql-core (that field's resolver is a coroutine, which a compiled plan does not call); every
other plain query runs its plan (``read/plan.py``). Errors follow the GraphQL response format; a
message is ours (``ReadError``) or ``internal error``, never an exception's text.
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    StringValueNode,
    ValueNode,
)

from exchange_stream.core.scoped_ids import ITEM_KINDS
from exchange_stream.core.timefmt import rfc3339
from exchange_stream.infra.contracts import CONTRACTS_DIR
from exchange_stream.infra.sql import q
from exchange_stream.read.grants import NO_GRANTS, Grants, SqlArgs
from exchange_stream.read.plan import Fallback, Plan, Selected, compile_plan, run_plan
from exchange_stream.read.tokens import RecipientTokenService, RecipientUnavailable

log = logging.getLogger(__name__)

SCHEMA_PATH = CONTRACTS_DIR / "graphql" / "schema.graphql"
MAX_PAGE = 500
# Deep enough for the standard introspection query (15 levels); the schema itself is shallow.
MAX_DEPTH = 15
MAX_COST = 50_000
# Root fields (aliases included) per operation: each is at least one statement. The same bound
# holds for a person's record lists (``person { records }``), one statement each.
MAX_ROOT_FIELDS = 10
_DOCUMENT_CACHE = 512
_EPOCH = datetime.fromisoformat("0001-01-01T00:00:00+00:00")
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NIL = uuid.UUID(int=0)
# List fields whose items are bounded by ``first``: their children cost once per item.
_PAGED = {"encounters", "claims", "labResults", "records"}
_KINDS = ITEM_KINDS
# RFC 3339 date-time with an offset (section 5.6): what ``DateTime`` accepts.
_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


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
    schema.type_map["Person"].fields["records"].resolve = _person_records  # type: ignore[attr-defined]
    value = schema.type_map["LabValue"]
    value.resolve_type = _lab_value_type  # type: ignore[attr-defined]
    # graphql-core 3.3 coerces variables with coerce_input_value and literals with
    # parse_literal (parse_value and serialize are its older names, kept in step).
    moment = schema.type_map["DateTime"]
    moment.parse_value = moment.coerce_input_value = parse_date_time  # type: ignore[attr-defined]
    moment.parse_literal = _date_time_literal  # type: ignore[attr-defined]
    moment.serialize = moment.coerce_output_value = rfc3339  # type: ignore[attr-defined]
    return schema


def parse_date_time(value: object) -> datetime:
    """A ``DateTime`` input: an RFC 3339 date-time with an offset (``Z`` or ``±hh:mm``)."""
    match = _DATE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ReadError("DateTime must be an RFC 3339 date-time with an offset")
    day, clock, fraction, offset = match.groups()
    fraction = f".{(fraction or '0')[:6]:0<6}"
    try:
        return datetime.fromisoformat(f"{day}T{clock}{fraction}{offset.upper()}")
    except ValueError:
        raise ReadError("DateTime must be an RFC 3339 date-time with an offset") from None


def _date_time_literal(node: ValueNode, _variables: Any = None) -> datetime:
    if not isinstance(node, StringValueNode):
        raise ReadError("DateTime must be an RFC 3339 date-time with an offset")
    return parse_date_time(node.value)


@dataclass
class Request:
    """One request's context: who reads, with what, and how many statements it cost.

    ``kinds``: the record kinds the caller's credential may read (None: every kind); ``grants``:
    what the recipient's grants allow (read/grants.py), a condition of every statement.
    ``rows`` and ``kinds_read`` count what the answer holds, for the read audit."""

    recipient: str
    pool: asyncpg.Pool
    tokens: RecipientTokenService
    kinds: frozenset[str] | None = None
    grants: Grants = NO_GRANTS
    statements: int = 0
    rows: int = 0
    kinds_read: set[str] = field(default_factory=set)
    issued: dict[str, str] = field(default_factory=dict)
    persons_issued: dict[int, str] = field(default_factory=dict)

    @property
    def kinds_arg(self) -> list[str] | None:
        """``kinds`` as the statements take it (``$kinds text[]``)."""
        return None if self.kinds is None else sorted(self.kinds)

    @property
    def grant_args(self) -> SqlArgs:
        """The grants as the statements take them (``$g_all`` … ``$g_until``)."""
        return self.grants.args()

    def may_read(self, kind: str) -> bool:
        return (self.kinds is None or kind in self.kinds) and kind in self.grants.kinds

    def saw(self, kinds: list[str]) -> None:
        """Count records of ``kinds`` into the answer (the read audit's rows and kinds)."""
        self.rows += len(kinds)
        self.kinds_read.update(kinds)

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await self.pool.fetch(q(name), *args)

    async def fetchval(self, name: str, *args: Any) -> Any:
        self.statements += 1
        return await self.pool.fetchval(q(name), *args)

    async def fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        self.statements += 1
        return await self.pool.fetchrow(q(name), *args)

    async def master_of(self, token: object) -> str | None:
        return await self.tokens.resolve(self.recipient, token)

    async def tokens_for(self, masters: list[str]) -> list[str]:
        """The caller's current tokens for ``masters``, in order (one issue for a page)."""
        wanted = [m for m in dict.fromkeys(masters) if m not in self.issued]
        if wanted:
            issued = await self.tokens.issue_many(self.recipient, wanted)
            self.issued.update(zip(wanted, issued, strict=False))
        return [self.issued.get(m, "") for m in masters]

    async def person_of(self, token: object) -> int | None:
        """The person id behind one of the caller's person tokens; None for anything else."""
        return await self.tokens.open_person_id(self.recipient, token)

    async def person_tokens(self, persons: list[int]) -> list[str]:
        """The caller's person tokens for ``persons``, in order (one call for a page)."""
        wanted = [p for p in dict.fromkeys(persons) if p not in self.persons_issued]
        if wanted:
            issued = _complete(await self.tokens.person_ids(self.recipient, wanted), wanted)
            self.persons_issued.update(zip(wanted, issued, strict=True))
        return [self.persons_issued[p] for p in persons]

    async def record_person_tokens(self, ids: list[uuid.UUID]) -> list[str | None]:
        """The caller's person token of each record of ``ids``, in order: one statement for the
        page's persons (as they are now, merges followed), one call to issue their tokens; None
        for a record that is linked to no person."""
        rows = await self.fetch("read_record_persons", ids)
        person_of = {r["record_id"]: r["person_id"] for r in rows}
        persons = [person_of.get(i) for i in ids]
        linked = [p for p in persons if p is not None]
        tokens = iter(await self.person_tokens(linked) if linked else [])
        return [None if p is None else next(tokens) for p in persons]

    async def record_ids(self, ids: list[uuid.UUID]) -> list[str]:
        """The caller's record ids for a page's ``ids``, in order (one call)."""
        if not ids:
            return []
        return _complete(await self.tokens.record_ids(self.recipient, ids), ids)

    async def item_ids(self, kind: str, values: list[str]) -> list[str]:
        """The caller's ids for a page's partner ids of ``kind``, in order (one call)."""
        if not values:
            return []
        return _complete(await self.tokens.item_ids(self.recipient, kind, values), values)

    async def seal(self, payloads: list[bytes]) -> list[str]:
        """The caller's cursors for ``payloads``, in order."""
        try:
            return await self.tokens.seal_cursors(self.recipient, payloads)
        except RecipientUnavailable:
            raise ReadError("forbidden") from None

    async def open(self, cursor: str | None) -> bytes | None:
        """The payload of one of the caller's cursors; ``invalid cursor`` for anything else."""
        if cursor is None:
            return None
        payload = await self.tokens.open_cursor(self.recipient, cursor)
        if payload is None:
            raise ReadError("invalid cursor")
        return payload


def _complete(issued: list[str], asked: list[Any]) -> list[str]:
    # An empty answer: the recipient was revoked after this request was let in.
    if len(issued) != len(asked):
        raise ReadError("forbidden")
    return issued


# Cursors: positions, as payloads the caller's cursors seal -----------------------------------

# A feed position: b"F", insert_xid (8 bytes), record_id (16). A position in a patient's list:
# the kind's tag, ingested_at (microseconds since 1970, 8 bytes, signed), record_id (16); in a
# person's records, the same after b"P". Only positions: no patient or person data. A cursor of
# one list does not open as another's.
_FEED_TAG = b"F"
_LIST_TAGS = {"encounter": b"E", "claim": b"C", "lab_result": b"L"}
_PERSON_TAG = b"P"
_PAYLOAD_BYTES = 25

Position = tuple[datetime, uuid.UUID]
FeedPosition = tuple[int, uuid.UUID]
_FEED_START: FeedPosition = (0, _NIL)


def feed_payload(xid: int, record_id: uuid.UUID) -> bytes:
    return _FEED_TAG + xid.to_bytes(8, "big") + record_id.bytes


def _receipt_payload(tag: bytes, ingested_at: datetime, record_id: uuid.UUID) -> bytes:
    micros = (ingested_at - _UNIX) // _MICROSECOND
    return tag + micros.to_bytes(8, "big", signed=True) + record_id.bytes


def list_payload(kind: str, ingested_at: datetime, record_id: uuid.UUID) -> bytes:
    return _receipt_payload(_LIST_TAGS[kind], ingested_at, record_id)


def person_payload(ingested_at: datetime, record_id: uuid.UUID) -> bytes:
    return _receipt_payload(_PERSON_TAG, ingested_at, record_id)


def feed_position(payload: bytes | None) -> FeedPosition:
    if payload is None:
        return _FEED_START
    if len(payload) != _PAYLOAD_BYTES or payload[:1] != _FEED_TAG:
        raise ReadError("invalid cursor")
    return int.from_bytes(payload[1:9], "big"), uuid.UUID(bytes=payload[9:])


def list_position(kind: str, payload: bytes | None) -> Position:
    return _receipt_position(_LIST_TAGS[kind], payload)


def person_position(payload: bytes | None) -> Position:
    return _receipt_position(_PERSON_TAG, payload)


def _receipt_position(tag: bytes, payload: bytes | None) -> Position:
    if payload is None:
        return _EPOCH, _NIL
    if len(payload) != _PAYLOAD_BYTES or payload[:1] != tag:
        raise ReadError("invalid cursor")
    try:
        moment = _UNIX + int.from_bytes(payload[1:9], "big", signed=True) * _MICROSECOND
    except OverflowError:
        raise ReadError("invalid cursor") from None
    return moment, uuid.UUID(bytes=payload[9:])


def _page_size(first: object) -> int:
    if not isinstance(first, int) or not 1 <= first <= MAX_PAGE:
        raise ReadError(f"first must be between 1 and {MAX_PAGE}")
    return first


# What a query selects below a root field: identifiers and cursors are issued only when asked.


def _selected(info: Any) -> frozenset[str]:
    """Every field name selected below the resolved field, through fragments too."""
    fragments = getattr(info, "fragments", None) or {}
    names: set[str] = set()
    pending = [node.selection_set for node in info.field_nodes]
    seen: set[str] = set()
    while pending:
        selections = pending.pop()
        if selections is None:
            continue
        for node in selections.selections:
            if isinstance(node, FieldNode):
                names.add(node.name.value)
                pending.append(node.selection_set)
            elif isinstance(node, InlineFragmentNode):
                pending.append(node.selection_set)
            elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
                seen.add(node.name.value)
                fragment = fragments.get(node.name.value)
                pending.append(fragment.selection_set if fragment is not None else None)
    return frozenset(names)


# Shapes: canonical snake_case objects to the schema's camelCase ----------------------------------


def _codes(values: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return list(values or [])


def encounter(
    obj: dict[str, Any], token: str, item_id: str | None, cursor: str | None
) -> dict[str, Any]:
    return {
        "encounterId": item_id,
        "patientToken": token,
        "facilityId": obj.get("facility_id"),
        "admitTime": obj.get("admit_time"),
        "dischargeTime": obj.get("discharge_time"),
        "encounterClass": obj.get("encounter_class"),
        "diagnosisCodes": _codes(obj.get("diagnosis_codes")),
        "cursor": cursor,
    }


def claim(
    obj: dict[str, Any], token: str, item_id: str | None, cursor: str | None
) -> dict[str, Any]:
    return {
        "claimId": item_id,
        "patientToken": token,
        "payerId": obj.get("payer_id"),
        "serviceDate": obj.get("service_date"),
        "totalCharge": obj.get("total_charge"),
        "procedureCodes": _codes(obj.get("procedure_codes")),
        "diagnosisCodes": _codes(obj.get("diagnosis_codes")),
        "cursor": cursor,
    }


def lab_result(
    obj: dict[str, Any], token: str, item_id: str | None, cursor: str | None
) -> dict[str, Any]:
    value = obj.get("value")
    return {
        "resultId": item_id,
        "patientToken": token,
        "testCode": obj.get("test_code"),
        "value": {"result": value} if isinstance(value, str) else value,
        "referenceRange": obj.get("reference_range"),
        "collectedAt": obj.get("collected_at"),
        "status": obj.get("status"),
        "cursor": cursor,
    }


Shape = Callable[[dict[str, Any], str, str | None, str | None], dict[str, Any]]
_SHAPE: dict[str, Shape] = {"encounter": encounter, "claim": claim, "lab_result": lab_result}
_FIELD_OF_KIND = {"encounter": "encounter", "claim": "claim", "lab_result": "labResult"}
# The canonical field holding the partner's id of each kind, and the schema's name for it.
_ID_OF_KIND = {"encounter": "encounter_id", "claim": "claim_id", "lab_result": "result_id"}
_ID_FIELD = {"encounter": "encounterId", "claim": "claimId", "lab_result": "resultId"}


def _lab_value_type(value: dict[str, Any], *_: Any) -> str:
    if "quantity" in value:
        return "Quantity"
    if "system" in value:
        return "Code"
    return "QualitativeResult"


# Resolvers: the root fields, and a person's records -----------------------------------------


async def _patient(_: None, info: graphql.GraphQLResolveInfo, patientToken: str) -> Any:
    req: Request = info.context
    master = await req.master_of(patientToken)
    if master is None:
        return None
    if "personToken" not in _selected(info):
        if not await req.fetchval("read_patient_exists", master, req.kinds_arg, *req.grant_args):
            return None
        req.saw(["patient"])
        (token,) = await req.tokens_for([master])
        return {"patientToken": token, "dob": None}
    # The same question and the patient's person, in one statement.
    row = await req.fetchrow("read_patient_person", master, req.kinds_arg, *req.grant_args)
    if row is None or not row["found"]:
        return None
    req.saw(["patient"])
    (token,) = await req.tokens_for([master])
    person = row["person_id"]
    person_token = None if person is None else (await req.person_tokens([person]))[0]
    return {"patientToken": token, "dob": None, "personToken": person_token}


# The person id behind a resolved ``Person`` (internal: no schema field reads it).
_PERSON_ID = "_person_id"


async def _person(_: None, info: graphql.GraphQLResolveInfo, personToken: str) -> Any:
    req: Request = info.context
    opened = await req.person_of(personToken)
    if opened is None:
        return None
    # The person it is now (a merged person's survivor), if it has a record the caller may read.
    person = await req.fetchval("read_person", opened, req.kinds_arg, *req.grant_args)
    if person is None:
        return None
    (token,) = await req.person_tokens([person])
    return {"personToken": token, _PERSON_ID: person}


async def _person_records(
    person: dict[str, Any],
    info: graphql.GraphQLResolveInfo,
    kind: str | None = None,
    first: int = 100,
    after: str | None = None,
) -> dict[str, Any]:
    """``Person.records``: the person's records in receipt order, shaped as the feed shapes
    them, one statement a page. graphql-core runs it (``_needs_executor``)."""
    req: Request = info.context
    limit = _page_size(first)
    if kind is not None and kind not in _KINDS:
        raise ReadError("kind must be encounter, claim or lab_result")
    since = person_position(await req.open(after))
    rows: list[asyncpg.Record] = []
    readable = (kind is None or req.may_read(kind)) and (req.kinds is None or bool(req.kinds))
    if readable:
        rows = await req.fetch(
            "read_person_records",
            person[_PERSON_ID],
            *since,
            limit + 1,
            req.kinds_arg,
            kind,
            *req.grant_args,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    wanted = _selected(info)
    # Every record of the page is this person's: its token, without a statement.
    items = await _feed_items(req, rows, wanted, person_token=person["personToken"])
    last = (rows[-1]["ingested_at"], rows[-1]["record_id"]) if rows else since
    cursors = [person_payload(*last)] if wanted & {"nextCursor", "resumeCursor"} else []
    (resume,) = await req.seal(cursors) if cursors else (None,)
    return {"items": items, "nextCursor": resume if more else None, "resumeCursor": resume}


def _per_patient(kind: str) -> Callable[..., Any]:
    async def resolve(
        _: None,
        info: graphql.GraphQLResolveInfo,
        patientToken: str,
        first: int = MAX_PAGE,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        req: Request = info.context
        limit = _page_size(first)
        since = list_position(kind, await req.open(after))
        master = await req.master_of(patientToken)
        if master is None:
            return []
        rows = await req.fetch(
            "read_patient_kind", master, kind, *since, limit, req.kinds_arg, *req.grant_args
        )
        if not rows:
            return []
        req.saw([kind] * len(rows))
        (token,) = await req.tokens_for([master])
        wanted = _selected(info)
        objects = [r["object"] for r in rows]
        none: list[str | None] = [None] * len(rows)
        ids: list[str] | list[str | None] = none
        if id_field in wanted:
            ids = await req.item_ids(kind, [str(o.get(id_key) or "") for o in objects])
        cursors: list[str] | list[str | None] = none
        if "cursor" in wanted:
            payloads = [list_payload(kind, r["ingested_at"], r["record_id"]) for r in rows]
            cursors = await req.seal(payloads)
        return [shape(o, token, i, c) for o, i, c in zip(objects, ids, cursors, strict=True)]

    shape, id_key, id_field = _SHAPE[kind], _ID_OF_KIND[kind], _ID_FIELD[kind]
    return resolve


def _feed_statement(
    req: Request, source: str | None, kind: str | None
) -> tuple[str, tuple[Any, ...]] | None:
    """The named statement of a feed page and its filter arguments; None when the caller's
    credential cannot read the kind asked for (the page is empty without a statement)."""
    if kind is not None and kind not in _KINDS:
        raise ReadError("kind must be encounter, claim or lab_result")
    if kind is None and req.kinds is not None and len(req.kinds) == 1:
        (kind,) = req.kinds  # one kind readable: its own index
    if kind is None:
        kind = req.grants.only_kind  # one kind granted: likewise
    if source is None:
        source = req.grants.only_source  # one source granted: its own index
    if kind is not None and not req.may_read(kind):
        return None
    if (req.kinds is not None and not req.kinds) or req.grants.nothing:
        return None
    if source is None:
        return ("read_records", ()) if kind is None else ("read_records_of_kind", (kind,))
    if kind is None:
        return "read_records_of_source", (source,)
    return "read_records_of_source_kind", (source, kind)


async def _records(
    _: None,
    info: graphql.GraphQLResolveInfo,
    source: str | None = None,
    kind: str | None = None,
    first: int = 100,
    after: str | None = None,
    updatedSince: datetime | None = None,
) -> dict[str, Any]:
    req: Request = info.context
    limit = _page_size(first)
    statement = _feed_statement(req, source, kind)
    xid, rid = feed_position(await req.open(after))
    seek = updatedSince is not None and after is None
    rows: list[asyncpg.Record] = []
    if statement is not None:
        name, filters = statement
        found = await req.fetch(
            name,
            str(xid),
            rid,
            limit + 1,
            req.kinds_arg,
            updatedSince,
            seek,
            *filters,
            *req.grant_args,
        )
        rows = [r for r in found if r["record_id"] is not None]
        if not rows and after is None:
            # An empty first page resumes where it would have started (the seek's position).
            xid = next((int(r["xid"]) for r in found if r["record_id"] is None), xid)
    more = len(rows) > limit
    rows = rows[:limit]
    wanted = _selected(info)
    items = await _feed_items(req, rows, wanted)
    last = (int(rows[-1]["xid"]), rows[-1]["record_id"]) if rows else (xid, rid)
    cursors = [feed_payload(*last)] if wanted & {"nextCursor", "resumeCursor"} else []
    (resume,) = await req.seal(cursors) if cursors else (None,)
    return {"items": items, "nextCursor": resume if more else None, "resumeCursor": resume}


async def _feed_items(
    req: Request,
    rows: list[asyncpg.Record],
    wanted: frozenset[str],
    *,
    person_token: str | None = None,
) -> list[dict[str, Any]]:
    """A feed page's records in the schema's shape: identifiers issued per page (one call per
    kind of identifier), and each field that costs something computed only when selected.
    ``person_token``: the page's records are all of this person (``Person.records``)."""
    n = len(rows)
    req.saw([r["record_kind"] for r in rows])
    normalized = [r["normalized"] for r in rows]
    tokens = await req.tokens_for([doc.get("patient_token") or "" for doc in normalized])
    record_ids = (
        await req.record_ids([r["record_id"] for r in rows]) if "recordId" in wanted else []
    )
    persons: list[str | None] = []
    if "personToken" in wanted and rows:
        if person_token is not None:
            persons = [person_token] * n
        else:
            persons = await req.record_person_tokens([r["record_id"] for r in rows])
    kinds = [r["record_kind"] for r in rows]
    # Each row's kind object, when it has one of a kind the schema knows.
    objects: list[dict[str, Any] | None] = []
    for kind, doc in zip(kinds, normalized, strict=True):
        obj = doc.get(kind) if kind in _SHAPE else None
        objects.append(obj if isinstance(obj, dict) else None)
    ids: list[str | None] = [None] * n
    for kind in _KINDS:
        if _ID_FIELD[kind] not in wanted:
            continue
        at = [i for i in range(n) if kinds[i] == kind and objects[i] is not None]
        if at:
            key = _ID_OF_KIND[kind]
            values = [str(objects[i].get(key) or "") for i in at]  # type: ignore[union-attr]
            for i, issued in zip(at, await req.item_ids(kind, values), strict=True):
                ids[i] = issued
    cursors: list[str | None] = [None] * n
    if "cursor" in wanted:
        at = [i for i in range(n) if objects[i] is not None]
        payloads = [
            list_payload(kinds[i], rows[i]["ingested_at"], rows[i]["record_id"]) for i in at
        ]
        for i, sealed in zip(at, await req.seal(payloads), strict=True):
            cursors[i] = sealed
    mapping, ingested, normalized_at = (
        f in wanted for f in ("mappingVersion", "ingestedAt", "normalizedAt")
    )
    items = []
    for i, (r, doc, token, obj) in enumerate(zip(rows, normalized, tokens, objects, strict=True)):
        kind = kinds[i]
        item: dict[str, Any] = {
            "recordId": record_ids[i] if record_ids else None,
            "patientToken": token,
            "personToken": persons[i] if persons else None,
            "kind": kind,
            "source": r["source"],
            "schemaHint": r["schema_hint"],
            "mappingVersion": (doc.get("meta") or {}).get("mapping_version", "")
            if mapping
            else None,
            "ingestedAt": rfc3339(r["ingested_at"]) if ingested else None,
            "normalizedAt": rfc3339(r["normalized_at"]) if normalized_at else None,
            "encounter": None,
            "claim": None,
            "labResult": None,
        }
        if obj is not None:
            item[_FIELD_OF_KIND[kind]] = _SHAPE[kind](obj, token, ids[i], cursors[i])
        items.append(item)
    return items


_ROOT_RESOLVERS: dict[str, Callable[..., Any]] = {
    "patient": _patient,
    "person": _person,
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
            if plan is not None and _needs_executor(plan.roots):
                plan = None
            prepared = Prepared(None if errors else document, tuple(errors), plan)
        self._cache[text] = prepared
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return prepared


def _needs_executor(selected: tuple[Selected, ...]) -> bool:
    """Whether a plan reaches a field with a resolver of its own that is a coroutine function
    (``Person.records``, one statement a page): a plan calls field resolvers synchronously, so
    graphql-core answers such documents in full."""
    for sel in selected:
        if sel.resolve is not None and inspect.iscoroutinefunction(sel.resolve):
            return True
        shape = sel.shape
        while shape.item is not None:
            shape = shape.item
        if shape.fields is not None and _needs_executor(shape.fields):
            return True
    return False


def _bounds(document: DocumentNode) -> list[GraphQLError]:
    """Depth, root fields (and a person's record lists) and complexity of each operation,
    counted over fragments too."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    errors: list[GraphQLError] = []
    for op in document.definitions:
        if not isinstance(op, OperationDefinitionNode):
            continue
        if _root_fields(op.selection_set, fragments) > MAX_ROOT_FIELDS:
            errors.append(
                GraphQLError(f"query has more than {MAX_ROOT_FIELDS} root fields (aliases count)")
            )
            continue
        if _person_lists(op.selection_set, fragments) > MAX_ROOT_FIELDS:
            errors.append(
                GraphQLError(
                    f"query has more than {MAX_ROOT_FIELDS} lists of person records (aliases count)"
                )
            )
            continue
        depth, cost = _measure(op.selection_set, fragments, 1)
        if depth > MAX_DEPTH:
            errors.append(GraphQLError(f"query is deeper than {MAX_DEPTH} levels"))
        if cost > MAX_COST:
            errors.append(GraphQLError(f"query is too complex (cost over {MAX_COST})"))
    return errors


def _root_fields(selections: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode]) -> int:
    """The fields an operation selects at its root, each alias once and each fragment spread as
    often as it is spread (validation has already refused fragment cycles)."""
    count = 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            count += 1
        elif isinstance(node, InlineFragmentNode):
            count += _root_fields(node.selection_set, fragments)
        elif isinstance(node, FragmentSpreadNode):
            fragment = fragments.get(node.name.value)
            if fragment is not None:
                count += _root_fields(fragment.selection_set, fragments)
        if count > MAX_ROOT_FIELDS:
            break  # enough to refuse; a spread repeated many times is not walked further
    return count


def _fields_named(
    selections: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode], name: str
) -> list[FieldNode]:
    """The fields called ``name`` that one selection set selects, through inline fragments and
    fragment spreads, up to one more than ``MAX_ROOT_FIELDS``; only for an operation's root
    (which ``_root_fields`` has already bounded)."""
    found: list[FieldNode] = []
    pending = [selections]
    while pending and len(found) <= MAX_ROOT_FIELDS:
        current = pending.pop()
        if current is None:
            continue
        for node in current.selections:
            if isinstance(node, FieldNode):
                if node.name.value == name:
                    found.append(node)
            elif isinstance(node, InlineFragmentNode):
                pending.append(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                fragment = fragments.get(node.name.value)
                pending.append(fragment.selection_set if fragment is not None else None)
    return found


def _count_named(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    name: str,
    spread: dict[str, int],
) -> int:
    """How many fields called ``name`` one selection set selects, through inline fragments and
    fragment spreads (each spread as often as it is spread, each fragment counted once:
    ``spread``; validation has already refused fragment cycles)."""
    count = 0
    for node in selections.selections if selections is not None else ():
        if isinstance(node, FieldNode):
            count += node.name.value == name
        elif isinstance(node, InlineFragmentNode):
            count += _count_named(node.selection_set, fragments, name, spread)
        elif isinstance(node, FragmentSpreadNode):
            key = node.name.value
            if key not in spread:
                fragment = fragments.get(key)
                selection = fragment.selection_set if fragment is not None else None
                spread[key] = _count_named(selection, fragments, name, spread)
            count += spread[key]
    return count


def _person_lists(
    selections: SelectionSetNode, fragments: dict[str, FragmentDefinitionNode]
) -> int:
    """How many ``records`` lists an operation selects below its ``person`` fields."""
    spread: dict[str, int] = {}
    return sum(
        _count_named(person.selection_set, fragments, "records", spread)
        for person in _fields_named(selections, fragments, "person")
    )


def _measure(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    level: int,
    spread: dict[tuple[str, int], tuple[int, int]] | None = None,
) -> tuple[int, int]:
    """(depth, cost) of a selection set at ``level``. A fragment is measured once per level it
    is spread at (``spread``): a chain of fragments that each spread the next twice is walked
    in linear time, not in time exponential in its length."""
    if selections is None:
        return level - 1, 0
    spread = {} if spread is None else spread
    depth, cost = level, 0
    for node in selections.selections:
        if isinstance(node, FieldNode):
            child_depth, child_cost = _measure(node.selection_set, fragments, level + 1, spread)
            if node.name.value in _PAGED:
                child_cost *= _first_of(node)
            depth, cost = max(depth, child_depth), cost + 1 + child_cost
        elif isinstance(node, InlineFragmentNode):
            child_depth, child_cost = _measure(node.selection_set, fragments, level, spread)
            depth, cost = max(depth, child_depth), cost + child_cost
        elif isinstance(node, FragmentSpreadNode):
            key = (node.name.value, level)
            if key not in spread:
                fragment = fragments.get(node.name.value)
                spread[key] = (
                    _measure(fragment.selection_set, fragments, level, spread)
                    if fragment is not None
                    else (level, 0)
                )
            child_depth, child_cost = spread[key]
            depth, cost = max(depth, child_depth), cost + child_cost
    return depth, cost


def _first_of(node: FieldNode) -> int:
    """The page size a list field may return: a literal ``first``, the largest page for a
    variable (the caller chooses it after validation), else the field's default."""
    for arg in node.arguments or ():  # None when the field has no arguments at all
        if arg.name.value == "first":
            if isinstance(arg.value, graphql.IntValueNode):
                return max(1, min(int(arg.value.value), MAX_PAGE))
            return MAX_PAGE
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
    # Input coercion (a variable of the wrong shape) nests graphql-core's own error: its message
    # says what was wrong with the caller's value, as validation messages do.
    while isinstance(original, GraphQLError) and isinstance(
        original.original_error, GraphQLError | ReadError | None
    ):
        original = original.original_error
    if original is None or isinstance(original, ReadError):
        message = str(original) if isinstance(original, ReadError) else error.message
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
