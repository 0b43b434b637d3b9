"""Bulk Data kick-off requests read into exports, and what the status URL says (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir.resources.operationoutcome import OperationOutcome

from exchange_stream.core.bulk_request import (
    NDJSON,
    ExportRequest,
    Refusal,
    accepts_fhir_json,
    manifest,
    parameters_pairs,
    parse_instant,
    parse_kickoff,
    preferences,
    progress_text,
    types_of_kinds,
)

ALL = ("Patient", "Encounter", "Claim", "Observation")
LENIENT = ["respond-async, handling=lenient"]
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def accepted(pairs, **kw) -> ExportRequest:
    parsed = parse_kickoff(pairs, **kw)
    assert isinstance(parsed, ExportRequest), parsed
    return parsed


def refused(pairs, **kw) -> Refusal:
    parsed = parse_kickoff(pairs, **kw)
    assert isinstance(parsed, Refusal), parsed
    return parsed


@pytest.mark.parametrize(
    ("pairs", "types"),
    [
        ([], ALL),
        ([("_type", "")], ALL),
        ([("_type", "Observation")], ("Observation",)),
        # The request's order does not matter: files come in the export's order.
        ([("_type", "Observation,Patient")], ("Patient", "Observation")),
        ([("_type", " Claim , Encounter ,")], ("Encounter", "Claim")),
        ([("_type", "Claim"), ("_type", "Encounter,Claim")], ("Encounter", "Claim")),
    ],
)
def test_types_single_comma_separated_or_repeated(pairs, types) -> None:
    assert accepted(pairs).types == types


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson", ""])
def test_every_spelling_of_ndjson_is_accepted_and_written_in_full(fmt) -> None:
    assert accepted([("_outputFormat", fmt)]).output_format == NDJSON


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-31T00:00:00Z", datetime(2024, 1, 31, tzinfo=UTC)),
        ("2024-01-31T10:20:30.5+02:00", datetime(2024, 1, 31, 8, 20, 30, 500000, tzinfo=UTC)),
        # An unencoded "+" of a query string arrives as a space.
        ("2024-01-31T10:20:30 02:00", datetime(2024, 1, 31, 8, 20, 30, tzinfo=UTC)),
        ("2024-01-31T00:00:00.123456789Z", datetime(2024, 1, 31, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2024-01-31", None),
        ("2024-01-31T00:00Z", None),
        ("2024-01-31T00:00:00", None),
        ("2024-02-30T00:00:00Z", None),
        ("yesterday", None),
    ],
)
def test_instants_need_seconds_and_an_offset(value, expected) -> None:
    assert parse_instant(value) == expected


def test_since_and_until_bound_the_export_and_are_written_in_rfc3339() -> None:
    parsed = accepted([("_since", "2024-01-01T00:00:00Z"), ("_until", "2024-06-01T12:00:00-05:00")])
    assert parsed.since == datetime(2024, 1, 1, tzinfo=UTC)
    assert parsed.until == datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    params = parsed.params()
    assert params["since"] == "2024-01-01T00:00:00.000000Z"
    assert params["until"] == "2024-06-01T17:00:00.000000Z"


def test_params_is_the_document_the_export_run_reads() -> None:
    parsed = accepted(
        [("_type", "Observation"), ("_typeFilter", "Observation?category=laboratory")],
        patient_level=True,
    )
    assert parsed.params() == {
        "types": ["Observation"],
        "since": None,
        "until": None,
        "type_filters": {"Observation": {"category": ["laboratory"]}},
        "output_format": NDJSON,
        "patient_level": True,
    }
    assert parsed.outcomes() == []


# (pairs, what the strict refusal's issue code is, a word its diagnostics hold). Each is
# refused strictly, and (as the test after says) accepted and reported when lenient.
UNSUPPORTED = [
    ([("_type", "MedicationRequest")], "not-supported", "MedicationRequest"),
    ([("_type", "Patient,Condition")], "not-supported", "Condition"),
    ([("_outputFormat", "text/csv")], "not-supported", "_outputFormat"),
    ([("_elements", "id")], "not-supported", "_elements"),
    ([("patient", "Patient/1")], "not-supported", "patient"),
    ([("includeAssociatedData", "LatestProvenanceResources")], "not-supported", "include"),
    ([("organizeOutputBy", "Patient")], "not-supported", "organizeOutputBy"),
    ([("frobnicate", "1")], "not-supported", "frobnicate"),
    ([("_typeFilter", "Observation?code=1234-5")], "not-supported", "code"),
    ([("_typeFilter", "Observation?category:not=laboratory")], "not-supported", "category"),
    ([("_typeFilter", "Observation?_include=Observation:subject")], "not-supported", "_include"),
    ([("_typeFilter", "Encounter?status=finished")], "not-supported", "status"),
    ([("_typeFilter", "MedicationRequest?status=active")], "not-supported", "MedicationRequest"),
    ([("_typeFilter", "Observation")], "not-supported", "query"),
    ([("_typeFilter", "Observation?category=")], "not-supported", "category"),
]


@pytest.mark.parametrize(("pairs", "code", "word"), UNSUPPORTED)
def test_unsupported_is_refused_with_an_operation_outcome_issue(pairs, code, word) -> None:
    refusal = refused(pairs)
    assert refusal.status == 400
    [(severity, issue_code, diagnostics)] = refusal.issues
    assert (severity, issue_code) == ("error", code)
    assert word in diagnostics


@pytest.mark.parametrize(("pairs", "code", "word"), UNSUPPORTED)
def test_lenient_ignores_the_unsupported_and_reports_each(pairs, code, word) -> None:
    parsed = accepted([*pairs, ("_type", "Patient")], prefer=LENIENT)
    assert parsed.lenient and parsed.types == ("Patient",)
    [outcome] = parsed.outcomes()
    OperationOutcome.parse_obj(outcome)
    [issue] = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("information", code)
    assert word in issue["diagnostics"] and "ignored" in issue["diagnostics"]


@pytest.mark.parametrize(
    "pairs",
    [
        [("_since", "2024-13-01T00:00:00Z")],
        [("_since", "2024-01-01")],
        [("_until", "soon")],
        [("_since", "2024-02-01T00:00:00Z"), ("_until", "2024-01-01T00:00:00Z")],
        [("_since", "2024-01-01T00:00:00Z"), ("_since", "2024-02-01T00:00:00Z")],
        [("_outputFormat", "ndjson"), ("_outputFormat", "application/ndjson")],
    ],
)
def test_malformed_values_are_refused_even_when_lenient(pairs) -> None:
    for prefer in ([], LENIENT):
        refusal = refused(pairs, prefer=prefer)
        assert refusal.status == 400
        assert [code for _, code, _ in refusal.issues] == ["invalid"]


def test_every_problem_is_named_at_once_and_no_value_is_echoed() -> None:
    secret = "Smith-1815-12-10"
    refusal = refused(
        [
            ("_type", "Encounter,not a type"),
            ("_typeFilter", f"Patient?name={secret}"),
            ("_since", secret),
            ("x y", secret),
        ]
    )
    assert len(refusal.issues) == 4
    text = " ".join(d for _, _, d in refusal.issues)
    assert secret not in text and "not a type" not in text and "x y" not in text


def test_the_same_single_value_repeated_counts_once() -> None:
    parsed = accepted([("_outputFormat", "ndjson"), ("_outputFormat", "ndjson")])
    assert parsed.output_format == NDJSON


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["Observation?category=laboratory"], {"category": ("laboratory",)}),
        ([f"Observation?category={CATEGORY}|laboratory"], {"category": ("laboratory",)}),
        (["Observation?category=|laboratory"], {"category": ("laboratory",)}),
        # Another system's "laboratory" is not the category: it matches nothing exported.
        (["Observation?category=urn:x|laboratory"], {"category": ("urn:x|laboratory",)}),
        # Commas or, repeated queries or, a parameter repeated in one query and.
        (
            ["Observation?category=vital-signs,laboratory"],
            {"category": ("laboratory", "vital-signs")},
        ),
        (
            ["Observation?category=laboratory", "Observation?category=imaging"],
            {"category": ("imaging", "laboratory")},
        ),
        (
            ["Observation?category=laboratory,imaging&category=imaging"],
            {"category": ("imaging",)},
        ),
    ],
)
def test_type_filter_on_observation_category(filters, expected) -> None:
    parsed = accepted([("_typeFilter", f) for f in filters])
    assert parsed.type_filters == {"Observation": expected}


def test_a_filter_of_a_type_not_exported_has_no_effect() -> None:
    parsed = accepted([("_type", "Encounter"), ("_typeFilter", "Observation?category=laboratory")])
    assert parsed.type_filters == {}


def test_ignoring_a_filter_never_narrows_the_export() -> None:
    # Or-ed with a query that cannot be applied, the supported one would drop what the other
    # admits: the type is left unfiltered.
    parsed = accepted(
        [("_typeFilter", "Observation?category=laboratory"), ("_typeFilter", "Observation?code=1")],
        prefer=LENIENT,
    )
    assert parsed.type_filters == {}
    # And-ed, the unsupported part is dropped and the rest applies.
    parsed = accepted([("_typeFilter", "Observation?category=imaging&code=1")], prefer=LENIENT)
    assert parsed.type_filters == {"Observation": {"category": ("imaging",)}}
    assert len(parsed.ignored) == 1


@pytest.mark.parametrize(
    ("kinds", "pairs", "outcome"),
    [
        (None, [], ALL),
        (frozenset({"encounter"}), [], ("Encounter",)),
        (frozenset({"lab_result", "patient"}), [], ("Patient", "Observation")),
        (frozenset({"encounter"}), [("_type", "Encounter")], ("Encounter",)),
        (frozenset({"encounter"}), [("_type", "Encounter,Claim")], 403),
        (frozenset({"encounter"}), [("_type", "Claim")], 403),
    ],
)
def test_types_are_limited_by_the_tokens_scopes(kinds, pairs, outcome) -> None:
    parsed = parse_kickoff(pairs, allowed_types=types_of_kinds(kinds))
    if isinstance(outcome, int):
        assert isinstance(parsed, Refusal) and parsed.status == outcome
        assert {code for _, code, _ in parsed.issues} == {"forbidden"}
    else:
        assert isinstance(parsed, ExportRequest) and parsed.types == outcome


def test_lenient_drops_types_outside_the_scopes_but_not_all_of_them() -> None:
    allowed = types_of_kinds(frozenset({"encounter"}))
    parsed = accepted([("_type", "Encounter,Claim")], prefer=LENIENT, allowed_types=allowed)
    assert parsed.types == ("Encounter",)
    assert [code for _, code, _ in parsed.ignored] == ["forbidden"]
    refusal = refused([("_type", "Claim")], prefer=LENIENT, allowed_types=allowed)
    assert refusal.status == 403
    refusal = refused([("_type", "Condition")], prefer=LENIENT)
    assert refusal.status == 400


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        (None, None),
        ("application/fhir+json", None),
        ("application/json", None),
        ("*/*", None),
        ("application/fhir+json; fhirVersion=4.0", None),
        ("text/html, application/*;q=0.5", None),
        ("application/fhir+xml", 406),
        ("application/fhir+json;q=0", 406),
    ],
)
def test_accept_must_allow_fhir_json(accept, status) -> None:
    parsed = parse_kickoff([], accept=accept)
    if status is None:
        assert isinstance(parsed, ExportRequest)
    else:
        assert isinstance(parsed, Refusal) and parsed.status == status
        assert isinstance(parse_kickoff([], accept=accept, prefer=LENIENT), ExportRequest)


def test_accepts_fhir_json_reads_an_empty_header_as_anything() -> None:
    assert accepts_fhir_json("")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], {}),
        (["respond-async"], {"respond-async": ""}),
        (["respond-async, handling=lenient"], {"respond-async": "", "handling": "lenient"}),
        (["respond-async", "handling=LENIENT"], {"respond-async": "", "handling": "lenient"}),
        (['handling="lenient"; x=1'], {"handling": "lenient"}),
        (["handling=strict, handling=lenient"], {"handling": "strict"}),
    ],
)
def test_prefer_headers(headers, expected) -> None:
    assert preferences(headers) == expected


def test_no_prefer_header_is_read_as_respond_async_and_strict() -> None:
    assert accepted([]).lenient is False
    assert refused([("_elements", "id")], prefer=["respond-async"]).status == 400
    assert refused([("_elements", "id")], prefer=["handling=strict"]).status == 400


def test_allow_partial_manifests_and_json_format_are_ignored_quietly() -> None:
    parsed = accepted([("allowPartialManifests", "true"), ("_format", "json")])
    assert parsed.ignored == ()
    assert refused([("_format", "xml")]).status == 400


def test_too_many_parameters_are_refused() -> None:
    assert refused([("_type", "Patient")] * 101).status == 400


def test_parameters_resource_of_a_post_kickoff() -> None:
    doc = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "_type", "valueString": "Observation"},
            {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
            {"name": "allowPartialManifests", "valueBoolean": False},
            {"name": "patient", "valueReference": {"reference": "Patient/123"}},
        ],
    }
    pairs = parameters_pairs(doc)
    assert pairs == [
        ("_type", "Patient"),
        ("_type", "Observation"),
        ("_since", "2024-01-01T00:00:00Z"),
        ("allowPartialManifests", "false"),
        ("patient", "Patient/123"),
    ]
    assert refused(pairs).status == 400  # patient is not supported
    assert accepted(pairs, prefer=LENIENT).types == ("Patient", "Observation")


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"resourceType": "Patient"},
        {"resourceType": "Parameters", "parameter": {}},
        {"resourceType": "Parameters", "parameter": [{"valueString": "x"}]},
        {"resourceType": "Parameters", "parameter": [{"name": "_type"}] * 101},
    ],
)
def test_a_body_that_is_not_a_parameters_resource_is_refused(doc) -> None:
    refusal = parameters_pairs(doc)
    assert isinstance(refusal, Refusal) and refusal.status == 400


def test_refusals_are_valid_operation_outcomes() -> None:
    from exchange_stream.core.fhir import operation_outcome

    for pairs, _, _ in UNSUPPORTED:
        OperationOutcome.parse_obj(operation_outcome(list(refused(pairs).issues)))


@pytest.mark.parametrize(
    ("status", "progress", "text"),
    [
        ("accepted", None, "queued"),
        ("running", None, "in progress"),
        ("running", {}, "in progress"),
        ("running", {"type": "Encounter", "percent": 42, "resources": 7}, "42% (Encounter)"),
        ("running", {"type": None, "percent": 100}, "100%"),
        ("running", {"percent": 250}, "100%"),
        ("running", {"type": "Claim", "resources": 12}, "12 resources written (Claim)"),
        ("running", {"type": "x" * 200, "percent": 3}, "3%"),
        ("running", {"percent": True}, "in progress"),
    ],
)
def test_x_progress(status, progress, text) -> None:
    assert progress_text(status, progress) == text
    assert len(text) < 100


def test_manifest_lists_files_by_index_and_the_error_file() -> None:
    url = "https://x.example/fhir/exports/e1"
    done = manifest(
        status_url=url,
        request_url="https://x.example/fhir/$export?_type=Patient",
        transaction_time=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        output=[
            {"type": "Patient", "key": "k0", "count": 3, "bytes": 10},
            {"type": "Encounter", "key": "k1", "count": 5, "bytes": 20},
        ],
        errors=[{"resourceType": "OperationOutcome", "issue": []}],
    )
    assert done == {
        "transactionTime": "2024-05-06T07:08:09.000000Z",
        "request": "https://x.example/fhir/$export?_type=Patient",
        "requiresAccessToken": True,
        "output": [
            {"type": "Patient", "url": f"{url}/files/0", "count": 3},
            {"type": "Encounter", "url": f"{url}/files/1", "count": 5},
        ],
        "error": [{"type": "OperationOutcome", "url": f"{url}/errors/0", "count": 1}],
    }
    assert "k0" not in str(done), "object keys stay inside"
    empty = manifest(
        status_url=url,
        request_url="r",
        transaction_time=datetime(2024, 5, 6, tzinfo=UTC),
        output=[],
        errors=[],
    )
    assert (empty["output"], empty["error"]) == ([], [])
