"""SMART Backend Services for recipients on a real worker: discovery, POST /auth/token, the
exchange's JWKS, the read API with an access token, and every refusal (docs/API.md
"Credentials, roles and scopes"). The full flow is driven by Authlib's RFC 7523 client, not by
the project's own code; keys are generated here."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.auth_tokens import SECRET, claims
from tests.conftest import SHARED_WORKER_ENV, STRICT_ENV
from tests.payloads import new_key, v2_body
from tests.support import (
    WorkerProcess,
    eventually,
    post_json,
    run_cli,
    running_worker,
    wait_canonical,
)

CLI_ENV = {"RECIPIENT_TOKEN_SECRET": STRICT_ENV["RECIPIENT_TOKEN_SECRET"]}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RECORDS = "{ records(first: 2) { items { recordId kind } nextCursor } }"


class Client:
    """A recipient registered with a JWKS of one RSA and one EC P-384 key (private halves here)."""

    def __init__(self) -> None:
        self.id = f"smart-{uuid.uuid4().hex[:10]}"
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP384R1())
        self.rsa_kid, self.ec_kid = "rsa-1", "ec-1"

    def jwks(self) -> dict:
        rs = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        es = jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return {"keys": [{**rs, "kid": self.rsa_kid}, {**es, "kid": self.ec_kid}]}

    def rsa_pem(self) -> str:
        return self.rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def assertion(
        self, aud: str, *, alg: str = "ES384", key=None, headers=None, kid=True, **over
    ) -> str:
        now = int(time.time())
        body = {"iss": self.id, "sub": self.id, "aud": aud, "exp": now + 240}
        body["jti"] = str(uuid.uuid4())
        body.update(over)
        body = {k: v for k, v in body.items() if v is not None}
        if key is None:
            key = self.ec if alg.startswith("ES") else self.rsa
        header = {"kid": self.ec_kid if alg.startswith("ES") else self.rsa_kid} if kid else {}
        return jwt.encode(body, key, algorithm=alg, headers={**header, **(headers or {})})


async def _register(client: Client, tmp_path: Path, *, jwks: bool = True) -> None:
    args = ["add", client.id]
    if jwks:
        path = tmp_path / f"{client.id}.jwks.json"
        path.write_text(json.dumps(client.jwks()))
        args += ["--jwks", str(path)]
    code, report = await run_cli("recipients", *args, "--local", env=CLI_ENV)
    assert code == 0, report


@pytest.fixture
async def client(migrated: None, tmp_path: Path) -> Client:
    c = Client()
    await _register(c, tmp_path)
    return c


def _token_url(worker: WorkerProcess) -> str:
    return f"{worker.base_url}/auth/token"


async def _token(
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    assertion: str | None,
    scope: str | None = "system/*.read",
    **form: str,
) -> tuple[int, dict, dict]:
    data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
    if assertion is not None:
        data["client_assertion"] = assertion
    if scope is not None:
        data["scope"] = scope
    data.update(form)
    async with http.post(_token_url(worker), data=data) as r:
        return r.status, await r.json(), dict(r.headers)


async def _graphql(http, worker, token: str, query: str = RECORDS) -> tuple[int, dict]:
    async with http.post(
        f"{worker.base_url}/graphql",
        json={"query": query},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        return r.status, await r.json()


def _fetch_with_authlib(discovery_url: str, client: Client, scope: str) -> tuple[dict, dict]:
    """Discovery, then a token, the way a standard Backend Services client does it."""
    import requests
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    config = requests.get(discovery_url, timeout=30).json()
    token_url = config["token_endpoint"]
    # SMART wants an assertion's exp at most 5 minutes ahead; Authlib's default is an hour.
    auth = PrivateKeyJWT(
        token_url,
        alg="RS384",
        headers={"kid": client.rsa_kid},
        claims={"exp": int(time.time()) + 240},
    )
    session = OAuth2Session(
        client.id, client.rsa_pem(), token_endpoint_auth_method=auth, scope=scope
    )
    return config, session.fetch_token(token_url, grant_type="client_credentials")


async def test_the_whole_flow_with_a_standard_client_reads_records(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client
) -> None:
    discovery = f"{strict_worker.base_url}/fhir/.well-known/smart-configuration"
    config, token = await asyncio.to_thread(
        _fetch_with_authlib, discovery, client, "system/Encounter.read system/Claim.rs"
    )
    assert config["token_endpoint"] == _token_url(strict_worker)
    assert token["token_type"].lower() == "bearer"
    assert 0 < token["expires_in"] <= 300
    assert token["scope"] == "system/Encounter.read system/Claim.rs"
    status, body = await _graphql(http, strict_worker, token["access_token"])
    assert status == 200, body
    assert "errors" not in body and isinstance(body["data"]["records"]["items"], list)

    claims_ = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert (claims_["sub"], claims_["recipient"]) == (client.id, client.id)
    assert claims_["kinds"] == ["claim", "encounter"]
    # The access token is a recipient's credential: no ingest, no tokenize.
    status, resp, _ = await post_json(
        http,
        f"{strict_worker.base_url}/v2/ingest",
        v2_body(),
        key=new_key(),
        token=token["access_token"],
    )
    assert (status, resp) == (403, {"error": "forbidden"})


async def test_discovery_documents_have_the_smart_shape(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    for path in ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"):
        async with http.get(f"{strict_worker.base_url}{path}") as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["token_endpoint"] == _token_url(strict_worker)
        assert doc["grant_types_supported"] == ["client_credentials"]
        assert doc["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert set(doc["capabilities"]) == {
            "client-confidential-asymmetric",
            "permission-v1",
            "permission-v2",
        }
        assert {"records:read", "export", "system/*.read", "system/Encounter.rs"} <= set(
            doc["scopes_supported"]
        )


async def test_jwks_json_holds_the_public_key_that_verifies_access_tokens(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client
) -> None:
    async with http.get(f"{strict_worker.base_url}/.well-known/jwks.json") as r:
        assert r.status == 200
        (key,) = (await r.json())["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert "d" not in key
    status, body, headers = await _token(
        http, strict_worker, client.assertion(_token_url(strict_worker)), "records:read"
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert body["scope"] == "records:read"
    access = body["access_token"]
    assert jwt.get_unverified_header(access)["kid"] == key["kid"]
    verified = jwt.decode(
        access,
        jwt.PyJWK(key).key,
        algorithms=["EdDSA"],
        audience=STRICT_ENV["JWT_AUDIENCE"],
        issuer=STRICT_ENV["JWT_ISSUER"],
    )
    assert "kinds" not in verified and verified["scope"] == "records:read"


async def test_scopes_are_narrowed_and_nothing_grantable_is_invalid_scope(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client
) -> None:
    url = _token_url(strict_worker)
    status, body, _ = await _token(
        http, strict_worker, client.assertion(url), "ingest system/Encounter.cruds export"
    )
    assert (status, body["scope"]) == (200, "system/Encounter.rs export")
    status, body, _ = await _token(http, strict_worker, client.assertion(url), "ingest tokenize")
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body, _ = await _token(http, strict_worker, client.assertion(url), None)
    assert (status, body["error"]) == (400, "invalid_scope")


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_without_kid_each_registered_key_is_tried(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client, alg: str
) -> None:
    assertion = client.assertion(_token_url(strict_worker), alg=alg, kid=False)
    assert "kid" not in jwt.get_unverified_header(assertion)
    status, body, _ = await _token(http, strict_worker, assertion)
    assert status == 200, body


def _refusals(client: Client, url: str) -> dict[str, str]:
    other = ec.generate_private_key(ec.SECP384R1())
    return {
        "wrong aud": client.assertion("https://elsewhere.test/auth/token"),
        "expired": client.assertion(url, exp=int(time.time()) - 30),
        "exp too far": client.assertion(url, exp=int(time.time()) + 600),
        "no exp": client.assertion(url, exp=None),
        "no jti": client.assertion(url, jti=None),
        "sub is not iss": client.assertion(url, sub="someone-else"),
        "unknown kid": client.assertion(url, headers={"kid": "no-such-kid"}),
        "key not in the jwks": client.assertion(url, key=other),
        "HS256": jwt.encode(
            {
                "iss": client.id,
                "sub": client.id,
                "aud": url,
                "exp": int(time.time()) + 60,
                "jti": "j-hs",
            },
            SECRET,
            algorithm="HS256",
        ),
        "RS256": client.assertion(url, alg="RS256"),
        "none": jwt.encode(
            {
                "iss": client.id,
                "sub": client.id,
                "aud": url,
                "exp": int(time.time()) + 60,
                "jti": "j-none",
            },
            None,
            algorithm="none",
        ),
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize(
    "name",
    [
        "wrong aud",
        "expired",
        "exp too far",
        "no exp",
        "no jti",
        "sub is not iss",
        "unknown kid",
        "key not in the jwks",
        "HS256",
        "RS256",
        "none",
        "garbage",
    ],
)
async def test_bad_assertions_are_invalid_client_and_echo_nothing(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client, name: str
) -> None:
    assertion = _refusals(client, _token_url(strict_worker))[name]
    status, body, headers = await _token(http, strict_worker, assertion)
    assert (status, body["error"]) == (401, "invalid_client"), body
    assert set(body) == {"error", "error_description"}
    assert client.id not in body["error_description"]
    assert headers["Cache-Control"] == "no-store"


async def test_a_replayed_assertion_is_refused(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client, db: asyncpg.Pool
) -> None:
    assertion = client.assertion(_token_url(strict_worker))
    status, body, _ = await _token(http, strict_worker, assertion)
    assert status == 200, body
    status, body, _ = await _token(http, strict_worker, assertion)
    assert (status, body["error"]) == (401, "invalid_client")
    jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
    assert jti not in json.dumps(body)
    stored = await db.fetchval(
        "SELECT count(*) FROM recipient_client_jtis WHERE recipient_id = $1 AND jti = $2",
        client.id,
        jti,
    )
    assert stored == 1


async def test_a_revoked_recipient_gets_no_token_and_its_access_token_no_reads(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client
) -> None:
    url = _token_url(strict_worker)
    status, body, _ = await _token(http, strict_worker, client.assertion(url), "records:read")
    assert status == 200, body
    access = body["access_token"]
    assert (await _graphql(http, strict_worker, access))[0] == 200
    code, report = await run_cli("recipients", "revoke", client.id, "--local", env=CLI_ENV)
    assert code == 0, report
    status, body, _ = await _token(http, strict_worker, client.assertion(url))
    assert (status, body["error"]) == (401, "invalid_client")

    async def refused() -> bool:
        return (await _graphql(http, strict_worker, access))[0] == 403

    # Workers see a revocation within their recipient cache's lifetime.
    await eventually(refused, timeout=60)


async def test_unknown_recipient_or_one_without_a_jwks_is_invalid_client(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    bare = Client()
    await _register(bare, tmp_path, jwks=False)
    unknown = Client()
    for c in (bare, unknown):
        status, body, _ = await _token(http, strict_worker, c.assertion(_token_url(strict_worker)))
        assert (status, body["error"]) == (401, "invalid_client")


async def test_malformed_requests_follow_rfc_6749(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client
) -> None:
    url = _token_url(strict_worker)
    status, body, _ = await _token(
        http, strict_worker, client.assertion(url), grant_type="authorization_code"
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body, _ = await _token(http, strict_worker, None)
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await _token(
        http, strict_worker, client.assertion(url), client_assertion_type="urn:other"
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert "urn:other" not in body["error_description"]
    async with http.post(url, json={"grant_type": "client_credentials"}) as r:
        assert (r.status, (await r.json())["error"]) == (400, "invalid_request")


async def test_set_jwks_over_the_control_topic_replaces_the_keys(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, client: Client, tmp_path: Path
) -> None:
    url = _token_url(strict_worker)
    newer = Client()
    newer.id = client.id
    path = tmp_path / "newer.jwks.json"
    path.write_text(json.dumps(newer.jwks()))
    # No --local: the command goes through exchange.control to a running worker.
    code, report = await run_cli(
        "recipients", "set-jwks", client.id, "--jwks", str(path), "--timeout", "120", env=CLI_ENV
    )
    assert code == 0, report
    assert report["result"] == {"recipient": client.id, "jwks_keys": 2}
    status, body, _ = await _token(http, strict_worker, client.assertion(url))
    assert (status, body["error"]) == (401, "invalid_client")
    status, body, _ = await _token(http, strict_worker, newer.assertion(url))
    assert status == 200, body


async def test_a_jwks_with_private_parts_is_refused_by_the_cli(
    migrated: None, tmp_path: Path, db: asyncpg.Pool
) -> None:
    c = Client()
    private = jwt.algorithms.RSAAlgorithm.to_jwk(c.rsa, as_dict=True)
    path = tmp_path / "private.jwks.json"
    path.write_text(json.dumps({"keys": [private]}))
    code, report = await run_cli(
        "recipients", "add", c.id, "--jwks", str(path), "--local", env=CLI_ENV
    )
    assert code == 2, report
    assert "private key material" in report["_stderr"]
    assert await db.fetchval("SELECT count(*) FROM recipients WHERE recipient_id = $1", c.id) == 0
    audit = await db.fetch(
        "SELECT action FROM audit_log WHERE entity_type = 'recipient' AND entity_id = $1", c.id
    )
    assert audit == []


async def test_add_with_jwks_and_set_jwks_write_audit_rows(
    db: asyncpg.Pool, client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "again.jwks.json"
    path.write_text(json.dumps(client.jwks()))
    code, report = await run_cli(
        "recipients", "set-jwks", client.id, "--jwks", str(path), "--local", env=CLI_ENV
    )
    assert code == 0, report
    actions = await db.fetch(
        "SELECT action, details FROM audit_log WHERE entity_type = 'recipient' "
        "AND entity_id = $1 ORDER BY id",
        client.id,
    )
    assert [a["action"] for a in actions] == [
        "recipients.add",
        "recipients.set_jwks",
        "recipients.set_jwks",
    ]
    assert actions[1]["details"] == {"keys": 2, "kids": ["rsa-1", "ec-1"]}
    stored = await db.fetchval(
        "SELECT jwks FROM recipient_clients WHERE recipient_id = $1", client.id
    )
    assert all("d" not in k for k in stored["keys"])


PUBLIC_BASE = "https://exchange.example.test/api"


@pytest.fixture(scope="module")
async def hs256_off_worker(
    migrated: None, strict_credentials: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A strict worker that no longer accepts HS256 JWTs, behind a public base URL."""
    env = {
        **SHARED_WORKER_ENV,
        **STRICT_ENV,
        **strict_credentials,
        "JWT_HS256": "0",
        "PUBLIC_BASE_URL": PUBLIC_BASE + "/",
    }
    async with running_worker(tmp_path_factory.mktemp("hs256-off-worker"), env) as proc:
        yield proc


async def test_with_jwt_hs256_off_hs256_is_401_and_access_tokens_still_work(
    hs256_off_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    client: Client,
    db: asyncpg.Pool,
) -> None:
    worker = hs256_off_worker
    # An expired jti of another client: this worker's first token request purges it.
    stale = f"stale-{uuid.uuid4().hex[:8]}"
    await db.execute(
        "INSERT INTO recipient_client_jtis (recipient_id, jti, expires_at) "
        "VALUES ($1, 'old', now() - interval '1 minute')",
        stale,
    )
    hs256 = jwt.encode(claims(), SECRET, algorithm="HS256")
    status, resp, _ = await post_json(
        http, f"{worker.base_url}/v2/ingest", v2_body(), key=new_key(), token=hs256
    )
    assert (status, resp) == (401, {"error": "unauthorized"})
    reader = jwt.encode(claims(recipient=client.id, scope="records:read"), SECRET, "HS256")
    assert (await _graphql(http, worker, reader))[0] == 401

    async with http.get(f"{worker.base_url}/.well-known/smart-configuration") as r:
        doc = await r.json()
    assert doc["token_endpoint"] == f"{PUBLIC_BASE}/auth/token"
    # The assertion names the public token URL, wherever the request itself arrived.
    status, body, _ = await _token(http, worker, client.assertion(f"{PUBLIC_BASE}/auth/token"))
    assert status == 200, body
    gone = "SELECT count(*) FROM recipient_client_jtis WHERE recipient_id = $1"
    assert await db.fetchval(gone, stale) == 0
    status, data = await _graphql(http, worker, body["access_token"])
    assert status == 200, data


async def test_a_smart_type_scope_reads_only_those_kinds(
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    client: Client,
) -> None:
    """An access token for ``system/Encounter.rs`` reads encounters and nothing else, in the
    feed and in the per-patient lists; the records of other kinds are not even counted."""
    source = f"smart-kinds-{uuid.uuid4().hex[:8]}"
    partner = jwt.encode(claims(), SECRET, algorithm="HS256")
    encounter = v2_body(source)
    claim = v2_body(
        source,
        record_kind="claim",
        payload={
            "claim_id": f"clm-{uuid.uuid4().hex[:8]}",
            "payer_id": "payer-3",
            "service_date": "2024-02-28",
            "total_charge": "12.50",
            "currency": "USD",
            "cpt_codes": ["99213"],
            "dx_codes": ["E11.9"],
        },
    )
    ids = []
    for body in (encounter, claim):
        status, resp, _ = await post_json(
            http, f"{strict_worker.base_url}/v2/ingest", body, key=new_key(), token=partner
        )
        assert status == 202, resp
        ids.append(resp["record_id"])
    await wait_canonical(db, ids)
    # Grants deny by default: this recipient may read every source, its token's scope narrows it.
    code, report = await run_cli(
        "recipients", "grant", client.id, "--all-sources", "--local", env=CLI_ENV
    )
    assert code == 0, report

    async def read_as(scope: str) -> dict:
        status, granted, _ = await _token(
            http, strict_worker, client.assertion(_token_url(strict_worker)), scope
        )
        assert status == 200, granted
        query = (
            "query($s: String) { records(source: $s, first: 50) "
            "{ items { kind patientToken } nextCursor } }"
        )
        async with http.post(
            f"{strict_worker.base_url}/graphql",
            json={"query": query, "variables": {"s": source}},
            headers={"Authorization": f"Bearer {granted['access_token']}"},
        ) as r:
            assert r.status == 200
            answer = await r.json()
        assert "errors" not in answer, answer
        return answer["data"]["records"]

    everything = await read_as("system/*.rs")
    assert sorted(i["kind"] for i in everything["items"]) == ["claim", "encounter"]
    encounters_only = await read_as("system/Encounter.rs")
    assert [i["kind"] for i in encounters_only["items"]] == ["encounter"]
    assert encounters_only["nextCursor"] is None
    claims_only = await read_as("system/Claim.read")
    assert [i["kind"] for i in claims_only["items"]] == ["claim"]
