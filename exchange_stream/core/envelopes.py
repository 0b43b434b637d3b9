"""DLQ envelopes: what failed, where, how often; never patient data (docs/CONTRACT.md)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from exchange_stream.core.errors import ProcessingError
from exchange_stream.core.timefmt import rfc3339


def envelope(
    original_event: dict[str, Any] | None,
    raw_message: bytes | None,
    error: ProcessingError,
    attempts: int,
    failed_at: datetime | None = None,
) -> dict[str, Any]:
    """The envelope for a failed event; an unparseable one is described by hash and size only."""
    if original_event is not None:
        original: dict[str, Any] = original_event
    else:
        data = raw_message or b""
        original = {
            "unparseable_event": True,
            "event_sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
        }
    return {
        "original_event": original,
        "error": error.as_dict(),
        "attempts": attempts,
        "failed_at": rfc3339(failed_at or datetime.now(UTC)),
    }
