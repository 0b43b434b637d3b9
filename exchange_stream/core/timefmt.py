"""Timestamps as the contracts write them: RFC 3339, UTC, microseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def parse_time(value: Any) -> datetime:
    """RFC 3339 with an offset, as a timezone-aware datetime; ``ValueError`` otherwise."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no offset")
    return moment
