"""Recipients' own record ids, item ids and cursors as pure code: the documented formats, and
every way opening must refuse."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exchange_stream.core.recipient_token import RECIPIENT_ID_PATTERN, RecipientTokens
from exchange_stream.core.scoped_ids import ITEM_KINDS, RECORD_ID_LENGTH, ScopedIds
from tests.unit.test_recipient_token import documented_key, rfc5869_hkdf_sha256

SECRET = "exchange-test-secret-0123456789"
ids = ScopedIds(SECRET)

uuids = st.uuids()
recipients = st.from_regex(RECIPIENT_ID_PATTERN, fullmatch=True)
small_versions = st.integers(min_value=1, max_value=50)
kinds = st.sampled_from(sorted(ITEM_KINDS))
item_values = st.text(max_size=60)
payloads = st.binary(max_size=63)

# Pinned once from the implementation; the formats may never change without this test changing.
VECTOR_UUID = uuid.UUID("6f1c1a44-3b52-4f0e-9a39-2d5cbb1f7d10")
VECTOR_RECORD = "rr1.AAAAAzz67YdeU1YuY15t0sGVuE80tvQF"
VECTOR_ITEM = "ri1.acme-research.3.LtJcnonBXxFpsMh4dnjaws-2XEmo5JhHWN90RhG1OxA"
VECTOR_CURSOR = "rc1.acme-research.3.XV1nRlmK-u-Gqre_eb9lJeUNiDYqyrrmP70"


def documented_subkey(recipient: str, version: int, purpose: bytes) -> bytes:
    info = b"exchange-stream/scoped-id/v1\x00" + purpose
    return rfc5869_hkdf_sha256(documented_key(SECRET, recipient, version), info, 64)


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def altered(text: str, at: int) -> str:
    swap = "A" if text[at] != "A" else "B"
    return text[:at] + swap + text[at + 1 :]


# --- the pinned, documented formats -------------------------------------------------------------


def test_pinned_vectors() -> None:
    assert ids.record_ids([VECTOR_UUID], "acme-research", 3) == [VECTOR_RECORD]
    assert ids.item_ids("encounter", ["ENC-1"], "acme-research", 3) == [VECTOR_ITEM]
    assert ids.seal_cursor(b"position-1", "acme-research", 3) == VECTOR_CURSOR
    assert ids.open_record_id(VECTOR_RECORD, "acme-research", {3}) == VECTOR_UUID
    assert ids.open_item_id(VECTOR_ITEM, "encounter", "acme-research", {3}) == "ENC-1"
    assert ids.open_cursor(VECTOR_CURSOR, "acme-research", {3}) == b"position-1"


def test_record_id_is_the_documented_permutation_and_check() -> None:
    sub = documented_subkey("acme-research", 3, b"record")
    raw = unb64(VECTOR_RECORD.removeprefix("rr1."))
    assert len(VECTOR_RECORD) == RECORD_ID_LENGTH == 36 and len(raw) == 24
    assert raw[:4] == (3).to_bytes(4, "big")
    block = Cipher(algorithms.AES(sub[:32]), modes.ECB()).encryptor().update(VECTOR_UUID.bytes)
    check = Cipher(algorithms.AES(sub[32:]), modes.ECB()).encryptor().update(block)
    assert raw[4:20] == block and raw[20:] == check[:4]


def test_item_id_and_cursor_are_the_documented_aes_siv() -> None:
    item = AESSIV(documented_subkey("acme-research", 3, b"item\x00encounter"))
    body = unb64(VECTOR_ITEM.rsplit(".", 1)[1])
    padded = b"ENC-1\x80" + b"\x00" * 10
    assert item.decrypt(body, None) == padded
    cursor = AESSIV(documented_subkey("acme-research", 3, b"cursor"))
    body = unb64(VECTOR_CURSOR.rsplit(".", 1)[1])
    assert cursor.decrypt(body, None) == b"position-1"


# --- round trips, determinism, scoping ----------------------------------------------------------


@given(st.lists(uuids, max_size=30, unique=True), recipients, small_versions)
def test_record_ids_round_trip_in_one_batch_and_have_a_fixed_length(values, recipient, version):
    scoped = ids.record_ids(values, recipient, version)
    assert all(len(s) == RECORD_ID_LENGTH and s.startswith("rr1.") for s in scoped)
    assert scoped == [ids.record_ids([v], recipient, version)[0] for v in values]
    assert ScopedIds(SECRET).record_ids(values, recipient, version) == scoped
    assert ids.open_record_ids(scoped, recipient, {version}) == values
    assert ids.record_ids([str(v) for v in values], recipient, version) == scoped


@given(kinds, st.lists(item_values, max_size=10), recipients, small_versions)
def test_item_ids_round_trip_and_name_recipient_and_version(kind, values, recipient, version):
    scoped = ids.item_ids(kind, values, recipient, version)
    assert all(s.startswith(f"ri1.{recipient}.{version}.") for s in scoped)
    assert [ids.open_item_id(s, kind, recipient, {version}) for s in scoped] == values
    assert ScopedIds(SECRET).item_ids(kind, values, recipient, version) == scoped


@given(payloads, recipients, small_versions)
def test_cursors_round_trip(payload, recipient, version):
    sealed = ids.seal_cursor(payload, recipient, version)
    assert sealed.startswith(f"rc1.{recipient}.{version}.")
    assert ids.open_cursor(sealed, recipient, {version, version + 1}) == payload


@given(uuids, st.text(min_size=1, max_size=20), payloads, recipients, recipients, small_versions)
def test_two_recipients_get_nothing_in_common_and_neither_opens_the_other(
    rid, item, payload, a, b, version
):
    assume(a != b)
    ra, rb = (ids.record_ids([rid], r, version)[0] for r in (a, b))
    assert ra != rb
    assert ids.open_record_id(ra, b, {version}) is None
    for kind in ITEM_KINDS:
        ia, ib = (ids.item_ids(kind, [item], r, version)[0] for r in (a, b))
        assert ia.rsplit(".", 1)[1] != ib.rsplit(".", 1)[1]
        assert ids.open_item_id(ia, kind, b, {version}) is None
        # Relabelled as b's, a's id fails authentication.
        assert ids.open_item_id(ia.replace(f".{a}.", f".{b}.", 1), kind, b, {version}) is None
    ca = ids.seal_cursor(payload, a, version)
    assert ids.open_cursor(ca, b, {version}) is None
    assert ids.open_cursor(ca.replace(f".{a}.", f".{b}.", 1), b, {version}) is None


@given(st.text(min_size=0, max_size=20), recipients, small_versions)
def test_kinds_never_share_an_encoding_and_open_only_as_their_own(value, recipient, version):
    scoped = {k: ids.item_ids(k, [value], recipient, version)[0] for k in ITEM_KINDS}
    assert len(set(scoped.values())) == len(ITEM_KINDS)
    for kind, text in scoped.items():
        for other in ITEM_KINDS - {kind}:
            assert ids.open_item_id(text, other, recipient, {version}) is None
        assert ids.open_cursor(text, recipient, {version}) is None
        assert ids.open_record_id(text, recipient, {version}) is None


def test_no_output_of_one_purpose_equals_another_or_a_patient_token() -> None:
    rid = uuid.UUID(int=7)
    master = hashlib.sha256(b"p").hexdigest()
    outputs = [
        ids.record_ids([rid], "r", 1)[0],
        *(ids.item_ids(k, [str(rid)], "r", 1)[0] for k in ITEM_KINDS),
        ids.seal_cursor(rid.bytes, "r", 1),
        RecipientTokens(SECRET).issue(master, "r", 1),
    ]
    bodies = [o.rsplit(".", 1)[1] for o in outputs]
    assert len(set(outputs)) == len(outputs) and len(set(bodies)) == len(bodies)
    assert ids.open_cursor(outputs[-1].replace("rt1.", "rc1."), "r", {1}) is None


@given(uuids, st.text(max_size=20), payloads, recipients)
def test_rotation_changes_everything_and_the_old_version_opens_until_retired(
    rid, item, payload, recipient
):
    r1, r2 = (ids.record_ids([rid], recipient, v)[0] for v in (1, 2))
    i1, i2 = (ids.item_ids("claim", [item], recipient, v)[0] for v in (1, 2))
    c1, c2 = (ids.seal_cursor(payload, recipient, v) for v in (1, 2))
    assert r1 != r2 and i1 != i2 and c1 != c2
    assert ids.open_record_id(r1, recipient, {1, 2}) == rid
    assert ids.open_item_id(i1, "claim", recipient, {1, 2}) == item
    assert ids.open_cursor(c1, recipient, {1, 2}) == payload
    # Version 1 retired (or the recipient revoked: no versions at all).
    for live in ({2}, set()):
        assert ids.open_record_id(r1, recipient, live) is None
        assert ids.open_item_id(i1, "claim", recipient, live) is None
        assert ids.open_cursor(c1, recipient, live) is None


# --- refusals --------------------------------------------------------------------------------


@settings(max_examples=5)
@given(uuids, recipients, st.integers(min_value=1, max_value=9))
def test_any_single_altered_character_is_refused(rid, recipient, version):
    scoped = [
        ids.record_ids([rid], recipient, version)[0],
        ids.item_ids("lab_result", [str(rid)], recipient, version)[0],
        ids.seal_cursor(rid.bytes, recipient, version),
    ]
    versions = set(range(1, 10))
    for text in scoped:
        for at in range(len(text)):
            bad = altered(text, at)
            assert ids.open_record_id(bad, recipient, versions) is None
            assert ids.open_item_id(bad, "lab_result", recipient, versions) is None
            assert ids.open_cursor(bad, recipient, versions) is None


@given(recipients, small_versions, st.binary(min_size=20, max_size=20))
def test_forged_record_ids_are_refused(recipient, version, forged):
    text = "rr1." + b64(version.to_bytes(4, "big") + forged)
    # One chance in 2**32 that a forged check matches; hypothesis will not find it.
    assert ids.open_record_id(text, recipient, {version}) is None


@given(recipients, small_versions, st.binary(min_size=16, max_size=80))
def test_forged_item_ids_and_cursors_are_refused(recipient, version, forged):
    assert (
        ids.open_item_id(f"ri1.{recipient}.{version}.{b64(forged)}", "claim", recipient, {version})
        is None
    )
    assert ids.open_cursor(f"rc1.{recipient}.{version}.{b64(forged)}", recipient, {version}) is None


@given(st.text(max_size=120))
def test_arbitrary_text_opens_to_none_without_raising(text):
    assert ids.open_record_id(text, "r", {1}) is None
    assert ids.open_item_id(text, "encounter", "r", {1}) is None
    assert ids.open_cursor(text, "r", {1}) is None


@pytest.mark.parametrize(
    "bad",
    [
        None,
        7,
        VECTOR_RECORD.encode(),
        ["x"],
        "",
        VECTOR_RECORD + "A",
        VECTOR_RECORD[:-1],
        VECTOR_RECORD.replace("rr1.", "rr2."),
        VECTOR_RECORD.replace("rr1.", "rr1="),
        " " + VECTOR_RECORD,
        VECTOR_ITEM + "=",
        VECTOR_CURSOR[:-1] + "9",  # a non-canonical spelling of the same bytes
        VECTOR_ITEM.replace(".3.", ".03."),
        VECTOR_ITEM.replace(".3.", ".0."),
        VECTOR_CURSOR.replace("rc1.", "ri1."),
        VECTOR_ITEM.replace("ri1.", "rc1."),
        "rc1.acme-research.3.",
        "rc1.acme-research.3.AAAA",
        "rc1.acme-research.3." + "A" * 5000,
    ],
)
def test_malformed_values_open_to_none(bad: object) -> None:
    versions = {3}
    assert ids.open_record_id(bad, "acme-research", versions) is None
    assert ids.open_item_id(bad, "encounter", "acme-research", versions) is None
    assert ids.open_cursor(bad, "acme-research", versions) is None


def test_an_unknown_kind_opens_to_none_and_cannot_be_issued() -> None:
    assert ids.open_item_id(VECTOR_ITEM, "patient", "acme-research", {3}) is None
    with pytest.raises(ValueError, match="item kind"):
        ids.item_ids("patient", ["x"], "acme-research", 3)


def test_a_version_that_is_not_resolvable_still_spends_the_decryption() -> None:
    # Timing does not tell a retired version from a bad check: both run the ciphers (decoy keys).
    calls: list[str] = []
    spy = ScopedIds(SECRET)
    real = spy._decoy.items["encounter"].decrypt

    def counting(*args: object) -> bytes:
        calls.append("decoy")
        return real(*args)

    spy._decoy.items["encounter"] = type("Spy", (), {"decrypt": staticmethod(counting)})()
    assert spy.open_item_id(VECTOR_ITEM, "encounter", "acme-research", {2}) is None
    assert spy.open_item_id(VECTOR_ITEM, "encounter", "someone-else", {3}) is None
    assert calls == ["decoy", "decoy"]


@pytest.mark.parametrize("payload", [b"x" * 64, "text", None])
def test_seal_cursor_refuses_what_is_not_a_short_payload(payload: object) -> None:
    with pytest.raises(ValueError, match="at most 63 bytes"):
        ids.seal_cursor(payload, "r", 1)  # type: ignore[arg-type]


def test_repr_shows_no_secret() -> None:
    assert SECRET not in repr(ids) and "secret" in repr(ids)
