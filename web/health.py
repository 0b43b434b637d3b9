"""Liveness, readiness and metrics views."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiokafka import AIOKafkaClient

from exchange_stream import metrics
from exchange_stream.app import ExchangeApp
from exchange_stream.sql import q
from web.keys import FAUST_APP
from web.responses import json_response

CHECK_TIMEOUT_S = 3.0


async def healthz(request: web.Request) -> web.Response:
    """200 whenever the process serves HTTP."""
    return json_response({"status": "ok"})


async def _postgres(app: ExchangeApp) -> None:
    async with app.runtime.pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
        await conn.fetchval(q("health_ping"))


async def _kafka(app: ExchangeApp) -> None:
    # A fresh client per check: bootstrapping is a real metadata round trip to a broker.
    client = AIOKafkaClient(
        bootstrap_servers=app.settings.broker_list, request_timeout_ms=int(CHECK_TIMEOUT_S * 1000)
    )
    try:
        await client.bootstrap()
    finally:
        await client.close()


async def _s3(app: ExchangeApp) -> None:
    await app.runtime.store.exists_bucket()


_CHECKS = {"postgres": _postgres, "kafka": _kafka, "s3": _s3}


async def _check(name: str, app: ExchangeApp) -> bool:
    try:
        await asyncio.wait_for(_CHECKS[name](app), CHECK_TIMEOUT_S)
    except Exception:
        metrics.readiness_checks_total.labels(name, "failed").inc()
        return False
    metrics.readiness_checks_total.labels(name, "ok").inc()
    return True


async def readyz(request: web.Request) -> web.Response:
    """200 when Postgres, Kafka and S3 all answer; otherwise 503 naming the failing ones."""
    app = request.app[FAUST_APP]
    names = list(_CHECKS)
    results = await asyncio.gather(*(_check(n, app) for n in names))
    failing = [n for n, ok in zip(names, results, strict=True) if not ok]
    if failing:
        return json_response(
            {
                "status": "unavailable",
                "failing": failing,
                "error": f"unavailable: {', '.join(failing)}",
            },
            status=503,
        )
    return json_response({"status": "ready", "checks": dict.fromkeys(names, "ok")})


async def metrics_view(request: web.Request) -> web.Response:
    return web.Response(
        body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )
