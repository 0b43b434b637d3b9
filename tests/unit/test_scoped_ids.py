"""Recipients' own record ids, person ids, item ids and cursors as pure code: the documented
formats, and every way opening must refuse."""

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
from exchange_stream.core.scoped_ids import (
    ITEM_KINDS,
    MAX_PERSON_ID,
    PERSON_ID_LENGTH,
    RECORD_ID_LENGTH,
    ScopedIds,
    _Permuted,
)
from tests.unit.test_recipient_token import documented_key, rfc5869_hkdf_sha256

SECRET = "exchange-test-secret-0123456789"
ids = ScopedIds(SECRET)

uuids = st.uuids()
person_ids = st.integers(min_value=1, max_value=MAX_PERSON_ID)
recipients = st.from_regex(RECIPIENT_ID_PATTERN, fullmatch=True)
small_versions = st.integers(min_value=1, max_value=50)
kinds = st.sampled_from(sorted(ITEM_KINDS))
item_values = st.text(max_size=60)
payloads = st.binary(max_size=63)

# Pinned once from the implementation; the formats may never change without this test changing.
VECTOR_UUID = uuid.UUID("6f1c1a44-3b52-4f0e-9a39-2d5cbb1f7d10")
VECTOR_RECORD = "rr1.AAAAAzz67YdeU1YuY15t0sGVuE80tvQF"
VECTOR_PERSON_ID = 4242
VECTOR_PERSON = "rp1.AAAAA86_LGcIEnJ8aL7JIeJ4_jrAN0O7"
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
    assert ids.person_ids([VECTOR_PERSON_ID], "acme-research", 3) == [VECTOR_PERSON]
    assert ids.open_person_id(VECTOR_PERSON, "acme-research", {3}) == VECTOR_PERSON_ID
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


def test_person_id_is_the_documented_permutation_and_check_under_its_own_subkey() -> None:
    sub = documented_subkey("acme-research", 3, b"person")
    raw = unb64(VECTOR_PERSON.removeprefix("rp1."))
    assert len(VECTOR_PERSON) == PERSON_ID_LENGTH == 36 and len(raw) == 24
    assert raw[:4] == (3).to_bytes(4, "big")
    plain = VECTOR_PERSON_ID.to_bytes(16, "big")
    block = Cipher(algorithms.AES(sub[:32]), modes.ECB()).encryptor().update(plain)
    check = Cipher(algorithms.AES(sub[32:]), modes.ECB()).encryptor().update(block)
    assert raw[4:20] == block and raw[20:] == check[:4]
    # Not the record subkey: the same 16 bytes as a record id share nothing with it.
    as_record = ids.record_ids([uuid.UUID(bytes=plain)], "acme-research", 3)[0]
    assert as_record[4:] != VECTOR_PERSON[4:]


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


@given(st.lists(person_ids, max_size=30, unique=True), recipients, small_versions)
def test_person_ids_round_trip_in_one_batch_and_have_a_fixed_length(values, recipient, version):
    scoped = ids.person_ids(values, recipient, version)
    assert all(len(s) == PERSON_ID_LENGTH and s.startswith("rp1.") for s in scoped)
    assert scoped == [ids.person_ids([v], recipient, version)[0] for v in values]
    assert ScopedIds(SECRET).person_ids(values, recipient, version) == scoped
    assert ids.open_person_ids(scoped, recipient, {version}) == values


def test_a_page_of_person_ids_may_repeat_a_person_and_mix_versions() -> None:
    v1 = ids.person_ids([5, 9, 5], "acme-research", 1)
    v2 = ids.person_ids([5], "acme-research", 2)
    assert v1[0] == v1[2] != v1[1] and v2[0] != v1[0]
    opened = ids.open_person_ids([*v1, *v2, "garbage"], "acme-research", {1, 2})
    assert opened == [5, 9, 5, 5, None]
    assert ids.open_person_ids([*v1, *v2], "acme-research", {2}) == [None, None, None, 5]


@pytest.mark.parametrize("bad", [0, -1, MAX_PERSON_ID + 1, True, 1.0, "1", None])
def test_a_person_id_is_a_positive_bigint(bad: object) -> None:
    with pytest.raises(ValueError, match="person id is an integer"):
        ids.person_ids([1, bad], "acme-research", 1)  # type: ignore[list-item]


def test_a_person_id_whose_block_is_not_a_bigint_is_refused_even_with_a_good_check() -> None:
    # Only a forger with the key could make one; opening still says no.
    keys = ids._entry("acme-research", 1)
    block = keys.person.permutation.encryptor().update((MAX_PERSON_ID + 1).to_bytes(16, "big"))
    check = keys.person.check.encryptor().update(block)[:4]
    text = "rp1." + b64((1).to_bytes(4, "big") + block + check)
    assert ids.open_person_id(text, "acme-research", {1}) is None


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
    pa, pb = (ids.person_ids([rid.int % MAX_PERSON_ID + 1], r, version)[0] for r in (a, b))
    assert pa != pb
    assert ids.open_person_id(pa, b, {version}) is None
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
        assert ids.open_person_id(text, recipient, {version}) is None


def test_no_output_of_one_purpose_equals_another_or_a_patient_token() -> None:
    rid = uuid.UUID(int=7)
    master = hashlib.sha256(b"p").hexdigest()
    outputs = [
        ids.record_ids([rid], "r", 1)[0],
        ids.person_ids([7], "r", 1)[0],
        *(ids.item_ids(k, [str(rid)], "r", 1)[0] for k in ITEM_KINDS),
        ids.seal_cursor(rid.bytes, "r", 1),
        RecipientTokens(SECRET).issue(master, "r", 1),
    ]
    bodies = [o.rsplit(".", 1)[1] for o in outputs]
    assert len(set(outputs)) == len(outputs) and len(set(bodies)) == len(bodies)
    assert ids.open_cursor(outputs[-1].replace("rt1.", "rc1."), "r", {1}) is None
    # A record id relabelled as a person id (and back) opens to nothing.
    assert ids.open_person_id(outputs[0].replace("rr1.", "rp1."), "r", {1}) is None
    assert ids.open_record_id(outputs[1].replace("rp1.", "rr1."), "r", {1}) is None


@given(uuids, st.text(max_size=20), payloads, recipients)
def test_rotation_changes_everything_and_the_old_version_opens_until_retired(
    rid, item, payload, recipient
):
    r1, r2 = (ids.record_ids([rid], recipient, v)[0] for v in (1, 2))
    p1, p2 = (ids.person_ids([rid.int % MAX_PERSON_ID + 1], recipient, v)[0] for v in (1, 2))
    i1, i2 = (ids.item_ids("claim", [item], recipient, v)[0] for v in (1, 2))
    c1, c2 = (ids.seal_cursor(payload, recipient, v) for v in (1, 2))
    assert r1 != r2 and p1 != p2 and i1 != i2 and c1 != c2
    assert ids.open_record_id(r1, recipient, {1, 2}) == rid
    assert ids.open_person_id(p1, recipient, {1, 2}) == rid.int % MAX_PERSON_ID + 1
    assert ids.open_item_id(i1, "claim", recipient, {1, 2}) == item
    assert ids.open_cursor(c1, recipient, {1, 2}) == payload
    # Version 1 retired (or the recipient revoked: no versions at all).
    for live in ({2}, set()):
        assert ids.open_record_id(r1, recipient, live) is None
        assert ids.open_person_id(p1, recipient, live) is None
        assert ids.open_item_id(i1, "claim", recipient, live) is None
        assert ids.open_cursor(c1, recipient, live) is None


# --- refusals --------------------------------------------------------------------------------


@settings(max_examples=5)
@given(uuids, recipients, st.integers(min_value=1, max_value=9))
def test_any_single_altered_character_is_refused(rid, recipient, version):
    scoped = [
        ids.record_ids([rid], recipient, version)[0],
        ids.person_ids([rid.int % MAX_PERSON_ID + 1], recipient, version)[0],
        ids.item_ids("lab_result", [str(rid)], recipient, version)[0],
        ids.seal_cursor(rid.bytes, recipient, version),
    ]
    versions = set(range(1, 10))
    for text in scoped:
        for at in range(len(text)):
            bad = altered(text, at)
            assert ids.open_record_id(bad, recipient, versions) is None
            assert ids.open_person_id(bad, recipient, versions) is None
            assert ids.open_item_id(bad, "lab_result", recipient, versions) is None
            assert ids.open_cursor(bad, recipient, versions) is None


@given(recipients, small_versions, st.binary(min_size=20, max_size=20))
def test_forged_record_ids_are_refused(recipient, version, forged):
    text = "rr1." + b64(version.to_bytes(4, "big") + forged)
    # One chance in 2**32 that a forged check matches; hypothesis will not find it.
    assert ids.open_record_id(text, recipient, {version}) is None


@given(recipients, small_versions, st.binary(min_size=20, max_size=20))
def test_forged_person_ids_are_refused(recipient, version, forged):
    text = "rp1." + b64(version.to_bytes(4, "big") + forged)
    assert ids.open_person_id(text, recipient, {version}) is None


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
    assert ids.open_person_id(text, "r", {1}) is None
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
        VECTOR_PERSON + "A",
        VECTOR_PERSON[:-1],
        VECTOR_PERSON.replace("rp1.", "rp2."),
        VECTOR_PERSON.replace("rp1.", "rp1:"),
        VECTOR_PERSON.lower(),
        VECTOR_PERSON.encode(),
        f"rp1.acme-research.3.{VECTOR_PERSON[4:]}",
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
    assert ids.open_person_id(bad, "acme-research", versions) is None
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


def test_a_person_id_of_a_version_not_resolvable_still_spends_both_ciphers() -> None:
    calls: list[str] = []
    spy = ScopedIds(SECRET)
    real = spy._decoy.person

    class Counting:
        def __init__(self, cipher: object, name: str) -> None:
            self.cipher, self.name = cipher, name

        def encryptor(self) -> object:
            calls.append(f"{self.name} encrypt")
            return self.cipher.encryptor()  # type: ignore[attr-defined]

        def decryptor(self) -> object:
            calls.append(f"{self.name} decrypt")
            return self.cipher.decryptor()  # type: ignore[attr-defined]

    permutation, check = Counting(real.permutation, "permutation"), Counting(real.check, "check")
    counting = _Permuted(permutation, check)  # type: ignore[arg-type]
    object.__setattr__(spy._decoy, "person", counting)
    assert spy.open_person_id(VECTOR_PERSON, "acme-research", {2}) is None
    assert calls == ["check encrypt", "permutation decrypt"]
    calls.clear()
    assert spy.open_person_id(VECTOR_PERSON, "acme-research", {3}) == VECTOR_PERSON_ID
    assert calls == []  # the recipient's own keys, not the decoy's


@pytest.mark.parametrize("payload", [b"x" * 64, "text", None])
def test_seal_cursor_refuses_what_is_not_a_short_payload(payload: object) -> None:
    with pytest.raises(ValueError, match="at most 63 bytes"):
        ids.seal_cursor(payload, "r", 1)  # type: ignore[arg-type]


def test_repr_shows_no_secret() -> None:
    assert SECRET not in repr(ids) and "secret" in repr(ids)
