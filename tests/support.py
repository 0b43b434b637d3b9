"""Test support: control of the real local stack and of worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
STACK_SCRIPTS = ROOT / "scripts" / "stack"
VENV_BIN = Path(sys.executable).parent


def stack_service(name: str, action: str) -> None:
    """Run ``scripts/stack/<name>.sh <action>`` (up, down, status) and fail loudly."""
    result = subprocess.run(
        ["bash", str(STACK_SCRIPTS / f"{name}.sh"), action],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} {action} failed:\n{result.stdout}\n{result.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def eventually(
    probe: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, interval: float = 0.2
) -> None:
    """Wait until ``probe()`` is true; fail with a timeout otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await probe():
                return
        except Exception:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@dataclass
class WorkerProcess:
    """One ``exchange-stream worker`` subprocess with its own port, data dir and log file."""

    workdir: Path
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ENV": "local",
                "WEB_PORT": str(self.port),
                "DATA_DIR": str(self.workdir / "data"),
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env_overrides)
        return env

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "exchange-stream"), "worker"],
            cwd=self.workdir,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1

    async def wait_healthy(self, timeout: float = 120.0) -> None:
        async def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.proc.returncode}; see {self.log_path}"
                )
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{self.base_url}/healthz") as r:
                    return r.status == 200

        await eventually(healthy, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


async def post_json(
    http: aiohttp.ClientSession,
    url: str,
    body: object | bytes,
    *,
    key: str | None = None,
    token: str | None = "dev",
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict, Mapping[str, str]]:
    """POST ``body`` (JSON-encoded unless already bytes) and return status, JSON body, headers."""
    import orjson

    h = {"Content-Type": "application/json"}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if key is not None:
        h["Idempotency-Key"] = key
    h.update(headers or {})
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, headers=h) as r:
        raw = await r.read()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = {"_raw": raw.decode(errors="replace")}
        return r.status, parsed, r.headers


class TopicReader:
    """Reads a topic from the offsets it had when created: what tests produce after that."""

    def __init__(self, brokers: list[str], topic: str) -> None:
        self.brokers = brokers
        self.topic = topic
        self.start: dict = {}

    async def __aenter__(self) -> TopicReader:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.brokers)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        parts = [p["partition"] for p in described["partitions"]]
        if not parts:
            raise RuntimeError(f"topic {self.topic} does not exist")
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.brokers, enable_auto_commit=False, group_id=None
        )
        await self.consumer.start()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.start = await self.consumer.end_offsets(tps)
        for tp, off in self.start.items():
            self.consumer.seek(tp, off)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def collect(self, until: Callable[[list], bool], timeout: float = 30.0) -> list:
        """Messages since start, until ``until(messages)`` is true or ``timeout`` passes."""
        messages: list = []
        deadline = time.monotonic() + timeout
        while not until(messages) and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
        return messages

    async def collect_to_end(self, timeout: float = 30.0) -> list:
        """Every message since start up to the topic's end as of now: what was published before
        this call, read without waiting on time."""
        tps = list(self.start)
        end = await self.consumer.end_offsets(tps)
        messages: list = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await self.consumer.position(tp) < end[tp]]:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.topic} not read to its end within {timeout} s")
            batch = await self.consumer.getmany(timeout_ms=500)
            for records in batch.values():
                messages.extend(records)
        return messages


async def wait_canonical(db, record_ids: list[str], timeout: float = 120.0) -> list:
    """Wait until every record id has a canonical row; return the rows."""
    import uuid as _uuid

    ids = [_uuid.UUID(r) for r in record_ids]

    async def all_there() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = ANY($1)", ids
        )
        return n == len(ids)

    await eventually(all_there, timeout=timeout)
    return await db.fetch("SELECT * FROM canonical_records WHERE record_id = ANY($1)", ids)


@contextlib.asynccontextmanager
async def independent_s3_client(settings, **config: Any) -> AsyncIterator:
    """A botocore (aioboto3) S3 client: checks what the service stored without its own client.
    ``config``: more botocore ``Config`` options (the S3 client bench sizes its pool)."""
    import aioboto3
    from botocore.config import Config

    async with aioboto3.Session().client(
        "s3",
        endpoint_url=settings.minio_endpoint,
        aws_access_key_id=settings.minio_access_key,
        aws_secret_access_key=settings.minio_secret_key,
        region_name=settings.s3_region,
        config=Config(s3={"addressing_style": "path"}, **config),
    ) as client:
        yield client


async def s3_read_independently(settings, key: str) -> bytes:
    """Read an object with botocore (aioboto3), not the service's own S3 client."""
    async with independent_s3_client(settings) as client:
        resp = await client.get_object(Bucket=settings.raw_bucket, Key=key)
        async with resp["Body"] as stream:
            return await stream.read()


async def drop_database(dsn: str, name: str, *, timeout: float = 120.0) -> None:
    """``DROP DATABASE name WITH (FORCE)`` over ``dsn``. FORCE ends this role's sessions but not
    an autovacuum worker busy in that database, and the drop is refused until it is done: that
    refusal is waited out."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Identifiers cannot be bind parameters; callers build the name themselves.
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except asyncpg.InsufficientPrivilegeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 180.0
) -> tuple[int, dict]:
    """Run ``exchange-stream <args> --output json`` as an operator would; (exit code, JSON)."""
    import orjson

    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "exchange-stream"),
        *args,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    try:
        doc = orjson.loads(out)
    except orjson.JSONDecodeError:
        doc = {"_stdout": out.decode(errors="replace"), "_stderr": err.decode(errors="replace")}
    return proc.returncode, doc


async def wait_offsets_committed(
    db, settings, record_ids: list[str], group: str, timeout: float = 60.0
) -> None:
    """Wait until the consumer group has committed past every record's event, so that no
    redelivery of those events can follow (a rebalance re-delivers what is not committed)."""
    import uuid as _uuid

    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    rows = await db.fetch(
        "SELECT kafka_topic, kafka_partition, max(kafka_offset) AS offset "
        "FROM processing_stage_state WHERE record_id = ANY($1) GROUP BY 1, 2",
        [_uuid.UUID(r) for r in record_ids],
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:

        async def committed() -> bool:
            offsets = await admin.list_consumer_group_offsets(group)
            return all(
                (meta := offsets.get(TopicPartition(r["kafka_topic"], r["kafka_partition"])))
                is not None
                and meta.offset > r["offset"]
                for r in rows
            )

        await eventually(committed, timeout=timeout)
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def running_worker(workdir: Path, env: Mapping[str, str]) -> AsyncIterator[WorkerProcess]:
    """A started, healthy worker subprocess, stopped on exit."""
    proc = WorkerProcess(workdir=workdir, env_overrides=env)
    proc.start()
    try:
        await proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


async def raw_object_event(
    settings, body: dict, *, sha256: str | None = None, store_it: bool = True
) -> tuple[dict, bytes]:
    """A v2 event for ``body`` written straight to S3, as if ingested but with no database rows
    (no manifest, no outbox): for tests that feed the normalizer directly."""
    import hashlib
    import uuid as _uuid

    import orjson

    from exchange_stream.core.events import RawObject, new_event, object_key
    from exchange_stream.core.formats import V2
    from exchange_stream.infra.storage import open_store

    raw = orjson.dumps(body)
    record_id = str(_uuid.uuid4())
    key = object_key(body["source"], record_id)
    if store_it:
        async with open_store(settings) as store:
            await store.put(key, raw)
    event = new_event(
        V2,
        record_id=record_id,
        source=body["source"],
        raw_object=RawObject(
            settings.raw_bucket, key, sha256 or hashlib.sha256(raw).hexdigest(), len(raw)
        ),
        correlation_id=f"test-{record_id}",
        record_kind=body["record_kind"],
        schema_hint=body["schema_hint"],
    ).to_dict()
    return event, orjson.dumps(event)


def stack_dir() -> Path:
    """Where the stack keeps its data and logs (``STACK_DIR``, default ``.stack``)."""
    return Path(os.environ.get("STACK_DIR") or ROOT / ".stack")


@contextlib.asynccontextmanager
async def s3_gateway_with_credentials(access_key: str, secret_key: str) -> AsyncIterator[str]:
    """A second S3 server over the stack's own data, answering to other credentials: what an
    ENV=staging worker needs, as it refuses the local stack's ``minioadmin``. Yields its URL."""
    port = free_port()
    data = stack_dir() / "s3" / "data"
    env = {
        **os.environ,
        "ROOT_ACCESS_KEY_ID": access_key,
        "ROOT_ACCESS_KEY": access_key,
        "ROOT_SECRET_ACCESS_KEY": secret_key,
        "ROOT_SECRET_KEY": secret_key,
    }
    proc = subprocess.Popen(
        [
            # Another argv[0]: scripts/stack/s3.sh must not take this server for the stack's own.
            "versitygw-second",
            "--port",
            f"127.0.0.1:{port}",
            "--region",
            os.environ.get("S3_REGION", "us-east-1"),
            "--health",
            "/_health",
            "--quiet",
            "posix",
            str(data),
        ],
        executable=str(ROOT / ".cache" / "bin" / "versitygw"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        async def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the second S3 server exited with {proc.returncode}")
            async with aiohttp.ClientSession() as s, s.get(f"{url}/_health") as r:
                return r.status == 200

        await eventually(answers, timeout=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_for_state(
    probe: Callable[[], Awaitable[bool]],
    *,
    what: str,
    explain: Callable[[], Awaitable[str]],
    timeout: float = 180.0,
    interval: float = 0.2,
) -> None:
    """``eventually``, failing with ``what`` and the state ``explain()`` describes: a wait that
    times out on a slow machine says where the work stood, not only that it was late."""
    try:
        await eventually(probe, timeout=timeout, interval=interval)
    except TimeoutError:
        try:
            state = await explain()
        except Exception as exc:  # the diagnostics must not hide the timeout itself
            state = f"(could not describe the state: {exc!r})"
        raise AssertionError(f"{what}: not within {timeout} s\n{state}") from None


def isolated_env(label: str) -> dict[str, str]:
    """Topics and a consumer group no other worker of the session uses (``APP_ID`` included)."""
    run = uuid.uuid4().hex[:8]
    prefix = f"{label}.{run}"
    return {
        "TOPIC_RECORD_INGESTED_V1": f"{prefix}.v1",
        "TOPIC_RECORD_INGESTED_V2": f"{prefix}.v2",
        "KAFKA_DLQ_TOPIC_V1": f"{prefix}.v1.dlq",
        "KAFKA_DLQ_TOPIC_V2": f"{prefix}.v2.dlq",
        "TOPIC_CONTROL": f"{prefix}.control",
        "TOPIC_EXPORTS": f"{prefix}.exports",
        "APP_ID": f"{label}-{run}",
    }


@contextlib.asynccontextmanager
async def isolated_topics(label: str, db) -> AsyncIterator[dict[str, str]]:
    """``isolated_env(label)`` with its topics created; they are deleted on exit unless outbox
    rows still wait for them (every relay would be stuck on those rows otherwise)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from exchange_stream.infra.config import Settings
    from exchange_stream.infra.topics import ensure_topics

    env = isolated_env(label)
    settings = Settings.from_env({**os.environ, **env, "ENV": "local"})
    await ensure_topics(settings)
    try:
        yield env
    finally:
        topics = settings.all_topics()
        pending = await db.fetchval(
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL AND topic = ANY($1)",
            topics,
        )
        if not pending:
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
            try:
                await admin.start()
                await admin.delete_topics(topics)
            except KafkaError:
                pass  # best effort: partitions piling up only slow the broker's restarts
            finally:
                await admin.close()


@contextlib.asynccontextmanager
async def isolated_worker(
    workdir: Path, label: str, db, env: Mapping[str, str] | None = None
) -> AsyncIterator[WorkerProcess]:
    """A healthy worker on topics and in a consumer group of its own (``isolated_topics``): only
    it can process the events of its ingest, so its ledger rows and /metrics are its own work."""
    async with (
        isolated_topics(label, db) as isolated,
        running_worker(workdir, {**isolated, **(env or {})}) as proc,
    ):
        yield proc


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, worker: WorkerProcess) -> Samples:
    """Every sample of ``worker``'s /metrics, parsed as Prometheus text: (name, labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(f"{worker.base_url}/metrics") as r:
        assert r.status == 200, r.status
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One series' value; 0 for a labelled series not yet created (a counter not yet incremented
    has no sample)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
