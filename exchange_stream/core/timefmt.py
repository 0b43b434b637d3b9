"""Timestamps as the contracts write them: RFC 3339, UTC, microseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix; the year always in four digits."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat of a UTC moment ends in "+00:00"; it is quicker than strftime, and pads the year.
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


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
