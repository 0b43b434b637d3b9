"""Every route the worker serves, in one table."""

from __future__ import annotations

from aiohttp import web

from exchange_stream.app import ExchangeApp
from web import health, ingest, tokenize
from web.keys import FAUST_APP


def install(web_app: web.Application, app: ExchangeApp) -> None:
    """Register the service's routes on Faust's aiohttp application."""
    web_app[FAUST_APP] = app
    web_app.router.add_get("/healthz", health.healthz)
    web_app.router.add_get("/readyz", health.readyz)
    web_app.router.add_get("/metrics", health.metrics_view)
    web_app.router.add_post("/v1/ingest", ingest.ingest_v1)
    web_app.router.add_post("/v2/ingest", ingest.ingest_v2)
    web_app.router.add_post("/tokenize", tokenize.tokenize)
