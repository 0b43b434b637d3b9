"""Which JWKS a recipient may register (core/jwks.py), and the commands that carry one."""

from __future__ import annotations

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from exchange_stream.core.jwks import JwksInvalid, validate_jwks
from exchange_stream.ops.control import CommandInvalid, parse_command


def _jwk(key, **extra) -> dict:
    doc = orjson.loads(jwt.algorithms.get_default_algorithms()[_alg(key)].to_jwk(key))
    return {**doc, **extra}


def _alg(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ES384"
    return "EdDSA"


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC384 = ec.generate_private_key(ec.SECP384R1())
RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)


def test_public_rsa_and_p384_keys_are_kept_with_public_members_only() -> None:
    doc = {
        "keys": [
            _jwk(RSA.public_key(), kid="r1", alg="RS384", use="sig", x5t="ignored"),
            _jwk(EC384.public_key(), kid="e1"),
        ]
    }
    kept = validate_jwks(doc)
    assert [k["kid"] for k in kept["keys"]] == ["r1", "e1"]
    # key_ops (which PyJWT writes for some key types) is kept; x5t is dropped.
    assert set(kept["keys"][0]) - {"key_ops"} == {"kty", "kid", "alg", "use", "n", "e"}
    assert set(kept["keys"][1]) - {"key_ops"} == {"kty", "kid", "crv", "x", "y"}


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"keys": [_jwk(RSA)]}, "private key material (d, p, q, dp, dq, qi)"),
        ({"keys": [_jwk(EC384)]}, "private key material (d)"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "private key material (k)"),
        ({"keys": [_jwk(RSA_1024.public_key())]}, "at least 2048 bits"),
        ({"keys": [_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())]}, "P-384"),
        ({"keys": [_jwk(ed25519.Ed25519PrivateKey.generate().public_key())]}, "kty must be"),
        ({"keys": [_jwk(RSA.public_key(), alg="RS256")]}, "must be RS384"),
        ({"keys": [_jwk(RSA.public_key(), use="enc")]}, "use must be sig"),
        ({"keys": [_jwk(EC384.public_key(), kid="a"), _jwk(RSA.public_key(), kid="a")]}, "kid"),
        ({"keys": []}, "1 to 10 keys"),
        ({"kty": "RSA"}, '"keys" list'),
        ([], '"keys" list'),
        ({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}, "not a point"),
    ],
)
def test_what_is_refused_and_why(doc: object, reason: str) -> None:
    with pytest.raises(JwksInvalid) as exc:
        validate_jwks(doc)
    assert reason in str(exc.value)


def test_errors_never_echo_a_submitted_value() -> None:
    kid = "secret-looking-kid-123"
    with pytest.raises(JwksInvalid) as exc:
        validate_jwks({"keys": [_jwk(RSA, kid=kid)]})
    assert kid not in str(exc.value)


def _command(command: str, params: dict) -> bytes:
    return orjson.dumps({"command_id": "cmd-00000001", "command": command, "params": params})


def test_set_jwks_on_the_control_topic_carries_the_jwks_itself() -> None:
    jwks = {"keys": [_jwk(EC384.public_key(), kid="e1")]}
    cmd = parse_command(_command("recipients_set_jwks", {"recipient": "r-1", "jwks": jwks}))
    assert cmd.operation.name == "recipients_set_jwks"
    assert cmd.params["jwks"] == jwks


@pytest.mark.parametrize("command", ["recipients_add", "recipients_set_jwks"])
def test_a_jwks_with_a_private_key_is_rejected_as_a_command(command: str) -> None:
    with pytest.raises(CommandInvalid) as exc:
        parse_command(_command(command, {"recipient": "r-1", "jwks": {"keys": [_jwk(RSA)]}}))
    assert "invalid field: jwks" in str(exc.value) and "private key material" in str(exc.value)
