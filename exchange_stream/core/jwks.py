"""A recipient's JWKS: the public keys it signs SMART Backend Services client assertions with.

The exchange accepts assertions signed RS384 or ES384 only (the algorithms SMART Backend Services
requires servers to support), so a registered key is RSA of at least 2048 bits or EC on P-384.
A JWKS holding private members is refused outright: the operator pasted the wrong file, and the
private key must not be stored. Errors name the key by its position and the member at fault,
never a submitted value.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

MAX_KEYS = 10
MIN_RSA_BITS = 2048
# The members a public key may keep; anything else is dropped before storing.
_PUBLIC_MEMBERS = {
    "RSA": ("kty", "kid", "alg", "use", "key_ops", "n", "e"),
    "EC": ("kty", "kid", "alg", "use", "key_ops", "crv", "x", "y"),
}
# Members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# Signature algorithm of each key type, as the token endpoint pins it.
ALGORITHMS = {"RSA": "RS384", "EC": "ES384"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JwksInvalid(ValueError):
    """Not a JWKS the exchange stores; the message says why, naming no submitted value."""


def validate_jwks(doc: Any) -> dict[str, Any]:
    """The public JWKS to store for ``doc`` (only public members kept); ``JwksInvalid``."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwksInvalid('a JWKS is a JSON object with a "keys" list')
    keys = doc["keys"]
    if not 1 <= len(keys) <= MAX_KEYS:
        raise JwksInvalid(f"a JWKS must hold 1 to {MAX_KEYS} keys")
    kept, kids = [], set()
    for i, jwk in enumerate(keys, start=1):
        kept.append(_validate_key(jwk, i))
        kid = kept[-1].get("kid")
        if kid is not None:
            if kid in kids:
                raise JwksInvalid(f"key {i}: kid repeats another key's")
            kids.add(kid)
    return {"keys": kept}


def _validate_key(jwk: Any, i: int) -> dict[str, Any]:
    if not isinstance(jwk, Mapping):
        raise JwksInvalid(f"key {i}: not a JSON object")
    private = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if private:
        raise JwksInvalid(
            f"key {i}: holds private key material ({', '.join(private)}); register the "
            "public keys only"
        )
    kty = jwk.get("kty")
    if kty not in ALGORITHMS:
        raise JwksInvalid(f"key {i}: kty must be RSA or EC (signing with RS384 or ES384)")
    for member in ("kid", "use", "alg"):
        if member in jwk and not isinstance(jwk[member], str):
            raise JwksInvalid(f"key {i}: {member} must be a string")
    if "kid" in jwk and not 1 <= len(jwk["kid"]) <= 255:
        raise JwksInvalid(f"key {i}: kid must have 1 to 255 characters")
    if jwk.get("use", "sig") != "sig":
        raise JwksInvalid(f"key {i}: use must be sig")
    if jwk.get("alg", ALGORITHMS[kty]) != ALGORITHMS[kty]:
        raise JwksInvalid(f"key {i}: alg of an {kty} key must be {ALGORITHMS[kty]}")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JwksInvalid(f"key {i}: key_ops must allow verify")
    public_key(jwk, i)
    return {m: jwk[m] for m in _PUBLIC_MEMBERS[kty] if m in jwk}


def public_key(jwk: Mapping[str, Any], i: int = 1) -> PublicKey:
    """The key a stored JWK describes; ``JwksInvalid`` when it is not an acceptable one."""
    if jwk.get("kty") == "RSA":
        n, e = _uint(jwk, "n", i), _uint(jwk, "e", i)
        if n.bit_length() < MIN_RSA_BITS:
            raise JwksInvalid(f"key {i}: an RSA key must have at least {MIN_RSA_BITS} bits")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError:
            raise JwksInvalid(f"key {i}: not a valid RSA public key") from None
    if jwk.get("kty") == "EC":
        if jwk.get("crv") != "P-384":
            raise JwksInvalid(f"key {i}: an EC key must be on curve P-384 (ES384)")
        x, y = _uint(jwk, "x", i), _uint(jwk, "y", i)
        try:
            return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
        except ValueError:
            raise JwksInvalid(f"key {i}: not a point of curve P-384") from None
    raise JwksInvalid(f"key {i}: kty must be RSA or EC (signing with RS384 or ES384)")


def _uint(jwk: Mapping[str, Any], member: str, i: int) -> int:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise JwksInvalid(f"key {i}: {member} is required (base64url)")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise JwksInvalid(f"key {i}: {member} is not base64url") from None
    return int.from_bytes(raw, "big")
