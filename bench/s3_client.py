"""S3 client baseline: CPU per call and throughput of botocore (aioboto3) vs aiohttp-s3-client.

    .venv/bin/python bench/s3_client.py [--ops 400] [--concurrency 8]

Same server, same 1.5 KiB bodies, one run. Why the service uses aiohttp-s3-client on its hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import aioboto3
from botocore.config import Config
from harness import ROOT  # noqa: F401  (puts the repository on sys.path)

from exchange_stream.infra.config import Settings
from exchange_stream.infra.storage import open_store


async def measure(
    label: str, op: Callable[[str], Awaitable[object]], keys: list[str], conc: int
) -> None:
    ops = len(keys)
    for k in keys[:20]:
        await op(k)
    sem = asyncio.Semaphore(conc)

    async def one(k: str) -> None:
        async with sem:
            await op(k)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(k) for k in keys))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label:<34}{cpu / ops * 1000:>10.2f}{ops / wall:>10.0f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    settings = Settings.from_env()
    body = b"x" * 1536
    ours = [f"bench-s3-client/{uuid.uuid4()}.json" for _ in range(args.ops)]
    boto = [f"bench-s3-client/{uuid.uuid4()}.json" for _ in range(args.ops)]
    print(f"{'client / call':<34}{'CPU ms':>10}{'ops/s':>10}")
    async with open_store(settings) as store:
        await measure("aiohttp-s3-client PUT", lambda k: store.put(k, body), ours, args.concurrency)
        await measure("aiohttp-s3-client GET", store.get, ours, args.concurrency)
    session = aioboto3.Session()
    config = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=64,
        request_checksum_calculation="when_required",
    )
    async with session.client(
        "s3",
        endpoint_url=settings.minio_endpoint,
        aws_access_key_id=settings.minio_access_key,
        aws_secret_access_key=settings.minio_secret_key,
        region_name=settings.s3_region,
        config=config,
    ) as client:

        async def boto_put(k: str) -> None:
            await client.put_object(Bucket=settings.raw_bucket, Key=k, Body=body)

        async def boto_get(k: str) -> None:
            resp = await client.get_object(Bucket=settings.raw_bucket, Key=k)
            async with resp["Body"] as stream:
                await stream.read()

        await measure("aioboto3 (botocore) PUT", boto_put, boto, args.concurrency)
        await measure("aioboto3 (botocore) GET", boto_get, boto, args.concurrency)


if __name__ == "__main__":
    asyncio.run(main())
