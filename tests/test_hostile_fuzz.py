"""Property-based fuzzing of every operation in the OpenAPI contract, against a live worker.

Schemathesis reads ``contracts/api/ingest-openapi.yaml`` and, per operation, runs its coverage phase
(boundary and negative values for each field, header and method) and a fuzzing phase of
``MAX_EXAMPLES`` derandomized Hypothesis examples, in positive (schema-valid) and negative modes.
Every response must be one the contract documents: status code, content type, headers and body
schema; and no request may get a 5xx. Every request, including those the checks make themselves
(a request without credentials, one with invalid credentials), is counted.

Two adjustments keep examples meaningful and out of other tests' way; each keeps a value valid
if it was valid and leaves an invalid one alone (that is the negative case being tested):

- a valid ``Idempotency-Key`` is replaced by a fresh one, so examples do not collide into 409s;
- a valid ``source`` gets the prefix ``fuzz-``, so fuzzed records never land in a source that
  another test reconciles or replays (Hypothesis draws string constants from the code base).

``positive_data_acceptance`` is the one built-in check left out here: a source over 255 bytes of
UTF-8 is schema-valid (JSON Schema counts characters) and refused, as the contract says in words.
``tests/test_openapi_fuzz.py`` runs that check too, with exactly that refusal exempted.

Set ``FUZZ_STATS_PATH`` to write the counts as JSON (for the reliability report).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import checks

from exchange_stream.infra.contracts import OPENAPI_PATH, openapi
from exchange_stream.pipeline.ingest import MAX_SOURCE_BYTES
from tests.support import WorkerProcess

MAX_EXAMPLES = 50
AUTH = {"Authorization": "Bearer dev"}
_KEY_MIN, _KEY_MAX = 8, 255
# The contract's own rule for a source (its limit in bytes is the service's MAX_SOURCE_BYTES).
_SOURCE = re.compile(openapi()["components"]["schemas"]["Source"]["pattern"])

SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)
# deterministic = Hypothesis' derandomize: the same examples on every run, no example database.
SCHEMA.config.generation.update(
    max_examples=MAX_EXAMPLES, deterministic=True, with_security_parameters=False
)


@dataclass
class Tally:
    """Every request the fuzzing sent and what came back."""

    cases: Counter = field(default_factory=Counter)
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    contract_failures: int = 0

    def record(self, response: requests.Response) -> None:
        self.requests += 1
        self.statuses[response.status_code] += 1
        if response.status_code >= 500:
            req = response.request
            self.server_errors.append(f"{req.method} {req.url} -> {response.status_code}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cases": sum(self.cases.values()),
            "cases_by_operation": dict(sorted(self.cases.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": len(self.server_errors),
            "cases_outside_the_contract": self.contract_failures,
            "max_examples_per_operation": MAX_EXAMPLES,
        }


TALLY = Tally()


@pytest.fixture(scope="module")
def counted_requests() -> Iterator[Tally]:
    """Count every HTTP request of this module, including the probes that checks send on sessions
    of their own (a request without credentials, one with invalid ones, other methods)."""
    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> requests.Response:
        response = original(self, request, **kwargs)
        TALLY.record(response)
        return response

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.Session, "send", send)
        yield TALLY


def _steer(case: schemathesis.Case) -> None:
    """The adjustments of the module docstring; a case's validity is left unchanged."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _KEY_MIN <= len(key) <= _KEY_MAX:
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4()}"
    body = case.body
    if not isinstance(body, dict):
        return
    source = body.get("source")
    if (
        isinstance(source, str)
        and _SOURCE.fullmatch(source)
        and len(source.encode()) <= MAX_SOURCE_BYTES - len("fuzz-")
    ):
        body["source"] = f"fuzz-{source}"


@SCHEMA.parametrize()
def test_operation_answers_only_as_documented(
    case: schemathesis.Case, worker: WorkerProcess, counted_requests: Tally
) -> None:
    _steer(case)
    TALLY.cases[case.operation.label] += 1
    try:
        case.call_and_validate(
            base_url=worker.base_url,
            headers=AUTH,
            excluded_checks=[checks.positive_data_acceptance],
            timeout=30,
        )
    except Exception:
        TALLY.contract_failures += 1
        raise


def test_fuzzing_summary_has_no_server_errors(worker: WorkerProcess) -> None:
    """Runs after the parametrized test above (pytest keeps file order)."""
    if not TALLY.cases:
        pytest.skip("the fuzzing test did not run in this session")
    stats = TALLY.as_dict()
    print(f"\nfuzzing: {json.dumps(stats, sort_keys=True)}")
    if path := os.environ.get("FUZZ_STATS_PATH"):
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(stats, fh, indent=2, sort_keys=True)
    assert TALLY.server_errors == []
    assert TALLY.contract_failures == 0
    # Every operation was exercised, and the ingest happy path was reached, not only 400s.
    assert set(TALLY.cases) == {
        "POST /v1/ingest",
        "POST /v2/ingest",
        "POST /tokenize",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "POST /v1/opt-outs",
        "POST /v1/opt-outs/remove",
        "GET /fhir/metadata",
    }
    assert TALLY.statuses[202] > 0 and TALLY.statuses[200] > 0 and TALLY.statuses[400] > 0
    assert worker.proc is not None and worker.proc.poll() is None
