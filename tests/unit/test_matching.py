"""Match normalisation as pure code: the hard inputs of real feeds, one behaviour per test."""

from __future__ import annotations

import pytest

from exchange_stream.core.formats import V1, V2
from exchange_stream.core.matching import (
    SUPPRESSED_ZIP3,
    MatchAttributes,
    canonical_given_name,
    match_attributes,
    normalise_dob,
    normalise_family_name,
    normalise_given_name,
    normalise_sex,
    normalise_ssn,
    normalise_zip3,
)


def v2(**fields: object) -> MatchAttributes:
    return match_attributes(fields)


# --- names -----------------------------------------------------------------------------------


def test_diacritics_are_stripped() -> None:
    attrs = v2(given_name="José", family_name="Núñez")
    assert (attrs.given, attrs.family) == ("jose", "nunez")
    assert normalise_family_name("MÜLLER") == normalise_family_name("Muller") == "muller"


def test_letters_nfkd_leaves_whole_are_mapped() -> None:
    assert normalise_family_name("Søren-Łukasz") == "sorenlukasz"
    assert normalise_family_name("Straße") == "strasse"


def test_case_and_whitespace_do_not_matter() -> None:
    assert normalise_given_name("  WILLIAM\t") == normalise_given_name("william") == "william"


def test_hyphenated_and_spaced_compound_family_names_agree() -> None:
    assert normalise_family_name("Smith-Jones") == "smithjones"
    assert normalise_family_name("Smith Jones") == "smithjones"
    assert normalise_family_name("SMITHJONES") == "smithjones"


def test_compound_family_name_is_not_its_last_part() -> None:
    # Deliberate (matching.py docstring): the rules compare its beginning and end instead.
    assert normalise_family_name("Smith-Jones") != normalise_family_name("Jones")


def test_apostrophes_are_dropped_inside_a_name() -> None:
    assert normalise_family_name("O'Brien") == "obrien"
    assert normalise_family_name("O\u2019Brien") == "obrien"
    assert normalise_family_name("O Brien") == "obrien"
    assert normalise_family_name("D'Angelo-Smith") == "dangelosmith"


@pytest.mark.parametrize(
    "family",
    [
        *("Smith Jr.", "Smith, Jr", "SMITH JR", "Smith Sr.", "Smith III", "Smith II", "Smith IV"),
        *("Smith MD", "Smith, PhD", "Smith Jr. MD", "Smith 3rd", "Smith Esq."),
    ],
)
def test_suffixes_are_dropped(family: str) -> None:
    assert normalise_family_name(family) == "smith"


def test_john_smith_jr_is_john_smith() -> None:
    junior = v2(given_name="John", family_name="Smith Jr.", dob="1990-01-02")
    plain = v2(given_name="John", family_name="Smith", dob="1990-01-02")
    assert junior == plain


@pytest.mark.parametrize("given", ["Dr. John", "Mr John", "MR. JOHN", "Prof. Dr. John", "John"])
def test_titles_are_dropped(given: str) -> None:
    assert normalise_given_name(given) == "john"


def test_a_title_or_suffix_alone_is_still_a_name() -> None:
    assert normalise_family_name("Do") == "do"
    assert normalise_family_name("Jr") == "jr"
    assert normalise_given_name("Dr") == "dr"


def test_given_name_is_its_first_word() -> None:
    assert normalise_given_name("Mary Ann") == "mary"
    assert normalise_given_name("Jean-Luc") == "jeanluc"


def test_names_of_other_scripts_are_kept() -> None:
    assert normalise_family_name("王") == "王"


@pytest.mark.parametrize("value", [None, "", "   ", "---", "'", 42, ["Ada"]])
def test_an_empty_or_non_string_name_is_missing(value: object) -> None:
    assert normalise_given_name(value) is None
    assert normalise_family_name(value) is None


# --- nicknames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nickname", "formal"),
    [
        *(("Bill", "William"), ("Billy", "William"), ("Will", "William"), ("Peggy", "Margaret")),
        *(("Peg", "Margaret"), ("Bob", "Robert"), ("Liz", "Elizabeth"), ("Jim", "James")),
    ],
)
def test_a_nickname_has_its_formal_names_canonical_form(nickname: str, formal: str) -> None:
    nick = v2(given_name=nickname, family_name="Doe-Ray")
    full = v2(given_name=formal, family_name="Doe-Ray")
    assert nick.given != full.given
    assert nick.given_canonical == full.given_canonical


def test_bill_and_william_are_william_and_peggy_is_margaret() -> None:
    assert canonical_given_name("bill") == canonical_given_name("william") == "william"
    assert canonical_given_name("peggy") == canonical_given_name("margaret") == "margaret"


def test_a_name_the_dataset_does_not_know_is_its_own_canonical_form() -> None:
    assert canonical_given_name("zebulonx") == "zebulonx"


def test_the_canonical_form_is_idempotent_and_deterministic() -> None:
    names = ["al", "chris", "alex", "bill", "peggy", "jack", "sandy", "pat", "ann", "rick"]
    first = [canonical_given_name(n) for n in names]
    canonical_given_name.cache_clear()
    assert [canonical_given_name(n) for n in reversed(names)] == list(reversed(first))
    assert [canonical_given_name(c) for c in first] == first


# --- placeholders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given", ["Unknown", "UNK", "Baby Boy", "BABY GIRL", "babyboy", "Baby", "Test", "Patient"]
)
def test_placeholder_given_names_are_missing(given: str) -> None:
    assert v2(given_name=given, family_name="Smith").given is None
    assert v2(given_name=given, family_name="Smith").given_canonical is None
    assert v2(given_name=given, family_name="Smith").family == "smith"


@pytest.mark.parametrize("family", ["Unknown", "TEST", "Patient", "LNU", "Null"])
def test_placeholder_family_names_are_missing(family: str) -> None:
    assert v2(given_name="Ada", family_name=family).family is None


@pytest.mark.parametrize(("given", "family"), [("John", "Doe"), ("JANE", "doe"), ("Jane", "Doe")])
def test_john_and_jane_doe_are_missing_names(given: str, family: str) -> None:
    attrs = v2(given_name=given, family_name=family, dob="1980-01-02")
    assert (attrs.given, attrs.family, attrs.given_canonical) == (None, None, None)
    assert attrs.dob == "1980-01-02"


def test_doe_with_another_given_name_is_a_real_name() -> None:
    attrs = v2(given_name="Mary", family_name="Doe")
    assert (attrs.given, attrs.family) == ("mary", "doe")
    assert v2(given_name="John", family_name="Smith").given == "john"


# --- SSN -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ssn", ["123-45-6780", "123456780", "123 45 6780", " 123-45-6780 "])
def test_a_valid_ssn_is_its_nine_digits(ssn: str) -> None:
    assert normalise_ssn(ssn) == "123456780"


@pytest.mark.parametrize(
    ("ssn", "why"),
    [
        ("000-12-3456", "area 000"),
        ("666-12-3456", "area 666"),
        ("900-12-3456", "area 900"),
        ("950-12-3456", "area 9xx"),
        ("999-12-3456", "area 999"),
        ("123-00-4567", "group 00"),
        ("123-45-0000", "serial 0000"),
        ("123-45-6789", "the placeholder"),
        ("078-05-1120", "the wallet card's"),
        ("219-09-9999", "the advertisement's"),
        ("111-11-1111", "one digit"),
        ("888888888", "one digit"),
        ("12-345-678", "eight digits"),
        ("1234567890", "ten digits"),
        ("", "empty"),
        ("unknown", "no digits"),
    ],
)
def test_an_invalid_ssn_is_missing(ssn: str, why: str) -> None:
    assert normalise_ssn(ssn) is None, why


def test_the_ssn_allows_areas_around_the_invalid_ones() -> None:
    assert normalise_ssn("665-12-3456") == "665123456"
    assert normalise_ssn("667-12-3456") == "667123456"
    assert normalise_ssn("899-12-3456") == "899123456"
    assert normalise_ssn("001-01-0001") == "001010001"


def test_an_ssn_of_non_ascii_digits_or_another_type_is_missing() -> None:
    assert normalise_ssn("١٢٣٤٥٦٧٨٠") is None  # Arabic-Indic digits are not ASCII digits
    assert normalise_ssn(None) is None
    assert normalise_ssn(["123-45-6780"]) is None
    assert normalise_ssn(True) is None


def test_an_integer_ssn_keeps_its_leading_zeros() -> None:
    assert normalise_ssn(12345678) == "012345678"


# --- date of birth ---------------------------------------------------------------------------


def test_a_real_date_is_kept() -> None:
    assert normalise_dob("1980-02-29") == "1980-02-29"


@pytest.mark.parametrize(
    "dob", ["1981-02-29", "1980-13-01", "02/03/1980", "1980-2-3", "", None, 19800203]
)
def test_an_invalid_date_is_missing(dob: object) -> None:
    assert normalise_dob(dob) is None


@pytest.mark.parametrize("dob", ["1900-01-01", "1899-12-31", "0000-01-01"])
def test_the_unknown_date_and_earlier_are_missing(dob: str) -> None:
    assert normalise_dob(dob) is None


# --- ZIP3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("postal", ["02139", "02139-1234", "021391234", " 02139 ", "02139 - 1234"])
def test_a_zip_or_zip_plus_4_is_its_zip3(postal: str) -> None:
    assert normalise_zip3(postal) == "021"


@pytest.mark.parametrize("zip3", sorted(SUPPRESSED_ZIP3))
def test_safe_harbor_zip3s_are_missing(zip3: str) -> None:
    assert normalise_zip3(f"{zip3}01") is None
    assert normalise_zip3(f"{zip3}01-2345") is None


def test_the_safe_harbor_list_is_hipaas() -> None:
    assert sorted(SUPPRESSED_ZIP3) == [
        "036", "059", "102", "203", "205", "369", "556", "692", "753",
        "772", "821", "823", "878", "879", "884", "890", "893",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "postal", ["00012", "1234", "123456", "02139-12", "A1B 2C3", "SW1A 1AA", "", None, 2139]
)
def test_a_value_that_is_not_a_us_zip_is_missing(postal: object) -> None:
    assert normalise_zip3(postal) is None


# --- sex -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sex"),
    [("male", "male"), ("Female", "female"), ("OTHER", "other"), (" male ", "male")],
)
def test_sex_and_fhir_gender_codes(value: str, sex: str) -> None:
    assert normalise_sex(value) == sex


@pytest.mark.parametrize("value", ["unknown", "Unknown", "M", "F", "", None, 1, "femme"])
def test_unknown_or_other_sex_values_are_missing(value: object) -> None:
    assert normalise_sex(value) is None


# --- the patient object ----------------------------------------------------------------------


PATIENT_V2 = {
    "given_name": "Bill",
    "family_name": "O'Brien Jr.",
    "dob": "1980-03-07",
    "ssn": "123-45-6780",
    "sex": "male",
    "postal_code": "02139-1234",
}
PATIENT_V1 = {
    "first_name": "BILL",
    "last_name": "OBRIEN",
    "dob": "1980-03-07",
    "ssn": "123456780",
    "sex": "Male",
    "postal_code": "02139",
}
EXPECTED = MatchAttributes(
    given="bill",
    given_canonical="william",
    family="obrien",
    dob="1980-03-07",
    ssn="123456780",
    sex="male",
    zip3="021",
)


def test_v1_and_v2_patients_of_one_person_give_the_same_attributes() -> None:
    assert match_attributes(PATIENT_V2) == EXPECTED
    assert match_attributes(PATIENT_V1) == EXPECTED
    assert match_attributes(PATIENT_V2, V2) == match_attributes(PATIENT_V1, V1) == EXPECTED


def test_the_format_decides_which_name_fields_are_read() -> None:
    assert match_attributes(PATIENT_V1, V2).given is None
    assert match_attributes(PATIENT_V2, V1).family is None


def test_optional_fields_absent_are_missing() -> None:
    attrs = match_attributes({"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10"})
    assert (attrs.ssn, attrs.sex, attrs.zip3) == (None, None, None)
    assert attrs.dob is None  # before 1900-01-01


def test_attributes_are_frozen() -> None:
    with pytest.raises(AttributeError):
        EXPECTED.given = "ada"  # type: ignore[misc]


def test_repr_shows_which_attributes_are_present_never_their_values() -> None:
    shown = repr(match_attributes(PATIENT_V2))
    for value in ("bill", "william", "obrien", "1980", "123456780", "021", "male"):
        assert value not in shown
    assert "ssn=<set>" in shown
    assert "sex=None" in repr(match_attributes({"given_name": "Ada"}))


def test_a_patient_that_is_not_an_object_is_a_type_error_without_its_value() -> None:
    with pytest.raises(TypeError) as raised:
        match_attributes("Ada Lovelace 1815-12-10")  # type: ignore[arg-type]
    assert "Ada" not in str(raised.value)
