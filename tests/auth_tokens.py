"""JWTs for tests, signed with the strict test worker's settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
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


def token_with_issuer(iss: object) -> str:
    """A correctly signed HS256 token whose only fault may be its ``iss``; signed here rather
    than by PyJWT, which refuses to encode an ``iss`` that is not a string."""
    signing_input = (
        f"{b64(orjson.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{b64(orjson.dumps(claims(iss=iss)))}"
    )
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


# Near misses of ISS. PyJWT 2.10.0 tested `iss in JWT_ISSUER` (a substring test when the issuer is
# one string, CVE-2024-53861), so it took the first three; none may pass.
NEAR_ISSUERS = {
    "prefix": ISS[: len(ISS) // 2],
    "inner substring": ISS[1:-1],
    "empty": "",
    "longer, containing it": ISS + ".evil",
    "containing it after a prefix": "x" + ISS,
    "other case": ISS.upper(),
    "list holding it": [ISS],
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def alg_none_token() -> str:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{b64(orjson.dumps(claims()))}."


def rs256_token() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), key, algorithm="RS256")
