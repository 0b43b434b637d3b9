"""Overload: while the normalizer is more than INGEST_MAX_BACKLOG records behind, ingest answers
503 with Retry-After at once and writes nothing; once it has caught up, the same key is accepted."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import asyncpg

from tests.payloads import new_key, v2_body
from tests.support import eventually, isolated_topics, post_json, running_worker, sample, scrape

LIMIT = 3


async def test_ingest_sheds_while_the_normalizer_is_behind_and_accepts_again_once_caught_up(
    tmp_path: Path, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    async with isolated_topics("shed", db) as topics:
        env = {**topics, "INGEST_MAX_BACKLOG": str(LIMIT), "INGEST_BACKLOG_SAMPLE_MS": "100"}
        accepted: list[str] = []
        source = f"shed-{uuid.uuid4().hex[:8]}"
        # A normalizer that reads the v1 topic only: the v2 events wait in Kafka, the group's lag.
        behind = {**env, "KAFKA_TOPICS": topics["TOPIC_RECORD_INGESTED_V1"]}
        async with running_worker(tmp_path / "behind", behind) as worker:
            url = f"{worker.base_url}/v2/ingest"
            shed: dict = {}

            async def refused() -> bool:
                key, body = new_key(), v2_body(source)
                status, resp, headers = await post_json(http, url, body, key=key)
                if status == 202:
                    accepted.append(resp["record_id"])
                    return False
                assert status == 503, (status, resp)
                shed.update(key=key, body=body, resp=resp, headers=dict(headers))
                return True

            await eventually(refused, timeout=120, interval=0.05)
            assert len(accepted) > LIMIT, "nothing is shed before the backlog is over the limit"
            assert shed["resp"] == {"error": "normalizer backlog over its limit"}
            assert 1 <= int(shed["headers"]["Retry-After"]) <= 30
            # Nothing of the shed request was kept: no key, no manifest row.
            assert not await db.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE key = $1", shed["key"]
            )
            manifest = await db.fetchval(
                "SELECT count(*) FROM raw_object_manifest WHERE source = $1", source
            )
            assert manifest == len(accepted)
            metrics = await scrape(http, worker)
            assert sample(metrics, "ingest_shed_total", route="/v2/ingest") >= 1
            assert sample(metrics, "ingest_backlog") > LIMIT

        # The same group, now reading every topic: it catches up, and the front door reopens.
        async with running_worker(tmp_path / "caught-up", env) as worker:

            async def all_canonical() -> bool:
                n = await db.fetchval(
                    "SELECT count(*) FROM canonical_records WHERE record_id = ANY($1::uuid[])",
                    [uuid.UUID(r) for r in accepted],
                )
                return n == len(accepted)

            await eventually(all_canonical, timeout=120)
            url = f"{worker.base_url}/v2/ingest"

            async def accepted_again() -> bool:
                status, resp, _ = await post_json(http, url, shed["body"], key=shed["key"])
                assert status in (202, 503), (status, resp)
                return status == 202

            await eventually(accepted_again, timeout=120, interval=0.2)
