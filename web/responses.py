"""JSON responses and the one error shape of docs/API.md: ``{"error": "<short reason>"}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An error body; ``reason`` is a fixed phrase or a field name, never a submitted value."""
    return json_response({"error": reason}, status=status, headers=headers)
