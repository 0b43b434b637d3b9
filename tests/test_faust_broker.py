"""A Faust agent receives what is produced to a topic on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from exchange_stream.infra.config import Settings
from tests.support import ROOT, eventually


async def test_faust_agent_receives_a_produced_message(stack, settings: Settings, tmp_path: Path):
    run = uuid.uuid4().hex[:8]
    topic = f"test.echo.{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()

    out = tmp_path / "received.txt"
    env = {
        **os.environ,
        "TEST_APP_ID": f"echo-{run}",
        "TEST_TOPIC": topic,
        "TEST_OUT": str(out),
        "TEST_DATADIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "echo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "apps" / "echo.py"), "worker", "-l", "info"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await producer.start()
    try:
        message = f"hello-{run}".encode()
        await producer.send_and_wait(topic, message, key=b"k1")

        async def received() -> bool:
            assert proc.poll() is None, (tmp_path / "echo.log").read_text()
            return out.exists() and message in out.read_bytes().splitlines()

        await eventually(received, timeout=90)
    finally:
        await producer.stop()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
