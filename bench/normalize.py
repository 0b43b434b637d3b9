"""Normalizer benchmark: drain throughput beside a bare consumer, and end-to-end latency.

    .venv/bin/python bench/normalize.py [--records 3000] [--rate 40] [--seconds 15]
        [--ref GIT_REF --rounds N]

Needs the stack (`make stack`) and a migrated database. In one run, on the same services:
  1. a topic of its own is pre-filled with --records events whose raw objects are in S3;
  2. baseline: a bare aiokafka consumer reads each raw object from S3 (the service's S3 client)
     and inserts one row per record through asyncpg, record after record: no mapping, no
     checksum, no ledger, no DLQ;
  3. the normalizer: a worker consuming only that topic drains it (mapping, tokenizing, ledger);
  4. end to end: a worker serving HTTP at --rate requests/s for --seconds; latency is from the
     202 to the canonical row's commit (Postgres clock, same machine).
Throughput is rows over the span between the first and the last row written.

With ``--ref``, step 3 is also run by a worker of that git ref (a temporary worktree whose code
it runs), ``--rounds`` times each, alternating, on topics pre-filled for each drain (the same
bodies, new record ids): each worker is ready and idle before its topic is filled, so its CPU
from then until its last canonical row (``/proc/<pid>/stat``) is the drain's alone, printed as
CPU ms per record beside the records/s, with the ratio of the working tree's to the ref's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from harness import (
    ROOT,
    GitRef,
    bodies,
    machine,
    percentile,
    spawn_worker,
    wait_ready,
    write_json,
)
from stackprocs import tree_cpu_seconds

from exchange_stream.core.events import RawObject, new_event, object_key
from exchange_stream.core.formats import V2
from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.storage import open_store
from exchange_stream.infra.topics import ensure_topics


async def prefill(settings: Settings, topic: str, n: int) -> list[str]:
    """Put ``n`` raw objects in S3 and their v2 events on ``topic``; return the record ids."""
    payloads = bodies()
    ids = []
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all", linger_ms=5)
    await producer.start()
    try:
        async with open_store(settings) as store:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                raw = payloads[i % len(payloads)]
                doc = orjson.loads(raw)
                rid = str(uuid.uuid4())
                key = object_key("bench-normalize", rid)
                async with sem:
                    await store.put(key, raw)
                event = new_event(
                    V2,
                    record_id=rid,
                    source="bench-normalize",
                    raw_object=RawObject(
                        settings.raw_bucket, key, hashlib.sha256(raw).hexdigest(), len(raw)
                    ),
                    correlation_id=rid,
                    record_kind=doc["record_kind"],
                    schema_hint=doc["schema_hint"],
                ).to_dict()
                await producer.send(topic, orjson.dumps(event), key=rid.encode())
                ids.append(rid)

            await asyncio.gather(*(one(i) for i in range(n)))
            await producer.flush()
    finally:
        await producer.stop()
    return ids


async def baseline(settings: Settings, topic: str, n: int, pool) -> float:
    """The bare consumer; returns rows per second."""
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_baseline_rows ("
            "record_id uuid PRIMARY KEY, raw_sha256 text, body jsonb, "
            "inserted_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        await conn.execute("TRUNCATE bench_baseline_rows")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.broker_list,
        group_id=f"bench-baseline-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    await consumer.start()
    done = 0
    try:
        async with open_store(settings) as store:
            async for msg in consumer:
                event = orjson.loads(msg.value)
                raw = await store.get(event["raw_object"]["key"])
                async with pool.acquire() as conn:
                    await conn.execute(
                        "INSERT INTO bench_baseline_rows (record_id, raw_sha256, body) "
                        "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        uuid.UUID(event["record_id"]),
                        hashlib.sha256(raw).hexdigest(),
                        orjson.loads(raw),
                    )
                done += 1
                if done >= n:
                    break
    finally:
        await consumer.stop()
    async with pool.acquire() as conn:
        span = await conn.fetchval(
            "SELECT extract(epoch FROM max(inserted_at) - "
            "min(inserted_at)) FROM bench_baseline_rows"
        )
        await conn.execute("DROP TABLE bench_baseline_rows")
    return n / float(span)


async def wait_drained(
    pool, uuids: list[uuid.UUID], workdir: Path, *, poll_s: float, deadline_s: float = 600
) -> None:
    """Until every record of ``uuids`` has a canonical row (polled every ``poll_s``)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        done = await pool.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = ANY($1)", uuids
        )
        if done == len(uuids):
            return
        await asyncio.sleep(poll_s)
    raise RuntimeError(f"normalizer did not finish; see {workdir}/worker.log")


async def normalizer_drain(settings: Settings, topic: str, ids: list[str], pool) -> float:
    """A worker consuming only ``topic``; returns canonical rows per second."""
    uuids = [uuid.UUID(r) for r in ids]
    with tempfile.TemporaryDirectory() as tmp:
        proc, _ = spawn_worker(
            Path(tmp), KAFKA_TOPICS=topic, APP_ID=f"bench-normalize-{uuid.uuid4().hex[:6]}"
        )
        try:
            await wait_drained(pool, uuids, Path(tmp), poll_s=0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    span = await pool.fetchval(
        "SELECT extract(epoch FROM max(normalized_at) - min(normalized_at)) "
        "FROM canonical_records WHERE record_id = ANY($1)",
        uuids,
    )
    return len(ids) / float(span)


async def measured_drain(
    settings: Settings, n: int, pool, env: dict[str, str] | None = None
) -> dict[str, float]:
    """A worker (of ``env``'s code) is started on an empty topic of its own and is ready; then
    ``n`` events are put on the topic and it drains them. Rows/s, and its CPU ms per record
    from the fill to its last canonical row."""
    topic = f"bench.normalize.{uuid.uuid4().hex[:8]}"
    await ensure_topics(Settings.from_env({**os.environ, "TOPIC_RECORD_INGESTED_V2": topic}))
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = spawn_worker(
            Path(tmp),
            KAFKA_TOPICS=topic,
            APP_ID=f"bench-normalize-{uuid.uuid4().hex[:6]}",
            **(env or {}),
        )
        try:
            await wait_ready(url, Path(tmp) / "worker.log")
            cpu0 = tree_cpu_seconds([proc.pid])
            ids = await prefill(settings, topic, n)
            uuids = [uuid.UUID(r) for r in ids]
            await wait_drained(pool, uuids, Path(tmp), poll_s=0.2)
            cpu1 = tree_cpu_seconds([proc.pid])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    span = await pool.fetchval(
        "SELECT extract(epoch FROM max(normalized_at) - min(normalized_at)) "
        "FROM canonical_records WHERE record_id = ANY($1)",
        uuids,
    )
    cpu_ms = (cpu1 - cpu0) * 1000 / n if cpu0 is not None and cpu1 is not None else float("nan")
    return {"per_s": n / float(span), "cpu_ms_per_record": cpu_ms}


async def side_by_side(
    settings: Settings, n: int, pool, ref: GitRef, rounds: int
) -> dict[str, list[dict[str, float]]]:
    """``measured_drain`` of the working tree and of ``ref``, ``rounds`` times, alternating."""
    runs: dict[str, list[dict[str, float]]] = {"working tree": [], ref.ref: []}
    systems = [("working tree", None), (ref.ref, ref.env())]
    for round_no in range(rounds):
        for label, env in systems if round_no % 2 == 0 else systems[::-1]:
            got = await measured_drain(settings, n, pool, env)
            runs[label].append(got)
            print(
                f"  round {round_no + 1}, {label}: {got['per_s']:.0f} records/s, "
                f"worker CPU {got['cpu_ms_per_record']:.2f} ms per record",
                flush=True,
            )
    return runs


async def end_to_end(
    settings: Settings, rate: float, seconds: float, pool, warmup_s: float = 5.0
) -> dict:
    """Open-loop HTTP at ``rate``/s; latency from each 202 to its canonical row's commit.
    The first ``warmup_s`` of requests (consumer group join, connection pools) are not counted."""
    payloads = bodies()
    sent: dict[str, float] = {}
    measured_from = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = spawn_worker(Path(tmp))
        try:
            await wait_ready(url, Path(tmp) / "worker.log")
            async with aiohttp.ClientSession() as http:

                async def one(i: int) -> None:
                    h = {
                        "Authorization": "Bearer dev",
                        "Content-Type": "application/json",
                        "Idempotency-Key": f"bench-e2e-{uuid.uuid4()}",
                    }
                    async with http.post(
                        f"{url}/v2/ingest", data=payloads[i % len(payloads)], headers=h
                    ) as r:
                        body = await r.json()
                        if r.status == 202 and i >= measured_from:
                            sent[body["record_id"]] = time.time()

                tasks = []
                start = time.monotonic()
                measured_from = int(rate * warmup_s)
                for i in range(int(rate * (warmup_s + seconds))):
                    await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                    tasks.append(asyncio.create_task(one(i)))
                await asyncio.gather(*tasks)
            uuids = [uuid.UUID(r) for r in sent]
            for _ in range(240):
                n = await pool.fetchval(
                    "SELECT count(*) FROM canonical_records WHERE record_id = ANY($1)", uuids
                )
                if n == len(uuids):
                    break
                await asyncio.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rows = await pool.fetch(
        "SELECT record_id, normalized_at FROM canonical_records WHERE record_id = ANY($1)",
        [uuid.UUID(r) for r in sent],
    )
    lat = [
        (
            r["normalized_at"] - datetime.fromtimestamp(sent[str(r["record_id"])], UTC)
        ).total_seconds()
        * 1000
        for r in rows
    ]
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "accepted": len(sent),
        "canonical": len(rows),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--ref", metavar="GIT_REF", help="also drain with a worker of this ref")
    parser.add_argument("--rounds", type=int, default=2, help="with --ref: drains of each")
    parser.add_argument("--output", default=str(ROOT / "bench/results/normalize.json"))
    args = parser.parse_args()
    host = machine()
    print(host.line(), flush=True)
    base = Settings.from_env()
    topic = f"bench.normalize.{uuid.uuid4().hex[:8]}"
    await ensure_topics(Settings.from_env({**os.environ, "TOPIC_RECORD_INGESTED_V2": topic}))
    pool = await create_pool(base, max_size=10)
    try:
        print(f"pre-filling {topic} with {args.records} events …", flush=True)
        ids = await prefill(base, topic, args.records)
        print("baseline: bare consumer …", flush=True)
        bare = await baseline(base, topic, args.records, pool)
        print("normalizer drain …", flush=True)
        norm = await normalizer_drain(base, topic, ids, pool)
        compared = None
        if args.ref:
            print(f"normalizer drains, the working tree beside {args.ref} …", flush=True)
            with GitRef(args.ref) as ref:
                compared = await side_by_side(base, args.records, pool, ref, args.rounds)
        print(f"end to end at {args.rate:g} req/s for {args.seconds:g} s …", flush=True)
        e2e = await end_to_end(base, args.rate, args.seconds, pool)
    finally:
        await pool.close()
    if compared is not None:
        med = {
            label: {
                k: statistics.median(r[k] for r in runs) for k in ("per_s", "cpu_ms_per_record")
            }
            for label, runs in compared.items()
        }
        a, b = med["working tree"], med[args.ref]
        print(f"\nDrain side by side, medians of {args.rounds}: working tree / {args.ref}")
        print(
            f"  records/s {a['per_s']:.0f} / {b['per_s']:.0f}; worker CPU per record "
            f"{a['cpu_ms_per_record']:.2f} / {b['cpu_ms_per_record']:.2f} ms "
            f"(ratio {a['cpu_ms_per_record'] / b['cpu_ms_per_record']:.2f})"
        )
    print(f"\nDrain of {args.records} pre-filled events (FHIR bodies), records/s")
    print(f"  bare consumer (S3 GET + 1 INSERT per record, sequential): {bare:8.1f}")
    print(f"  normalizer (map, tokenize, ledger, batched writes):       {norm:8.1f}")
    print(f"  ratio normalizer / bare consumer:                          {norm / bare:8.2f}")
    print(
        f"\nEnd to end, 202 → canonical row visible, at {e2e['rate_per_s']:g} req/s for "
        f"{e2e['seconds']:g} s ({e2e['accepted']} accepted, {e2e['canonical']} canonical)"
    )
    print(f"  p50 {e2e['p50_ms']:.1f} ms   p95 {e2e['p95_ms']:.1f} ms   p99 {e2e['p99_ms']:.1f} ms")
    write_json(
        Path(args.output),
        {
            "machine": asdict(host),
            "drain": {
                "records": args.records,
                "bare_per_s": bare,
                "normalizer_per_s": norm,
                "ratio": norm / bare,
            },
            "end_to_end": e2e,
            "side_by_side": compared,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
