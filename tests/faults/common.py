"""What every fault test shares: an isolated slice of the stack, the load generator subprocess,
the end-to-end invariant, and the measurements written for the reliability report.

The invariant, for the records a test's load generator got a 202 for:

- each has exactly one canonical row, and the test's source has no canonical row besides them
  (and, where a test allows it, the records an operator repair re-enqueued);
- no canonical row of the source repeats another's raw body (a partner's one submission, stored
  twice under two record ids, would be a duplicate the primary key cannot see);
- the outbox holds no unpublished row for them or for the source;
- their ledger stage state is ``succeeded`` (never left ``running``), and their manifest state is
  ``canonicalized``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import POSTGRES_UNAVAILABLE
from exchange_stream.infra.topics import ensure_topics
from tests.support import ROOT, WorkerProcess, independent_s3_client, run_cli

# A fault worker's retry settings: transient failures reach the DLQ in well under a second, and
# a SIGKILLed worker's partitions move after the shortest session timeout the config allows.
FAULT_WORKER_ENV = {
    "MAX_ATTEMPTS": "3",
    "BACKOFF_BASE_MS": "100",
    "KAFKA_SESSION_TIMEOUT_S": "6",
}


@dataclass(frozen=True)
class Variant:
    """One size of a fault test: the load, and how often or how long the fault is applied."""

    name: str
    rate: float
    seconds: float
    faults: int = 1
    outage_s: float = 4.0
    # Outage tests: how long each outage lasts, in order (then ``faults`` is their number).
    outages: tuple[float, ...] = ()

    @property
    def fault_count(self) -> int:
        return len(self.outages) or self.faults


class FaultRun:
    """One test's slice of the stack: its source, topics, consumer group, workers and load.

    Its workers consume topics no other worker reads, in a group of their own, so whatever a
    fault costs them, only they can make good.
    """

    def __init__(self, fault: str, case: str, title: str, variant: Variant, workdir: Path) -> None:
        self.fault = fault
        self.case = case
        self.title = title
        self.variant = variant
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:8]
        self.source = f"fault-{fault}-{self.run_id}"
        self.workers: list[WorkerProcess] = []
        self.loads: list[Load] = []
        # What a wait that ran out saw: put in the assertion message, the part of a failed CI
        # run that is read first.
        self.notes: list[str] = []
        prefix = f"fault.{self.run_id}"
        self.topics = {
            "TOPIC_RECORD_INGESTED_V1": f"{prefix}.v1",
            "TOPIC_RECORD_INGESTED_V2": f"{prefix}.v2",
            "KAFKA_DLQ_TOPIC_V1": f"{prefix}.v1.dlq",
            "KAFKA_DLQ_TOPIC_V2": f"{prefix}.v2.dlq",
            "TOPIC_CONTROL": f"{prefix}.control",
            "TOPIC_EXPORTS": f"{prefix}.exports",
        }

    def env(self) -> dict[str, str]:
        """What a worker or an operator command of this run needs on top of the environment."""
        return {**FAULT_WORKER_ENV, **self.topics, "APP_ID": f"fault-{self.run_id}"}

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, **self.env(), "ENV": "local"})

    @property
    def group(self) -> str:
        return self.env()["APP_ID"]

    @property
    def idle_topic(self) -> str:
        """A topic nothing is published to: ``KAFKA_TOPICS`` of an ingest-only worker."""
        return f"fault.{self.run_id}.idle"

    async def create_topics(self) -> None:
        settings = self.settings
        await ensure_topics(settings)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.idle_topic, settings.topic_partitions, 1)])
        finally:
            await admin.close()

    async def start_worker(self, **env: str) -> WorkerProcess:
        """A worker of this run (with ``env`` on top), started and answering ``/healthz``."""
        proc = WorkerProcess(
            workdir=self.workdir / f"worker-{len(self.workers)}",
            env_overrides={**self.env(), **env},
        )
        self.workers.append(proc)
        proc.start()
        await proc.wait_healthy()
        return proc

    def start_load(self, urls: Iterable[str], **overrides: Any) -> Load:
        """The load generator at this run's rate and duration, against ``urls``."""
        options: dict[str, Any] = {"rate": self.variant.rate, "seconds": self.variant.seconds}
        options.update(overrides)
        load = Load(
            out=self.workdir / f"load-{len(self.loads)}.jsonl",
            urls=list(urls),
            source=self.source,
            **options,
        )
        self.loads.append(load)
        load.start()
        return load

    async def next_fault(self, load: Load, i: int) -> None:
        """Wait for the moment of fault ``i``: the variant's faults spread evenly over the first
        two thirds or more of the load, each one after the previous recovery. The load must still
        be running, so that every fault lands under load."""
        slot = load.started + (i + 1) * self.variant.seconds / (self.variant.fault_count + 2)
        await asyncio.sleep(max(0.0, slot - time.monotonic()))
        assert load.running, f"fault {i + 1} came after the load ended: lengthen the variant"

    async def cli(self, *args: str) -> tuple[int, dict]:
        """An operator command on this run's control topic (or ``--local``) and topics."""
        return await run_cli(*args, env=self.env())

    async def close(self, db: asyncpg.Pool) -> None:
        """Stop the load and the workers, then delete the run's topics: partitions pile up on the
        broker otherwise, and a broker with more partitions restarts more slowly. Topics that
        outbox rows still wait for are kept: those rows would be set aside and retried for good."""
        for load in self.loads:
            load.kill()
        for proc in self.workers:
            proc.stop()
        settings = self.settings
        topics = [*settings.all_topics(), self.idle_topic]
        pending = await db.fetchval(
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND topic = ANY($1)",
            topics,
        )
        if pending:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
        try:
            await admin.start()
            await admin.delete_topics(topics)
        except KafkaError:
            pass  # best effort: a test that failed may have left the broker down
        finally:
            await admin.close()


@dataclass
class Load:
    """``python -m tests.loadgen`` as a subprocess, and what it has written so far."""

    out: Path
    urls: list[str]
    source: str
    rate: float
    seconds: float
    clients: int = 4
    grace_s: float = 60.0
    proc: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        args = [sys.executable, "-m", "tests.loadgen", "--source", self.source]
        for url in self.urls:
            args += ["--url", url]
        args += ["--rate", str(self.rate), "--seconds", str(self.seconds)]
        args += ["--clients", str(self.clients), "--grace-s", str(self.grace_s)]
        args += ["--out", str(self.out)]
        with self.out.with_suffix(".stderr").open("wb") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, stdout=err, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        docs = []
        for raw in self.out.read_bytes().splitlines():
            try:
                docs.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                break  # a line being written
        return docs

    def accepted(self, until: float | None = None) -> list[dict[str, Any]]:
        """The 202s so far, optionally only those answered before ``until`` (epoch seconds)."""
        return [
            d
            for d in self.lines()
            if d["type"] == "accepted" and (until is None or d["accepted_at"] <= until)
        ]

    def accepted_ids(self, until: float | None = None) -> list[str]:
        return [d["record_id"] for d in self.accepted(until)]

    async def wait_accepted(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the load has had ``n`` 202s (the warm-up before a fault)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < n:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"loadgen exited early; see {self.out.with_suffix('.stderr')}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fewer than {n} records accepted within {timeout} s")
            await asyncio.sleep(0.1)

    async def finish(self) -> dict[str, Any]:
        """Wait for the run to end by itself (it is bounded); return its summary line."""
        assert self.proc is not None
        deadline = time.monotonic() + self.seconds + self.grace_s + 30
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                self.kill()
                raise TimeoutError("loadgen did not stop by itself")
            await asyncio.sleep(0.2)
        assert self.proc.returncode == 0, self.out.with_suffix(".stderr").read_text()
        (summary,) = [d for d in self.lines() if d["type"] == "summary"]
        return summary

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Invariant:
    """The end-to-end check of the module docstring, with every count it is made of."""

    accepted: int
    canonical_rows: int
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicated: int = 0
    unpublished: int = 0
    ledger_not_succeeded: int = 0
    ledger_running: int = 0
    manifest_not_canonicalized: int = 0
    allowed_duplicated: int = 0

    @property
    def holds(self) -> bool:
        return not (
            self.lost
            or self.unexpected
            or self.duplicated > self.allowed_duplicated
            or self.unpublished
            or self.ledger_not_succeeded
            or self.ledger_running
            or self.manifest_not_canonicalized
        )

    def describe(self) -> str:
        doc = asdict(self)
        doc["lost"] = self.lost[:10]
        doc["unexpected"] = self.unexpected[:10]
        return f"invariant broken: {doc} (lost {len(self.lost)}, unexpected {len(self.unexpected)})"


async def check_invariant(
    db: asyncpg.Pool,
    source: str,
    accepted_ids: Collection[str],
    *,
    also_canonical: Collection[str] = (),
    allowed_duplicated: int = 0,
    whole_source: bool = True,
) -> Invariant:
    """The invariant for ``accepted_ids``; with ``whole_source``, also nothing else canonical in
    ``source`` but ``also_canonical``, no duplicate bodies, no unpublished or running rows."""
    ids = [uuid.UUID(r) for r in accepted_ids]
    keys = list(accepted_ids)
    if whole_source:
        rows = await db.fetch(
            "SELECT record_id::text AS id, raw_sha256 FROM canonical_records WHERE source = $1",
            source,
        )
        canonical = {r["id"] for r in rows}
        duplicated = len(rows) - len({r["raw_sha256"] for r in rows})
    else:
        rows = await db.fetch(
            "SELECT record_id::text AS id FROM canonical_records WHERE record_id = ANY($1)", ids
        )
        canonical = {r["id"] for r in rows}
        duplicated = 0
    wanted = set(accepted_ids)
    unpublished = await db.fetchval(
        "SELECT count(*) FROM outbox_events WHERE published_at IS NULL "
        "AND (key = ANY($1) OR ($3 AND payload->>'source' = $2))",
        keys,
        source,
        whole_source,
    )
    succeeded = await db.fetchval(
        "SELECT count(*) FROM processing_stage_state WHERE record_id = ANY($1) "
        "AND status = 'succeeded'",
        ids,
    )
    running = await db.fetchval(
        "SELECT count(*) FROM processing_stage_state s WHERE s.status = 'running' "
        "AND (s.record_id = ANY($1) OR ($3 AND EXISTS (SELECT 1 FROM raw_object_manifest m "
        "WHERE m.record_id = s.record_id AND m.source = $2)))",
        ids,
        source,
        whole_source,
    )
    canonicalized = await db.fetchval(
        "SELECT count(*) FROM raw_object_manifest WHERE record_id = ANY($1) "
        "AND state = 'canonicalized'",
        ids,
    )
    return Invariant(
        accepted=len(wanted),
        canonical_rows=len(canonical),
        lost=sorted(wanted - canonical),
        unexpected=sorted(canonical - wanted - set(also_canonical)) if whole_source else [],
        duplicated=duplicated,
        unpublished=unpublished,
        ledger_not_succeeded=len(wanted) - succeeded,
        ledger_running=running,
        manifest_not_canonicalized=len(wanted) - canonicalized,
        allowed_duplicated=allowed_duplicated,
    )


async def wait_for_invariant(
    db: asyncpg.Pool,
    source: str,
    accepted_ids: Collection[str],
    *,
    timeout: float,
    since: float | None = None,
    also_canonical: Collection[str] = (),
    allowed_duplicated: int = 0,
    whole_source: bool = True,
) -> tuple[Invariant, float | None]:
    """Poll until the invariant holds or ``timeout`` passes: the last check, and the seconds
    from ``since`` (epoch; default: now) to the moment it held, or None if it never did."""
    start = time.time() if since is None else since
    deadline = time.monotonic() + timeout
    while True:
        try:
            inv = await check_invariant(
                db,
                source,
                accepted_ids,
                also_canonical=also_canonical,
                allowed_duplicated=allowed_duplicated,
                whole_source=whole_source,
            )
        except POSTGRES_UNAVAILABLE:
            # The test's own pool meets the same restart as the worker's.
            if time.monotonic() >= deadline:
                raise
        else:
            if inv.holds:
                return inv, round(time.time() - start, 2)
            if time.monotonic() >= deadline:
                return inv, None
        await asyncio.sleep(0.1)


async def time_to_recover(
    db: asyncpg.Pool,
    run: FaultRun,
    load: Load,
    back_at: float,
    *,
    since: float | None = None,
    timeout: float = 90.0,
) -> float | None:
    """Seconds from ``since`` (default ``back_at``, the service answering again) until every
    record accepted up to ``back_at`` is canonical, published and succeeded in the ledger;
    None if not within ``timeout``."""
    ids = load.accepted_ids(until=back_at)
    inv, seconds = await wait_for_invariant(
        db,
        run.source,
        ids,
        timeout=timeout,
        since=back_at if since is None else since,
        whole_source=False,
    )
    if seconds is None:
        run.notes.append(await diagnose(db, run, inv))
    return seconds


def assert_recovered(run: FaultRun, recover_s: list[float | None], after: str) -> None:
    """Every fault of the run recovered within its wait; else what the waits that ran out saw
    (``diagnose``), in the assertion message."""
    assert None not in recover_s, f"not recovered after every {after}: {recover_s}\n" + "\n".join(
        run.notes
    )


async def diagnose(db: asyncpg.Pool, run: FaultRun, inv: Invariant) -> str:
    """Where the records ``inv`` misses stand (outbox, ledger, manifest) and the warnings the
    run's workers logged last: a few lines, enough to tell a stalled relay from a stuck batch."""
    lost = [uuid.UUID(r) for r in inv.lost]
    rows = await db.fetch(
        "SELECT o.id IS NOT NULL AS in_outbox, o.published_at IS NOT NULL AS published,"
        " o.last_error, s.status,"
        " s.attempt_count, m.state AS manifest, count(*) AS n"
        " FROM unnest($1::uuid[]) AS l(id)"
        " LEFT JOIN outbox_events o ON o.key = l.id::text"
        " LEFT JOIN processing_stage_state s ON s.record_id = l.id AND s.pipeline = 'normalize'"
        " LEFT JOIN raw_object_manifest m ON m.record_id = l.id"
        " GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY n DESC LIMIT 8",
        lost,
    )
    states = [dict(r) for r in rows]
    lines = [inv.describe(), f"lost records by state: {states}"]
    for i, worker in enumerate(run.workers):
        try:
            text = worker.log_text()
        except OSError:
            continue
        warnings = [ln[:240] for ln in text.splitlines() if '"WARNING"' in ln or '"ERROR"' in ln]
        lines.append(f"worker {i} last warnings: {warnings[-6:]}")
    return "\n".join(lines)


def worker_ports(worker: WorkerProcess) -> list[int]:
    """Local TCP ports of ``worker``'s open sockets (from /proc): its Postgres connections are
    the rows of ``pg_stat_activity`` whose ``client_port`` is one of them."""
    if worker.proc is None:
        return []
    pid = worker.proc.pid
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


_WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
    "AND wait_event_type = 'Lock' AND query LIKE $1 AND client_port = ANY($2::int[])"
)


@contextlib.asynccontextmanager
async def stalled(
    db: asyncpg.Pool,
    worker: WorkerProcess,
    table: str,
    statement: str,
    *,
    at_least: int = 1,
    timeout: float = 15.0,
    hold_s: float = 0.0,
) -> AsyncIterator[int]:
    """Hold an EXCLUSIVE lock on ``table``, so that ``worker``'s statements containing
    ``statement`` wait on it half-way through their transactions; once ``at_least`` of them wait
    (or ``timeout`` passes), and ``hold_s`` more seconds, yield how many do. The lock goes on
    exit: kill the worker inside."""
    async with db.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        try:
            await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            deadline = time.monotonic() + timeout
            while True:
                waiting = await db.fetchval(_WAITING, f"%{statement}%", worker_ports(worker))
                if waiting >= at_least or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(hold_s)
            yield await db.fetchval(_WAITING, f"%{statement}%", worker_ports(worker))
        finally:
            await lock.rollback()


async def group_assignments(settings: Settings, group: str) -> list[set[tuple[str, int]]]:
    """Per member of the consumer group, the (topic, partition) pairs assigned to it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = []
    for _group in response.groups:
        for member in _group[5]:
            assignment = ConsumerProtocolMemberAssignment.decode(member[4])
            members.append({(topic, p) for topic, parts in assignment.assignment for p in parts})
    return members


def measurements(
    run: FaultRun,
    summary: dict[str, Any],
    inv: Invariant,
    *,
    recover_s: list[float | None],
    settle_s: float | None,
    **details: Any,
) -> dict[str, Any]:
    """The figures of one fault run, as the reliability report reads them."""
    return {
        "kind": "fault",
        "fault": run.fault,
        "case": run.case,
        "title": run.title,
        "variant": run.variant.name,
        "source": run.source,
        "load": {
            "rate_per_s": summary["rate"],
            "seconds": summary["seconds"],
            "clients": summary["clients"],
            "planned": summary["planned"],
            "requests": summary["requests"],
        },
        "duration_s": round(summary["ended_at"] - summary["started_at"], 2),
        "accepted": inv.accepted,
        "canonical_rows": inv.canonical_rows,
        "lost": len(inv.lost),
        "duplicated": inv.duplicated,
        "unexpected": len(inv.unexpected),
        "unpublished": inv.unpublished,
        "ledger_not_succeeded": inv.ledger_not_succeeded,
        "abandoned": len(summary["abandoned"]),
        "statuses": summary["statuses"],
        "errors": summary["errors"],
        "retry_after": summary["retry_after"],
        "recover_s": recover_s,
        "settle_s": settle_s,
        "invariant_holds": inv.holds,
        "details": details,
    }


def write_measurements(name: str, doc: dict[str, Any]) -> None:
    """Write ``doc`` as ``<RELIABILITY_OUT>/<name>.json`` when that variable is set."""
    out = os.environ.get("RELIABILITY_OUT")
    if not out:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


async def conclude(
    db: asyncpg.Pool,
    run: FaultRun,
    load: Load,
    *,
    recover_s: list[float | None],
    also_canonical: Collection[str] = (),
    allowed_duplicated: int = 0,
    settle_timeout: float = 120.0,
    **details: Any,
) -> tuple[Invariant, dict[str, Any]]:
    """After the fault: let the load finish, wait for the invariant, write the measurements
    (whatever the outcome), and check what every fault test requires of the load itself."""
    summary = await load.finish()
    ids = load.accepted_ids()
    inv, settle_s = await wait_for_invariant(
        db,
        run.source,
        ids,
        timeout=settle_timeout,
        since=summary["ended_at"],
        also_canonical=also_canonical,
        allowed_duplicated=allowed_duplicated,
    )
    doc = measurements(run, summary, inv, recover_s=recover_s, settle_s=settle_s, **details)
    write_measurements(f"fault.{run.fault}.{run.case}.{run.variant.name}", doc)
    assert len(set(ids)) == len(ids), "a record id was answered for two keys"
    assert summary["abandoned"] == [], (
        "every request should have had its 202 once services were back"
    )
    assert len(ids) == summary["planned"]
    # Under faults the front door answers 202 or 503, never another error.
    assert set(summary["statuses"]) <= {"202", "503"}, summary["statuses"]
    assert summary["unavailable_without_retry_after"] == 0, "every 503 carries Retry-After"
    return inv, summary


async def s3_record_ids(settings: Settings, source: str) -> set[str]:
    """Record ids of the raw objects under ``<source>/``, listed with botocore (aioboto3), an
    S3 client independent of the service's own."""
    ids: set[str] = set()
    async with independent_s3_client(settings) as client:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=settings.raw_bucket, Prefix=f"{source}/"):
            for obj in page.get("Contents", []):
                ids.add(obj["Key"].removeprefix(f"{source}/").removesuffix(".json"))
    return ids


async def describe_group(settings: Settings, group: str, topics: Collection[str]) -> str:
    """The consumer group as a waiting test sees it: each member's partitions of ``topics``, and
    per partition the group's committed offset against the end of the log (what is unread)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    members = [
        sorted(tp for tp in m if tp[0] in topics) for m in await group_assignments(settings, group)
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        described = await admin.describe_topics(sorted(topics))
    finally:
        await admin.close()
    tps = [
        TopicPartition(d["topic"], p["partition"])
        for d in described
        for p in sorted(d["partitions"], key=lambda p: p["partition"])
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_list, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    lines = [f"group {group}: {len(members)} member(s)"]
    lines += [f"  member {i}: {m}" for i, m in enumerate(members)]
    for tp in tps:
        meta = committed.get(tp)
        lines.append(
            f"  {tp.topic}[{tp.partition}] committed {meta.offset if meta else None}"
            f" end {ends.get(tp)}"
        )
    return "\n".join(lines)
