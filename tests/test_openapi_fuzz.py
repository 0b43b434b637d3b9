"""The OpenAPI file is the API: Schemathesis fuzzes a live worker from it, and the two agree.

``contracts/api/ingest-openapi.yaml`` states every rule the server checks, so that a request valid
by the file is accepted and one invalid by it is refused. Schemathesis reads the file and, per
operation, runs its coverage phase (boundary and negative values of every field, header and
method) and ``MAX_EXAMPLES`` fuzzing examples in positive (schema-valid) and negative
(schema-invalid) modes against a real worker. Every built-in check runs, among them
``not_a_server_error``, ``status_code_conformance``, ``positive_data_acceptance`` (a schema-valid
request is not refused) and ``negative_data_rejection`` (a schema-invalid one is).

Credentials are not what is fuzzed: every request carries ``Authorization: Bearer dev``, and a
schema-valid ``Idempotency-Key`` is replaced by a fresh one, so that no two requests share a key
(a 409 would hide the answer to the body). A schema-valid ``source`` gets the prefix ``fuzz-`` so
that fuzzed records stay out of the sources other tests replay and reconcile. Both edits keep a
valid value valid and leave an invalid one alone; Schemathesis re-checks a case's validity after
them anyway. Since a 401 or 403 counts as neither a finding nor an acceptance, the last test
checks that the run reached the 2xx answers and the 400s.

One rule of the server cannot be said in OpenAPI, and the file says it in words (with
``x-max-utf8-bytes``): a ``source`` is at most 255 bytes of UTF-8, where JSON Schema counts
characters. A schema-valid request refused for that reason alone, with exactly that error, is not
a finding; any other refusal is. The pure tests at the end pin the two patterns that carry the
tokenizer's rules (a real calendar date, a name that is not only White_Space) to the tokenizer.

The run is bounded and deterministic: a fixed number of examples, derandomized generation, no
example database, no shrinking, a timeout on every request and a deadline on every example.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis import checks

from exchange_stream.core.identity import (
    WHITE_SPACE,
    IdentityError,
    canonical_dob,
    canonical_name,
    is_real_date,
)
from exchange_stream.infra.contracts import (
    OPENAPI_PATH,
    ContractViolation,
    check_request,
    openapi,
)
from exchange_stream.pipeline.ingest import MAX_SOURCE_BYTES
from tests.support import WorkerProcess

MAX_EXAMPLES = 100
REQUEST_TIMEOUT_S = 10
AUTH = {"Authorization": "Bearer dev"}
INGEST_PATHS = frozenset({"/v1/ingest", "/v2/ingest"})
PREFIX = "fuzz-"

_SCHEMAS = openapi()["components"]["schemas"]
_KEY = openapi()["components"]["parameters"]["IdempotencyKey"]["schema"]
# The byte limit is exempt from the checks only because, and only where, the file states it.
_SOURCE_BYTES: int | None = _SCHEMAS["Source"].get("x-max-utf8-bytes")
# JSON Schema's "$" is the end of the text; Python's would also match before a final newline.
_SOURCE = re.compile(_SCHEMAS["Source"]["pattern"].replace("$", r"\Z"))

SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)
SCHEMA.config.generation.update(
    max_examples=MAX_EXAMPLES,
    deterministic=True,  # Hypothesis' derandomize: the same examples on every run
    no_shrink=True,  # a failure is reported as found, never minimised for minutes
    database="none",  # no example database: no earlier run's failures replayed first
    with_security_parameters=False,  # the credential is fixed (AUTH), not fuzzed
)

# (operation, generation mode, status) of every fuzzed request, for the last test.
ANSWERS: Counter[tuple[str, str, int]] = Counter()


def _steer(case: schemathesis.Case) -> None:
    """A fresh key and a ``fuzz-`` source, each only where the generated value is valid. The
    edits go to copies: Hypothesis may hand the same generated objects to several examples."""
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if isinstance(key, str) and _KEY["minLength"] <= len(key) <= _KEY["maxLength"]:
        case.headers = CaseInsensitiveDict(
            {**case.headers, "Idempotency-Key": f"{PREFIX}{uuid.uuid4()}"}
        )
    body = case.body
    if case.operation.path in INGEST_PATHS and isinstance(body, dict):
        source = body.get("source")
        if (
            isinstance(source, str)
            and _SOURCE.search(source)
            and len(source) + len(PREFIX) <= _SCHEMAS["Source"]["maxLength"]
            and len((PREFIX + source).encode()) <= (_SOURCE_BYTES or MAX_SOURCE_BYTES)
        ):
            case.body = {**body, "source": PREFIX + source}


def documented_refusal(case: schemathesis.Case) -> str | None:
    """The error of the one rule the file states only in words, if this schema-valid case
    breaks it; None otherwise (and for every schema-invalid case)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    body = case.body
    if case.operation.path in INGEST_PATHS and isinstance(body, dict):
        source = body.get("source")
        if (
            _SOURCE_BYTES is not None
            and isinstance(source, str)
            and len(source.encode()) > _SOURCE_BYTES
        ):
            return "invalid field: source"
    return None


@SCHEMA.parametrize()
@settings(
    deadline=timedelta(seconds=30),  # one example's requests, the checks' own included
    suppress_health_check=[HealthCheck.too_slow],  # timing-based, so the one that could flake
)
def test_the_server_answers_as_the_openapi_file_says(
    case: schemathesis.Case, worker: WorkerProcess
) -> None:
    _steer(case)
    response = case.call(base_url=worker.base_url, headers=AUTH, timeout=REQUEST_TIMEOUT_S)
    meta = case.meta
    mode = str(meta.generation.mode) if meta is not None else "unknown"
    ANSWERS[case.operation.label, mode, response.status_code] += 1
    refusal = documented_refusal(case)
    case.validate_response(
        response,
        headers=AUTH,
        excluded_checks=[checks.positive_data_acceptance] if refusal else None,
        transport_kwargs={
            "base_url": worker.base_url,
            "headers": dict(AUTH),
            "timeout": REQUEST_TIMEOUT_S,
        },
    )
    if refusal:
        assert (response.status_code, response.json()) == (400, {"error": refusal})


def test_the_fuzzing_reached_acceptance_and_refusal_on_every_body_route() -> None:
    """Runs after the test above (pytest keeps file order): a run answered only 401, say, would
    pass every check above without testing a rule."""
    if not ANSWERS:
        pytest.skip("the fuzzing test did not run in this session")
    for op, ok in [("POST /v1/ingest", 202), ("POST /v2/ingest", 202), ("POST /tokenize", 200)]:
        assert ANSWERS[op, "positive", ok] > 0, op
        assert ANSWERS[op, "negative", 400] > 0, op
    assert [answer for answer in ANSWERS if answer[2] >= 500] == []


# --------------------------------------------------------------------------------------------
# The file's patterns against the tokenizer's own rules (pure: no worker)
# --------------------------------------------------------------------------------------------

_DOB_MAX = _SCHEMAS["Dob"]["maxLength"]
_NOT_SPACE_OR_DIGIT = "x-/\x1c\u200b"


def _contract_accepts(field: str, value: str) -> bool:
    body = {"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10", field: value}
    try:
        check_request("TokenizeRequest", body)
    except ContractViolation:
        return False
    return True


def _tokenizer_accepts(field: str, value: str) -> bool:
    try:
        canonical_dob(value) if field == "dob" else canonical_name(value, field)
    except IdentityError:
        return False
    return True


def test_the_file_states_the_services_source_byte_limit() -> None:
    assert _SOURCE_BYTES == MAX_SOURCE_BYTES
    assert "255 bytes of UTF-8" in " ".join(_SCHEMAS["Source"]["description"].split())


@pytest.mark.parametrize("day", ["02-28", "02-29", "02-30", "04-30", "04-31", "12-31", "13-01"])
def test_the_dob_pattern_is_the_proleptic_gregorian_calendar_of_every_year(day: str) -> None:
    month, dom = int(day[:2]), int(day[3:])
    for year in range(10_000):
        dob = f"{year:04d}-{day}"
        assert _contract_accepts("dob", dob) is is_real_date(year, month, dom), dob


@settings(max_examples=400, derandomize=True, database=None)
@given(
    st.text(alphabet=st.sampled_from("0123456789" + _NOT_SPACE_OR_DIGIT + WHITE_SPACE), max_size=20)
    | st.builds(
        lambda before, day, after: before + day.isoformat() + after,
        st.text(alphabet=st.sampled_from(WHITE_SPACE + "\x1c0"), max_size=4),
        st.dates(),
        st.text(alphabet=st.sampled_from(WHITE_SPACE + "\x1c0"), max_size=4),
    )
)
def test_the_dob_pattern_accepts_exactly_what_the_tokenizer_does(text: str) -> None:
    assert _contract_accepts("dob", text) is (
        len(text) <= _DOB_MAX and _tokenizer_accepts("dob", text)
    )


@settings(max_examples=400, derandomize=True, database=None)
@given(st.text(alphabet=st.sampled_from(WHITE_SPACE + _NOT_SPACE_OR_DIGIT + "aİΣ"), max_size=8))
def test_the_name_pattern_accepts_exactly_what_the_tokenizer_does(text: str) -> None:
    assert _contract_accepts("given_name", text) is _tokenizer_accepts("given_name", text)
