"""The control plane never acts twice for one command: a takeover fences the old runner.

Two workers share a consumer group, control topic and results topic of their own (the session's
shared worker never sees these commands), with a heartbeat of 0.5 s, a takeover after 5 s of
silence (ten missed heartbeats: a busy machine does not make a live runner look dead) and the
shortest session timeout the config allows (6 s), after which a silent worker's partitions move.
The runner of a slow replay is SIGSTOPped until the other worker has taken the run over
(``job_runs.executions`` 2, another ``runner``), then SIGCONTed: its next write finds the run gone
and it stops without publishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from exchange_stream.core.events import object_key
from exchange_stream.infra.config import Settings
from exchange_stream.infra.contracts import check_result
from exchange_stream.infra.storage import open_store
from exchange_stream.infra.topics import ensure_topics
from tests.faults.common import group_assignments
from tests.payloads import v2_body
from tests.support import TopicReader, WorkerProcess, eventually, running_worker

# Objects of the replayed source, paced so that each page of 200 (one progress write) takes
# 10 s: the runner is between two progress writes, heartbeating only, when it is stopped.
OBJECTS = 600
RATE_PER_SEC = 20
FINAL_OUTCOMES = {"succeeded", "failed"}


class Pair:
    """Two workers in a consumer group of their own, on topics of their own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        run = uuid.uuid4().hex[:8]
        prefix = f"fencing.{run}"
        self.source = f"fencing-{run}"
        self.env = {
            "APP_ID": f"fencing-{run}",
            "TOPIC_RECORD_INGESTED_V1": f"{prefix}.v1",
            "TOPIC_RECORD_INGESTED_V2": f"{prefix}.v2",
            "KAFKA_DLQ_TOPIC_V1": f"{prefix}.v1.dlq",
            "KAFKA_DLQ_TOPIC_V2": f"{prefix}.v2.dlq",
            "TOPIC_CONTROL": f"{prefix}.control",
            "TOPIC_EXPORTS": f"{prefix}.exports",
            "CONTROL_HEARTBEAT_S": "0.5",
            "CONTROL_TAKEOVER_AFTER_S": "5",
            "KAFKA_SESSION_TIMEOUT_S": "6",
        }
        self.settings = Settings.from_env({**os.environ, **self.env, "ENV": "local"})
        self.workers: list[WorkerProcess] = []

    def by_runner(self, runner: str) -> WorkerProcess:
        """The worker whose ``runner_id()`` (host:pid) is ``runner``."""
        pid = int(runner.rsplit(":", 1)[1])
        (proc,) = [w for w in self.workers if w.proc is not None and w.proc.pid == pid]
        return proc

    async def wait_settled(self, timeout: float = 120.0) -> None:
        """Until both workers are members holding control partitions, and together all of
        them: a command sent now is not redelivered by a rebalance still under way."""
        control = self.settings.topic_control
        total = self.settings.topic_partitions

        async def settled() -> bool:
            members = await group_assignments(self.settings, self.env["APP_ID"])
            held = [{p for t, p in m if t == control} for m in members]
            return len(held) == 2 and all(held) and len(set().union(*held)) == total

        await eventually(settled, timeout=timeout, interval=0.5)

    async def send(self, command_id: str, command: str, params: dict[str, Any]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.broker_list, acks="all")
        await producer.start()
        try:
            doc = {"command_id": command_id, "command": command, "params": params}
            await producer.send_and_wait(
                self.settings.topic_control, orjson.dumps(doc), key=command_id.encode()
            )
        finally:
            await producer.stop()

    async def delete_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.broker_list)
        try:
            await admin.start()
            await admin.delete_topics(self.settings.all_topics())
        except KafkaError:
            pass  # best effort: partitions left behind only slow a broker restart
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def pair(migrated: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    """Two started workers of one group, and ``OBJECTS`` raw objects of the pair's source."""
    pair = Pair(tmp_path_factory.mktemp("fencing"))
    await ensure_topics(pair.settings)
    await _store_objects(pair.settings, pair.source, OBJECTS)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for i in range(2):
                pair.workers.append(
                    await stack.enter_async_context(
                        running_worker(pair.workdir / f"worker-{i}", pair.env)
                    )
                )
            await pair.wait_settled()
            yield pair
    finally:
        await pair.delete_topics()


async def _store_objects(settings: Settings, source: str, count: int) -> None:
    """``count`` v2 bodies under ``source``, as ingest stores them (no database rows)."""
    sem = asyncio.Semaphore(16)
    async with open_store(settings) as store:

        async def one() -> None:
            async with sem:
                await store.put(
                    object_key(source, uuid.uuid4()), orjson.dumps(v2_body(source=source))
                )

        await asyncio.gather(*(one() for _ in range(count)))


def _log_lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    lines = []
    for raw in worker.log_text().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(raw)
            if isinstance(doc, dict):
                lines.append(doc)
    return lines


def _logged(worker: WorkerProcess, msg: str, **fields: Any) -> list[dict[str, Any]]:
    """The JSON log lines of ``worker`` with message ``msg`` and these field values."""
    return [
        d
        for d in _log_lines(worker)
        if d.get("msg") == msg and all(d.get(k) == v for k, v in fields.items())
    ]


async def test_a_failed_heartbeat_write_is_logged_and_the_run_goes_on(
    pair: Pair, db: asyncpg.Pool
) -> None:
    """A heartbeat write Postgres refuses (a trigger on this run's row refuses updates that
    change nothing but ``heartbeat_at``) is logged by the runner, which keeps working."""
    await pair.wait_settled()
    command_id = f"hb-{uuid.uuid4()}"
    # The function and the trigger share one name (they live in different namespaces).
    name = f"test_refuse_heartbeat_{uuid.uuid4().hex[:8]}"
    await db.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'heartbeat refused by the test'; END $$"
    )
    # command_id is made of [a-z0-9-] only: safe inside the literal.
    await db.execute(
        f"CREATE TRIGGER {name} BEFORE UPDATE ON job_runs FOR EACH ROW "
        f"WHEN (OLD.command_id = '{command_id}' AND NEW.status = 'running' "
        "AND NEW.executions = OLD.executions AND NEW.progress IS NOT DISTINCT FROM OLD.progress) "
        f"EXECUTE FUNCTION {name}()"
    )
    try:
        # One page of 200 objects at 100/s: 2 s of run, four heartbeats or so.
        params = {"source": pair.source, "dry_run": True, "limit": 200, "rate_per_sec": 100}
        await pair.send(command_id, "replay", params)

        async def ended() -> bool:
            status = await db.fetchval(
                "SELECT status FROM job_runs WHERE command_id = $1", command_id
            )
            return status is not None and status != "running"

        await eventually(ended, timeout=120)
    finally:
        await db.execute(f"DROP TRIGGER IF EXISTS {name} ON job_runs")
        await db.execute(f"DROP FUNCTION IF EXISTS {name}()")
    row = await db.fetchrow(
        "SELECT job_run_id, status, executions, runner, result FROM job_runs WHERE command_id = $1",
        command_id,
    )
    assert (row["status"], row["executions"]) == ("succeeded", 1)
    assert row["result"]["listed"] == 200
    runner = pair.by_runner(row["runner"])
    failed = _logged(runner, "heartbeat write failed", job_run_id=str(row["job_run_id"]))
    assert failed, f"no 'heartbeat write failed' line in {runner.log_path}"
    assert {d["error_type"] for d in failed} == {"RaiseError"}
    assert all(d["level"] == "WARNING" for d in failed)


async def test_a_runner_stopped_past_the_takeover_is_fenced_and_only_the_new_runner_writes(
    pair: Pair, db: asyncpg.Pool
) -> None:
    await pair.wait_settled()
    command_id = f"fence-{uuid.uuid4()}"
    key = command_id.encode()
    params = {"source": pair.source, "dry_run": True, "rate_per_sec": RATE_PER_SEC}

    def ours(messages: list) -> list:
        return [m for m in messages if m.key == key]

    async with TopicReader(pair.settings.broker_list, pair.settings.topic_control_results) as rd:
        await pair.send(command_id, "replay", params)
        # The first runner's first progress message: it has written progress, and sleeps until
        # its next page (10 s away), heartbeating.
        seen = await rd.collect(
            lambda ms: any(orjson.loads(m.value)["status"] == "progress" for m in ours(ms)),
            timeout=120,
        )
        before = [orjson.loads(m.value) for m in ours(seen)]
        assert [m["status"] for m in before] == ["running", "progress"], before
        old_runner = before[0]["runner"]
        old = pair.by_runner(old_runner)
        (new,) = [w for w in pair.workers if w is not old]
        assert old.proc is not None
        os.killpg(old.proc.pid, signal.SIGSTOP)
        try:
            # Stopped until the other worker got the command (after the session timeout) and
            # took the silent run over.
            async def taken_over() -> bool:
                row = await db.fetchrow(
                    "SELECT executions, runner FROM job_runs WHERE command_id = $1", command_id
                )
                return row["executions"] == 2 and row["runner"] != old_runner

            await eventually(taken_over, timeout=180, interval=0.5)
        finally:
            os.killpg(old.proc.pid, signal.SIGCONT)

        async def old_runner_stopped() -> bool:
            return bool(
                _logged(old, "command taken over by another runner; stopped", command_id=command_id)
            )

        await eventually(old_runner_stopped, timeout=120)

        async def ended() -> bool:
            status = await db.fetchval(
                "SELECT status FROM job_runs WHERE command_id = $1", command_id
            )
            return status != "running"

        await eventually(ended, timeout=180)
        # Everything published up to now: the old runner has stopped, the new one has finished
        # (its final message is published right after its row ends).
        seen += await rd.collect(
            lambda ms: any(orjson.loads(m.value)["status"] in FINAL_OUTCOMES for m in ours(ms)),
            timeout=60,
        )
        seen += await rd.collect_to_end()
        after = [orjson.loads(m.value) for m in ours(seen)]

    row = await db.fetchrow(
        "SELECT job_run_id, status, executions, runner, result FROM job_runs WHERE command_id = $1",
        command_id,
    )
    new_runner = row["runner"]
    assert pair.by_runner(new_runner) is new
    assert (row["status"], row["executions"]) == ("succeeded", 2)
    assert row["result"]["listed"] == OBJECTS

    for message in after:
        check_result(message)
    # The old runner published nothing after it was stopped: its messages are the two read
    # before the SIGSTOP, and everything after them is the new runner's.
    assert [m for m in after if m["runner"] == old_runner] == before
    assert after[: len(before)] == before
    rest = after[len(before) :]
    assert {m["runner"] for m in rest} == {new_runner}
    assert rest[0]["status"] == "running"
    # One final outcome for the command, from the new runner. A later ``duplicate`` answer (the
    # command redelivered by the rebalance that the old worker's return starts) is no action:
    # it reports the new runner's outcome, and names it.
    finals = [m for m in rest if m["status"] in FINAL_OUTCOMES]
    assert len(finals) == 1, finals
    assert finals[0]["status"] == "succeeded"
    assert finals[0]["result"]["listed"] == OBJECTS
    assert finals[0]["job_run_id"] == str(row["job_run_id"])
    for message in rest:
        assert message["status"] in {"running", "progress", "succeeded", "duplicate"}, message
        if message["status"] == "duplicate":
            assert message["previous_status"] == "succeeded"

    fenced = _logged(old, "command taken over by another runner; stopped", command_id=command_id)
    assert [d["execution"] for d in fenced] == [1]
    assert not _logged(old, "command finished", command_id=command_id)
    assert _logged(
        new, "taking over a command whose runner stopped heartbeating", command_id=command_id
    )
    finished = _logged(new, "command finished", command_id=command_id)
    assert [(d["execution"], d["status"]) for d in finished] == [(2, "succeeded")]
