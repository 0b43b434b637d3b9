"""A SMART Backend Services client's two steps, for trying the exchange's token endpoint by hand.

    python scripts/smart_client.py keygen CLIENT_ID [--dir DIR]
        a new EC P-384 key: DIR/CLIENT_ID.key.pem (private, mode 0600) and DIR/CLIENT_ID.jwks.json
        (the public JWKS to register: exchange-stream recipients add CLIENT_ID --jwks FILE)
    python scripts/smart_client.py assertion CLIENT_ID --key PEM --token-url URL
        a client assertion (RFC 7523, ES384, five minutes, a new jti) for POST URL, on stdout

A real client does this with its own library (SMART's bulk-data client, Authlib …); this script
exists so the README can walk the flow with nothing but the project's virtualenv. The recipient's
id is the client id (``iss`` and ``sub``), the token endpoint's URL the audience.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES384"
LIFETIME_S = 300


def keygen(client_id: str, directory: Path) -> tuple[Path, Path]:
    """Write a new P-384 private key and its public JWKS; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    kid = uuid.uuid4().hex[:16]
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": kid, "alg": ALGORITHM, "use": "sig", "key_ops": ["verify"]})
    private_path = directory / f"{client_id}.key.pem"
    jwks_path = directory / f"{client_id}.jwks.json"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    # The kid travels with the private key too, so that assertions name it.
    (directory / f"{client_id}.kid").write_text(kid + "\n", encoding="ascii")
    jwks_path.write_text(json.dumps({"keys": [public]}, indent=2) + "\n", encoding="utf-8")
    return private_path, jwks_path


def assertion(client_id: str, key_path: Path, token_url: str) -> str:
    """A signed client assertion for ``token_url``."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    kid_path = key_path.with_name(key_path.name.removesuffix(".key.pem") + ".kid")
    headers = {"kid": kid_path.read_text(encoding="ascii").strip()} if kid_path.exists() else {}
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + LIFETIME_S,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": "JWT", **headers})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    gen = sub.add_parser("keygen", help="a new key pair and its public JWKS")
    gen.add_argument("client_id")
    gen.add_argument("--dir", type=Path, default=Path(".cache/smart"))
    sign = sub.add_parser("assertion", help="a client assertion for the token endpoint")
    sign.add_argument("client_id")
    sign.add_argument("--key", type=Path, required=True)
    sign.add_argument("--token-url", required=True)
    args = parser.parse_args()
    if args.step == "keygen":
        private_path, jwks_path = keygen(args.client_id, args.dir)
        print(f"private key {private_path} (keep it), public JWKS {jwks_path} (register it)")
    else:
        print(assertion(args.client_id, args.key, args.token_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
