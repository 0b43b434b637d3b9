"""Recipient tokens as pure code: format, key derivation, and every way resolving must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exchange_stream.core.recipient_token import (
    MAX_KEY_VERSION,
    RECIPIENT_ID_PATTERN,
    RecipientIdError,
    RecipientTokens,
    derive_key,
    parse_label,
    validate_recipient_id,
)

SECRET = "exchange-test-secret-0123456789"
tokens = RecipientTokens(SECRET)

master_tokens = st.binary(min_size=32, max_size=32).map(bytes.hex)
recipients = st.from_regex(RECIPIENT_ID_PATTERN, fullmatch=True)
versions = st.integers(min_value=1, max_value=MAX_KEY_VERSION)
small_versions = st.integers(min_value=1, max_value=50)

# Pinned once from the implementation; the format may never change without this test changing.
VECTOR_MASTER = "fc613b4dfd6736a7bd268c8a0e74ed0d1c04a959f59dd74ef2874983fd443fc9"
VECTOR_TOKEN = (
    "rt1.acme-research.3.5SxPbFNjsIMThwshCM0lqTfYmXSGswIiPTD5C6He4hbPogVRQ8nDjdIjp-WMRkFZ"
)


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF written out from RFC 5869 with hmac alone, so the test does not restate the module."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()  # no salt = HashLen zero bytes
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def documented_key(secret: str, recipient: str, version: int) -> bytes:
    info = b"exchange-stream/recipient-token/v1\x00" + recipient.encode() + b"\x00"
    return rfc5869_hkdf_sha256(secret.encode(), info + str(version).encode(), 64)


def body_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.rsplit(".", 1)[1])


def with_body(token: str, body: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + base64.urlsafe_b64encode(body).decode()


# --- the pinned format ------------------------------------------------------------------------


def test_pinned_vector_is_what_issue_returns() -> None:
    assert tokens.issue(VECTOR_MASTER, "acme-research", 3) == VECTOR_TOKEN
    assert tokens.resolve(VECTOR_TOKEN, "acme-research", {3}) == VECTOR_MASTER


def test_pinned_vector_decrypts_under_the_documented_key_and_associated_data() -> None:
    key = documented_key(SECRET, "acme-research", 3)
    assert derive_key(SECRET, "acme-research", 3) == key
    sealed = body_bytes(VECTOR_TOKEN)
    assert len(sealed) == 16 + 32  # synthetic IV, then the encrypted 32 raw bytes
    plain = AESSIV(key).decrypt(sealed, [b"rt1", b"acme-research", b"3"])
    assert plain == bytes.fromhex(VECTOR_MASTER)
    # The documented construction encrypts to exactly the pinned token.
    again = AESSIV(key).encrypt(bytes.fromhex(VECTOR_MASTER), [b"rt1", b"acme-research", b"3"])
    assert with_body(VECTOR_TOKEN, again) == VECTOR_TOKEN


def test_key_is_bound_to_recipient_version_secret_and_purpose() -> None:
    base = derive_key(SECRET, "acme", 1)
    assert len(base) == 64
    assert derive_key(SECRET, "acme", 2) != base
    assert derive_key(SECRET, "acme-2", 1) != base
    assert derive_key(SECRET + "x", "acme", 1) != base
    # The same secret under another purpose label gives an unrelated key.
    assert rfc5869_hkdf_sha256(SECRET.encode(), b"other-purpose\x00acme\x001", 64) != base
    assert derive_key(SECRET.encode(), "acme", 1) == base


# --- properties -------------------------------------------------------------------------------


@given(master_tokens, recipients, versions)
def test_issue_is_deterministic_across_instances(master: str, recipient: str, version: int):
    token = tokens.issue(master, recipient, version)
    assert tokens.issue(master, recipient, version) == token
    assert RecipientTokens(SECRET.encode()).issue(master, recipient, version) == token


@given(master_tokens, recipients, versions)
def test_round_trip_and_the_token_names_its_recipient_and_version(master, recipient, version):
    token = tokens.issue(master, recipient, version)
    assert re.fullmatch(rf"rt1\.{re.escape(recipient)}\.{version}\.[A-Za-z0-9_-]{{64}}", token)
    assert parse_label(token) == (recipient, version)
    assert tokens.resolve(token, recipient, {version}) == master
    assert master not in token


@given(master_tokens, recipients, recipients, small_versions)
def test_two_recipients_tokens_differ_and_neither_opens_under_the_other(master, a, b, version):
    assume(a != b)
    token_a, token_b = tokens.issue(master, a, version), tokens.issue(master, b, version)
    assert body_bytes(token_a) != body_bytes(token_b)
    assert tokens.resolve(token_a, b, {version}) is None
    assert tokens.resolve(token_b, a, {version}) is None
    # Not only the label check: b's key does not decrypt a's ciphertext under either label.
    key_b = AESSIV(derive_key(SECRET, b, version))
    for label in (a, b):
        with pytest.raises(InvalidTag):
            key_b.decrypt(body_bytes(token_a), [b"rt1", label.encode(), str(version).encode()])


@given(master_tokens, recipients, recipients, small_versions, small_versions)
def test_relabelled_token_fails_authentication(master, a, b, version, other_version):
    token = tokens.issue(master, a, version)
    body = token.rsplit(".", 1)[1]
    if b != a:
        relabelled = f"rt1.{b}.{version}.{body}"
        assert tokens.resolve(relabelled, b, {version}) is None
    if other_version != version:
        relabelled = f"rt1.{a}.{other_version}.{body}"
        # Both versions resolvable: only authentication can refuse it.
        assert tokens.resolve(relabelled, a, {version, other_version}) is None


@given(master_tokens, recipients)
def test_versions_give_different_tokens_and_a_retired_version_resolves_to_none(master, recipient):
    old, new = tokens.issue(master, recipient, 1), tokens.issue(master, recipient, 2)
    assert body_bytes(old) != body_bytes(new)
    assert tokens.resolve(old, recipient, {1, 2}) == master
    assert tokens.resolve(new, recipient, {1, 2}) == master
    assert tokens.resolve(old, recipient, {2}) is None  # version 1 retired
    assert tokens.resolve(new, recipient, set()) is None  # recipient revoked


@settings(max_examples=8)
@given(master_tokens, recipients, st.integers(min_value=1, max_value=9))
def test_any_single_altered_character_is_refused(master, recipient, version):
    token = tokens.issue(master, recipient, version)
    alphabet = string.ascii_letters + string.digits + "-_."
    for position, original in enumerate(token):
        for replacement in alphabet:
            if replacement == original:
                continue
            altered = token[:position] + replacement + token[position + 1 :]
            # Resolve as whoever the altered label names, with every small version resolvable,
            # so only authentication stands between the altered token and a master token.
            label = parse_label(altered)
            claimed = label[0] if label else recipient
            assert tokens.resolve(altered, claimed, range(1, 100)) is None, (position, altered)


@settings(max_examples=8)
@given(master_tokens, recipients, small_versions)
def test_any_single_flipped_bit_of_the_ciphertext_is_refused(master, recipient, version):
    token = tokens.issue(master, recipient, version)
    sealed = body_bytes(token)
    for index in range(len(sealed)):
        for bit in range(8):
            flipped = bytearray(sealed)
            flipped[index] ^= 1 << bit
            assert tokens.resolve(with_body(token, bytes(flipped)), recipient, {version}) is None


@given(recipients, small_versions, st.binary(min_size=48, max_size=48))
def test_forged_tokens_resolve_to_none(recipient, version, forged):
    token = f"rt1.{recipient}.{version}." + base64.urlsafe_b64encode(forged).decode()
    assert tokens.resolve(token, recipient, {version}) is None


@given(st.text(max_size=120))
def test_arbitrary_text_resolves_to_none_without_raising(text):
    assert tokens.resolve(text, "acme", range(1, 10)) is None


@given(master_tokens, recipients, small_versions)
def test_another_secret_neither_matches_nor_opens_the_token(master, recipient, version):
    other = RecipientTokens(SECRET + "-other")
    token = tokens.issue(master, recipient, version)
    assert other.issue(master, recipient, version) != token
    assert other.resolve(token, recipient, {version}) is None


@given(st.lists(master_tokens, max_size=20), recipients, small_versions)
def test_batch_helpers_agree_with_single_calls(masters, recipient, version):
    issued = tokens.issue_many(masters, recipient, version)
    assert issued == [tokens.issue(m, recipient, version) for m in masters]
    mixed = [*issued, "rt1.x.1.garbage", None]
    assert tokens.resolve_many(mixed, recipient, {version}) == [*masters, None, None]


# --- malformed input --------------------------------------------------------------------------


def _malformed() -> list[object]:
    t = VECTOR_TOKEN
    head, body = t.rsplit(".", 1)
    assert "-" in body
    return [
        "",
        "rt2" + t[3:],  # another format
        "RT1" + t[3:],
        t.replace("acme-research", "ACME-research"),
        t.replace(".3.", ".03."),  # a second spelling of version 3
        t.replace(".3.", ".0."),
        t.replace(".3.", ".-3."),
        t.replace(".3.", ".1000000000."),
        t + "=",  # padding
        t + "A",
        t[:-1],
        t + "\n",
        " " + t,
        head + "." + body.replace("-", "+"),  # the standard alphabet decodes to the same bytes
        head + "." + body[:-4] + "====",
        head + ".." + body,
        t.encode(),
        None,
        3,
        ["rt1", "acme-research", "3", body],
    ]


@pytest.mark.parametrize("bad", _malformed())
def test_malformed_tokens_resolve_to_none(bad: object) -> None:
    assert tokens.resolve(bad, "acme-research", {3}) is None
    assert parse_label(bad) is None


def test_a_refused_well_formed_token_still_spends_one_decryption() -> None:
    calls: list[bytes] = []
    spy = RecipientTokens(SECRET)

    class CountingDecoy:
        def decrypt(self, data: bytes, associated_data: list[bytes]) -> bytes:
            calls.append(data)
            raise InvalidTag

    spy._decoy = CountingDecoy()  # type: ignore[assignment]
    assert spy.resolve(VECTOR_TOKEN, "other-recipient", {3}) is None
    assert spy.resolve(VECTOR_TOKEN, "acme-research", {4}) is None
    assert spy.resolve("rt1.acme-research.3.short", "acme-research", {3}) is None
    assert len(calls) == 2


# --- issuing refuses bad arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    "master",
    [VECTOR_MASTER.upper(), VECTOR_MASTER[:-1], VECTOR_MASTER + "0", "g" * 64, "", None],
)
def test_issue_refuses_a_malformed_master_token_without_echoing_it(master: object) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex") as error:
        tokens.issue(master, "acme", 1)  # type: ignore[arg-type]
    if master:
        assert str(master) not in str(error.value)


@pytest.mark.parametrize("version", [0, -1, MAX_KEY_VERSION + 1, True, 1.0, "1", None])
def test_issue_refuses_a_bad_version(version: object) -> None:
    with pytest.raises(ValueError, match="key version"):
        tokens.issue(VECTOR_MASTER, "acme", version)  # type: ignore[arg-type]


def test_an_empty_secret_is_refused_and_the_secret_never_shows() -> None:
    with pytest.raises(ValueError, match="empty"):
        RecipientTokens("")
    assert SECRET not in repr(tokens)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("0", True),
        ("acme", True),
        ("acme-research", True),
        ("local-dev", True),
        ("a-b-c-1-2-3", True),
        ("a--b", True),
        ("x" * 32, True),
        ("x" * 33, False),
        ("", False),
        ("-acme", False),
        ("acme-", False),
        ("-", False),
        ("Acme", False),
        ("acme_research", False),
        ("acme.research", False),
        ("acme research", False),
        ("acme\n", False),
        ("ácme", False),
        ("\u0430cme", False),  # Cyrillic a
        (None, False),
        (b"acme", False),
        (42, False),
    ],
)
def test_recipient_id_slug_rule(value: object, valid: bool) -> None:
    if valid:
        assert validate_recipient_id(value) == value
        assert tokens.issue(VECTOR_MASTER, value, 1).startswith(f"rt1.{value}.1.")  # type: ignore[arg-type]
    else:
        with pytest.raises(RecipientIdError, match="a recipient id is 1-32 characters"):
            validate_recipient_id(value)
        with pytest.raises(RecipientIdError):
            tokens.issue(VECTOR_MASTER, value, 1)  # type: ignore[arg-type]
