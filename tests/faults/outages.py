"""A dependency outage met by a normalizer with work in hand, and what the outage tests measure.

The normalizing worker is paused (SIGSTOP) until the load has had a few more 202s, so its
backlog is certain to meet the outage; then the service is told to stop, the worker resumes as
soon as the service stops answering, and the service stays down for the variant's time.
Meanwhile the normalizer must wait at its gate (``/readyz`` names the dependency), dead-letter
nothing, and carry on by itself once the service is back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.faults.common import FaultRun, Load
from tests.support import WorkerProcess, eventually, stack_service

BACKLOG_202S = 5


async def readyz(worker: WorkerProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.base_url}/readyz") as r:
        return await r.json()


async def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    """One sample of ``worker``'s /metrics (0 when the series does not exist yet)."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    )
    async with aiohttp.ClientSession() as http, http.get(f"{worker.base_url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def answers(run: FaultRun, service: str) -> bool:
    """Whether ``service`` (postgres or s3) takes a new connection and answers on it."""
    settings = run.settings
    try:
        if service == "postgres":
            conn = await asyncpg.connect(settings.dsn, timeout=2)
            await conn.close()
        else:
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.get(settings.minio_endpoint) as r:
                    await r.read()
    except Exception:
        return False
    return True


async def dead_lettered(run: FaultRun) -> int:
    """Messages on the run's DLQ topics: what the normalizer dead-lettered, ever."""
    settings = run.settings
    topics = [settings.dlq_topic_for(v) for v in ("1", "2")]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_list, group_id=None)
    await consumer.start()
    try:
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(end[tp] - begin[tp] for tp in tps)


async def outage_with_backlog(
    run: FaultRun,
    load: Load,
    normalizer: WorkerProcess,
    service: str,
    outage_s: float,
    restore_services: list[str],
) -> dict[str, Any]:
    """Stop ``service`` while ``normalizer`` has a backlog; keep it down ``outage_s``; bring it
    back. Returns the round's figures: how long it was down, whether the normalizer was seen
    waiting for it, and the epoch second it answered again (``back_at``)."""
    assert normalizer.proc is not None
    pauses_before = await metric(normalizer, "normalizer_pauses_total", dependency=service)
    accepted = len(load.accepted())
    stopping: asyncio.Task | None = None
    os.kill(normalizer.proc.pid, signal.SIGSTOP)
    try:
        await load.wait_accepted(accepted + BACKLOG_202S, timeout=60)
        restore_services.append(service)
        stopping_at = time.time()
        stopping = asyncio.create_task(asyncio.to_thread(stack_service, service, "down"))

        async def gone() -> bool:
            # A stop that failed is raised below, when it is awaited.
            return stopping.done() or not await answers(run, service)

        # The worker goes on as soon as the service stops answering, not when its stop returns:
        # Postgres checkpoints before it exits, which on a slow disk can outlast the worker's
        # Kafka session (6 s in these tests), and a worker dropped from its group meanwhile
        # would meet a rebalance as well as the outage.
        await eventually(gone, timeout=120, interval=0.05)
    finally:
        os.kill(normalizer.proc.pid, signal.SIGCONT)
        if stopping is not None:
            await stopping

    async def waiting() -> bool:
        return service in (await readyz(normalizer))["normalizer"]["waiting_for"]

    await eventually(waiting, timeout=max(30.0, outage_s))
    seen_waiting_at = time.time()
    await asyncio.sleep(max(0.0, stopping_at + outage_s - time.time()))
    await asyncio.to_thread(stack_service, service, "up")
    restore_services.remove(service)
    back_at = time.time()

    async def resumed() -> bool:
        return not (await readyz(normalizer))["normalizer"]["paused"]

    await eventually(resumed, timeout=60)
    pauses = await metric(normalizer, "normalizer_pauses_total", dependency=service)
    return {
        "down_s": round(back_at - stopping_at, 2),
        "waiting_seen_after_s": round(seen_waiting_at - stopping_at, 2),
        "resumed_after_s": round(time.time() - back_at, 2),
        "pauses": int(pauses - pauses_before),
        "back_at": back_at,
    }
