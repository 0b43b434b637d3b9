"""Credentials by role (docs/API.md "Credentials, roles and scopes"): a recipient's credential,
or a partner's outside its scope or sources, is 403 at ingest and /tokenize with no side
effect; deployed partners' JWTs keep working."""

from __future__ import annotations

import uuid

import aiohttp
import asyncpg
import jwt
import pytest

from exchange_stream.infra.config import Settings
from tests.auth_tokens import SECRET, claims
from tests.payloads import new_key, v1_body, v2_body
from tests.support import WorkerProcess, independent_s3_client, post_json

IDENTITY = {"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10"}


def _token(**extra: object) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


async def _written(db: asyncpg.Pool, settings: Settings, key: str, source: str) -> tuple:
    """What a request with ``key`` and ``source`` left behind: rows and raw objects."""
    keys = await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key)
    manifest = await db.fetchval(
        "SELECT count(*) FROM raw_object_manifest WHERE source = $1", source
    )
    async with independent_s3_client(settings) as s3:
        listed = await s3.list_objects_v2(Bucket=settings.raw_bucket, Prefix=f"{source}/")
    return keys, manifest, listed.get("KeyCount", 0)


async def _ingest(http, worker, route: str, token: str, source: str, key: str) -> tuple:
    body = v1_body(source) if route == "/v1/ingest" else v2_body(source)
    status, resp, _ = await post_json(http, f"{worker.base_url}{route}", body, key=key, token=token)
    return status, resp


RECIPIENT_TOKENS = {
    "no scope": {"recipient": "research-1"},
    "read scope only": {"recipient": "research-1", "scope": "records:read export"},
    "tokenize, not ingest": {"recipient": "research-1", "scope": "tokenize"},
}


@pytest.mark.parametrize("route", ["/v1/ingest", "/v2/ingest"])
@pytest.mark.parametrize("name", sorted(RECIPIENT_TOKENS))
async def test_a_recipients_credential_is_403_at_ingest_and_writes_nothing(
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    route: str,
    name: str,
) -> None:
    key, source = new_key(), f"role-{uuid.uuid4().hex[:12]}"
    assert await _written(db, settings, key, source) == (0, 0, 0)
    status, resp = await _ingest(
        http, strict_worker, route, _token(**RECIPIENT_TOKENS[name]), source, key
    )
    assert (status, resp) == (403, {"error": "forbidden"})
    assert await _written(db, settings, key, source) == (0, 0, 0)


async def test_a_recipient_holding_ingest_explicitly_may_ingest(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    token = _token(recipient="research-1", scope="ingest")
    status, resp = await _ingest(http, strict_worker, "/v2/ingest", token, "role-ok", new_key())
    assert status == 202, resp


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"recipient": "research-1"}, 403),
        ({"recipient": "research-1", "scope": "records:read"}, 403),
        ({"recipient": "research-1", "scope": "tokenize"}, 200),
        ({"scope": "ingest"}, 403),
        ({"scope": "tokenize"}, 200),
        ({}, 200),
    ],
)
async def test_tokenize_needs_the_tokenize_scope_of_a_recipient_or_a_scoped_partner(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, extra: dict, expected: int
) -> None:
    status, resp, _ = await post_json(
        http, f"{strict_worker.base_url}/tokenize", IDENTITY, token=_token(**extra)
    )
    assert status == expected, resp
    if expected == 403:
        assert resp == {"error": "forbidden"}
    else:
        assert len(resp["patient_token"]) == 64


@pytest.mark.parametrize("route", ["/v1/ingest", "/v2/ingest"])
async def test_a_partner_sending_a_source_it_may_not_is_403_before_any_write(
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    route: str,
) -> None:
    mine, other = f"role-{uuid.uuid4().hex[:12]}", f"role-{uuid.uuid4().hex[:12]}"
    token = _token(sources=[mine])
    key = new_key()
    status, resp = await _ingest(http, strict_worker, route, token, other, key)
    assert (status, resp) == (403, {"error": "forbidden"})
    assert await _written(db, settings, key, other) == (0, 0, 0)
    status, resp = await _ingest(http, strict_worker, route, token, mine, new_key())
    assert status == 202, resp


async def test_a_partner_with_a_scope_claim_needs_ingest_in_it(
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    key, source = new_key(), f"role-{uuid.uuid4().hex[:12]}"
    status, resp = await _ingest(
        http, strict_worker, "/v2/ingest", _token(scope="tokenize"), source, key
    )
    assert (status, resp) == (403, {"error": "forbidden"})
    assert await _written(db, settings, key, source) == (0, 0, 0)
    token = _token(scope="ingest tokenize", sources=[source])
    status, resp = await _ingest(http, strict_worker, "/v2/ingest", token, source, new_key())
    assert status == 202, resp


@pytest.mark.parametrize("route", ["/v1/ingest", "/v2/ingest"])
async def test_a_deployed_partners_jwt_without_scope_or_sources_is_still_202(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, route: str
) -> None:
    status, resp = await _ingest(http, strict_worker, route, _token(), "hospital-a", new_key())
    assert status == 202, resp


@pytest.mark.parametrize("sources", ["hospital-a", [1], [""], {"a": 1}])
async def test_a_malformed_sources_claim_is_401(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, sources: object
) -> None:
    status, resp = await _ingest(
        http, strict_worker, "/v2/ingest", _token(sources=sources), "hospital-a", new_key()
    )
    assert (status, resp) == (401, {"error": "unauthorized"})
