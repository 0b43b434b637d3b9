"""What the CLI prints, on the real services: one JSON object whether an operation ran ``--local``
or on a worker, dry runs that say what they would do, text without a Python repr, and no
traceback when stdout's reader goes away early (``… | head -1``)."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from exchange_stream.cli.operations import EXIT_CLOSED_PIPE
from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import open_store
from tests.payloads import new_key, patient_v1, patient_v2, v1_body, v2_body
from tests.support import VENV_BIN, WorkerProcess, post_json, run_cli, wait_canonical

CLI = str(VENV_BIN / "exchange-stream")
OUTPUT_KEYS = {
    "operation",
    "command_id",
    "job_run_id",
    "status",
    "previous_status",
    "result",
    "error",
    "runner",
    "local",
}
# A Python repr of a dict, a list, or a string inside one (as tests/unit/test_cli_render.py).
REPR = re.compile(r"[{}\[\]]|['\"]\s*[:,\])}]|[(\[{,]\s*['\"]|\b(?:None|True|False)\b")
PATIENT_VALUES = {
    str(v) for p in (patient_v1(), patient_v2()) for v in p.values() if len(str(v)) > 3
}


async def _text(*args: str) -> tuple[int, str, str]:
    """``exchange-stream <args>`` with the default text output: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode(errors="replace")


async def _both(*args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON object of ``args`` run on the worker, then ``--local``; both must succeed."""
    code, on_worker = await run_cli(*args)
    assert code == 0, on_worker
    code, local = await run_cli(*args, "--local")
    assert code == 0, local
    return on_worker, local


def _assert_same_object(on_worker: dict[str, Any], local: dict[str, Any]) -> None:
    assert set(on_worker) == set(local) == OUTPUT_KEYS
    assert (on_worker["local"], local["local"]) == (False, True)
    assert isinstance(on_worker["command_id"], str) and local["command_id"] is None
    assert on_worker["operation"] == local["operation"]
    assert on_worker["job_run_id"] != local["job_run_id"]
    assert on_worker["runner"] and local["runner"]


def _assert_readable(text: str) -> None:
    for line in text.splitlines():
        assert not REPR.search(line), line
        assert not any(v in line for v in PATIENT_VALUES), "patient data in the output"


@pytest.fixture(scope="module")
async def source(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> str:
    """A source with two records ingested and canonical (v1 and v2), and one raw object that is
    not JSON and has no rows: a crash's leftover for reconcile, an unparseable body for replay."""
    name = f"cli-out-{uuid.uuid4().hex[:8]}"
    ids = []
    for version, body in (("1", v1_body(source=name)), ("2", v2_body(source=name))):
        status, resp, _ = await post_json(
            http, f"{worker.base_url}/v{version}/ingest", body, key=new_key()
        )
        assert status == 202, resp
        ids.append(resp["record_id"])
    await wait_canonical(db, ids)
    async with open_store(settings) as store:
        await store.put(f"{name}/{uuid.uuid4()}.json", b"\x00 not json")
    return name


async def test_recipients_add_and_list_print_the_same_object_on_a_worker_and_locally(
    worker: WorkerProcess,
) -> None:
    mine = [f"cli-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    code, added_on_worker = await run_cli("recipients", "add", mine[0])
    assert code == 0, added_on_worker
    code, added_locally = await run_cli("recipients", "add", mine[1], "--local")
    assert code == 0, added_locally
    _assert_same_object(added_on_worker, added_locally)
    assert [added_on_worker["result"], added_locally["result"]] == [
        {"recipient": r, "status": "active", "version": 1} for r in mine
    ]

    listed_on_worker, listed_locally = await _both("recipients", "list")
    _assert_same_object(listed_on_worker, listed_locally)
    # Nothing changed between the two runs: the same result, to the last key and type.
    assert listed_on_worker["result"] == listed_locally["result"]
    ours = [r for r in listed_locally["result"]["recipients"] if r["recipient"] in mine]
    assert [r["current_version"] for r in ours] == [1, 1]

    code, text, _ = await _text("recipients", "list")
    assert code == 0
    _assert_readable(text)
    lines = text.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["recipient", "status"])
    rows = lines[lines.index(header) + 1 :]
    assert len(rows) == listed_locally["result"]["count"]
    status_at = header.index("status")
    for r in mine:
        (row,) = [line for line in rows if line.split()[0] == r]
        assert row[status_at:].split()[0] == "active"


async def test_a_dry_run_replay_reports_what_it_would_emit_on_a_worker_and_locally(
    source: str, db: asyncpg.Pool
) -> None:
    outbox_before = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox_events")
    on_worker, local = await _both("replay", "--source", source, "--dry-run")
    _assert_same_object(on_worker, local)
    assert on_worker["result"] == local["result"]
    result = local["result"]
    assert (result["dry_run"], result["listed"]) == (True, 3)
    assert (result["would_emit"], result["unparseable"]) == (2, 1)
    assert "emitted" not in result
    assert not await db.fetchval(
        "SELECT count(*) FROM outbox_events WHERE id > $1 AND payload->>'source' = $2",
        outbox_before,
        source,
    ), "a dry run enqueues nothing"

    code, text, _ = await _text("replay", "--source", source, "--dry-run")
    assert code == 0
    _assert_readable(text)
    assert "would emit 2" in text
    assert not re.search(r"(?<!would )\bemitted\b\s*\d", text)


async def test_reconcile_prints_the_same_object_on_a_worker_and_locally(source: str) -> None:
    args = ("reconcile", "--source", source, "--older-than-s", "0")
    on_worker, local = await _both(*args)
    _assert_same_object(on_worker, local)
    assert on_worker["result"] == local["result"]
    counts = local["result"]["counts"]
    assert counts["raw_without_manifest"] == 1 and sum(counts.values()) == 1, counts

    code, text, _ = await _text(*args, "--local")
    assert code == 0
    _assert_readable(text)
    (row,) = [line for line in text.splitlines() if line.split()[:1] == ["raw_without_manifest"]]
    assert row.split()[1] == "1"


async def test_a_failed_operation_prints_the_same_object_on_a_worker_and_locally(
    worker: WorkerProcess,
) -> None:
    args = ("recipients", "rotate-key", f"none-{uuid.uuid4().hex[:8]}")
    code, on_worker = await run_cli(*args)
    assert code == 1, on_worker
    code, local = await run_cli(*args, "--local")
    assert code == 1, local
    _assert_same_object(on_worker, local)
    for doc in (on_worker, local):
        assert (doc["status"], doc["error"]) == ("failed", "no such recipient")
    assert on_worker["result"] == local["result"] == {"recipient": args[-1]}


CLOSED_PIPE_COMMANDS = {
    # argparse ignores a failed write of its help by itself and exits 0; were the write still
    # buffered, main()'s flush would fail and it would exit 141. Either way: quietly.
    "help": ["--help"],
    "jobs-list": ["jobs", "list"],
    "migrate": ["migrate"],
    "recipients-list-local": ["recipients", "list", "--local"],
    "recipients-list-worker": ["recipients", "list"],
    "reconcile-local": ["reconcile", "--source", "{source}", "--local"],
    "replay-dry-run-worker": ["replay", "--source", "{source}", "--dry-run"],
    "replay-json": ["replay", "--source", "{source}", "--dry-run", "--output", "json"],
}


@pytest.mark.parametrize("args", CLOSED_PIPE_COMMANDS.values(), ids=CLOSED_PIPE_COMMANDS.keys())
async def test_a_closed_stdout_ends_the_command_quietly(
    args: list[str], source: str, worker: WorkerProcess
) -> None:
    # Stdout's reader is gone before the command writes a byte: every write fails (EPIPE).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            *(a.format(source=source) for a in args),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 180)
    stderr = err.decode(errors="replace")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    expected = (0, EXIT_CLOSED_PIPE) if args == ["--help"] else (EXIT_CLOSED_PIPE,)
    assert proc.returncode in expected, stderr


async def test_reconcile_piped_into_head_prints_its_headline_and_no_traceback(
    source: str,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        f'"{CLI}" reconcile --source "{source}" --local | head -1',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    (headline,) = out.decode().splitlines()
    assert headline.startswith("reconcile: succeeded (job run "), headline
    assert "Traceback" not in err.decode(errors="replace")
    # Whether head left before or after the last write is a race: either way, no traceback.
    assert proc.returncode in (0, EXIT_CLOSED_PIPE)
