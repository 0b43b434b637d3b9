"""Bad requests get a 400 naming the field (never its value) and leave nothing behind."""

from __future__ import annotations

import copy

import aiohttp
import asyncpg
import orjson
import pytest

from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, post_json

V1_CASES = [
    ("source", "missing", lambda b: b.pop("source")),
    ("source", "invalid", lambda b: b.update(source="")),
    ("source", "invalid", lambda b: b.update(source="../etc")),
    ("record_type", "missing", lambda b: b.pop("record_type")),
    ("record_type", "invalid", lambda b: b.update(record_type="surgery")),
    ("patient", "missing", lambda b: b.pop("patient")),
    ("patient", "invalid", lambda b: b.update(patient="Ada Lovelace")),
    ("patient.first_name", "missing", lambda b: b["patient"].pop("first_name")),
    ("patient.first_name", "invalid", lambda b: b["patient"].update(first_name="   ")),
    ("patient.last_name", "invalid", lambda b: b["patient"].update(last_name=7)),
    ("patient.dob", "missing", lambda b: b["patient"].pop("dob")),
    ("patient.dob", "invalid", lambda b: b["patient"].update(dob="1815-02-30")),
    ("patient.dob", "invalid", lambda b: b["patient"].update(dob="10/12/1815")),
    ("patient.ssn", "invalid", lambda b: b["patient"].update(ssn=123456789)),
    ("payload", "missing", lambda b: b.pop("payload")),
    ("payload", "invalid", lambda b: b.update(payload=[1, 2])),
]
V2_CASES = [
    ("source", "missing", lambda b: b.pop("source")),
    ("record_kind", "missing", lambda b: b.pop("record_kind")),
    ("record_kind", "invalid", lambda b: b.update(record_kind="Encounter")),
    ("schema_hint", "missing", lambda b: b.pop("schema_hint")),
    ("schema_hint", "invalid", lambda b: b.update(schema_hint="partnerC.v9")),
    ("patient.given_name", "missing", lambda b: b["patient"].pop("given_name")),
    ("patient.family_name", "invalid", lambda b: b["patient"].update(family_name="")),
    ("patient.dob", "invalid", lambda b: b["patient"].update(dob="2021-W01-1")),
    ("patient.ssn", "invalid", lambda b: b["patient"].update(ssn=["1"])),
    ("payload", "invalid", lambda b: b.update(payload="text")),
]


async def _nothing_stored(db: asyncpg.Pool, key: str) -> bool:
    return await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 0


@pytest.mark.parametrize(
    ("version", "field", "reason", "mutate"),
    [("1", *c) for c in V1_CASES] + [("2", *c) for c in V2_CASES],
)
async def test_each_invalid_field_is_400_naming_it(
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


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2, 3]", "body must be a JSON object"),
        (b"", "invalid JSON"),
        (b'"text"', "body must be a JSON object"),
    ],
)
async def test_bad_json_and_non_objects_are_400(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, data: bytes, error: str
) -> None:
    key = new_key()
    status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", data, key=key)
    assert (status, resp) == (400, {"error": error})
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


async def test_error_bodies_never_echo_patient_values(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    body = v1_body()
    body["patient"]["dob"] = "Sentinel-Dob-Zq9"
    status, resp, _ = await post_json(http, f"{worker.base_url}/v1/ingest", body, key=new_key())
    assert status == 400
    assert "Sentinel" not in orjson.dumps(resp).decode()
