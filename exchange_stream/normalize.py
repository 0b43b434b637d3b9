"""Normalize: ingested event → raw object → mapped, tokenized, canonical row (SPEC §6).

The pure core (``parse_event``, ``canonicalize``) turns bytes into a canonical row or a
``ProcessingError``. ``Normalizer.process`` does the I/O for a batch of Kafka messages:

1. ledger: every record's attempt starts, committed before any work;
2. S3 reads in parallel, then checksum, mapping and tokenizing per record;
3. one statement writes every canonical row, the manifest state and ledger success;
4. permanent failures go to the DLQ at once; transient ones are recorded, backed off and
   retried up to MAX_ATTEMPTS, then go to the DLQ.

``process`` returns only when every message of the batch is either canonical (or was already)
or in the DLQ: the agent acknowledges the batch after that, so offsets never pass a record that
has neither. Postgres being down stops progress (nothing can be recorded) and is waited out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from exchange_stream import dlq, errors, metrics
from exchange_stream.config import Settings
from exchange_stream.errors import ProcessingError
from exchange_stream.ingest import POSTGRES_UNAVAILABLE, rfc3339
from exchange_stream.mappings import MAPPING_VERSION, MappingError, map_payload
from exchange_stream.runtime import Runtime
from exchange_stream.sql import q
from exchange_stream.storage import ObjectMissing, StorageUnavailable
from exchange_stream.tokenizer import IdentityError, canonical_identity, token_for

log = logging.getLogger(__name__)

PIPELINE = "normalize"
_V1_HINT = "partnerA.v1"
_PATIENT_FIELDS = {"1": ("first_name", "last_name"), "2": ("given_name", "family_name")}


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
    event: dict[str, Any]
    record_id: uuid.UUID
    attempts: int = 0
    attempt_no: int = 0
    already_canonical: bool = False
    row: dict[str, Any] | None = None
    error: ProcessingError | None = field(default=None)

    @property
    def version(self) -> str:
        return self.event["event_version"]


def parse_event(value: bytes | None) -> dict[str, Any]:
    """The event as a dict with the fields the normalizer relies on; else a permanent error."""
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise errors.permanent("UnparseableEvent", "parse", "event is not valid JSON") from None
    if not isinstance(event, dict):
        raise errors.permanent("UnparseableEvent", "parse", "event is not a JSON object")
    version = event.get("event_version")
    if version not in ("1", "2") or event.get("event_type") != "record.ingested":
        raise errors.permanent("UnsupportedEvent", "parse", "unknown event type or version")
    raw = event.get("raw_object")
    try:
        uuid.UUID(str(event["record_id"]))
        assert isinstance(raw, dict)
        assert isinstance(raw["key"], str) and isinstance(raw["sha256"], str)
        assert isinstance(raw["size_bytes"], int)
        assert isinstance(event["source"], str)
        parse_time(event["occurred_at"])
        if version == "2":
            assert isinstance(event["record_kind"], str) and isinstance(event["schema_hint"], str)
    except (KeyError, ValueError, AssertionError, TypeError):
        raise errors.permanent("InvalidEvent", "parse", "event lacks a required field") from None
    return event


def parse_time(value: Any) -> datetime:
    """RFC 3339 with an offset, as a timezone-aware datetime."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no offset")
    return moment


def canonicalize(
    event: dict[str, Any], raw: bytes, hmac_key: bytes, normalized_at: datetime
) -> dict[str, Any]:
    """The canonical row for ``event`` from its raw object's bytes, or a ``ProcessingError``."""
    expected = event["raw_object"]
    if len(raw) != expected["size_bytes"] or hashlib.sha256(raw).hexdigest() != expected["sha256"]:
        raise errors.permanent("ChecksumMismatch", "verify", "raw object differs from the event")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.permanent("UnparseableRawObject", "map", "raw object is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("patient"), dict):
        raise errors.permanent("MissingIdentifiers", "map", "raw object lacks patient")
    version = event["event_version"]
    if version == "1":
        kind, hint = body.get("record_type"), _V1_HINT
    else:
        kind, hint = event["record_kind"], event["schema_hint"]
    try:
        mapped = map_payload(kind, hint, body.get("payload"))
    except MappingError as exc:
        raise errors.permanent("MappingError", "map", str(exc)) from None
    given, family = _PATIENT_FIELDS[version]
    patient = body["patient"]
    try:
        identity = canonical_identity(
            patient.get(given), patient.get(family), patient.get("dob"), patient.get("ssn")
        )
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
    return {
        "source": event["source"],
        "raw_object_key": expected["key"],
        "raw_sha256": expected["sha256"],
        "normalized": normalized,
        "ingested_at": parse_time(event["occurred_at"]),
        "correlation_id": event.get("correlation_id"),
        "event_version": version,
        "record_kind": kind,
        "schema_hint": hint,
    }


class Normalizer:
    """Runs batches of ingested-event messages to canonical rows or the DLQ."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        self._hmac_key = settings.tokenizer_hmac_secret.encode()

    async def process(self, messages: Sequence[Message]) -> None:
        """Bring every message to a canonical row or the DLQ (see the module docstring)."""
        pending: list[Work] = []
        seen: set[uuid.UUID] = set()
        for m in messages:
            try:
                event = parse_event(m.value)
            except ProcessingError as exc:
                await self._dead_letter(None, m, exc, attempts=1)
                continue
            work = Work(message=m, event=event, record_id=uuid.UUID(str(event["record_id"])))
            if work.record_id in seen:
                # The same record twice in one batch: the first occurrence does the work.
                metrics.normalizer_records_total.labels("duplicate", "-", "-").inc()
                continue
            seen.add(work.record_id)
            pending.append(work)

        round_no = 0
        while pending:
            round_no += 1
            await self._start(pending)
            todo = [w for w in pending if not w.already_canonical]
            await asyncio.gather(*(self._prepare(w) for w in todo))
            done = [w for w in pending if w.already_canonical or w.row is not None]
            await self._commit(done)
            failed = [w for w in pending if w.error is not None]
            retry: list[Work] = []
            for w in failed:
                assert w.error is not None
                metrics.normalizer_failures_total.labels(w.error.stage, w.error.type).inc()
                if w.error.transient and w.attempts < self.settings.max_attempts:
                    retry.append(w)
                else:
                    await self._dead_letter(w, w.message, w.error, attempts=w.attempts)
            if retry:
                # The retryable failure is committed before the backoff wait.
                for w in retry:
                    assert w.error is not None
                    await self._record_failure(w, w.error, "failed", "failed_retryable")
                delay_ms = self.settings.backoff_base_ms * 2 ** (round_no - 1)
                await asyncio.sleep(min(delay_ms, 30_000) / 1000)
            for w in retry:
                w.error, w.row = None, None
            pending = retry

    async def _prepare(self, w: Work) -> None:
        w.attempts += 1
        try:
            raw = await self.runtime.store.get(w.event["raw_object"]["key"])
            w.row = canonicalize(w.event, raw, self._hmac_key, datetime.now(UTC))
        except ObjectMissing:
            w.error = errors.transient("RawObjectMissing", "fetch", "raw object not found")
        except StorageUnavailable as exc:
            w.error = errors.transient("StorageUnavailable", "fetch", f"S3 call failed ({exc})")
        except ProcessingError as exc:
            w.error = exc

    async def _start(self, batch: list[Work]) -> None:
        rows = await self._db(
            "fetch",
            q("normalize_start_attempts"),
            [w.record_id for w in batch],
            [w.event.get("correlation_id") for w in batch],
            [w.version for w in batch],
            [str(w.event.get("event_id")) for w in batch],
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

        await self._db(
            "execute",
            q("normalize_commit_success"),
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
        version = w.version if w is not None else _version_from_topic(self.settings, m.topic)
        topic = self.settings.dlq_topic_for(version)
        body = dlq.envelope(w.event if w else None, None if w else m.value, error, attempts)
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
                    "correlation_id": w.event.get("correlation_id") if w else None,
                }
            },
        )
        if w is not None:
            try:
                await self._record_failure(w, error, "dlq_published", "dlq", wait=False)
            except Exception:
                # The publish is what matters; the mark is best effort.
                log.warning("could not mark DLQ in the ledger", exc_info=True)

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
            async with self.runtime.pool.acquire() as conn:
                await conn.execute(*args)

    async def _db(self, method: str, *args: Any) -> Any:
        """Run one statement; while Postgres is unavailable, wait and retry (no progress is
        possible without the ledger, and the offsets stay where they are)."""
        delay = 0.2
        while True:
            try:
                async with self.runtime.pool.acquire() as conn:
                    return await getattr(conn, method)(*args)
            except POSTGRES_UNAVAILABLE as exc:
                # A worker shutting down cancels this wait; nothing is lost, offsets stay put.
                log.warning(
                    "postgres unavailable; normalizer waiting",
                    extra={"fields": {"error_type": type(exc).__name__, "retry_in_s": delay}},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _version_from_topic(settings: Settings, topic: str) -> str:
    return "1" if topic == settings.topic_record_ingested_v1 else "2"
