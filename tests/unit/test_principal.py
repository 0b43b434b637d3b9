"""Who a request is: JWT claims to a Principal (recipient and scopes), without a server."""

from __future__ import annotations

import time

import jwt
import pytest

from exchange_stream.infra.config import Settings
from tests.conftest import new_signing_key_pem
from web.auth import (
    DEV_RECIPIENT,
    PARTNER_DEFAULT_SCOPES,
    READ_RECORDS,
    Unauthorized,
    authenticate,
)

SECRET = "unit-jwt-secret-0123456789abcdef-xyz"
STRICT = Settings.from_env(
    {
        "ENV": "staging",
        "JWT_SECRET": SECRET,
        "JWT_ISSUER": "https://issuer.test",
        "JWT_AUDIENCE": "exchange-stream",
        "POSTGRES_PASSWORD": "pg-unit-secret",
        "MINIO_SECRET_KEY": "s3-unit-secret",
        "TOKENIZER_HMAC_SECRET": "hmac-unit-secret-0123456789",
        "RECIPIENT_TOKEN_SECRET": "recipient-unit-secret-0123456789abcdef",
        "MATCH_TOKEN_SECRET": "match-unit-secret-0123456789abcdef0123",
        "ACCESS_TOKEN_SIGNING_KEY": new_signing_key_pem(),
    }
)


def _bearer(**claims: object) -> str:
    base = {"iss": "https://issuer.test", "aud": "exchange-stream", "exp": time.time() + 60}
    return "Bearer " + jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def test_todays_jwts_still_authenticate_without_recipient_or_scope() -> None:
    p = authenticate(_bearer(sub="partner-a"), STRICT)
    assert (p.actor, p.recipient, p.scopes) == ("partner-a", None, PARTNER_DEFAULT_SCOPES)
    assert p.sources is None and p.may_send("any source")
    assert not p.can(READ_RECORDS)


def test_recipient_and_space_separated_scopes() -> None:
    p = authenticate(_bearer(recipient="research-1", scope="records:read other"), STRICT)
    assert p.recipient == "research-1"
    assert p.can(READ_RECORDS) and p.can("other") and not p.can("records")


@pytest.mark.parametrize(
    "claims",
    [{"recipient": "Not A Slug"}, {"recipient": 7}, {"recipient": ""}, {"scope": ["records:read"]}],
)
def test_malformed_recipient_or_scope_claims_are_unauthorized(claims: dict) -> None:
    with pytest.raises(Unauthorized):
        authenticate(_bearer(**claims), STRICT)


def test_bearer_dev_is_the_local_dev_recipient_with_every_scope_only_when_local() -> None:
    p = authenticate("Bearer dev", Settings.from_env({}))
    assert (p.recipient, p.can(READ_RECORDS)) == (DEV_RECIPIENT, True)
    with pytest.raises(Unauthorized):
        authenticate("Bearer dev", STRICT)
