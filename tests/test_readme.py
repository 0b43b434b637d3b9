"""README.md's commands, run as written and in order against the real services.

Every fenced block tagged ``sh`` runs in one bash session, so that what a block sets (``TOKEN=…``)
is there for the next, as in the reader's terminal, under ``set -eu`` (no ``pipefail``: a reader's
shell has none, and ``… | head -1`` is fine there): a command that exits non-zero fails the test
with its block and output. The README's curl commands pass
``--fail-with-body`` (an HTTP error status is a non-zero exit) or check the status they show.
One HTML comment before a block may change how it runs:

``<!-- readme-test: background URL -->``
    the block holds its terminal (``make run``): it runs in a session of its own, and the next
    blocks start once URL answers 200. At the end it gets SIGINT, the reader's Ctrl-C, and must
    be gone within a minute, with no ERROR line and no traceback in its output.
``<!-- readme-test: skip REASON -->``
    not run (``make test`` itself, commands that stop the services, benchmarks); the test
    prints every skipped block and its reason.

Every other fenced block must name a language, and no block but an ``sh`` one may hold a command
line (``curl``, ``exchange-stream``, ``make`` …), so that no command escapes the test.

The shell starts without ``.venv/bin`` on its PATH (the README must say how to get the CLI) and
with names of its own, so that runs never see each other's state and a run can be repeated on
the same stack: a new database (``POSTGRES_DB``), bucket, topics, consumer group and data
directory, dropped at the end. The commands themselves are the README's, unchanged.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.infra.config import Settings
from exchange_stream.infra.topics import CONTROL_RESULTS, TOPICS
from tests.support import ROOT

README = ROOT / "README.md"
BLOCK_TIMEOUT_S = 240.0
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
SHELL_TAGS = {"sh", "bash", "shell"}
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(background|skip)\s+(.+?)\s*-->")
# A line that starts a command a reader would type (after an optional "$ ").
_COMMAND = re.compile(
    r"^\s*(?:\$\s+)?(?:curl|exchange-stream|make|\.venv/bin/|bash|python|source|export)\b"
)


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its language, text, line and directive."""

    lang: str
    text: str
    line: int
    directive: tuple[str, str] | None

    def where(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` in order, each with the directive comment just before it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    pending: tuple[str, str] | None = None
    while i < len(lines):
        directive = _DIRECTIVE.search(lines[i])
        if directive:
            pending = (directive[1], directive[2])
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip():
                pending = None  # a directive binds to the block right after it
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: a fenced block is never closed")
        blocks.append(Block(fence[1].lower(), "\n".join(body) + "\n", start + 1, pending))
        pending = None
        i += 1
    return blocks


def test_every_block_is_tagged_and_commands_are_in_shell_blocks() -> None:
    """Pure: no command hides in an untagged or non-shell block, and every directive is known."""
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert any(b.lang == "sh" for b in blocks)
    for b in blocks:
        assert b.lang, f"{b.where()}: a fenced block names its language (sh, text, json …)"
        if b.lang in SHELL_TAGS:
            assert b.lang == "sh", f"{b.where()}: shell blocks are tagged sh"
            continue
        assert b.directive is None, f"{b.where()}: a directive on a block that is not sh"
        commands = [line for line in b.text.splitlines() if _COMMAND.match(line)]
        assert not commands, f"{b.where()}: commands outside an sh block: {commands}"


def test_readme_blocks_parser() -> None:
    text = (
        "intro\n<!-- readme-test: skip needs Docker -->\n```sh\ndocker compose up\n```\n"
        "```text\nout\n```\n<!-- readme-test: background http://x/readyz -->\n\n"
        "```sh\nmake run\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.lang, b.directive) for b in blocks] == [
        ("sh", ("skip", "needs Docker")),
        ("text", None),
        ("sh", ("background", "http://x/readyz")),
    ]
    assert blocks[0].text == "docker compose up\n" and blocks[0].line == 3


# Running the blocks ---------------------------------------------------------------------


class Shell:
    """One bash session fed block after block, each ``source``d from a file (so a block cannot
    read the session's own input), with its output read line by line."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send("set -eu")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def run(self, n: int, text: str, timeout_s: float) -> tuple[bool, str]:
        """Source block ``n``; (finished without error, its output)."""
        path = self.workdir / f"block-{n:02d}.sh"
        path.write_text(text, encoding="utf-8")
        marker = f"::readme-block-done {n} {uuid.uuid4().hex}"
        self._send(f"source {shlex.quote(str(path))} </dev/null; printf '\\n%s\\n' {marker!r}")
        output: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return False, "".join(output) + f"\n[no end within {timeout_s:g} s]"
            if line is None:
                return False, "".join(output) + f"\n[the shell exited with {self.proc.wait()}]"
            if line.rstrip("\n") == marker:
                return True, "".join(output)
            output.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)


class Background:
    """A block that holds its terminal, in a session of its own, logging to a file."""

    def __init__(self, text: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c", text],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the background block exited with {self.proc.returncode}:\n"
                    f"{self.output()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{url} did not answer 200 within {timeout_s:g} s:\n{self.output()[-4000:]}"
                )
            time.sleep(0.5)

    def interrupt(self, timeout_s: float) -> bool:
        """Ctrl-C (SIGINT to its process group); True if everything in it ended in time."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not _group_alive(self.proc.pid):
                return True
            time.sleep(0.2)
        return False

    def kill(self) -> None:
        if _group_alive(self.proc.pid):
            os.killpg(self.proc.pid, 9)


def _require_free(url: str) -> None:
    """Fail at once if something already listens where the background block will (a reader's
    own ``make run``), rather than run the README against it."""
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0:
            pytest.fail(
                f"{parts.hostname}:{parts.port} is in use: stop `make run` before `make test`"
            )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class Names:
    """The run's own database, bucket, topics, group and data directory."""

    run: str
    env: dict[str, str]
    database: str
    topic_prefix: str


def _names(workdir: Path) -> Names:
    run = uuid.uuid4().hex[:8]
    prefix = f"readme-{run}"
    env = {
        "POSTGRES_DB": f"readme_{run}",
        "RAW_BUCKET": prefix,
        "APP_ID": prefix,
        "DATA_DIR": str(workdir / "worker-data"),
    }
    for topic in TOPICS:
        if topic is not CONTROL_RESULTS:
            env[topic.name.env] = f"{prefix}.{topic.name.default}"
    env["KAFKA_TOPICS"] = ",".join(
        env[t.name.env] for t in TOPICS if t.name.env.startswith("TOPIC_RECORD_INGESTED")
    )
    return Names(run, env, env["POSTGRES_DB"], prefix)


def _shell_env(names: Names) -> dict[str, str]:
    """The environment of a new terminal: the caller's, without the virtualenv on PATH and
    without the tests' own settings, plus the run's names."""
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "ENV", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"}
        and not k.startswith(("PYTEST_", "COV_"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin)
    )
    env.update(names.env)
    return env


async def _drop(settings: Settings, names: Names) -> None:
    """Drop the run's database and delete its topics (and its consumer group's)."""
    conn = await asyncpg.connect(settings.dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{names.database}" WITH (FORCE)')
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(names.topic_prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


@pytest.fixture
def readme_names(settings: Settings, tmp_path: Path, stack: None) -> Iterator[Names]:
    names = _names(tmp_path)
    try:
        yield names
    finally:
        import asyncio

        asyncio.run(_drop(settings, names))


def test_readme_commands_run_as_written(readme_names: Names, tmp_path: Path) -> None:
    blocks = [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang == "sh"]
    env = _shell_env(readme_names)
    shell = Shell(env, tmp_path)
    backgrounds: list[tuple[Block, Background]] = []
    skipped: list[str] = []
    # What a reader would see, block by block (pytest keeps tmp_path for a look afterwards).
    transcript = tmp_path / "transcript.md"
    try:
        for n, block in enumerate(blocks):
            kind, argument = block.directive or ("run", "")
            if kind == "skip":
                skipped.append(f"{block.where()}: {argument}")
                continue
            if kind == "background":
                _require_free(argument)
                bg = Background(block.text, env, tmp_path / f"background-{n:02d}.log")
                backgrounds.append((block, bg))
                bg.wait_ready(argument, READY_TIMEOUT_S)
                continue
            ok, output = shell.run(n, block.text, BLOCK_TIMEOUT_S)
            with transcript.open("a", encoding="utf-8") as f:
                f.write(f"### {block.where()}\n{block.text}--- output\n{output}\n")
            if not ok:
                logs = "".join(
                    f"\n--- {b.where()} (background), last lines:\n{bg.output()[-3000:]}"
                    for b, bg in backgrounds
                )
                pytest.fail(f"{block.where()} failed:\n{block.text}\n--- output:\n{output}{logs}")
        for block, bg in backgrounds:
            assert bg.interrupt(STOP_TIMEOUT_S), f"{block.where()}: still running after Ctrl-C"
            out = bg.output()
            assert "Traceback" not in out, f"{block.where()}: a traceback:\n{out[-4000:]}"
            errors = [line for line in out.splitlines() if '"level":"ERROR"' in line]
            assert not errors, f"{block.where()}: ERROR lines:\n" + "\n".join(errors[:10])
    finally:
        shell.close()
        for _, bg in backgrounds:
            bg.kill()
    print("README blocks skipped:\n  " + "\n  ".join(skipped))
    assert all(re.search(r"\S", s.split(":", 2)[-1]) for s in skipped)
