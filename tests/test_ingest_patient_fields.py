"""``patient.sex`` and ``patient.postal_code``: optional, checked at the door, kept in the raw body.

Both are accepted on v1 and v2 as the contract states them (``sex``: FHIR's gender codes;
``postal_code``: a US ZIP or ZIP+4). Anything else is a 400 naming the field, never the value,
that writes nothing. Neither is part of the identity: the master patient token, of ingest and of
``POST /tokenize``, is the one this identity had before the fields existed (pinned below), and
neither value reaches a canonical row or the log.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from exchange_stream.core import formats
from exchange_stream.core.identity import Tokenizer, canonical_identity
from exchange_stream.infra.config import Settings
from exchange_stream.pipeline.ingest import BadRequest, parse_request
from tests.conftest import SHARED_WORKER_ENV
from tests.payloads import new_key, v1_body, v2_body
from tests.support import (
    WorkerProcess,
    independent_s3_client,
    post_json,
    s3_read_independently,
    wait_canonical,
)

SECRET = SHARED_WORKER_ENV["TOKENIZER_HMAC_SECRET"]
# Ada Lovelace, 1815-12-10, SSN 123-45-6789 (tests/payloads.py) under SECRET: computed with the
# tokenizer as it was before sex and postal_code existed, and pinned so that it never moves.
KNOWN_TOKEN = "f0493db797911aaac9af93cbd6c8d45876e785de5e971dc19f917942637ae641"
KNOWN_TOKEN_WITHOUT_SSN = "9bb47f3bda60caa60b16e0385db67397fbf4d80babc03567fdac65a2cda86a69"

SEXES = ["male", "female", "other", "unknown"]
POSTAL_CODES = ["02139", "02139-4307"]
BAD_SEXES: dict[str, Any] = {
    "capitalised": "Male",
    "upper case": "FEMALE",
    "a letter": "F",
    "HL7 v2 code": "U",
    "padded": " male",
    "empty": "",
    "null": None,
    "a number": 1,
}
BAD_POSTAL_CODES: dict[str, Any] = {
    "four digits": "0213",
    "six digits": "021390",
    "ZIP+3": "02139-430",
    "space for hyphen": "02139 4307",
    "no hyphen": "021394307",
    "letters": "K1A 0B1",
    "fullwidth digits": "\uff10\uff12\uff11\uff13\uff19",
    "trailing newline": "02139\n",
    "empty": "",
    "a number": 2139,
    "null": None,
}
# A value that appears nowhere else in the suite, to look for in rows and logs.
TRACER_POSTAL_CODE = "04217-3861"


def _body(fmt: formats.IngestFormat, source: str | None = None, **patient: Any) -> dict:
    body = v1_body() if fmt is formats.V1 else v2_body()
    if source is not None:
        body["source"] = source
    body["patient"].update(patient)
    return body


def _url(worker: WorkerProcess, fmt: formats.IngestFormat) -> str:
    return f"{worker.base_url}{fmt.route}"


# --- the door, on parse_request directly ----------------------------------------------------


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize("sex", SEXES)
@pytest.mark.parametrize("postal_code", POSTAL_CODES)
def test_every_sex_and_zip_form_is_accepted_and_the_body_kept_whole(
    fmt: formats.IngestFormat, sex: str, postal_code: str
) -> None:
    raw = orjson.dumps(_body(fmt, sex=sex, postal_code=postal_code))
    assert parse_request(fmt, raw).body == raw


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize(
    ("field", "value"),
    [("sex", v) for v in BAD_SEXES.values()]
    + [("postal_code", v) for v in BAD_POSTAL_CODES.values()],
    ids=[f"sex {k}" for k in BAD_SEXES] + [f"postal_code {k}" for k in BAD_POSTAL_CODES],
)
def test_a_bad_sex_or_postal_code_is_refused_naming_the_field(
    fmt: formats.IngestFormat, field: str, value: Any
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(fmt, orjson.dumps(_body(fmt, **{field: value})))
    assert caught.value.reason == f"invalid field: patient.{field}"


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
def test_the_fields_are_not_part_of_the_identity(fmt: formats.IngestFormat) -> None:
    tokenizer = Tokenizer(SECRET)
    plain = _body(fmt)["patient"]
    extended = _body(fmt, sex="female", postal_code="02139-4307")["patient"]
    assert canonical_identity(*fmt.identity(extended)) == canonical_identity(*fmt.identity(plain))
    assert tokenizer.token(*fmt.identity(extended)) == KNOWN_TOKEN


def test_the_known_identity_has_the_pinned_tokens() -> None:
    tokenizer = Tokenizer(SECRET)
    assert tokenizer.token("Ada", "Lovelace", "1815-12-10", "123-45-6789") == KNOWN_TOKEN
    assert tokenizer.token("Ada", "Lovelace", "1815-12-10") == KNOWN_TOKEN_WITHOUT_SSN


# --- end to end, on the real services -------------------------------------------------------


async def _rows_written(db: asyncpg.Pool, key: str, source: str) -> tuple[int, int, int]:
    """Rows that name the key or the source: idempotency, manifest and outbox."""
    return (
        await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key),
        await db.fetchval("SELECT count(*) FROM raw_object_manifest WHERE source = $1", source),
        await db.fetchval(
            "SELECT count(*) FROM outbox_events WHERE payload->>'source' = $1", source
        ),
    )


async def _objects_under(settings: Settings, source: str) -> int:
    async with independent_s3_client(settings) as client:
        listed = await client.list_objects_v2(Bucket=settings.raw_bucket, Prefix=f"{source}/")
    return listed.get("KeyCount", 0)


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
async def test_the_fields_are_accepted_kept_raw_and_change_no_token(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    fmt: formats.IngestFormat,
) -> None:
    source = f"patient-fields-{uuid.uuid4().hex[:8]}"
    with_fields = orjson.dumps(_body(fmt, source, sex="female", postal_code=TRACER_POSTAL_CODE))
    without = orjson.dumps(_body(fmt, source))
    ids = []
    for raw in (with_fields, without):
        status, resp, _ = await post_json(http, _url(worker, fmt), raw, key=new_key())
        assert status == 202, resp
        assert await s3_read_independently(settings, f"{source}/{resp['record_id']}.json") == raw
        ids.append(resp["record_id"])

    rows = {str(r["record_id"]): r for r in await wait_canonical(db, ids)}
    tokens = [rows[i]["normalized"]["patient_token"] for i in ids]
    assert tokens == [KNOWN_TOKEN, KNOWN_TOKEN]
    for row in rows.values():
        text = orjson.dumps(dict(row), default=str).decode()
        for absent in ('"sex"', '"postal_code"', TRACER_POSTAL_CODE, "female"):
            assert absent not in text, absent
    assert TRACER_POSTAL_CODE not in worker.log_text()


@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.label)
@pytest.mark.parametrize(
    ("field", "value"),
    [("sex", "F"), ("sex", None), ("postal_code", "0213"), ("postal_code", TRACER_POSTAL_CODE[:9])],
)
async def test_a_bad_value_is_400_naming_the_field_and_writes_nothing(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    fmt: formats.IngestFormat,
    field: str,
    value: Any,
) -> None:
    source, key = f"patient-fields-{uuid.uuid4().hex[:8]}", new_key()
    assert await _rows_written(db, key, source) == (0, 0, 0)
    body = _body(fmt, source, **{field: value})
    status, resp, _ = await post_json(http, _url(worker, fmt), body, key=key)
    assert (status, resp) == (400, {"error": f"invalid field: patient.{field}"})
    assert await _rows_written(db, key, source) == (0, 0, 0)
    assert await _objects_under(settings, source) == 0
    assert TRACER_POSTAL_CODE[:9] not in worker.log_text()


async def test_tokenize_gives_the_pinned_token_and_still_takes_no_other_field(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    identity = {
        "given_name": "Ada",
        "family_name": "Lovelace",
        "dob": "1815-12-10",
        "ssn": "123-45-6789",
    }
    url = f"{worker.base_url}/tokenize"
    assert (await post_json(http, url, identity))[:2] == (200, {"patient_token": KNOWN_TOKEN})
    for extra in ({"sex": "female"}, {"postal_code": "02139"}):
        assert (await post_json(http, url, {**identity, **extra}))[:2] == (
            400,
            {"error": "unknown field"},
        )
