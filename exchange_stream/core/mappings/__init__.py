"""Partner mappings: pure functions from a partner payload to the canonical object of
docs/CONTRACT.md §4.

One module per schema hint; adding a partner format is adding a module and a line in
``_MAPPERS``. The result is only the kind object; the normalizer adds patient_token,
record_kind and meta.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exchange_stream.core.mappings import partner_a_v1, partner_a_v2, partner_b_v1
from exchange_stream.core.mappings.common import INVALID, KIND_FIELDS, UNSUPPORTED, MappingError

# Bump on any change that can alter the output for some input: today's date, then a counter for
# the day (".1", ".2"). Canonical rows record it, so replays can tell which mapping made them.
MAPPING_VERSION = "2026-11-26.1"

Mapper = Callable[[dict[str, Any]], dict[str, Any]]

_MAPPERS: dict[str, dict[str, Mapper]] = {
    "partnerA.v1": partner_a_v1.MAPPERS,
    "partnerA.v2": partner_a_v2.MAPPERS,
    "partnerB.v1": partner_b_v1.MAPPERS,
}

__all__ = ["KIND_FIELDS", "MAPPING_VERSION", "MappingError", "map_payload"]


def map_payload(record_kind: str, schema_hint: str, payload: object) -> dict[str, Any]:
    """The canonical ``record_kind`` object for ``payload``; MappingError if it cannot be mapped."""
    mappers = _MAPPERS.get(schema_hint)
    if mappers is None:
        raise MappingError("schema_hint", UNSUPPORTED)
    mapper = mappers.get(record_kind)
    if mapper is None:
        raise MappingError("record_kind", UNSUPPORTED)
    if not isinstance(payload, dict):
        raise MappingError("payload", INVALID)
    return mapper(payload)
