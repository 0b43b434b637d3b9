"""Bad requests get a 400 naming the field (never its value) and leave nothing behind."""

from __future__ import annotations

import copy

import aiohttp
import asyncpg
import orjson
import pytest

from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, post_json

# A few cases end to end; every field's case is in tests/unit/test_parse_request.py.
HTTP_CASES = [
    ("1", "patient.first_name", "missing", lambda b: b["patient"].pop("first_name")),
    ("1", "record_type", "invalid", lambda b: b.update(record_type="surgery")),
    ("2", "patient.dob", "invalid", lambda b: b["patient"].update(dob="2021-W01-1")),
    ("2", "schema_hint", "missing", lambda b: b.pop("schema_hint")),
]


async def _nothing_stored(db: asyncpg.Pool, key: str) -> bool:
    return await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 0


@pytest.mark.parametrize(("version", "field", "reason", "mutate"), HTTP_CASES)
async def test_an_invalid_field_is_400_naming_it_and_stores_nothing(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    version,
    field,
    reason,
    mutate,
) -> None:
    body = copy.deepcopy(v1_body() if version == "1" else v2_body())
    mutate(body)
    key = new_key()
    status, resp, _ = await post_json(http, f"{worker.base_url}/v{version}/ingest", body, key=key)
    assert (status, resp) == (400, {"error": f"{reason} field: {field}"})
    assert await _nothing_stored(db, key)


@pytest.mark.parametrize(("version", "field"), [("1", "first_name"), ("2", "given_name")])
async def test_a_field_name_in_other_letter_case_is_400_missing_field(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, version, field
) -> None:
    # Field names are exact (docs/API.md): the body is read again later by exact-key readers.
    body = v1_body() if version == "1" else v2_body()
    body["patient"][field.upper()] = body["patient"].pop(field)
    key = new_key()
    status, resp, _ = await post_json(http, f"{worker.base_url}/v{version}/ingest", body, key=key)
    assert (status, resp) == (400, {"error": f"missing field: patient.{field}"})
    assert await _nothing_stored(db, key)


async def test_bad_json_is_400_and_stores_nothing(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    key = new_key()
    status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", b"{not json", key=key)
    assert (status, resp) == (400, {"error": "invalid JSON"})
    assert await _nothing_stored(db, key)


async def test_missing_or_short_idempotency_key_is_400(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{worker.base_url}/v2/ingest"
    assert (await post_json(http, url, v2_body()))[:2] == (
        400,
        {"error": "missing header: Idempotency-Key"},
    )
    assert (await post_json(http, url, v2_body(), key="short"))[:2] == (
        400,
        {"error": "invalid header: Idempotency-Key"},
    )


async def test_body_over_10_mib_is_413(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    body = v2_body()
    body["payload"]["padding"] = "x" * (11 * 1024 * 1024)
    key = new_key()
    status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=key)
    assert (status, resp) == (413, {"error": "payload too large"})
    assert await _nothing_stored(db, key)


async def test_body_of_almost_10_mib_is_accepted(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    body = v2_body()
    body["payload"]["padding"] = ""
    overhead = len(orjson.dumps(body))
    body["payload"]["padding"] = "x" * (10 * 1024 * 1024 - overhead)
    assert len(orjson.dumps(body)) == 10 * 1024 * 1024
    status, _, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=new_key())
    assert status == 202


async def test_unknown_top_level_fields_are_ignored(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    body = v2_body(client_version="7.1", trace={"span": "abc"})
    status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=new_key())
    assert status == 202, resp
