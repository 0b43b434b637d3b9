"""Authentication on ingest and tokenize (docs/API.md): strict JWTs; `Bearer dev` when local."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest

from tests.auth_tokens import (
    ISS,
    NEAR_ISSUERS,
    SECRET,
    alg_none_token,
    claims,
    good_token,
    rs256_token,
    token_with_issuer,
)
from tests.payloads import new_key, v2_body
from tests.support import WorkerProcess, post_json

BAD_TOKENS = {
    "no header": None,
    "dev shortcut outside local": "dev",
    "wrong signature": lambda: jwt.encode(
        claims(), "another-secret-0123456789abcdef-0123456789", algorithm="HS256"
    ),
    "alg none": alg_none_token,
    "rs256": rs256_token,
    "hs512": lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
    "expired": lambda: jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"),
    "wrong issuer": lambda: jwt.encode(claims(iss="https://evil.test"), SECRET, algorithm="HS256"),
    "wrong audience": lambda: jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"),
    "no exp": lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"),
    "no iss": lambda: jwt.encode(claims(iss=None), SECRET, algorithm="HS256"),
    "not yet valid": lambda: jwt.encode(
        claims(nbf=int(time.time()) + 600), SECRET, algorithm="HS256"
    ),
    "garbage": "not.a.jwt",
    "basic scheme": "basic",
}


def _header_for(name: str) -> dict[str, str] | None:
    spec = BAD_TOKENS[name]
    if spec is None:
        return None
    if name == "basic scheme":
        return {"Authorization": "Basic dXNlcjpwYXNz"}
    token = spec() if callable(spec) else spec
    return {"Authorization": f"Bearer {token}"}


def _identity_or_record(route: str) -> dict:
    if route == "/v2/ingest":
        return v2_body()
    return {"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10"}


# Signing HS512 with the service's 32-byte key is the point of that case; PyJWT warns about it.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
@pytest.mark.parametrize("route", ["/v2/ingest", "/tokenize"])
async def test_bad_credentials_are_401(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, name: str, route: str
) -> None:
    status, resp, _ = await post_json(
        http,
        f"{strict_worker.base_url}{route}",
        _identity_or_record(route),
        key=new_key(),
        token=None,
        headers=_header_for(name),
    )
    assert (status, resp) == (401, {"error": "unauthorized"})


@pytest.mark.parametrize("near", sorted(NEAR_ISSUERS))
@pytest.mark.parametrize("route", ["/v2/ingest", "/tokenize"])
async def test_issuer_that_is_only_part_of_or_contains_jwt_issuer_is_401(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, near: str, route: str
) -> None:
    status, resp, _ = await post_json(
        http,
        f"{strict_worker.base_url}{route}",
        _identity_or_record(route),
        key=new_key(),
        token=token_with_issuer(NEAR_ISSUERS[near]),
    )
    assert (status, resp) == (401, {"error": "unauthorized"})


async def test_hand_signed_token_with_the_exact_issuer_is_accepted(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    """The control for the near-issuer cases: their tokens fail on ``iss`` alone."""
    status, resp, _ = await post_json(
        http,
        f"{strict_worker.base_url}/tokenize",
        _identity_or_record("/tokenize"),
        token=token_with_issuer(ISS),
    )
    assert status == 200, resp


async def test_good_token_is_accepted(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    status, resp, _ = await post_json(
        http, f"{strict_worker.base_url}/v2/ingest", v2_body(), key=new_key(), token=good_token()
    )
    assert status == 202, resp


async def test_dev_shortcut_works_when_local(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await post_json(http, f"{worker.base_url}/v2/ingest", v2_body(), key=new_key())
    assert status == 202


async def test_health_endpoints_need_no_credentials(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{strict_worker.base_url}/healthz") as r:
        assert r.status == 200
