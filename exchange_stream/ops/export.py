"""``export``: the run of one FHIR Bulk Data export, as an operation of the framework.

A kick-off (``web/fhir.py``) records the export (``exports``: the recipient, the request's
types, ``_since``/``_until``, ``_typeFilter``, and its horizon, the feed position of the
kick-off) and, in the same transaction, enqueues the command ``export {"export_id"}`` on the
exports topic; a worker's export agent (``ops/export_worker.py``) runs it here. The run:

1. claims the export (``running``, its ``job_run_id``) and the next execution number of the
   export, aborting the unfinished uploads an earlier execution left;
2. for each type, in the request's order, reads the rows page by page in feed order below the
   horizon (``sql/queries/export_job.sql``), the recipient's grants, its status and the
   opt-outs applied anew on every page (a grant removed, a recipient revoked, a patient opted
   out mid-export take effect from the next page on), and builds one FHIR R4 resource a row
   (``core/fhir.py``) with ids scoped to the recipient (``core/scoped_ids.py``) under the key
   version pinned at the export's first start, so every reference of the export resolves alike;
3. writes them as NDJSON files to the export bucket by multipart upload
   (``infra/export_store.py``), a file closed before it would pass ``EXPORT_FILE_MAX_BYTES``,
   under ``exports/<export id>/<execution>/<Type>.<n>.ndjson``;
4. after each file, moves the checkpoint (``job_checkpoints``, ``export:<export id>``) to the
   position of the file's last row, in a transaction that first checks the run still owns its
   execution; at the end marks the export ``completed`` with its files and writes its
   ``read_audit`` row, in one such transaction.

The run executes in a process of its own at a lower CPU priority (``ops/export_process.py``,
``EXPORT_NICE``): the worker keeps the framework's part (claim, heartbeats, ``job_runs``) and
its requests the CPU first. A process that stops without an outcome is started again, from the
checkpoint, up to ``PROCESS_ATTEMPTS`` times; then the export fails.

Opt-outs recorded while the export runs: the pages read after the opt-out's commit leave its
records out, and the files written before it may hold some. So before completing, the run looks
for records opted out by a transaction its first snapshot (taken before its first page, kept in
the checkpoint) did not see, and rewrites each file that holds one of them (or the Patient of a
person left with no readable record) without those lines; the last look is made with new
opt-outs held off (a share lock on ``opted_out_records``) in the transaction that completes the
export. An export completed holds no line of a patient opted out before its completion.

Crash and takeover: a new execution continues from the checkpoint, so the file that was being
written is written again from its first row, under the new execution's prefix (the old one's
unfinished upload is aborted, or, if the old runner still lives and completes it, left out of the
manifest and deleted with the export's files): no line is lost or doubled. A runner fenced off
(another took the run over) stops at its next write without writing anything more.

Patient resources are the current persons (merges followed) with at least one record the export
may read; each record references its person's ``Patient/<id>``. A record linked to no person
(written before linking, ``jobs run link-persons`` not run yet) is left out and counted as
``unlinked``; a canonical row whose kind object cannot be built, as ``malformed``.

Checkpoint::

    {"version": 1, "execution": n, "key_version": v, "type_index": i,
     "cursor": [insert_xid, record_id] | [person_id] | null,
     "opt_out_snapshot": "xmin:xmax:xip", "files": [{"type", "key", "count", "bytes", "last"}, ...],
     "totals": {"resources": n, "unlinked": n, "malformed": n, "withdrawn": n}}

(``last``: the position of the file's last row; ``withdrawn``: lines taken out of written
files for opt-outs recorded meanwhile.)
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from time import perf_counter
from typing import Any

import asyncpg
import orjson

from exchange_stream.core.fhir import BUILDERS, KIND_OF_TYPE, RESOURCE_TYPES, fhir_id, patient
from exchange_stream.core.scoped_ids import ScopedIds
from exchange_stream.core.timefmt import parse_time, rfc3339
from exchange_stream.infra.config import Settings
from exchange_stream.infra.export_store import ExportStore, MultipartWriter
from exchange_stream.infra.sql import q
from exchange_stream.ops import export_process
from exchange_stream.ops.checkpoint import Checkpoint
from exchange_stream.ops.framework import (
    Fenced,
    Operation,
    OperationFailed,
    OpsContext,
    ProgressFn,
)
from exchange_stream.read.grants import Grants

log = logging.getLogger(__name__)

NAME = "export"
CHECKPOINT_VERSION = 1
# The partner id each kind's item id is made of.
ITEM_FIELD = {"encounter": "encounter_id", "claim": "claim_id", "lab_result": "result_id"}
# The only Observation category canonical data holds (lab results).
LAB_CATEGORY = "laboratory"
# Rows whose ids are issued together (a few cipher calls a chunk, not one per row).
CHUNK_ROWS = 100
# The longest the run holds the event loop: a request the worker serves meanwhile waits at most
# this long at each of its awaits (it has several), so its latency stays close to its own. A
# chunk's ids and parsing (about 0.6 ms for 100 rows) run in one go, before the first look.
SLICE_S = 0.0005
# Rows built between two looks at the clock.
CLOCK_EVERY = 8
FIRST_ROW = ("0", str(uuid.UUID(int=0)))
# An export process that stops without an outcome (killed, out of memory) is started again, from
# the checkpoint, this many times in all before the export fails.
PROCESS_ATTEMPTS = 3
CONTENT_TYPE = "application/fhir+ndjson"


def job_name(export_id: uuid.UUID | str) -> str:
    """The export's checkpoint row in ``job_checkpoints``."""
    return f"export:{export_id}"


def export_prefix(export_id: uuid.UUID | str) -> str:
    """Where every file of an export lives, whatever the execution that wrote it."""
    return f"exports/{export_id}/"


def file_key(export_id: uuid.UUID | str, execution: int, rtype: str, n: int) -> str:
    return f"{export_prefix(export_id)}{execution}/{rtype}.{n}.ndjson"


@dataclass(frozen=True)
class Plan:
    """What an export writes, read from its ``exports.params`` (the kick-off validated them)."""

    types: tuple[str, ...]
    since: datetime | None = None
    until: datetime | None = None
    # Types whose ``_typeFilter`` matches nothing canonical data holds: no file at all.
    empty: frozenset[str] = frozenset()

    @property
    def kinds(self) -> list[str]:
        """The audit's kinds: each type's record kind (``patient`` for Patient)."""
        return [KIND_OF_TYPE.get(t, t.lower()) for t in self.types]


def plan_of(params: Mapping[str, Any]) -> Plan:
    """The export's plan. Types in ``RESOURCE_TYPES`` order; an Observation ``category``
    filter keeps lab results only if it names ``laboratory`` (bare or ``system|code``)."""
    wanted = set(params.get("types") or RESOURCE_TYPES)
    types = tuple(t for t in RESOURCE_TYPES if t in wanted)
    since, until = params.get("since"), params.get("until")
    empty = set()
    categories = ((params.get("type_filters") or {}).get("Observation") or {}).get("category")
    if categories is not None and not any(
        str(c).rpartition("|")[2] == LAB_CATEGORY for c in categories
    ):
        empty.add("Observation")
    return Plan(
        types=types,
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        empty=frozenset(empty),
    )


def initial_checkpoint(key_version: int) -> dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "execution": 0,
        "key_version": key_version,
        "type_index": 0,
        "cursor": None,
        "opt_out_snapshot": None,
        "files": [],
        "totals": {"resources": 0, "unlinked": 0, "malformed": 0, "withdrawn": 0},
    }


def fhir_ids(tokens: list[str]) -> list[str]:
    """``fhir_id`` of each of a chunk's tokens, in one pass over their text: they are
    ``ScopedIds``' own (valid by construction), so only the spelling changes; the first is
    checked against ``fhir_id`` itself."""
    if not tokens:
        return []
    ids = "\n".join(tokens).replace("_", ".").split("\n")
    if ids[0] != fhir_id(tokens[0]):
        raise ValueError("fhir_id changed its spelling of tokens")
    return ids


def _object(text: str | None) -> dict[str, Any] | None:
    """A row's kind object; None when it has none (or not an object)."""
    obj = orjson.loads(text) if text is not None else None
    return obj if isinstance(obj, dict) else None


def _record_position(row: asyncpg.Record) -> list[Any]:
    return [row["xid"], str(row["record_id"])]


def _order(position: Sequence[Any]) -> tuple[Any, ...]:
    """A position as something Python orders as Postgres does: a record's ``(insert_xid,
    record_id)`` (a uuid orders as its lowercase text), or a person's ``(person_id,)``."""
    if len(position) == 1:
        return (int(position[0]),)
    return (int(position[0]), str(position[1]))


def file_holding(files: Sequence[Mapping[str, Any]], rtype: str, position: Sequence[Any]) -> int:
    """The index in ``files`` of the file of ``rtype`` whose rows' range holds ``position``
    (files of a type follow each other in position order, each ending at its ``last``); -1 when
    the position is past every written file of that type."""
    at = _order(position)
    for index, f in enumerate(files):
        if f["type"] == rtype and f.get("last") is not None and at <= _order(f["last"]):
            return index
    return -1


def withdraw_lines(data: bytes, ids: set[str]) -> tuple[list[bytes], int]:
    """The NDJSON lines of ``data`` (whole lines) whose resource ``id`` is not in ``ids``, and
    how many were taken out."""
    kept, dropped = [], 0
    for line in data.splitlines(keepends=True):
        if line.strip() and orjson.loads(line).get("id") in ids:
            dropped += 1
        else:
            kept.append(line)
    return kept, dropped


class _Cancelled(Exception):
    """The export was cancelled (``DELETE`` of its status URL): stop, write nothing more."""


@dataclass
class _File:
    """The file being written: its upload, what it holds, the lines not yet handed over."""

    rtype: str
    key: str
    writer: MultipartWriter
    count: int = 0
    bytes: int = 0
    pending: list[bytes] = field(default_factory=list)

    def add(self, line: bytes) -> None:
        self.pending.append(line)
        self.count += 1
        self.bytes += len(line)

    async def flush(self) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            await self.writer.write(data)


@dataclass(frozen=True)
class ExportResources:
    """What a run uses: its settings, a pool, the export bucket, and the ``job_runs`` run and
    execution it writes under (its fence)."""

    settings: Settings
    pool: asyncpg.Pool
    store: ExportStore
    job_run_id: uuid.UUID
    execution: int
    correlation_id: str | None = None


def claim_message(
    ctx: OpsContext, export_id: uuid.UUID, claimed: Mapping[str, Any]
) -> dict[str, Any]:
    """What the export process is handed: the run it executes under, and the export claimed."""
    return {
        "export_id": str(export_id),
        "job_run_id": str(ctx.job_run_id),
        "execution": ctx.execution,
        "correlation_id": ctx.correlation_id,
        "recipient_id": claimed["recipient_id"],
        "params": dict(claimed["params"]),
        "horizon": claimed["horizon"],
    }


class ExportRun:
    """One execution of one export's run (see the module docstring); ``claimed`` holds the
    export's ``recipient_id``, ``params`` and ``horizon``."""

    def __init__(
        self,
        res: ExportResources,
        export_id: uuid.UUID,
        claimed: Mapping[str, Any],
        progress: ProgressFn,
    ) -> None:
        self.res = res
        self.pool: asyncpg.Pool = res.pool
        self.store: ExportStore = res.store
        self.job_run_id: uuid.UUID = res.job_run_id
        self.run_execution: int = res.execution
        self.export_id = export_id
        self.recipient: str = claimed["recipient_id"]
        self.plan = plan_of(claimed["params"])
        self.horizon: str = claimed["horizon"]
        self.report = progress
        self.settings = res.settings
        self.ids = ScopedIds(res.settings.recipient_token_secret)
        self.checkpoint = Checkpoint(self.pool, job_name(export_id))
        self.state: dict[str, Any] = {}
        self.file: _File | None = None
        # Since the last checkpoint: rows left out, and the last row read (its position).
        self.unlinked = self.malformed = 0
        self.position: list[Any] | None = None
        self.estimate = 0
        self.started = time.monotonic()
        self.written_here = 0
        # Records opted out during the run that have been taken out of the written files.
        self.withdrawn_records: set[uuid.UUID] = set()
        self.rewrites = 0

    # The run ---------------------------------------------------------------------------

    async def execute(self) -> dict[str, Any]:
        try:
            _, version = await self._check()
            await self._begin(version)
            # Again, now that the key version of the export is known (pinned at its first start).
            grants, _ = await self._check()
            await self.store.ensure_bucket()
            # Whatever an earlier execution left unfinished (the file it was writing).
            aborted = await self.store.abort_uploads(export_prefix(self.export_id))
            self.estimate = await self._estimate()
            for index in range(self.state["type_index"], len(self.plan.types)):
                rtype = self.plan.types[index]
                if rtype not in self.plan.empty:
                    if rtype == "Patient":
                        await self._persons(grants)
                    else:
                        await self._records(rtype, grants)
                    grants, _ = await self._check()
                await self._end_type(index)
            return await self._complete(aborted)
        except _Cancelled:
            return await self._cancelled()
        except Fenced:
            await self._drop_file()
            raise
        except OperationFailed as exc:
            await self._drop_file()
            await self._end("failed", str(exc))
            raise
        except Exception as exc:
            await self._drop_file()
            # The type only: the export's error is shown to the recipient.
            await self._end("failed", f"{type(exc).__name__} during the export")
            raise

    async def _begin(self, key_version: int) -> None:
        """The export's next execution number, taken under the run's fence."""
        await self.checkpoint.ensure(initial_checkpoint(key_version))
        async with self.checkpoint.batch() as tx:
            await self._owned(tx.conn)
            state = dict(tx.checkpoint)
            state["execution"] = int(state["execution"]) + 1
            if not state.get("opt_out_snapshot"):
                # Before the first page: every opt-out this snapshot sees, every page sees.
                state["opt_out_snapshot"] = await tx.conn.fetchval(q("export_job_snapshot"))
            await tx.advance(state)
        self.state = state
        self.position = state["cursor"]

    async def _check(self) -> tuple[Grants, int]:
        """Before each page: the export is still this run's and not cancelled, the recipient
        is active and the export's key version (before the first start: the current one)
        still resolves; the grants as of now, and that key version."""
        row = await self.pool.fetchrow(q("export_job_status"), self.export_id)
        if row is None or row["status"] == "cancelled":
            raise _Cancelled()
        if row["status"] != "running" or row["job_run_id"] != self.job_run_id:
            raise Fenced(str(self.job_run_id))
        state = await self.pool.fetchrow(q("recipient_state"), self.recipient)
        if state is None or state["status"] != "active" or not state["versions"]:
            raise OperationFailed("the recipient is not active")
        versions = tuple(state["versions"])
        version = self.state.get("key_version")
        if version is not None and version not in versions:
            raise OperationFailed("the key version of this export was retired")
        return Grants.of(state["grants"]), int(version or max(versions))

    async def _estimate(self) -> int:
        kinds = [KIND_OF_TYPE[t] for t in self.plan.types if t in KIND_OF_TYPE]
        rows = await self.pool.fetch(q("export_job_estimate"), kinds, self.horizon)
        total = sum(r["n"] for r in rows)
        if "Patient" in self.plan.types:
            total += await self.pool.fetchval(q("export_job_estimate_persons"))
        return int(total)

    # Pages -----------------------------------------------------------------------------

    async def _records(self, rtype: str, grants: Grants) -> None:
        """Every row of the type's kind after the checkpoint's position, page by page; the
        next page is read while this one is built."""
        kind = KIND_OF_TYPE[rtype]
        limit = self.settings.export_page_rows
        since, until = self.plan.since, self.plan.until

        def fetch(after: Sequence[Any], g: Grants) -> asyncio.Task[list[asyncpg.Record]]:
            return asyncio.create_task(
                self.pool.fetch(
                    q("export_job_records"),
                    kind,
                    after[0],
                    after[1],
                    self.horizon,
                    since,
                    until,
                    limit,
                    *g.args(),
                )
            )

        pending: asyncio.Task[list[asyncpg.Record]] | None = fetch(
            self.position or FIRST_ROW, grants
        )
        try:
            while pending is not None:
                rows = await pending
                pending = None
                if len(rows) == limit:
                    grants, _ = await self._check()
                    last = rows[-1]
                    pending = fetch((last["xid"], last["record_id"]), grants)
                if rows:
                    await self._write_records(rtype, kind, rows)
        finally:
            if pending is not None:
                pending.cancel()

    async def _persons(self, grants: Grants) -> None:
        """Every person with a record the export may read, after the checkpoint's position."""
        limit = self.settings.export_page_rows
        after = int(self.position[0]) if self.position else 0
        while True:
            rows = await self.pool.fetch(
                q("export_job_persons"),
                after,
                self.horizon,
                self.plan.since,
                self.plan.until,
                limit,
                *grants.args(),
            )
            if rows:
                await self._write_persons(rows)
                after = rows[-1]["person_id"]
            if len(rows) < limit:
                return
            grants, _ = await self._check()

    async def _write_records(self, rtype: str, kind: str, rows: list[asyncpg.Record]) -> None:
        build = BUILDERS[kind]
        item_field = ITEM_FIELD[kind]
        version = self.state["key_version"]
        max_bytes = self.settings.export_file_max_bytes
        slice_ends = perf_counter() + SLICE_S
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            # Ids of the chunk in a few cipher calls, not one per row.
            persons = sorted({r["person_id"] for r in chunk if r["person_id"] is not None})
            person_tokens = dict(
                zip(
                    persons,
                    fhir_ids(self.ids.person_ids(persons, self.recipient, version)),
                    strict=True,
                )
            )
            record_ids = fhir_ids(
                self.ids.record_ids([r["record_id"] for r in chunk], self.recipient, version)
            )
            objects = [_object(r["object"]) for r in chunk]
            values = [str((o or {}).get(item_field) or "") for o in objects]
            item_ids = self.ids.item_ids(kind, values, self.recipient, version)
            for i, row in enumerate(chunk):
                if not i % CLOCK_EVERY and perf_counter() > slice_ends:
                    await asyncio.sleep(0)
                    slice_ends = perf_counter() + SLICE_S
                person, obj = row["person_id"], objects[i]
                if person is None:
                    self.unlinked += 1
                    continue
                if obj is None:
                    self.malformed += 1
                    continue
                try:
                    resource = build(
                        obj,
                        id=record_ids[i],
                        patient=person_tokens[person],
                        item_id=item_ids[i] if values[i] else None,
                        last_updated=row["last_updated"],
                    )
                except (KeyError, TypeError, ValueError, AttributeError):
                    self.malformed += 1
                    continue
                line = orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE)
                f = self.file
                if f is None or (f.count and f.bytes + len(line) > max_bytes):
                    if i:
                        self.position = _record_position(chunk[i - 1])
                    f = await self._next_file(rtype)
                f.add(line)
            self.position = _record_position(chunk[-1])
            await self._chunk_done(rtype)

    async def _write_persons(self, rows: list[asyncpg.Record]) -> None:
        version = self.state["key_version"]
        max_bytes = self.settings.export_file_max_bytes
        slice_ends = perf_counter() + SLICE_S
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            tokens = fhir_ids(
                self.ids.person_ids([r["person_id"] for r in chunk], self.recipient, version)
            )
            for i, (row, token) in enumerate(zip(chunk, tokens, strict=True)):
                if not i % CLOCK_EVERY and perf_counter() > slice_ends:
                    await asyncio.sleep(0)
                    slice_ends = perf_counter() + SLICE_S
                resource = patient(id=token, last_updated=row["last_updated"])
                line = orjson.dumps(resource, option=orjson.OPT_APPEND_NEWLINE)
                f = self.file
                if f is None or (f.count and f.bytes + len(line) > max_bytes):
                    if i:
                        self.position = [chunk[i - 1]["person_id"]]
                    f = await self._next_file("Patient")
                f.add(line)
            self.position = [chunk[-1]["person_id"]]
            await self._chunk_done("Patient")

    async def _chunk_done(self, rtype: str) -> None:
        if self.file is not None:
            await self.file.flush()
        await self._progress(rtype)

    # Files -----------------------------------------------------------------------------

    async def _next_file(self, rtype: str) -> _File:
        """The current file closed (it would pass the maximum size with the next line, and the
        checkpoint moves to the position before that line), and the type's next one started."""
        if self.file is not None:
            await self._close_file()
        n = 1 + sum(1 for x in self.state["files"] if x["type"] == rtype)
        key = file_key(self.export_id, self.state["execution"], rtype, n)
        writer = await self.store.writer(key, CONTENT_TYPE).start()
        self.file = _File(rtype, key, writer)
        return self.file

    async def _close_file(self, type_index: int | None = None) -> None:
        """Complete the current file's upload, then record it and the position of its last row
        (or, with ``type_index``, the next type) in the checkpoint, under the run's fence."""
        f = self.file
        state = dict(self.state)
        files = list(state["files"])
        totals = dict(state["totals"])
        if f is not None:
            await f.flush()
            size = await f.writer.close()
            files.append(
                {
                    "type": f.rtype,
                    "key": f.key,
                    "count": f.count,
                    "bytes": size,
                    "last": self.position,
                }
            )
            totals["resources"] += f.count
            self.written_here += f.count
        totals["unlinked"] += self.unlinked
        totals["malformed"] += self.malformed
        state.update(files=files, totals=totals, cursor=self.position)
        if type_index is not None:
            state.update(type_index=type_index, cursor=None)
        async with self.checkpoint.batch() as tx:
            await self._owned(tx.conn)
            await tx.advance(state)
        self.state, self.file = state, None
        self.unlinked = self.malformed = 0
        if type_index is not None:
            self.position = None

    async def _end_type(self, index: int) -> None:
        await self._close_file(type_index=index + 1)
        await self._progress(None, force=True)

    async def _drop_file(self) -> None:
        if self.file is not None:
            await self.file.writer.abort()
            self.file = None

    # Ends ------------------------------------------------------------------------------

    async def _owned(self, conn: asyncpg.Connection) -> None:
        if await conn.fetchval(q("export_job_owned"), self.job_run_id, self.run_execution) is None:
            raise Fenced(str(self.job_run_id))

    async def _complete(self, aborted: int) -> dict[str, Any]:
        """Complete the export once no opt-out recorded during the run reaches a written file:
        the last look at them and the completion in one transaction, new opt-outs held off."""
        late = await self._late_opt_outs(self.pool)
        while True:
            if late:
                await self._withdraw(late)
            async with self.pool.acquire() as conn, conn.transaction():
                await self._owned(conn)
                await conn.execute(q("export_job_hold_opt_outs"))
                late = await self._late_opt_outs(conn)
                if late:
                    continue
                expires_at = await conn.fetchval(
                    q("export_job_complete"),
                    self.export_id,
                    self.job_run_id,
                    self.state["files"],
                    self.settings.export_retention_hours,
                    self.plan.kinds,
                    self.state["totals"]["resources"],
                    self.res.correlation_id,
                )
                break
        if expires_at is None:
            # Cancelled between the last page and here.
            return await self._cancelled()
        await self._progress(None, force=True, percent=100)
        return {
            **self._summary("completed"),
            "expires_at": rfc3339(expires_at),
            "uploads_aborted": aborted,
        }

    # Opt-outs recorded during the run ---------------------------------------------------

    async def _late_opt_outs(self, conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
        """Records below the horizon opted out by a transaction the run's first snapshot did
        not see, less those already taken out of the files."""
        rows = await conn.fetch(
            q("export_job_late_opt_outs"), self.state["opt_out_snapshot"], self.horizon
        )
        return [r for r in rows if r["record_id"] not in self.withdrawn_records]

    async def _withdraw(self, late: list[asyncpg.Record]) -> None:
        """Rewrite each written file that holds a line of ``late`` without it: the records
        themselves, and the Patient of each of their persons left with no readable record."""
        version = self.state["key_version"]
        files = self.state["files"]
        drop: dict[int, set[str]] = {}
        type_of_kind = {kind: rtype for rtype, kind in KIND_OF_TYPE.items()}
        for row in late:
            rtype = type_of_kind.get(row["kind"])
            index = file_holding(files, rtype, [row["xid"], str(row["record_id"])]) if rtype else -1
            if index >= 0:
                (record_id,) = fhir_ids(
                    self.ids.record_ids([row["record_id"]], self.recipient, version)
                )
                drop.setdefault(index, set()).add(record_id)
        persons = sorted({r["person_id"] for r in late if r["person_id"] is not None})
        if persons and "Patient" in self.plan.types:
            grants, _ = await self._check()
            readable = {
                r["person_id"]
                for r in await self.pool.fetch(
                    q("export_job_persons_readable"), persons, self.horizon, *grants.args()
                )
            }
            gone = [p for p in persons if p not in readable]
            tokens = fhir_ids(self.ids.person_ids(gone, self.recipient, version))
            for person, token in zip(gone, tokens, strict=True):
                index = file_holding(files, "Patient", [person])
                if index >= 0:
                    drop.setdefault(index, set()).add(token)
        for index in sorted(drop, reverse=True):
            await self._rewrite(index, drop[index])
        self.withdrawn_records.update(r["record_id"] for r in late)

    async def _rewrite(self, index: int, ids: set[str]) -> None:
        """The file at ``index`` written anew without the lines of ``ids`` (streamed through,
        never whole in memory), recorded in the checkpoint in its place (or dropped when
        nothing is left), and the old object deleted."""
        old = self.state["files"][index]
        self.rewrites += 1
        key = old["key"].removesuffix(".ndjson") + f".{self.state['execution']}-{self.rewrites}"
        writer = await self.store.writer(key + ".ndjson", CONTENT_TYPE).start()
        kept = dropped = 0
        rest = b""
        try:
            async for chunk in self.store.stream(old["key"]):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                lines, out = withdraw_lines(data[:cut], ids)
                dropped += out
                kept += len(lines)
                await writer.write(b"".join(lines))
            lines, out = withdraw_lines(rest, ids)
            dropped += out
            kept += len(lines)
            await writer.write(b"".join(lines))
        except BaseException:
            await writer.abort()
            raise
        if not dropped:
            await writer.abort()
            return
        state = dict(self.state)
        files = list(state["files"])
        totals = dict(state["totals"])
        if kept:
            size = await writer.close()
            files[index] = {**old, "key": key + ".ndjson", "count": kept, "bytes": size}
        else:
            await writer.abort()
            del files[index]
        totals["resources"] -= dropped
        totals["withdrawn"] = totals.get("withdrawn", 0) + dropped
        state.update(files=files, totals=totals)
        async with self.checkpoint.batch() as tx:
            await self._owned(tx.conn)
            await tx.advance(state)
        self.state = state
        await self.store.delete(old["key"])
        log.info(
            "export file rewritten for opt-outs",
            extra={"fields": {"export_id": str(self.export_id), "lines_withdrawn": dropped}},
        )

    async def _cancelled(self) -> dict[str, Any]:
        """Stop: the current upload aborted, every file of the export deleted."""
        await self._drop_file()
        await self._end("cancelled", None)
        deleted = await self.store.delete_prefix(export_prefix(self.export_id))
        await self.pool.execute(q("export_job_files_deleted"), self.export_id)
        return {**self._summary("cancelled"), "files_deleted": deleted}

    async def fail(self, error: str) -> None:
        """End the export ``failed`` with ``error`` (shown to the recipient) under the fence;
        for a run whose process stopped before it could."""
        await self._end("failed", error)

    async def _end(self, status: str, error: str | None) -> None:
        totals = self.state.get("totals") or {"resources": 0}
        async with self.pool.acquire() as conn, conn.transaction():
            await self._owned(conn)
            await conn.fetchval(
                q("export_job_end"),
                self.export_id,
                self.job_run_id,
                status,
                error,
                self.plan.kinds,
                totals["resources"],
                self.res.correlation_id,
            )

    def _summary(self, status: str) -> dict[str, Any]:
        files = self.state.get("files", [])
        totals = self.state.get("totals", {})
        by_type: dict[str, int] = {}
        for f in files:
            by_type[f["type"]] = by_type.get(f["type"], 0) + f["count"]
        elapsed = time.monotonic() - self.started
        return {
            "export_id": str(self.export_id),
            "status": status,
            "execution": self.state.get("execution"),
            "resources": totals.get("resources", 0),
            "by_type": by_type,
            "files": len(files),
            "bytes": sum(f["bytes"] for f in files),
            "unlinked": totals.get("unlinked", 0),
            "malformed": totals.get("malformed", 0),
            "withdrawn": totals.get("withdrawn", 0),
            "written_by_this_execution": self.written_here,
            "elapsed_s": round(elapsed, 3),
            "resources_per_s": round(self.written_here / elapsed) if elapsed > 0 else 0,
        }

    async def _progress(
        self, rtype: str | None, *, force: bool = False, percent: int | None = None
    ) -> None:
        index = self.state.get("type_index", 0)
        done = self.state["totals"]["resources"] + (self.file.count if self.file else 0)
        if percent is None:
            # An estimate: the denominator counts rows before grants and opt-outs.
            percent = min(99, int(100 * done / self.estimate)) if self.estimate else 0
        await self.report(
            {
                "types_done": list(self.plan.types[:index]),
                "type": rtype,
                "resources": done,
                "files": len(self.state["files"]),
                "percent": percent,
            }
        )


async def run(ctx: OpsContext, params: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Run the export ``params["export_id"]`` (see the module docstring)."""
    export_id = uuid.UUID(params["export_id"])
    claimed = await ctx.pool.fetchrow(
        q("export_job_claim"),
        export_id,
        ctx.job_run_id,
        float(ctx.settings.control_takeover_after_s),
    )
    if claimed is None:
        row = await ctx.pool.fetchrow(q("export_job_get"), export_id)
        if row is None:
            raise OperationFailed("no such export")
        if row["status"] in ("accepted", "running"):
            raise OperationFailed("another live run is running this export")
        # Ended before (a redelivered command): nothing more to do.
        return {"export_id": str(export_id), "status": row["status"], "files": len(row["output"])}
    if ctx.export_store is None or ctx.job_run_id is None or ctx.execution is None:
        raise RuntimeError("an export runs under run_recorded with an export store")
    claim = claim_message(ctx, export_id, claimed)
    for attempt in range(1, PROCESS_ATTEMPTS + 1):
        try:
            return await export_process.run_child(ctx.settings, claim, progress)
        except export_process.ProcessStopped as exc:
            fields = {"export_id": str(export_id), "attempt": attempt, "exit_code": exc.code}
            log.warning("export process stopped", extra={"fields": fields})
    resources = ExportResources(
        ctx.settings,
        ctx.pool,
        ctx.export_store,
        ctx.job_run_id,
        ctx.execution,
        ctx.correlation_id,
    )
    await ExportRun(resources, export_id, claim, progress).fail("the export process stopped")
    raise OperationFailed("the export process stopped")


async def execute_claim(
    res: ExportResources, claim: Mapping[str, Any], progress: ProgressFn
) -> dict[str, Any]:
    """The run itself, in the export process (``ops/export_child.py``)."""
    return await ExportRun(res, uuid.UUID(claim["export_id"]), claim, progress).execute()


OPERATION = Operation(
    name=NAME,
    cli=("jobs", "run", NAME),
    summary="run one bulk export (FHIR NDJSON files in the export bucket), checkpointed per file",
    run=run,
    job=True,
)
