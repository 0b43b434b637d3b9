"""Recipient tokens: each recipient's own, reversible, unlinkable token for a patient.

A recipient never sees the master patient token (64 lowercase hex, an HMAC-SHA256). It sees

    rt1.<recipient>.<version>.<base64url, no padding, of 48 bytes>

where the 48 bytes are AES-SIV (RFC 5297, AES-256: a 64-byte key) of the master token's 32 raw
bytes: a 16-byte synthetic IV (the tag) followed by the 32-byte ciphertext. AES-SIV is
deterministic authenticated encryption: one (recipient, version, master token) always gives one
token, the exchange decrypts it back, and without the key nobody can relate two recipients' tokens
or make a token that decrypts. The associated data is the three components ``b"rt1"``, the
recipient id and the decimal version, so a token relabelled as another recipient or version fails
authentication even before the key differs.

Keys are derived, not stored. The key of (recipient, version) is HKDF-SHA256 (RFC 5869) of
``RECIPIENT_TOKEN_SECRET`` with no salt (the RFC's all-zero salt) and the info

    b"exchange-stream/recipient-token/v1" 0x00 <recipient id, ASCII> 0x00 <version, decimal ASCII>

which is unambiguous because neither a slug nor a decimal contains a NUL byte. The purpose label
means the same secret yields unrelated keys for any other use. Why derive rather than store keys
encrypted under the secret: the database then holds no key material at all, so a dump, a replica
or a backup of it leaks nothing and there is nothing extra to back up or restore; rotation is
bumping a version number in ``recipient_keys``; and every worker computes the same key with no
round trip. The cost is that the secret itself can never change without re-issuing every token,
which storing wrapped keys would not fix either (they would be wrapped under that same secret).

Resolving refuses, as ``None`` and without saying why, a malformed token, another recipient's
token, a version the caller does not list as resolvable, and any altered or forged token. A
well-formed token that names the wrong recipient or a retired version still costs one AES-SIV
decryption (under a decoy key), so timing does not tell those cases from a bad tag.

Pure code: no I/O, no configuration; the caller passes the secret and the resolvable versions.
"""

from __future__ import annotations

import re
from base64 import urlsafe_b64decode, urlsafe_b64encode
from collections.abc import Collection, Iterable
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "FORMAT",
    "HKDF_PURPOSE",
    "MAX_KEY_VERSION",
    "RECIPIENT_ID_PATTERN",
    "RecipientIdError",
    "RecipientTokens",
    "derive_key",
    "parse_label",
    "validate_recipient_id",
    "validate_version",
]

FORMAT = "rt1"
HKDF_PURPOSE = b"exchange-stream/recipient-token/v1"
KEY_BYTES = 64  # AES-256-SIV: a MAC key and a CTR key of 32 bytes each
MAX_KEY_VERSION = 999_999_999  # nine decimal digits keep the token's length bounded

# 1-32 characters of a-z, 0-9 and '-', not starting or ending with '-'.
RECIPIENT_ID_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
_RECIPIENT_ID = re.compile(RECIPIENT_ID_PATTERN)
_MASTER_TOKEN = re.compile(r"[0-9a-f]{64}")
# 48 bytes are exactly 64 base64 characters with every bit used, so each 64-character string over
# the URL-safe alphabet is the one canonical encoding of its bytes: no padding, no spare bits.
# The version has no leading zero, so each version has one spelling too.
_TOKEN = re.compile(
    rf"{FORMAT}\.({RECIPIENT_ID_PATTERN})\.([1-9][0-9]{{0,8}})\.([A-Za-z0-9_-]{{64}})"
)

_CACHE_SIZE = 4096


class RecipientIdError(ValueError):
    """A recipient id that is not a short slug."""


def validate_recipient_id(value: object) -> str:
    """Return ``value`` if it is a valid recipient id, else raise :class:`RecipientIdError`."""
    if isinstance(value, str) and _RECIPIENT_ID.fullmatch(value):
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise RecipientIdError(
        "a recipient id is 1-32 characters of a-z, 0-9 and '-', starting and ending with a "
        f"letter or digit; got {shown}"
    )


def validate_version(value: object) -> int:
    """Return ``value`` if it is a key version (an int from 1 to MAX_KEY_VERSION), else raise."""
    if type(value) is not int or not 1 <= value <= MAX_KEY_VERSION:
        raise ValueError(f"a key version is an integer from 1 to {MAX_KEY_VERSION}")
    return value


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the recipient token secret is empty")
    return key


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def derive_key(secret: str | bytes, recipient: str, version: int) -> bytes:
    """The 64-byte AES-SIV key of (recipient, version), by HKDF-SHA256 with the documented info."""
    recipient = validate_recipient_id(recipient)
    version = validate_version(version)
    info = b"\x00".join((HKDF_PURPOSE, recipient.encode("ascii"), str(version).encode("ascii")))
    return _hkdf(_secret_bytes(secret), info)


def _associated_data(recipient: str, version: str) -> list[bytes]:
    return [FORMAT.encode("ascii"), recipient.encode("ascii"), version.encode("ascii")]


def _master_bytes(master_token_hex: str) -> bytes:
    if not isinstance(master_token_hex, str) or not _MASTER_TOKEN.fullmatch(master_token_hex):
        # The value is patient-derived, so it is never echoed.
        raise ValueError("a master token is 64 lowercase hex characters")
    return bytes.fromhex(master_token_hex)


def parse_label(token: object) -> tuple[str, int] | None:
    """The (recipient, version) a well-formed token names, unauthenticated; None if malformed."""
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    return None if match is None else (match[1], int(match[2]))


class RecipientTokens:
    """Issue and resolve recipient tokens under one secret; derived keys are cached per key."""

    def __init__(self, secret: str | bytes, *, cache_size: int = _CACHE_SIZE) -> None:
        self._secret = _secret_bytes(secret)
        # A key of its own purpose, used only to spend a decryption on tokens refused early.
        self._decoy = AESSIV(_hkdf(self._secret, HKDF_PURPOSE + b"\x00decoy"))
        # typed=True so that True or 1.0 never hit the entry cached for version 1.
        self._entry = lru_cache(maxsize=cache_size, typed=True)(self._build_entry)

    def __repr__(self) -> str:
        return "RecipientTokens(<secret>)"

    def _build_entry(self, recipient: str, version: int) -> tuple[AESSIV, list[bytes], str]:
        aead = AESSIV(derive_key(self._secret, recipient, version))
        return aead, _associated_data(recipient, str(version)), f"{FORMAT}.{recipient}.{version}."

    def issue(self, master_token_hex: str, recipient: str, version: int) -> str:
        """The token of ``master_token_hex`` for ``recipient`` under key ``version``."""
        aead, ad, prefix = self._entry(recipient, version)
        sealed = aead.encrypt(_master_bytes(master_token_hex), ad)
        return prefix + urlsafe_b64encode(sealed).decode("ascii")

    def issue_many(
        self, master_tokens_hex: Iterable[str], recipient: str, version: int
    ) -> list[str]:
        """``issue`` for each master token, in order, deriving the key at most once."""
        aead, ad, prefix = self._entry(recipient, version)
        encrypt = aead.encrypt
        return [
            prefix + urlsafe_b64encode(encrypt(_master_bytes(m), ad)).decode("ascii")
            for m in master_tokens_hex
        ]

    def resolve(self, token: object, recipient: str, versions: Collection[int]) -> str | None:
        """The master token behind ``token`` if it is ``recipient``'s under one of ``versions``.

        ``versions`` are the recipient's resolvable (not retired) key versions; pass an empty
        collection for a revoked recipient. Any refusal is ``None``, never an exception.
        """
        match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
        if match is None:
            return None
        named, version_text, body = match.groups()
        version = int(version_text)
        accepted = named == recipient and version in versions
        if accepted:
            aead, ad, _ = self._entry(recipient, version)
        else:
            aead, ad = self._decoy, _associated_data(named, version_text)
        try:
            plain = aead.decrypt(urlsafe_b64decode(body), ad)
        except InvalidTag:
            return None
        return plain.hex() if accepted else None

    def resolve_many(
        self, tokens: Iterable[object], recipient: str, versions: Collection[int]
    ) -> list[str | None]:
        """``resolve`` for each token, in order (one page of a read at once)."""
        resolve = self.resolve
        return [resolve(token, recipient, versions) for token in tokens]
