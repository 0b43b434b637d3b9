"""POST /tokenize through HTTP, against an HMAC computed independently in the test."""

from __future__ import annotations

import hashlib
import hmac

import aiohttp
import pytest

from tests.conftest import SHARED_WORKER_ENV
from tests.support import WorkerProcess, post_json

SECRET = SHARED_WORKER_ENV["TOKENIZER_HMAC_SECRET"]


def expected(g: str, f: str, d: str, s: str = "") -> str:
    msg = f"given_name={g}|family_name={f}|dob={d}|ssn={s}".encode()
    return hmac.new(SECRET.encode(), msg, hashlib.sha256).hexdigest()


async def _tokenize(http, worker, body):
    return await post_json(http, f"{worker.base_url}/tokenize", body)


async def test_token_matches_the_documented_hmac(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await _tokenize(
        http,
        worker,
        {
            "given_name": "  Mary\u00a0 Ann ",
            "family_name": "O'NEIL",
            "dob": "1990-01-31",
            "ssn": "123-45-6789",
        },
    )
    assert status == 200
    assert body == {"patient_token": expected("mary ann", "o'neil", "1990-01-31", "123456789")}


@pytest.mark.parametrize("dob", ["0000-01-01", "0000-02-29"])
async def test_year_0000_is_a_real_year(worker: WorkerProcess, http: aiohttp.ClientSession, dob):
    # The deployed tokenizer accepts it (proleptic Gregorian; year 0 is leap), so must we.
    status, body, _ = await _tokenize(
        http, worker, {"given_name": "Ada", "family_name": "Lovelace", "dob": dob}
    )
    assert (status, body) == (200, {"patient_token": expected("ada", "lovelace", dob)})


@pytest.mark.parametrize("ssn", [{}, {"ssn": None}, {"ssn": ""}])
async def test_ssn_absent_null_and_empty_agree(worker, http, ssn) -> None:
    status, body, _ = await _tokenize(
        http, worker, {"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10", **ssn}
    )
    assert (status, body) == (200, {"patient_token": expected("ada", "lovelace", "1815-12-10")})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"given_name": "A", "family_name": "B", "dob": "2023-02-29"}, "invalid field: dob"),
        (
            {"given_name": "A", "family_name": "B", "dob": "2023-01-01", "mrn": "1"},
            "unknown field",
        ),
        ({"family_name": "B", "dob": "2023-01-01"}, "missing field: given_name"),
        (
            {"given_name": "A", "family_name": "B", "dob": "2023-01-01", "ssn": 5},
            "invalid field: ssn",
        ),
    ],
)
async def test_bad_identities_are_400(worker, http, body, error) -> None:
    status, resp, _ = await _tokenize(http, worker, body)
    assert (status, resp) == (400, {"error": error})


@pytest.mark.parametrize(
    ("exact_too", "error"), [(False, "missing field: given_name"), (True, "unknown field")]
)
async def test_a_field_name_in_other_letter_case_is_400(worker, http, exact_too, error) -> None:
    # Field names are exact (docs/API.md), whether or not the exact spelling is there too.
    body = {"GIVEN_NAME": "Ada", "family_name": "Lovelace", "dob": "1815-12-10"}
    if exact_too:
        body["given_name"] = "Ada"
    status, resp, _ = await _tokenize(http, worker, body)
    assert (status, resp) == (400, {"error": error})
