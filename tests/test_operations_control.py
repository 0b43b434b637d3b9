"""The control plane: once per command id, rejections that name the problem, results recorded;
a re-sent command id answers ``duplicate`` with the first outcome, and the CLI exits 1 when that
outcome was a failure."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from exchange_stream.infra.config import Settings
from exchange_stream.infra.contracts import check_result
from tests.support import VENV_BIN, TopicReader, WorkerProcess, run_cli


async def test_same_command_id_twice_runs_once(worker: WorkerProcess, db: asyncpg.Pool) -> None:
    command_id = f"cmd-{uuid.uuid4()}"
    args = ("replay", "--source", "hospital-b", "--dry-run", "--command-id", command_id)
    code, first = await run_cli(*args)
    assert code == 0, first
    assert first["status"] == "succeeded"
    code, second = await run_cli(*args)
    assert code == 0, second
    assert (second["status"], second["previous_status"]) == ("duplicate", "succeeded")
    assert second["job_run_id"] == first["job_run_id"]
    assert second["result"] == first["result"]
    rows = await db.fetch(
        "SELECT status, executions, job_name, params FROM job_runs WHERE command_id = $1",
        command_id,
    )
    assert len(rows) == 1
    assert (rows[0]["status"], rows[0]["executions"], rows[0]["job_name"]) == (
        "succeeded",
        1,
        "replay",
    )
    assert rows[0]["params"]["dry_run"] is True


async def _cli_with_stderr(*args: str) -> tuple[int, dict, str]:
    """``exchange-stream <args> --output json``: exit code, JSON and what it said on stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "exchange-stream"),
        *args,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, orjson.loads(out), err.decode(errors="replace")


async def test_resending_the_id_of_a_failed_command_says_so_and_exits_1(
    worker: WorkerProcess, db: asyncpg.Pool
) -> None:
    # A run that fails on the worker: valid params, but no such recipient to rotate.
    command_id = f"cmd-{uuid.uuid4()}"
    args = ("recipients", "rotate-key", f"none-{uuid.uuid4().hex[:8]}")
    code, first = await run_cli(*args, "--command-id", command_id)
    assert code == 1, first
    assert first["status"] == "failed"
    assert first["error"] == "no such recipient"
    code, second, stderr = await _cli_with_stderr(*args, "--command-id", command_id)
    assert code == 1, second
    assert (second["status"], second["previous_status"]) == ("duplicate", "failed")
    assert second["job_run_id"] == first["job_run_id"]
    assert second["error"] == first["error"]
    assert f"command {command_id} ran before and failed" in stderr
    rows = await db.fetch(
        "SELECT status, executions FROM job_runs WHERE command_id = $1", command_id
    )
    assert [(r["status"], r["executions"]) for r in rows] == [("failed", 1)]


async def test_invalid_commands_get_a_failed_result_naming_the_problem(
    worker: WorkerProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    run = uuid.uuid4().hex[:8]
    cases = {
        f"bad-{run}-1": (
            {"command": "replay", "params": {"limit": 5}},
            "missing field: params.source",
        ),
        f"bad-{run}-2": ({"command": "explode", "params": {}}, "invalid field: command"),
        f"bad-{run}-3": (
            {"command": "dlq_redrive", "params": {"version": "v3"}},
            "invalid field: params.version",
        ),
        f"bad-{run}-4": (
            {"command": "reconcile", "params": {"source": "a", "x": 1}},
            "unknown field: params.x",
        ),
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await producer.start()
    async with TopicReader(settings.broker_list, settings.topic_control_results) as reader:
        try:
            for command_id, (doc, _) in cases.items():
                await producer.send_and_wait(
                    settings.topic_control,
                    orjson.dumps({"command_id": command_id, **doc}),
                    key=command_id.encode(),
                )
            await producer.send_and_wait(settings.topic_control, b"{nope", key=b"garbage")
        finally:
            await producer.stop()
        wanted = {c.encode() for c in cases}
        messages = await reader.collect(lambda ms: wanted <= {m.key for m in ms}, timeout=60)
    by_id = {m.key.decode(): orjson.loads(m.value) for m in messages if m.key in wanted}
    for command_id, (_, error) in cases.items():
        result = by_id[command_id]
        check_result(result)
        assert result["status"] == "rejected"
        assert result["error"] == error
        row = await db.fetchrow(
            "SELECT status, error FROM job_runs WHERE command_id = $1", command_id
        )
        assert (row["status"], row["error"]) == ("failed", error)


async def test_run_job_through_the_control_topic_is_recorded_and_answered(
    worker: WorkerProcess, settings: Settings, db: asyncpg.Pool
) -> None:
    command_id = f"job-{uuid.uuid4()}"
    command = {
        "command_id": command_id,
        "command": "run_job",
        "params": {"job": "data-quality", "params": {"source": f"none-{command_id}"}},
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await producer.start()
    async with TopicReader(settings.broker_list, settings.topic_control_results) as reader:
        try:
            await producer.send_and_wait(
                settings.topic_control, orjson.dumps(command), key=command_id.encode()
            )
        finally:
            await producer.stop()
        messages = await reader.collect(
            lambda ms: any(
                m.key == command_id.encode() and orjson.loads(m.value)["status"] == "succeeded"
                for m in ms
            ),
            timeout=60,
        )
    ours = [orjson.loads(m.value) for m in messages if m.key == command_id.encode()]
    assert ours[0]["status"] == "running"
    final = ours[-1]
    check_result(final)
    assert final["status"] == "succeeded"
    assert final["result"]["clean"] is True
    row = await db.fetchrow(
        "SELECT job_name, status, result FROM job_runs WHERE command_id = $1", command_id
    )
    assert (row["job_name"], row["status"]) == ("data-quality", "succeeded")
    assert row["result"]["clean"] is True
