"""The worker serves /healthz, /readyz and /metrics, and readiness follows its dependencies."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from tests.payloads import new_key, patient_v2, v2_body
from tests.support import (
    Samples,
    WorkerProcess,
    eventually,
    isolated_worker,
    post_json,
    sample,
    scrape,
    stack_service,
    wait_canonical,
)


async def test_healthz_answers(worker: WorkerProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{worker.base_url}/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok"}


async def test_readyz_is_200_when_every_dependency_answers(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{worker.base_url}/readyz") as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["checks"] == {"postgres": "ok", "kafka": "ok", "s3": "ok"}


async def test_metrics_count_what_the_worker_did_and_labels_carry_no_patient_data(
    http: aiohttp.ClientSession, db: asyncpg.Pool, tmp_path: Path
) -> None:
    """A worker of its own: no other worker serves its routes or consumes its events, so every
    change of a series below is this test's doing, and is asserted exactly."""
    tag = uuid.uuid4().hex[:12]
    patient = patient_v2(given_name=f"Zq{tag}given", family_name=f"Zq{tag}family")
    source = f"metrics-{tag}"
    accepted = {"route": "/v2/ingest", "status": "202"}
    refused = {"route": "/v2/ingest", "status": "400"}
    canonical = {"outcome": "canonical", "record_kind": "encounter", "schema_hint": "partnerA.v1"}
    async with isolated_worker(tmp_path, "metrics", db) as w:
        url = f"{w.base_url}/v2/ingest"
        before = await scrape(http, w)

        status, resp, _ = await post_json(
            http, url, v2_body(source=source, patient=patient), key=new_key()
        )
        assert status == 202, resp
        record_id = resp["record_id"]
        after_202 = await scrape(http, w)
        assert _delta(before, after_202, "ingest_requests_total", **accepted) == 1
        assert _delta(before, after_202, "ingest_requests_total", **refused) == 0
        # The accepted record's raw body: one PUT.
        assert _delta(before, after_202, "raw_store_calls_total", call="put") == 1

        unknown_kind = v2_body(source=source, patient=patient, record_kind="prescription")
        status, resp, _ = await post_json(http, url, unknown_kind, key=new_key())
        assert status == 400, resp
        after_400 = await scrape(http, w)
        assert _delta(after_202, after_400, "ingest_requests_total", **refused) == 1
        assert _delta(after_202, after_400, "ingest_requests_total", **accepted) == 0

        await wait_canonical(db, [record_id], timeout=120)

        async def counted() -> bool:
            now = await scrape(http, w)
            return _delta(before, now, "normalizer_records_total", **canonical) >= 1

        # The counter follows the canonical commit by a moment: wait for it, then count.
        await eventually(counted, timeout=60)
        final = await scrape(http, w)
        assert _delta(before, final, "normalizer_records_total", **canonical) == 1
        assert _delta(after_400, final, "ingest_requests_total", **accepted) == 0
        # The refused request stored nothing; the normalizer read the body once (from the
        # worker's recent bodies, or by one GET), and nothing was deleted.
        assert _delta(before, final, "raw_store_calls_total", call="put") == 1
        reads = [
            _delta(before, final, "raw_store_calls_total", call=c) for c in ("get", "get_cached")
        ]
        assert sum(reads) == 1, reads
        assert _delta(before, final, "raw_store_calls_total", call="delete") == 0

        pending = final[("outbox_pending", frozenset())]
        assert math.isfinite(pending) and pending >= 0
        async with http.get(f"{w.base_url}/metrics") as r:
            text = await r.text()

    # Labels name routes, statuses, kinds, stages and error types; never a value from a record.
    values = {v for _, labels in final for _, v in labels}
    for value in (*(patient[f] for f in ("given_name", "family_name", "ssn", "dob")), record_id):
        assert not [v for v in values if value.lower() in v.lower()], value
        assert value.lower() not in text.lower()
    assert patient["ssn"].replace("-", "") not in text
    assert source not in text


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


async def test_readyz_names_s3_while_it_is_down_and_recovers_without_restart(
    worker: WorkerProcess, http: aiohttp.ClientSession, restore_services: list[str]
) -> None:
    starts = worker.starts
    restore_services.append("s3")
    stack_service("s3", "down")

    async def names_only_s3() -> bool:
        async with http.get(f"{worker.base_url}/readyz") as r:
            body = await r.json()
            return r.status == 503 and body["failing"] == ["s3"] and "s3" in body["error"]

    await eventually(names_only_s3, timeout=30)

    stack_service("s3", "up")

    async def ready() -> bool:
        async with http.get(f"{worker.base_url}/readyz") as r:
            return r.status == 200

    await eventually(ready, timeout=30)
    assert worker.starts == starts and worker.proc.poll() is None
