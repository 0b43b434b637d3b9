"""Middleware applied to every route: uniform JSON errors that never echo a request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from web.responses import error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    400: "bad request",
    401: "unauthorized",
    404: "not found",
    405: "method not allowed",
    413: "payload too large",
    415: "unsupported media type",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP exceptions and unexpected failures into ``{"error": ...}`` bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, _REASONS.get(exc.status, "error"), headers=_keep(exc))
    except Exception:
        log.exception("unhandled error", extra={"fields": {"path": request.path}})
        return error(500, "internal error")


def _keep(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def middlewares() -> list:
    """The middleware chain, outermost first."""
    return [json_errors]
