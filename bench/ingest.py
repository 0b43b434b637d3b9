"""Ingest benchmark: sustained POST /v2/ingest beside its two ceilings, measured in one run.

    .venv/bin/python bench/ingest.py [--concurrency 1,8,32,64] [--duration 6]

Needs the stack (`make stack`) and a migrated database. It starts its own worker on a free port.
Rows, at each client concurrency:
  http /v2/ingest   the whole request through the worker (auth, validation, S3, transaction),
                    while the same worker relays and normalizes what it accepts
  http, ingest only the same, with the worker's normalizer idle (KAFKA_TOPICS points at a topic
                    nothing is published to), which is how ingest-only workers would be run
  ceiling: db txn   the same Postgres transaction through asyncpg alone (no HTTP, no S3)
  ceiling: s3 put   PUTs of the same bodies alone (no HTTP, no database)
Everything shares the machine's 2 cores: the client, the worker, Postgres, Kafka and S3.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import uuid
from pathlib import Path

import aiohttp
from harness import (
    ROOT,
    Result,
    bodies,
    closed_loop,
    print_table,
    spawn_worker,
    wait_ready,
    write_json,
)

from exchange_stream.core.events import RawObject, new_event, object_key
from exchange_stream.core.formats import V2
from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.sql import q
from exchange_stream.infra.storage import open_store


async def _http_rows(
    label: str, overrides: dict[str, str], levels: list[int], duration: float, cycle
) -> list[Result]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = spawn_worker(Path(tmp), **overrides)
        try:
            await wait_ready(url, Path(tmp) / "worker.log")
            connector = aiohttp.TCPConnector(limit=max(levels) * 2)
            async with aiohttp.ClientSession(connector=connector) as http:
                headers = {"Authorization": "Bearer dev", "Content-Type": "application/json"}

                async def http_op(_: int) -> bool:
                    h = {**headers, "Idempotency-Key": f"bench-{uuid.uuid4()}"}
                    async with http.post(f"{url}/v2/ingest", data=next(cycle), headers=h) as r:
                        await r.read()
                        return r.status == 202

                for c in levels:
                    rows.append(await closed_loop(label, c, http_op, duration_s=duration))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per row")
    parser.add_argument("--output", default=str(ROOT / "bench/results/ingest.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    settings = Settings.from_env()
    payloads = bodies()
    cycle = itertools.cycle(payloads)
    results: list[Result] = []

    for label, overrides in (
        ("http /v2/ingest", {}),
        ("http, ingest only", {"KAFKA_TOPICS": settings.topic_control_results}),
    ):
        results += await _http_rows(label, overrides, levels, args.duration, cycle)

    pool = await create_pool(settings, max_size=settings.pg_pool_size)
    try:

        async def db_op(_: int) -> bool:
            body = next(cycle)
            record_id = str(uuid.uuid4())
            key = object_key("bench-partner", record_id)
            sha = uuid.uuid4().hex * 2
            event = new_event(
                V2,
                record_id=record_id,
                source="bench-partner",
                raw_object=RawObject(settings.raw_bucket, key, sha, len(body)),
                correlation_id=record_id,
                record_kind="encounter",
                schema_hint="partnerB.v1",
            ).to_dict()
            idem = f"bench-db-{record_id}"
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchrow(q("ingest_lock_and_lookup"), idem)
                await conn.execute(
                    q("ingest_record"),
                    uuid.UUID(record_id),
                    "bench-partner",
                    settings.raw_bucket,
                    key,
                    sha,
                    len(body),
                    # A topic no relay publishes from: these rows must not reach the normalizer.
                    "bench.ceiling.unpublished",
                    event,
                    record_id,
                    "bench",
                    {},
                    idem,
                    {"record_id": record_id, "correlation_id": record_id},
                    "/v2/ingest",
                )
            return True

        for c in levels:
            results.append(await closed_loop("ceiling: db txn", c, db_op, duration_s=args.duration))
        # The ceiling's rows are not records: remove them so nothing downstream sees them.
        async with pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM outbox_events WHERE topic = 'bench.ceiling.unpublished'"
            )
    finally:
        await pool.close()

    async with open_store(settings) as store:

        async def s3_op(_: int) -> bool:
            await store.put(f"bench-ceiling/{uuid.uuid4()}.json", next(cycle))
            return True

        for c in levels:
            results.append(await closed_loop("ceiling: s3 put", c, s3_op, duration_s=args.duration))

    by = {(r.name, r.concurrency): r for r in results}
    ratios: dict[str, dict[str, float]] = {}
    for c in levels:
        lower = min(by[("ceiling: db txn", c)].per_second, by[("ceiling: s3 put", c)].per_second)
        ratios[str(c)] = {
            label: round(by[(label, c)].per_second / lower, 3)
            for label in ("http /v2/ingest", "http, ingest only")
        }
    print_table(
        f"/v2/ingest vs ceilings, {args.duration:.0f} s per row, {len(payloads)} FHIR bodies "
        f"(mean {sum(map(len, payloads)) // len(payloads)} B)",
        sorted(results, key=lambda r: (r.concurrency, r.name)),
        {
            f"ratio to the lower ceiling at {c}": ", ".join(f"{k} {v}" for k, v in r.items())
            for c, r in ratios.items()
        },
    )
    write_json(
        Path(args.output),
        {"results": results, "ratio_to_lower_ceiling": ratios, "duration_s": args.duration},
    )


if __name__ == "__main__":
    asyncio.run(main())
