"""What a worker logs as it starts: nothing at ERROR when all is well, and a failed bind said in one
line that names the port, with a failed exit and no exception text.

The healthy start is watched where it used to go wrong: on a brand-new broker (its own
``STACK_DIR`` and ports, as on a fresh clone) and in a new consumer group, where the broker is
still creating ``__consumer_offsets`` when the worker first asks for its group's coordinator. The
worker has a scratch database of its own, so its relay cannot take rows meant for the stack's
broker. Postgres and S3 are the running stack's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.infra.config import Settings
from exchange_stream.infra.migrate import migrate
from tests.support import ROOT, VENV_BIN, WorkerProcess, drop_database, eventually, free_port

# What the OS says of a taken port, in the words of Python, uvloop and asyncio.
BIND_TEXTS = ("address already in use", "errno", "error while attempting to bind")


@dataclass
class FreshStack:
    """A worker's environment: a new broker, a scratch database, a new consumer group."""

    env: dict[str, str]
    brokers: str
    app_id: str


def _port_pair() -> int:
    """A free port whose successor is free too (the broker's controller listens there)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def _kafka(action: str, stack_dir: Path, port: int) -> None:
    env = {**os.environ, "STACK_DIR": str(stack_dir), "KAFKA_PORT": str(port)}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack" / "kafka.sh"), action],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kafka {action} failed:\n{result.stdout}\n{result.stderr}")


@contextlib.contextmanager
def _fresh_broker(stack_dir: Path) -> Iterator[str]:
    port = _port_pair()
    try:
        _kafka("up", stack_dir, port)
        yield f"127.0.0.1:{port}"
    finally:
        _kafka("down", stack_dir, port)


@pytest.fixture(scope="module")
async def fresh_stack(
    migrated: None, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FreshStack]:
    name = f"startup_logs_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = settings.dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        await migrate(dsn)
        with _fresh_broker(tmp_path_factory.mktemp("fresh-stack")) as brokers:
            env = {
                "KAFKA_BROKERS": brokers,
                "DATABASE_URL": dsn,
                "APP_ID": f"startup-logs-{uuid.uuid4().hex[:8]}",
            }
            created = subprocess.run(
                [str(VENV_BIN / "exchange-stream"), "create-topics"],
                env={**os.environ, **env, "ENV": "local"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert created.returncode == 0, created.stderr
            yield FreshStack(env=env, brokers=brokers, app_id=env["APP_ID"])
    finally:
        await drop_database(settings.dsn, name)


@pytest.fixture(scope="module")
async def first_worker(
    fresh_stack: FreshStack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    proc = WorkerProcess(workdir=tmp_path_factory.mktemp("first"), env_overrides=fresh_stack.env)
    proc.start()
    try:
        await proc.wait_healthy()
        yield proc
    finally:
        proc.stop()


def _lines(worker: WorkerProcess) -> list[dict]:
    """The worker's output, one JSON object per line (a line that is not JSON fails the test:
    stray output is not a log line and has not been redacted)."""
    lines = []
    for raw in worker.log_text().splitlines():
        if raw.strip():
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                pytest.fail(f"not a JSON log line: {raw[:300]}")
    return lines


async def _joined(fresh: FreshStack, worker: WorkerProcess) -> None:
    """Wait until the worker says it is ready, then until the broker shows its group stable with
    the worker a member holding partitions. (The worker's own coordinator lookup comes before
    its ready line: the test's lookup must not be the one that creates the offsets topic.)"""

    async def ready() -> bool:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}")
        return any(
            line.get("logger") == "faust.worker" and line.get("msg", "").endswith(": Ready")
            for line in _lines(worker)
        )

    await eventually(ready, timeout=120)
    admin = AIOKafkaAdminClient(bootstrap_servers=fresh.brokers)
    await admin.start()
    try:

        async def stable_with_assignment() -> bool:
            (response,) = await admin.describe_consumer_groups([fresh.app_id])
            (group,) = response.groups
            state, members = group[2], group[5]
            return state == "Stable" and len(members) == 1 and bool(members[0][4])

        await eventually(stable_with_assignment, timeout=60)
    finally:
        await admin.close()


async def test_a_fresh_start_on_a_new_broker_logs_nothing_at_error(
    fresh_stack: FreshStack, first_worker: WorkerProcess
) -> None:
    await _joined(fresh_stack, first_worker)
    lines = _lines(first_worker)
    assert any(line["logger"].startswith("faust.") for line in lines)
    errors = [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
    assert errors == []
    assert "Traceback" not in first_worker.log_text()


async def test_a_second_worker_on_a_taken_port_says_which_and_exits_failed(
    fresh_stack: FreshStack, first_worker: WorkerProcess, tmp_path: Path
) -> None:
    second = WorkerProcess(
        workdir=tmp_path / "second",
        env_overrides={**fresh_stack.env, "APP_ID": f"{fresh_stack.app_id}-second"},
        port=first_worker.port,
    )
    second.start()
    deadline = time.monotonic() + 120
    while second.proc is not None and second.proc.poll() is None:
        if time.monotonic() > deadline:
            second.kill()
            pytest.fail("the second worker did not exit")
        await asyncio.sleep(0.2)
    assert second.proc is not None and second.proc.returncode not in (0, None)

    text = second.log_text()
    said = [
        line
        for line in _lines(second)
        if line["level"] == "CRITICAL" and line.get("web_port") == first_worker.port
    ]
    assert said, text[-2000:]
    assert f"127.0.0.1:{first_worker.port}" in said[0]["msg"]
    for banned in (*BIND_TEXTS, "traceback", 'file "'):
        assert banned not in text.lower(), banned
    # The first worker is untouched.
    assert first_worker.proc is not None and first_worker.proc.poll() is None


async def test_sigusr1_logs_stacks_as_code_locations_without_local_variables(
    first_worker: WorkerProcess,
) -> None:
    # mode's own handler prints every frame's local variables: a running batch's records.
    assert first_worker.proc is not None
    first_worker.proc.send_signal(signal.SIGUSR1)

    async def dumped() -> bool:
        return any(line.get("msg") == "task stack" for line in _lines(first_worker))

    await eventually(dumped, timeout=30)
    stacks = [line for line in _lines(first_worker) if line.get("msg") == "task stack"]
    assert any(any(":" in frame for frame in line["stack"]) for line in stacks)
    text = first_worker.log_text()
    assert "LOCAL VARIABLES" not in text
    assert "Traceback" not in text and 'File "' not in text
    assert first_worker.proc.poll() is None
