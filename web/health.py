"""Liveness, readiness and metrics views."""

from __future__ import annotations

import asyncio

from aiohttp import web

from exchange_stream.infra import metrics
from exchange_stream.infra.runtime import DEPENDENCIES
from web.context import CONTEXT, WebContext
from web.responses import json_response


async def healthz(request: web.Request) -> web.Response:
    """200 whenever the process serves HTTP."""
    return json_response({"status": "ok"})


async def _check(name: str, ctx: WebContext) -> bool:
    try:
        await ctx.resources.probe(name)
    except Exception:
        metrics.readiness_checks_total.labels(name, "failed").inc()
        return False
    metrics.readiness_checks_total.labels(name, "ok").inc()
    return True


async def readyz(request: web.Request) -> web.Response:
    """200 when Postgres, Kafka and S3 all answer; otherwise 503 naming the failing ones. The
    body also says whether the normalizer is paused, and for which dependency."""
    ctx = request.app[CONTEXT]
    names = list(DEPENDENCIES)
    results = await asyncio.gather(*(_check(n, ctx) for n in names))
    failing = [n for n, ok in zip(names, results, strict=True) if not ok]
    paused = ctx.gate.paused_for
    normalizer = {"paused": bool(paused), "waiting_for": paused}
    if failing:
        return json_response(
            {
                "status": "unavailable",
                "failing": failing,
                "error": f"unavailable: {', '.join(failing)}",
                "normalizer": normalizer,
            },
            status=503,
        )
    return json_response(
        {"status": "ready", "checks": dict.fromkeys(names, "ok"), "normalizer": normalizer}
    )


async def metrics_view(request: web.Request) -> web.Response:
    return web.Response(
        body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )
