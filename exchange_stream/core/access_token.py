"""The exchange's own access tokens: EdDSA (Ed25519) JWTs issued at ``POST /auth/token``
(``web/smart.py``) and, on a local stack, by ``recipients dev-token`` (``cli/devtoken.py``);
``issue_access_token`` builds and signs them for both, so the two cannot drift apart.

Every worker loads the same private key from ``ACCESS_TOKEN_SIGNING_KEY`` (PEM), so a token
issued by one worker is accepted by all. The ``kid`` is the key's RFC 7638 thumbprint: it is
the same wherever the key is loaded, and changes with the key. Verification pins EdDSA and
this key: a token is never verified with an algorithm its own header chose.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ALGORITHM = "EdDSA"
# RFC 9068: the media type of a JWT access token, so it cannot pass for another kind of JWT.
MEDIA_TYPE = "at+jwt"
# Not a secret: the placeholder that stands for the local key, refused outside ENV=local.
LOCAL_PLACEHOLDER = "dev-access-token-key-change-me"
_LOCAL_SEED = hashlib.sha256(b"exchange-stream local access token signing key").digest()


class SigningKeyInvalid(ValueError):
    """``ACCESS_TOKEN_SIGNING_KEY`` is not an Ed25519 private key in PEM."""


@dataclass(frozen=True)
class SigningKey:
    """The exchange's access-token key: its private half, ``kid`` and public JWK."""

    private: Ed25519PrivateKey = field(repr=False)
    kid: str

    @property
    def public_jwk(self) -> dict[str, str]:
        return {**_public_members(self.private), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(
            dict(claims),
            self.private,
            algorithm=ALGORITHM,
            headers={"kid": self.kid, "typ": MEDIA_TYPE},
        )

    def verify(self, token: str, *, issuer: str, audience: str) -> dict[str, Any]:
        """The claims of a token this key signed, with iss, aud, exp and sub checked; raises
        ``jwt.PyJWTError`` otherwise."""
        header = jwt.get_unverified_header(token)
        if header.get("kid") != self.kid or header.get("typ") != MEDIA_TYPE:
            raise jwt.InvalidTokenError("not an access token of this key")
        return jwt.decode(
            token,
            key=self.private.public_key(),
            algorithms=[ALGORITHM],
            issuer=issuer,
            audience=audience,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )


@cache
def signing_key(pem: str) -> SigningKey:
    """The key ``pem`` holds (or the deterministic local key for the placeholder)."""
    if pem == LOCAL_PLACEHOLDER:
        private = Ed25519PrivateKey.from_private_bytes(_LOCAL_SEED)
    else:
        try:
            loaded = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise SigningKeyInvalid() from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise SigningKeyInvalid()
        private = loaded
    return SigningKey(private=private, kid=_thumbprint(private))


def issue_access_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    recipient: str,
    scope: str,
    issued_at: int,
    lifetime_s: int,
    kinds: Iterable[str] | None = None,
) -> str:
    """A recipient's access token signed with ``key``: ``sub``, ``recipient`` and ``client_id``
    are the recipient, ``scope`` is space separated, ``exp`` is ``lifetime_s`` after
    ``issued_at`` (epoch seconds), ``jti`` is fresh; ``kinds`` (sorted) only when a SMART scope
    narrows what it reads, None for every kind."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": recipient,
        "recipient": recipient,
        "client_id": recipient,
        "scope": scope,
        "iat": issued_at,
        "exp": issued_at + lifetime_s,
        "jti": str(uuid.uuid4()),
    }
    if kinds is not None:
        claims["kinds"] = sorted(kinds)
    return key.sign(claims)


def _public_members(private: Ed25519PrivateKey) -> dict[str, str]:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}


def _thumbprint(private: Ed25519PrivateKey) -> str:
    # RFC 7638: SHA-256 of the required members, sorted, without white space.
    members = orjson.dumps(_public_members(private), option=orjson.OPT_SORT_KEYS)
    return _b64(hashlib.sha256(members).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
