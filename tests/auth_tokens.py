"""JWTs for tests, signed with the strict test worker's settings."""

from __future__ import annotations

import base64
import time

import jwt
import orjson

from tests.conftest import STRICT_ENV

SECRET = STRICT_ENV["JWT_SECRET"]
ISS = STRICT_ENV["JWT_ISSUER"]
AUD = STRICT_ENV["JWT_AUDIENCE"]


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "sub": "partner-7", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def good_token() -> str:
    return jwt.encode(claims(), SECRET, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none_token() -> str:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{b64(orjson.dumps(claims()))}."


def rs256_token() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), key, algorithm="RS256")
