"""The exchange's access tokens: what issue_access_token signs (for POST /auth/token and
recipients dev-token alike), and authenticate() pinned to the exchange's own EdDSA key, scopes
and kinds to a Principal, and JWT_HS256 turning HS256 off (web/auth.py, core/access_token.py)."""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange_stream.core.access_token import SigningKey, issue_access_token, signing_key
from exchange_stream.infra.config import Settings
from tests.unit.test_principal import SECRET, STRICT
from web.auth import EXPORT, INGEST, READ_RECORDS, Unauthorized, authenticate

KEY = signing_key(STRICT.access_token_signing_key)


def _access(key: SigningKey = KEY, **over: object) -> str:
    now = int(time.time())
    body = {
        "iss": STRICT.jwt_issuer,
        "aud": STRICT.jwt_audience,
        "sub": "research-1",
        "recipient": "research-1",
        "scope": "system/Encounter.rs",
        "kinds": ["encounter"],
        "exp": now + 300,
    }
    body.update(over)
    return "Bearer " + key.sign({k: v for k, v in body.items() if v is not None})


def _issued(**over: object) -> str:
    args: dict = {
        "issuer": STRICT.jwt_issuer,
        "audience": STRICT.jwt_audience,
        "recipient": "research-1",
        "scope": "records:read",
        "issued_at": int(time.time()),
        "lifetime_s": 300,
    }
    return issue_access_token(KEY, **{**args, **over})


def test_an_issued_token_names_its_recipient_three_times_and_lives_its_lifetime() -> None:
    now = int(time.time())
    token = _issued(issued_at=now, lifetime_s=120)
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": KEY.kid, "typ": "at+jwt"}
    claims = KEY.verify(token, issuer=STRICT.jwt_issuer, audience=STRICT.jwt_audience)
    jti = claims.pop("jti")
    assert str(uuid.UUID(jti)) == jti
    assert claims == {
        "iss": STRICT.jwt_issuer,
        "aud": STRICT.jwt_audience,
        "sub": "research-1",
        "recipient": "research-1",
        "client_id": "research-1",
        "scope": "records:read",
        "iat": now,
        "exp": now + 120,
    }


def test_an_issued_token_reads_as_its_recipient_with_the_scopes_it_names() -> None:
    p = authenticate("Bearer " + _issued(scope="export ingest"), STRICT)
    assert (p.actor, p.recipient, p.kinds) == ("recipient:research-1", "research-1", None)
    assert p.can(EXPORT) and not p.can(READ_RECORDS) and not p.can(INGEST)


def test_an_issued_tokens_kinds_are_sorted_and_limit_what_it_reads() -> None:
    token = _issued(scope="system/Encounter.rs system/Claim.rs", kinds={"encounter", "claim"})
    assert jwt.decode(token, options={"verify_signature": False})["kinds"] == [
        "claim",
        "encounter",
    ]
    p = authenticate(f"Bearer {token}", STRICT)
    assert p.kinds == frozenset({"claim", "encounter"}) and p.can(READ_RECORDS)


def test_every_issued_token_has_its_own_jti() -> None:
    jtis = {jwt.decode(_issued(), options={"verify_signature": False})["jti"] for _ in range(3)}
    assert len(jtis) == 3


def test_a_smart_scope_reads_and_exports_its_kinds_only() -> None:
    p = authenticate(_access(), STRICT)
    assert (p.recipient, p.kinds) == ("research-1", frozenset({"encounter"}))
    assert p.can(READ_RECORDS) and p.can(EXPORT) and not p.can(INGEST)


def test_the_exchanges_own_scope_without_kinds_reads_every_kind() -> None:
    p = authenticate(_access(scope="records:read", kinds=None), STRICT)
    assert p.kinds is None and p.can(READ_RECORDS) and not p.can(EXPORT)


@pytest.mark.parametrize(
    "over",
    [
        {"exp": int(time.time()) - 5},
        {"aud": "another-audience"},
        {"iss": "https://other.test"},
        {"sub": "someone-else"},
        {"recipient": None},
        {"kinds": ["everything"]},
        {"scope": ["records:read"]},
    ],
)
def test_bad_access_tokens_are_unauthorized(over: dict) -> None:
    with pytest.raises(Unauthorized):
        authenticate(_access(**over), STRICT)


def test_a_token_signed_by_another_key_under_the_same_kid_is_unauthorized() -> None:
    forged = dataclasses.replace(KEY, private=Ed25519PrivateKey.generate())
    with pytest.raises(Unauthorized):
        authenticate(_access(forged), STRICT)


def test_hs256_signed_with_the_public_key_is_unauthorized() -> None:
    # The classic confusion: an HMAC keyed with the public key, claiming the exchange's kid.
    public = KEY.public_jwk["x"].encode()
    token = jwt.encode(
        {"iss": STRICT.jwt_issuer, "aud": STRICT.jwt_audience, "exp": time.time() + 60},
        public + b"-" * 32,
        algorithm="HS256",
        headers={"kid": KEY.kid},
    )
    with pytest.raises(Unauthorized):
        authenticate(f"Bearer {token}", STRICT)


def test_jwt_hs256_off_refuses_hs256_but_not_access_tokens() -> None:
    off = dataclasses.replace(STRICT, jwt_hs256=False)
    hs = jwt.encode(
        {"iss": STRICT.jwt_issuer, "aud": STRICT.jwt_audience, "exp": time.time() + 60},
        SECRET,
        algorithm="HS256",
    )
    assert authenticate(f"Bearer {hs}", STRICT).actor == "jwt"
    with pytest.raises(Unauthorized):
        authenticate(f"Bearer {hs}", off)
    assert authenticate(_access(), off).recipient == "research-1"


def test_the_local_key_is_the_same_in_every_process() -> None:
    local = Settings.from_env({})
    assert signing_key(local.access_token_signing_key).kid == (
        "l11jUQjKhXOnCb3Awf50N1BehW7WHcm8RxYqybgB8hE"
    )
