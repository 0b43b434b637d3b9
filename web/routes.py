"""Every route the worker serves, in one table, and the web server's options."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from exchange_stream.core.formats import FORMATS
from web import fhir, graphql, health, ingest, optouts, smart, tokenize
from web.context import CONTEXT, MAX_BODY_BYTES, WebContext
from web.middleware import middlewares


def install(web_app: web.Application, context: WebContext) -> None:
    """Register the service's routes on Faust's aiohttp application."""
    web_app[CONTEXT] = context
    web_app.router.add_get("/healthz", health.healthz)
    web_app.router.add_get("/readyz", health.readyz)
    web_app.router.add_get("/metrics", health.metrics_view)
    for fmt in FORMATS:
        web_app.router.add_post(fmt.route, ingest.handler(fmt))
    web_app.router.add_post("/tokenize", tokenize.tokenize)
    optouts.install(web_app)
    smart.install(web_app)
    graphql.install(web_app, context)
    fhir.install(web_app)


def application_options() -> dict[str, Any]:
    """aiohttp application options of the worker's web server."""
    return {
        "client_max_size": MAX_BODY_BYTES,
        # aiohttp's 8 KiB header limit would answer an oversized token with its own plain 400
        # quoting the header; let the view refuse it with the contract's 401 instead.
        "handler_args": {"max_field_size": 80 * 1024},
        "middlewares": middlewares(),
    }
