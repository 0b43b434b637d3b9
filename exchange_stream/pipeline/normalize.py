"""Normalize: ingested event → raw object → mapped, tokenized, canonical row.

The pure core (``parse_event``, ``canonicalize``) turns bytes into a canonical row or a
``ProcessingError``. ``Normalizer.process`` does the I/O for a batch of Kafka messages:

1. ledger: every record's attempt starts, committed before any work;
2. S3 reads in parallel, then checksum, mapping and tokenizing per record;
3. one statement writes every canonical row, the manifest state and ledger success;
4. permanent failures go to the DLQ at once; record-level transient ones are recorded, backed
   off and retried up to MAX_ATTEMPTS, then go to the DLQ.

A dependency outage is not a record's failure: when S3 or Postgres does not answer, the batch
waits at the gate (``pipeline/gate.py``) until it does, and its records are retried without
spending their attempts. ``process`` returns only when every message of the batch is canonical
(or was already) or in the DLQ: the agent acknowledges the batch after that, so offsets never
pass a record that has neither.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from exchange_stream.core import errors
from exchange_stream.core.envelopes import envelope
from exchange_stream.core.errors import ProcessingError
from exchange_stream.core.events import EVENT_TYPE, IngestedEvent
from exchange_stream.core.formats import FORMATS, for_version
from exchange_stream.core.identity import IdentityError, canonical_identity, token_for
from exchange_stream.core.mappings import MAPPING_VERSION, MappingError, map_payload
from exchange_stream.core.match_tokens import MatchKeys, linking_rows, match_tokens
from exchange_stream.core.matching import match_attributes
from exchange_stream.core.timefmt import rfc3339
from exchange_stream.infra import metrics
from exchange_stream.infra.config import Settings
from exchange_stream.infra.contracts import ContractViolation, check_event
from exchange_stream.infra.db import POSTGRES_UNAVAILABLE
from exchange_stream.infra.runtime import Runtime
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import ObjectMissing, StorageUnavailable
from exchange_stream.pipeline.gate import DependencyGate

log = logging.getLogger(__name__)

PIPELINE = "normalize"
_YIELD_EVERY = 32


@dataclass(frozen=True)
class Message:
    """One Kafka message as the normalizer needs it."""

    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class Work:
    """A parsed event on its way through the batch."""

    message: Message
    event: IngestedEvent
    attempts: int = 0
    attempt_no: int = 0
    already_canonical: bool = False
    row: dict[str, Any] | None = None
    error: ProcessingError | None = field(default=None)

    @property
    def record_id(self) -> uuid.UUID:
        return self.event.record_id


def parse_event(value: bytes | None) -> IngestedEvent:
    """The event, validated against its format's compiled contract; else a permanent error."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise errors.permanent("UnparseableEvent", "parse", "event is not valid JSON") from None
    if not isinstance(doc, dict):
        raise errors.permanent("UnparseableEvent", "parse", "event is not a JSON object")
    if for_version(doc.get("event_version")) is None or doc.get("event_type") != EVENT_TYPE:
        raise errors.permanent("UnsupportedEvent", "parse", "unknown event type or version")
    try:
        check_event(doc)
        return IngestedEvent.from_dict(doc)
    except ContractViolation as exc:
        raise errors.permanent("InvalidEvent", "parse", f"event contract: {exc}") from None
    except (KeyError, ValueError, TypeError):
        raise errors.permanent("InvalidEvent", "parse", "event lacks a required field") from None


def canonicalize(
    event: IngestedEvent,
    raw: bytes,
    hmac_key: bytes,
    normalized_at: datetime,
    match_keys: MatchKeys | None = None,
) -> dict[str, Any]:
    """The canonical row for ``event`` from its raw object's bytes, or a ``ProcessingError``.

    With ``match_keys``, the row also carries the record's match tokens (``match_tokens``: rule →
    token), which go to the ``match_tokens`` table, never into ``normalized``."""
    expected = event.raw_object
    if len(raw) != expected.size_bytes or hashlib.sha256(raw).hexdigest() != expected.sha256:
        raise errors.permanent("ChecksumMismatch", "verify", "raw object differs from the event")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.permanent("UnparseableRawObject", "map", "raw object is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("patient"), dict):
        raise errors.permanent("MissingIdentifiers", "map", "raw object lacks patient")
    fmt = event.format
    if fmt.event_carries_kind:
        kind, hint = event.record_kind, event.schema_hint
    else:
        kind, hint = fmt.kind_and_hint(body)
    try:
        mapped = map_payload(kind, hint, body.get("payload"))
    except MappingError as exc:
        raise errors.permanent("MappingError", "map", str(exc)) from None
    try:
        identity = canonical_identity(*fmt.identity(body["patient"]))
    except IdentityError as exc:
        raise errors.permanent("MissingIdentifiers", "tokenize", str(exc)) from None
    normalized = {
        "patient_token": token_for(identity, hmac_key),
        "record_kind": kind,
        kind: mapped,
        "meta": {
            "normalized_at": rfc3339(normalized_at),
            "schema_hint": hint,
            "mapping_version": MAPPING_VERSION,
        },
    }
    tokens = {}
    if match_keys is not None:
        tokens = match_tokens(match_attributes(body["patient"], fmt), match_keys)
    return {
        "match_tokens": tokens,
        "source": event.source,
        "raw_object_key": expected.key,
        "raw_sha256": expected.sha256,
        "normalized": normalized,
        "ingested_at": event.occurred_at,
        "correlation_id": event.correlation_id,
        "event_version": fmt.version,
        "record_kind": kind,
        "schema_hint": hint,
    }


class Normalizer:
    """Runs batches of ingested-event messages to canonical rows or the DLQ."""

    rerun_first_delay_s = 0.5
    rerun_max_delay_s = 30.0

    def __init__(self, settings: Settings, runtime: Runtime, gate: DependencyGate) -> None:
        self.settings = settings
        self.runtime = runtime
        self.gate = gate
        self._hmac_key = settings.tokenizer_hmac_secret.encode()
        self._match_keys = MatchKeys(settings.match_token_secret)
        self._versions_by_topic = {settings.ingest_topic_for(f.version): f.version for f in FORMATS}

    async def process(self, messages: Sequence[Message]) -> None:
        """Bring every message to a canonical row or the DLQ (see the module docstring)."""
        await self.gate.wait_open()
        pending: list[Work] = []
        seen: set[uuid.UUID] = set()
        for i, m in enumerate(messages):
            if i and i % _YIELD_EVERY == 0:
                # Parsing and checking a whole batch is ~30 µs an event: let the front door in.
                await asyncio.sleep(0)
            try:
                event = parse_event(m.value)
            except ProcessingError as exc:
                await self._dead_letter(None, m, exc, attempts=1)
                continue
            if event.record_id in seen:
                # The same record twice in one batch: the first occurrence does the work.
                metrics.normalizer_records_total.labels("duplicate", "-", "-").inc()
                continue
            seen.add(event.record_id)
            pending.append(Work(message=m, event=event))

        # One lock order for every batch (ledger and canonical rows by record id), so concurrent
        # batches that share a record wait for each other instead of deadlocking.
        pending.sort(key=lambda w: w.record_id)
        retries = 0
        while pending:
            await self.gate.wait_open()
            await self._start(pending)
            todo = [w for w in pending if not w.already_canonical]
            await asyncio.gather(*(self._prepare(w) for w in todo))
            done = [w for w in pending if w.already_canonical or w.row is not None]
            await self._commit(done)
            failed = [w for w in pending if w.error is not None]
            unavailable = [w for w in failed if w.error.type == "StorageUnavailable"]
            waited: list[Work] = []
            if unavailable and await self._storage_outage(unavailable):
                # The gate waited the outage out: the reads were not the records' fault.
                waited = unavailable
            retry: list[Work] = []
            for w in failed:
                if any(w is v for v in waited):
                    continue
                metrics.normalizer_failures_total.labels(w.error.stage, w.error.type).inc()
                if w.error.transient and w.attempts < self.settings.max_attempts:
                    retry.append(w)
                else:
                    await self._dead_letter(w, w.message, w.error, attempts=w.attempts)
            if retry:
                # The retryable failure is committed before the backoff wait.
                for w in retry:
                    await self._record_failure(w, w.error, "failed", "failed_retryable")
                retries += 1
                delay_ms = self.settings.backoff_base_ms * 2 ** (retries - 1)
                await asyncio.sleep(min(delay_ms, 30_000) / 1000)
            pending = waited + retry
            for w in pending:
                w.error, w.row = None, None

    async def process_until_done(self, messages: Sequence[Message]) -> None:
        """``process``, run again with backoff for as long as it fails on an unforeseen error.

        Letting the error out would crash the Faust actor, which restarts without reading the
        batch's messages again: they would wait, unacknowledged, for the next rebalance. Running
        the batch again is safe (every step is idempotent by record id) and keeps the promise of
        ``process``; the error is logged with its traceback and counted each time.
        """
        delay = self.rerun_first_delay_s
        while True:
            try:
                await self.process(messages)
                return
            except Exception as exc:
                metrics.normalizer_batch_reruns_total.labels(type(exc).__name__).inc()
                log.error(
                    "normalizer batch failed on an unforeseen error; running it again",
                    exc_info=True,
                    extra={
                        "fields": {
                            "error_type": type(exc).__name__,
                            "messages": len(messages),
                            "retry_in_s": delay,
                        }
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.rerun_max_delay_s)

    async def _storage_outage(self, unavailable: list[Work]) -> bool:
        """Whether S3 itself is down; if so the gate has waited until it answers again. The
        failed reads are in the ledger before the wait, and do not spend an attempt."""
        for w in unavailable:
            await self._record_failure(w, w.error, "failed", "failed_retryable")
        if not await self.gate.outage("s3"):
            return False
        for w in unavailable:
            w.attempts -= 1
        return True

    async def _prepare(self, w: Work) -> None:
        w.attempts += 1
        try:
            raw = await self.runtime.store.get(w.event.raw_object.key)
            w.row = canonicalize(w.event, raw, self._hmac_key, datetime.now(UTC), self._match_keys)
        except ObjectMissing:
            w.error = errors.transient("RawObjectMissing", "fetch", "raw object not found")
        except StorageUnavailable as exc:
            w.error = errors.transient("StorageUnavailable", "fetch", f"S3 call failed ({exc})")
        except ProcessingError as exc:
            w.error = exc

    async def _start(self, batch: list[Work]) -> None:
        rows = await self._db(
            "fetch",
            q("normalize_start"),
            [w.record_id for w in batch],
            [w.event.correlation_id for w in batch],
            [w.event.version for w in batch],
            [w.event.event_id for w in batch],
            [w.message.topic for w in batch],
            [w.message.partition for w in batch],
            [w.message.offset for w in batch],
            PIPELINE,
        )
        by_id = {r["record_id"]: r for r in rows}
        for w in batch:
            r = by_id[w.record_id]
            w.attempt_no = r["attempt_no"]
            w.already_canonical = r["canonical"]

    async def _commit(self, done: list[Work]) -> None:
        if not done:
            return

        def col(name: str) -> list[Any]:
            return [None if w.row is None else w.row[name] for w in done]

        linked = [w for w in done if w.row is not None]
        owners, rules, tokens = linking_rows(
            (w.record_id, w.row["match_tokens"])  # type: ignore[index]
            for w in linked
        )
        # The canonical rows and their persons commit together, in one statement
        # (docs/CONTRACT.md §9).
        await self._db(
            "execute",
            q("normalize_commit"),
            [w.record_id for w in done],
            [w.attempt_no for w in done],
            col("source"),
            col("raw_object_key"),
            col("raw_sha256"),
            col("normalized"),
            col("ingested_at"),
            col("correlation_id"),
            col("event_version"),
            col("record_kind"),
            col("schema_hint"),
            [w.already_canonical for w in done],
            PIPELINE,
            [w.record_id for w in linked],
            owners,
            rules,
            tokens,
        )
        now = time.time()
        for w in done:
            if w.row is None:
                metrics.normalizer_records_total.labels("duplicate", "-", "-").inc()
                continue
            metrics.normalizer_records_total.labels(
                "canonical", w.row["record_kind"], w.row["schema_hint"]
            ).inc()
            metrics.normalizer_end_to_end_seconds.observe(
                max(0.0, now - w.row["ingested_at"].timestamp())
            )

    async def _dead_letter(
        self, w: Work | None, m: Message, error: ProcessingError, attempts: int
    ) -> None:
        """Publish the envelope (retried until Kafka takes it), then mark the ledger."""
        version = w.event.version if w is not None else self._version_of_topic(m.topic)
        topic = self.settings.dlq_topic_for(version)
        body = envelope(w.event.to_dict() if w else None, None if w else m.value, error, attempts)
        key = str(w.record_id).encode() if w else hashlib.sha256(m.value or b"").digest()[:16]
        delay = 0.2
        while True:
            try:
                await self.runtime.publisher.send(topic, key, orjson.dumps(body))
                break
            except Exception as exc:
                log.warning(
                    "DLQ publish failed; retrying",
                    extra={"fields": {"error_type": type(exc).__name__, "topic": topic}},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        metrics.dlq_published_total.labels(error.stage, error.type).inc()
        log.warning(
            "record sent to DLQ",
            extra={
                "fields": {
                    "record_id": str(w.record_id) if w else None,
                    "stage": error.stage,
                    "error_type": error.type,
                    "attempts": attempts,
                    "correlation_id": w.event.correlation_id if w else None,
                }
            },
        )
        if w is not None:
            try:
                await self._record_failure(w, error, "dlq_published", "dlq", wait=False)
            except Exception:
                # The publish is what matters; the mark is best effort.
                log.warning("could not mark DLQ in the ledger", exc_info=True)

    def _version_of_topic(self, topic: str) -> str:
        # An unparseable event names no version: its topic does (the newest when unknown).
        return self._versions_by_topic.get(topic, FORMATS[-1].version)

    async def _record_failure(
        self, w: Work, error: ProcessingError, status: str, stage_status: str, wait: bool = True
    ) -> None:
        args = (
            q("normalize_record_failure"),
            w.record_id,
            w.attempt_no,
            error.type,
            error.message,
            error.stage,
            status,
            stage_status,
            error.transient,
            PIPELINE,
        )
        if wait:
            await self._db("execute", *args)
        else:
            async with self.runtime.work_pool.acquire() as conn:
                await conn.execute(*args)

    async def _db(self, method: str, *args: Any) -> Any:
        """Run one statement; while Postgres is down, wait at the gate and run it again (no
        progress is possible without the ledger, and the offsets stay where they are)."""

        async def statement(conn: asyncpg.Connection) -> Any:
            return await getattr(conn, method)(*args)

        return await self._with_connection(statement)

    async def _with_connection(self, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        """``work`` on a connection of the work pool, run again whole after a lock conflict or a
        broken connection, and after an outage once Postgres answers (``_db``)."""
        while True:
            try:
                async with self.runtime.work_pool.acquire() as conn:
                    return await work(conn)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # Two batches holding one record (a replay beside a redelivery, say) locked its
                # ledger rows in opposite orders; Postgres rolled one statement back whole.
                log.warning(
                    "normalizer statement rolled back by a lock conflict; retrying",
                    extra={"fields": {"error_type": type(exc).__name__}},
                )
                await asyncio.sleep(random.uniform(0.01, 0.1))  # noqa: S311
            except POSTGRES_UNAVAILABLE as exc:
                # A worker shutting down cancels this wait; nothing is lost, offsets stay put.
                if not await self.gate.outage("postgres"):
                    # Postgres answers: a connection of the pool broke. Retry on a fresh one.
                    log.warning(
                        "postgres statement failed; retrying",
                        extra={"fields": {"error_type": type(exc).__name__}},
                    )
                    await asyncio.sleep(0.2)
