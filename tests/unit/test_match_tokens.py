"""Match tokens and the decision rule as pure code: keys, encoding, and link()'s partition."""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange_stream.core.match_tokens import (
    HKDF_PURPOSE,
    LINKING_RULES,
    RULES,
    MatchKeys,
    derive_key,
    encode_values,
    link,
    match_tokens,
    rule_values,
)
from exchange_stream.core.matching import MatchAttributes, match_attributes

SECRET = "match-test-secret-0123456789"
KEYS = MatchKeys(SECRET)

ADA = match_attributes(
    {
        "given_name": "Ada",
        "family_name": "Lovelace",
        "dob": "1985-12-10",
        "ssn": "123-45-6780",
        "sex": "female",
        "postal_code": "02139",
    }
)


def tokens_of(**patient: str) -> dict[str, bytes]:
    return match_tokens(match_attributes(patient), KEYS)


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF written out from RFC 5869 with hmac alone, so the test does not restate the module."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


# --- the rules -------------------------------------------------------------------------------


def test_there_are_six_documented_rules() -> None:
    assert [r.name for r in RULES] == ["M1", "M2", "M3", "M4", "M5", "M6"]
    assert LINKING_RULES == {"M1", "M2", "M3", "M4", "M5", "M6"}
    assert all(r.description and r.attributes for r in RULES)


def test_at_least_two_rules_use_neither_sex_nor_postal_code() -> None:
    without = [r for r in RULES if not {"sex", "zip3"} & set(r.attributes)]
    assert len(without) >= 2
    assert any("ssn" in r.attributes and "dob~" in r.attributes for r in without)
    assert any("ssn" not in r.attributes and "dob~" in r.attributes for r in without)


def test_a_record_with_every_attribute_has_every_token() -> None:
    tokens = match_tokens(ADA, KEYS)
    assert set(tokens) == {r.name for r in RULES}
    assert all(isinstance(t, bytes) and len(t) == 32 for t in tokens.values())


@pytest.mark.parametrize(
    ("missing", "absent"),
    [
        ("ssn", {"M4"}),
        ("zip3", {"M5"}),
        ("sex", set()),
        ("given", {"M1", "M2"}),
        ("given_canonical", {"M3", "M5", "M6"}),
        ("family", {"M1", "M2", "M3", "M6"}),
        ("dob", {"M1", "M2", "M3", "M4", "M5", "M6"}),
    ],
)
def test_a_rule_with_a_missing_attribute_yields_no_token(missing: str, absent: set[str]) -> None:
    tokens = match_tokens(replace(ADA, **{missing: None}), KEYS)
    assert set(tokens) == {r.name for r in RULES} - absent


def test_a_lab_record_without_sex_postal_code_or_ssn_still_has_name_tokens() -> None:
    tokens = tokens_of(given_name="Ada", family_name="Lovelace", dob="1985-12-10")
    assert set(tokens) == {"M1", "M2", "M3", "M6"}


def test_a_record_of_placeholders_has_no_token() -> None:
    placeholders = {"given_name": "John", "family_name": "Doe", "dob": "1900-01-01"}
    assert tokens_of(**placeholders, ssn="123-45-6789") == {}


def test_the_derived_keys_are_as_documented() -> None:
    attrs = match_attributes(
        {"given_name": "Margaret", "family_name": "Smith-Jones", "dob": "1980-07-03"}
    )
    by_rule = {r.name: rule_values(attrs, r) for r in RULES}
    assert by_rule["M1"] == ("smit", "mar", "1980-03-07")
    assert by_rule["M2"] == ("smit", "ret", "1980-03-07")
    assert by_rule["M3"] == ("margaret", "ones", "1980-03-07")
    assert by_rule["M6"] == ("S532", "M626", "1980-03-07")
    assert by_rule["M4"] is None and by_rule["M5"] is None


def test_short_names_are_their_own_prefix_and_suffix() -> None:
    attrs = match_attributes({"given_name": "Al", "family_name": "Li", "dob": "1980-01-02"})
    assert rule_values(attrs, RULES[0]) == ("li", "al", "1980-01-02")


# --- keys and tokens -------------------------------------------------------------------------


def test_keys_are_hkdf_sha256_with_the_documented_info() -> None:
    for rule in RULES:
        info = HKDF_PURPOSE + b"\x00" + rule.name.encode()
        expected = rfc5869_hkdf_sha256(SECRET.encode(), info, 32)
        assert derive_key(SECRET, rule.name) == expected == KEYS.key(rule.name)


def test_a_token_is_hmac_sha256_of_the_length_prefixed_values() -> None:
    values = rule_values(ADA, RULES[3])
    assert values == ("123456780", "1985-10-12")
    message = b"".join(len(v).to_bytes(4, "big") + v.encode() for v in values)
    expected = hmac.new(KEYS.key("M4"), message, hashlib.sha256).digest()
    assert match_tokens(ADA, KEYS)["M4"] == expected


def test_tokens_differ_per_rule_even_for_equal_values() -> None:
    # "Ann": given[:3] == given[-3:], so M1 and M2 hash the same values under different keys.
    attrs = match_attributes({"given_name": "Ann", "family_name": "Lee", "dob": "1980-01-02"})
    assert rule_values(attrs, RULES[0]) == rule_values(attrs, RULES[1])
    tokens = match_tokens(attrs, KEYS)
    assert tokens["M1"] != tokens["M2"]
    assert len(set(match_tokens(ADA, KEYS).values())) == len(RULES)


def test_tokens_differ_per_secret() -> None:
    ours, theirs = match_tokens(ADA, KEYS), match_tokens(ADA, MatchKeys(SECRET + "x"))
    assert all(ours[rule] != theirs[rule] for rule in ours)
    assert match_tokens(ADA, MatchKeys(SECRET.encode())) == ours


def test_tokens_are_deterministic() -> None:
    assert match_tokens(ADA, MatchKeys(SECRET)) == match_tokens(ADA, KEYS)
    assert match_tokens(replace(ADA), KEYS) == match_tokens(ADA, KEYS)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        MatchKeys("")


def test_an_unknown_rule_has_no_key() -> None:
    with pytest.raises(ValueError):
        derive_key(SECRET, "M9")
    with pytest.raises(KeyError):
        KEYS.key("M9")


def test_match_keys_repr_hides_the_secret() -> None:
    assert SECRET not in repr(KEYS)


# --- the encoding ----------------------------------------------------------------------------


def test_the_encoding_is_unambiguous() -> None:
    assert encode_values(["ab", "c"]) != encode_values(["a", "bc"])
    assert encode_values(["a", ""]) != encode_values(["", "a"])
    assert encode_values(["a|b", "c"]) != encode_values(["a", "b|c"])


def test_values_that_concatenate_alike_give_different_tokens() -> None:
    # M5 hashes (given~, zip3, dob~): "abc"+"021" and "ab"+"c021" would concatenate alike.
    a = MatchAttributes("abc", "abc", "x", "1980-01-02", None, None, "021")
    b = MatchAttributes("ab", "ab", "x", "1980-01-02", None, None, "c021")
    assert match_tokens(a, KEYS)["M5"] != match_tokens(b, KEYS)["M5"]


def decode(data: bytes) -> list[str]:
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n].decode())
        i += 4 + n
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=5))
def test_the_encoding_decodes_back_so_distinct_values_never_collide(values: list[str]) -> None:
    assert decode(encode_values(values)) == values


# --- the decision rule -----------------------------------------------------------------------


def person(**patient: str) -> dict[str, bytes]:
    return tokens_of(**patient)


def linked(*records: dict[str, bytes]) -> bool:
    return len(link(enumerate(records))) == 1


def test_nickname_and_formal_name_link() -> None:
    bill = person(given_name="Bill", family_name="Turner", dob="1970-05-06")
    william = person(first_name="WILLIAM", last_name="TURNER", dob="1970-05-06")
    assert bill["M3"] == william["M3"]
    assert linked(bill, william)


def test_a_typo_in_either_name_links() -> None:
    clean = person(given_name="Katherine", family_name="Gallagher", dob="1962-09-14")
    assert linked(clean, person(given_name="Kathetine", family_name="Gallagher", dob="1962-09-14"))
    assert linked(clean, person(given_name="Katherine", family_name="Gallaher", dob="1962-09-14"))
    assert linked(clean, person(given_name="Ktaherine", family_name="Gallagher", dob="1962-09-14"))


def test_a_sound_alike_family_name_links_by_soundex_alone() -> None:
    smith = person(given_name="Ada", family_name="Smith", dob="1985-03-27")
    smyth = person(given_name="Ada", family_name="Smyth", dob="1985-03-27")
    assert {rule for rule in smith if smith[rule] == smyth.get(rule)} == {"M6"}


def test_day_and_month_swapped_link() -> None:
    assert linked(
        person(given_name="Ada", family_name="Lovelace", dob="1985-03-07"),
        person(given_name="Ada", family_name="Lovelace", dob="1985-07-03"),
    )


def test_a_married_name_links_by_ssn_or_by_zip3() -> None:
    maiden = dict(given_name="Ada", family_name="Byron", dob="1985-12-10")
    married = dict(given_name="Ada", family_name="Lovelace", dob="1985-12-10")
    assert not linked(person(**maiden), person(**married))
    ssn = {"ssn": "123-45-6780"}
    assert linked(person(**maiden, **ssn), person(**married, **ssn))
    zip5 = {"postal_code": "02139"}
    assert linked(person(**maiden, **zip5), person(**married, **zip5))


def test_a_compound_family_name_links_with_either_part() -> None:
    both = person(given_name="Ana", family_name="Smith-Jones", dob="1990-04-22")
    assert linked(both, person(given_name="Ana", family_name="Smith Jones", dob="1990-04-22"))
    assert linked(both, person(given_name="Ana", family_name="Jones", dob="1990-04-22"))
    assert linked(both, person(given_name="Ana", family_name="Smith", dob="1990-04-22"))


def test_twins_stay_apart() -> None:
    home = dict(family_name="Okafor", dob="2012-06-30", postal_code="60614", sex="male")
    assert not linked(person(given_name="Daniel", **home), person(given_name="Samuel", **home))


def test_junior_and_senior_stay_apart() -> None:
    assert not linked(
        person(given_name="John", family_name="Smith Sr.", dob="1950-02-11", postal_code="60614"),
        person(given_name="John", family_name="Smith Jr.", dob="1978-08-19", postal_code="60614"),
    )


def test_a_bridging_record_merges_two_groups() -> None:
    a = {"M1": b"a" * 32}
    b = {"M4": b"b" * 32}
    bridge = {"M1": b"a" * 32, "M4": b"b" * 32}
    assert link([("r1", a), ("r2", b)]) == {frozenset({"r1"}), frozenset({"r2"})}
    assert link([("r1", a), ("r2", b), ("r3", bridge)]) == {frozenset({"r1", "r2", "r3"})}
    # The bridge merges the whole of both groups, not only the two records it agrees with.
    a2 = {"M2": b"c" * 32, "M1": b"a" * 32}
    b2 = {"M4": b"b" * 32, "M5": b"d" * 32}
    records = [("r1", a), ("r2", b), ("r4", a2), ("r5", b2), ("r6", {"M2": b"c" * 32})]
    assert len(link(records)) == 2
    assert link([*records, ("r3", bridge)]) == {frozenset({"r1", "r2", "r3", "r4", "r5", "r6"})}


def test_equal_bytes_under_different_rules_do_not_link() -> None:
    assert len(link([(1, {"M1": b"x" * 32}), (2, {"M2": b"x" * 32})])) == 2


def test_records_without_tokens_stand_alone() -> None:
    assert link([(1, {}), (2, {})]) == {frozenset({1}), frozenset({2})}
    assert link([]) == frozenset()


def test_tokens_of_other_names_are_ignored_and_rules_narrow_the_set() -> None:
    records = [(1, {"M9": b"x", "M4": b"s"}), (2, {"M9": b"x", "M4": b"s"}), (3, {"M9": b"x"})]
    assert link(records) == {frozenset({1, 2}), frozenset({3})}
    assert link(records, ["M1"]) == {frozenset({1}), frozenset({2}), frozenset({3})}


def test_a_record_id_given_twice_is_one_record_with_both_tokens() -> None:
    records = [("r", {"M1": b"a"}), ("s", {"M4": b"b"}), ("r", {"M4": b"b"})]
    assert link(records) == {frozenset({"r", "s"})}


def random_records(rng: random.Random, count: int) -> list[tuple[int, dict[str, bytes]]]:
    """Records with tokens drawn from a small alphabet, so that groups chain and bridge."""
    records = []
    for rid in range(count):
        rules = rng.sample([r.name for r in RULES], rng.randint(0, 3))
        records.append((rid, {rule: bytes([rng.randrange(25)]) * 32 for rule in rules}))
    return records


def test_the_partition_does_not_depend_on_the_order_of_records() -> None:
    rng = random.Random(22)
    for _ in range(20):
        records = random_records(rng, 60)
        expected = link(records)
        assert sum(len(p) for p in expected) == 60
        for _ in range(25):
            shuffled = records[:]
            rng.shuffle(shuffled)
            shuffled = [(rid, dict(rng.sample(sorted(t.items()), len(t)))) for rid, t in shuffled]
            assert link(shuffled) == expected


def test_the_partition_is_the_connected_components_of_agreement() -> None:
    rng = random.Random(7)
    records = random_records(rng, 40)
    # Reference: repeated merging of any two groups that share a (rule, token), until none do.
    groups = [({rid}, {(r, t) for r, t in tokens.items()}) for rid, tokens in records]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if groups[i][1] & groups[j][1]:
                    groups[i] = (groups[i][0] | groups[j][0], groups[i][1] | groups[j][1])
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    assert link(records) == {frozenset(ids) for ids, _ in groups}
