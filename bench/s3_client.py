"""S3 clients side by side: CPU per call, calls per second and latency, PUT and GET, one run.

    .venv/bin/python bench/s3_client.py [--ops 2000] [--concurrency 1,8]

Same server, the same 150 FHIR v2 bodies as the ingest benches (1-3 KiB), on uvloop as in the
worker. Rows: ``RawStore.put``/``get`` as the service calls them (over its own client,
``infra/s3http.py``), aiohttp-s3-client (its listings and HEAD), and aioboto3 (botocore), set up
as the tests' independent client, for reference.
The CPU is this process's, per call; the S3 server's is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp_s3_client import S3Client
from harness import bodies, machine

from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import RawStore, open_store
from tests.support import independent_s3_client

Op = Callable[[str, bytes], Awaitable[object]]


async def measure(label: str, op: Op, keys: list[str], payloads: list[bytes], conc: int) -> None:
    for k in keys[:20]:
        await op(k, payloads[0])
    sem = asyncio.Semaphore(conc)
    latencies: list[float] = []

    async def one(i: int, k: str) -> None:
        async with sem:
            t = time.perf_counter()
            await op(k, payloads[i % len(payloads)])
            latencies.append(time.perf_counter() - t)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"{label:<30}{conc:>6}{cpu / len(keys) * 1000:>9.3f}{len(keys) / wall:>9.0f}"
        f"{statistics.median(latencies) * 1000:>9.2f}{p99 * 1000:>9.2f}"
    )


async def main(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    payloads = bodies()
    print(machine().line(), flush=True)
    print(f"{'client / call':<30}{'conc':>6}{'CPU ms':>9}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}")

    def keys() -> list[str]:
        return [f"bench-s3-client/{uuid.uuid4()}.json" for _ in range(args.ops)]

    for conc in args.concurrency:
        # One store: RawStore.put/get (the service's calls, over its own client) and the
        # aiohttp-s3-client it keeps for listings and HEAD.
        async with open_store(settings) as store:
            lib = store.client

            async def ours_put(k: str, body: bytes, store: RawStore = store) -> None:
                await store.put(k, body)

            async def ours_get(k: str, _: bytes, store: RawStore = store) -> None:
                await store.get(k)

            async def lib_put(k: str, body: bytes, lib: S3Client = lib) -> None:
                sha = hashlib.sha256(body).hexdigest()
                async with lib.put(k, body, content_sha256=sha) as resp:
                    await resp.read()

            async def lib_get(k: str, _: bytes, lib: S3Client = lib) -> None:
                async with lib.get(k) as resp:
                    await resp.read()

            written = keys()
            await measure("s3http PUT (service)", ours_put, written, payloads, conc)
            await measure("s3http GET (service)", ours_get, written, payloads, conc)
            written = keys()
            await measure("aiohttp-s3-client PUT", lib_put, written, payloads, conc)
            await measure("aiohttp-s3-client GET", lib_get, written, payloads, conc)

        async with independent_s3_client(
            settings, max_pool_connections=64, request_checksum_calculation="when_required"
        ) as boto:

            async def boto_put(k: str, body: bytes) -> None:
                await boto.put_object(Bucket=settings.raw_bucket, Key=k, Body=body)

            async def boto_get(k: str, _: bytes) -> None:
                resp = await boto.get_object(Bucket=settings.raw_bucket, Key=k)
                async with resp["Body"] as stream:
                    await stream.read()

            written = keys()[: max(200, args.ops // 5)]
            await measure("aioboto3 (botocore) PUT", boto_put, written, payloads, conc)
            await measure("aioboto3 (botocore) GET", boto_get, written, payloads, conc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument(
        "--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8]
    )
    uvloop.run(main(parser.parse_args()))
