"""The floor of the pipeline's services: server and client CPU per operation, minimal clients.

    .venv/bin/python bench/limits.py [--ops 2000] [--concurrency 16]
        [--output bench/results/limits.json]

On the stack of the environment (POSTGRES_PORT, KAFKA_BROKERS, MINIO_ENDPOINT, as for the
tests), each service is driven by the smallest client that does the pipeline's kind of work, at
``--concurrency`` operations in flight (uvloop when installed):

- Postgres (asyncpg, a pool of that many connections): a transaction of
  ``pg_advisory_xact_lock`` and three small INSERTs, and the same work as ONE statement (a CTE).
  In a scratch database of its own (``<POSTGRES_DB>_bench_limits``), dropped at the end.
- S3 (the service's own client, ``RawStore`` over ``infra/s3http.py``): PUT of a 1.5 KiB body,
  then GET of it, under a scratch prefix of the raw bucket, deleted at the end.
- Kafka (aiokafka): produce of 1.5 KiB messages with acks=all and linger, then a consume of
  them from the beginning, on a scratch topic created and deleted here.

The server's CPU is its process tree's (the postmaster and its backends, the broker's JVM, the
S3 server) read from /proc (bench/stackprocs.py) before and after each step; the client's is
``time.process_time()`` of this process. Both include what the process does besides the load
(autovacuum, the broker's housekeeping), which a few thousand ops make small.

Then the arithmetic for one record (two Postgres transactions, one S3 PUT and one GET, one
produce and one consume): server and client CPU ms per record, and the records/s that 2 cores
would allow at that floor, with the multi-statement transaction and with one statement each.
JSON goes to bench/results/limits.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from harness import ROOT, machine
from stackprocs import stack_dir, stack_pids, tree_cpu_seconds

from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import open_store
from tests.support import drop_database

BODY = b"x" * 1536  # 1.5 KiB, about a v2 FHIR body
ROW = "y" * 120  # a small row, about an outbox or ledger row
CORES = 2

TX_INSERT = "INSERT INTO scratch_{} (k, body) VALUES ($1, $2)"
# An unreferenced SELECT in a WITH is never run: each step reads the one before.
CTE = """
WITH l AS (SELECT pg_advisory_xact_lock($1) AS ok),
a AS (INSERT INTO scratch_a (k, body) SELECT $1, $2 FROM l RETURNING k),
b AS (INSERT INTO scratch_b (k, body) SELECT $1, $2 FROM a RETURNING k)
INSERT INTO scratch_c (k, body) SELECT $1, $2 FROM b
"""


@dataclass
class Step:
    """One measured step: ``ops`` operations, the server tree's and this process's CPU."""

    name: str
    server: str
    ops: int
    seconds: float
    server_cpu_s: float | None
    client_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def server_ms(self) -> float | None:
        return None if self.server_cpu_s is None else 1000 * self.server_cpu_s / self.ops

    @property
    def client_ms(self) -> float:
        return 1000 * self.client_cpu_s / self.ops

    def row(self) -> str:
        server = "n/a" if self.server_ms is None else f"{self.server_ms:.3f}"
        return (
            f"{self.name:<34}{self.ops:>7}{self.per_second:>10.0f}{server:>12}"
            f"{self.client_ms:>11.3f}"
        )


async def measure(
    name: str, server: str, pid: int | None, ops: int, run: Callable[[], Awaitable[None]]
) -> Step:
    """Run ``run`` (which does ``ops`` operations) between two CPU samples."""
    roots = [pid] if pid is not None else []
    s0 = tree_cpu_seconds(roots) if roots else None
    c0, w0 = time.process_time(), time.perf_counter()
    await run()
    c1, w1 = time.process_time(), time.perf_counter()
    s1 = tree_cpu_seconds(roots) if roots else None
    server_cpu = None if s0 is None or s1 is None else s1 - s0
    step = Step(name, server, ops, w1 - w0, server_cpu, c1 - c0)
    print(step.row(), flush=True)
    return step


async def saturate(ops: int, concurrency: int, op: Callable[[int], Awaitable[object]]) -> None:
    """``concurrency`` workers call ``op(i)`` back to back until ``ops`` calls are done."""
    counter = iter(range(ops))

    async def worker() -> None:
        for i in counter:
            await op(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ------------------------------------------------------------------------------ Postgres ----


async def postgres_steps(
    settings: Settings, pid: int | None, ops: int, concurrency: int
) -> list[Step]:
    name = f"{settings.postgres_db}_bench_limits"
    admin = await asyncpg.connect(settings.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = settings.dsn.rsplit("/", 1)[0] + f"/{name}"
    try:
        pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
        try:
            async with pool.acquire() as conn:
                for t in "abc":
                    await conn.execute(
                        f"CREATE TABLE scratch_{t} (id bigserial PRIMARY KEY, k bigint, body text)"
                    )

            async def transaction(i: int) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", i)
                    for t in "abc":
                        await conn.execute(TX_INSERT.format(t), i, ROW)

            async def one_statement(i: int) -> None:
                async with pool.acquire() as conn:
                    await conn.execute(CTE, i, ROW)

            steps = []
            for label, op in (
                ("pg tx: lock + 3 INSERTs (5 stmts)", transaction),
                ("pg one statement (CTE)", one_statement),
            ):
                await saturate(max(50, ops // 10), concurrency, op)  # warm up, prepare
                steps.append(
                    await measure(
                        label, "postgres", pid, ops, lambda op=op: saturate(ops, concurrency, op)
                    )
                )
            return steps
        finally:
            await pool.close()
    finally:
        await drop_database(settings.dsn, name)


# ------------------------------------------------------------------------------------ S3 ----


async def s3_steps(settings: Settings, pid: int | None, ops: int, concurrency: int) -> list[Step]:
    prefix = f"bench-limits/{uuid.uuid4().hex[:12]}"
    keys = [f"{prefix}/{i}.json" for i in range(ops)]
    warm = [f"{prefix}/warm-{i}.json" for i in range(max(20, ops // 10))]
    async with open_store(settings, pool=max(100, concurrency)) as store:
        try:

            async def put(i: int, keys: list[str] = keys) -> None:
                await store.put(keys[i], BODY)

            async def get(i: int, keys: list[str] = keys) -> None:
                await store.get(keys[i])

            async def warm_put(i: int) -> None:
                await store.put(warm[i], BODY)

            async def warm_get(i: int) -> None:
                await store.get(warm[i])

            await saturate(len(warm), concurrency, warm_put)
            put_step = await measure(
                "s3 PUT 1.5 KiB", "s3", pid, ops, lambda: saturate(ops, concurrency, put)
            )
            await saturate(len(warm), concurrency, warm_get)
            get_step = await measure(
                "s3 GET 1.5 KiB", "s3", pid, ops, lambda: saturate(ops, concurrency, get)
            )
            return [put_step, get_step]
        finally:
            every = keys + warm

            async def delete(i: int) -> None:
                await store.delete(every[i])

            await saturate(len(every), concurrency, delete)


# --------------------------------------------------------------------------------- Kafka ----


async def kafka_steps(settings: Settings, pid: int | None, ops: int) -> list[Step]:
    topic = f"bench-limits-{uuid.uuid4().hex[:12]}"
    partitions = settings.topic_partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.broker_list, acks="all", linger_ms=5, max_batch_size=65536
        )
        await producer.start()
        try:
            # Warm up: metadata, connections, the partitions' leaders.
            await asyncio.gather(*[await producer.send(topic, BODY) for _ in range(100)])

            async def produce() -> None:
                futures = [await producer.send(topic, BODY, key=b"%d" % i) for i in range(ops)]
                await asyncio.gather(*futures)

            produce_step = await measure(
                "kafka produce 1.5 KiB acks=all", "kafka", pid, ops, produce
            )
        finally:
            await producer.stop()

        total = ops + 100
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.broker_list,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(partitions)])

            async def consume() -> None:
                seen = 0
                while seen < total:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                    seen += sum(len(records) for records in batches.values())

            consume_step = await measure("kafka consume", "kafka", pid, total, consume)
        finally:
            await consumer.stop()
        return [produce_step, consume_step]
    finally:
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()


# ---------------------------------------------------------------------------- arithmetic ----


def per_record(steps: dict[str, Step], pg: str) -> tuple[float, float]:
    """Server and client CPU ms of one record: two ``pg`` transactions, a PUT, a GET, a produce
    and a consume (a server not found counts as 0)."""
    parts = [(pg, 2), ("s3 PUT 1.5 KiB", 1), ("s3 GET 1.5 KiB", 1)]
    parts += [("kafka produce 1.5 KiB acks=all", 1), ("kafka consume", 1)]
    server = sum((steps[n].server_ms or 0.0) * k for n, k in parts)
    client = sum(steps[n].client_ms * k for n, k in parts)
    return server, client


async def main(args: argparse.Namespace) -> dict[str, object]:
    """Run every step, print its rows and the arithmetic; the report for the JSON file."""
    settings = Settings.from_env()
    the_machine = machine()
    print(the_machine.line(), flush=True)
    pids = stack_pids()
    print(f"stack {stack_dir()}: pids {pids}", flush=True)
    for server in ("postgres", "kafka", "s3"):
        if server not in pids:
            print(f"warning: no {server} process found; its CPU is not counted", flush=True)
    print(
        f"ops {args.ops}, concurrency {args.concurrency}, "
        f"loop {type(asyncio.get_running_loop()).__module__}"
    )
    print(f"{'step':<34}{'ops':>7}{'ops/s':>10}{'server ms':>12}{'client ms':>11}")
    steps = await postgres_steps(settings, pids.get("postgres"), args.ops, args.concurrency)
    steps += await s3_steps(settings, pids.get("s3"), args.ops, args.concurrency)
    steps += await kafka_steps(settings, pids.get("kafka"), args.ops)
    by_name = {s.name: s for s in steps}

    print("\none record = 2 Postgres transactions + S3 PUT + GET + Kafka produce + consume")
    floors = {}
    for label, pg in (
        ("5-statement transactions", "pg tx: lock + 3 INSERTs (5 stmts)"),
        ("one statement each", "pg one statement (CTE)"),
    ):
        server, client = per_record(by_name, pg)
        total = server + client
        rate = CORES * 1000 / total if total else 0.0
        floors[label] = {"server_ms": server, "client_ms": client, "records_per_s": rate}
        print(
            f"  {label:<26} server {server:.3f} + client {client:.3f} = {total:.3f} ms CPU "
            f"per record -> {CORES} cores / {total:.3f} ms = {rate:.0f} records/s"
        )

    return {
        "machine": asdict(the_machine),
        "ops": args.ops,
        "concurrency": args.concurrency,
        "stack_pids": pids,
        "steps": [
            {
                **asdict(s),
                "per_second": s.per_second,
                "server_ms": s.server_ms,
                "client_ms": s.client_ms,
            }
            for s in steps
        ],
        "per_record": floors,
        "cores": CORES,
    }


def write(report: dict[str, object], path: str) -> None:
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "limits.json"))
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        report = asyncio.run(main(args))
    else:
        report = uvloop.run(main(args))
    write(report, args.output)
