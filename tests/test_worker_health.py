"""The worker serves /healthz, /readyz and /metrics, and readiness follows its dependencies."""

from __future__ import annotations

import aiohttp

from tests.support import WorkerProcess, eventually, stack_service


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


async def test_metrics_is_prometheus_text(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{worker.base_url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert "# TYPE outbox_pending gauge" in text
    assert "# TYPE ingest_requests_total counter" in text
    assert "# TYPE outbox_publish_failures_total counter" in text


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
