"""Hostile input: tokenizer properties, a JWT attack list, and bodies built to break the parser.

Three parts, cheapest first:

1. Hypothesis properties of the tokenizer's canonicalisation (pure functions): idempotence,
   White_Space and case invariance, U+001C..U+001F kept, ASCII-only SSN digits, strict dates, and
   that no input whatsoever raises anything but ``IdentityError``. The oracles are written from
   docs/API.md here, not imported from the module under test.
2. JWTs built to get past verification, against the strict (ENV=staging) worker on every
   authenticated route: each is 401 ``{"error":"unauthorized"}`` and stores nothing.
3. Oversized, deeply nested, malformed and mislabelled bodies, and non-UTF-8 header bytes, against
   the local worker: each gets a documented status with the JSON error shape, never a 5xx, and
   the worker is alive and healthy afterwards with no unhandled error in its log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exchange_stream.core.identity import (
    IdentityError,
    Tokenizer,
    canonical_dob,
    canonical_name,
    canonical_ssn,
)
from tests.auth_tokens import ISS, SECRET, alg_none_token, b64, claims, good_token
from tests.conftest import SHARED_WORKER_ENV
from tests.payloads import new_key, partner_a_v1_encounter, v1_body, v2_body
from tests.support import WorkerProcess, post_json, wait_canonical

# --------------------------------------------------------------------------------------------
# 1. Tokenizer properties
# --------------------------------------------------------------------------------------------

# docs/API.md, written out again as the oracle: the Unicode White_Space property.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
INFORMATION_SEPARATORS = "\x1c\x1d\x1e\x1f"  # not White_Space, though str.split() splits on them
TOKEN = re.compile(r"[0-9a-f]{64}")
PROPERTY = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
tokenizer = Tokenizer("hostile-test-secret")

any_text = st.text(max_size=40)
# A word: no White_Space and no information separator inside.
words = st.text(
    alphabet=st.characters(exclude_characters=WHITE_SPACE + INFORMATION_SEPARATORS),
    min_size=1,
    max_size=12,
)
ws_runs = st.text(alphabet=st.sampled_from(WHITE_SPACE), min_size=1, max_size=4)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def _round_trips_case(c: str) -> bool:
    """Characters whose upper case is one code point that lower-cases back to them."""
    up = c.upper()
    return len(up) == 1 and up.lower() == c


cased_letters = st.characters(categories=["Ll"]).filter(_round_trips_case)


@PROPERTY
@given(any_text)
def test_name_canonicalisation_is_idempotent(text: str) -> None:
    try:
        once = canonical_name(text, "given_name")
    except IdentityError:
        return
    assert canonical_name(once, "given_name") == once


@PROPERTY
@given(any_text)
def test_dob_and_ssn_canonicalisation_are_idempotent(text: str) -> None:
    assert canonical_ssn(canonical_ssn(text)) == canonical_ssn(text)
    try:
        dob = canonical_dob(text)
    except IdentityError:
        return
    assert canonical_dob(dob) == dob


@PROPERTY
@given(st.lists(words, min_size=1, max_size=4), st.data())
def test_any_white_space_between_or_around_words_leaves_the_token(
    parts: list[str], data: st.DataObject
) -> None:
    plain = " ".join(parts)
    runs = [data.draw(ws_runs) for _ in range(len(parts) + 1)]
    spaced = runs[0] + "".join(p + r for p, r in zip(parts, runs[1:], strict=True))
    dob = data.draw(ws_runs) + "1990-02-28" + data.draw(ws_runs)
    assert tokenizer.token(spaced, spaced, dob) == tokenizer.token(plain, plain, "1990-02-28")


@PROPERTY
@given(words, words, st.sampled_from(INFORMATION_SEPARATORS))
def test_information_separators_are_not_white_space(a: str, b: str, sep: str) -> None:
    joined = tokenizer.token(f"{a}{sep}{b}", "x", "2000-01-01")
    assert joined != tokenizer.token(f"{a} {b}", "x", "2000-01-01")
    assert tokenizer.token(f"{a}{sep}", "x", "2000-01-01") != tokenizer.token(a, "x", "2000-01-01")


@PROPERTY
@given(st.text(alphabet=cased_letters, min_size=1, max_size=16), st.data())
def test_letter_case_does_not_change_the_token(name: str, data: st.DataObject) -> None:
    mixed = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
    assert tokenizer.token(mixed, name.upper(), "2000-01-01") == tokenizer.token(
        name, name, "2000-01-01"
    )


@PROPERTY
@given(any_text)
def test_lower_casing_is_simple_and_context_free(text: str) -> None:
    try:
        name = canonical_name(text, "given_name")
    except IdentityError:
        return
    # Σ never becomes the final ς, and İ never becomes "i" + U+0307, unless they were sent.
    assert "\u03c2" not in name or "\u03c2" in text
    assert "\u0307" not in name or "\u0307" in text
    assert len(name) <= len(text)


@PROPERTY
@given(json_values, json_values, json_values, json_values)
def test_no_input_raises_anything_but_identity_error(g, f, d, s) -> None:
    try:
        token = tokenizer.token(g, f, d, s)
    except IdentityError as exc:
        # The message names the field and the reason, never the value.
        assert re.fullmatch(r"(missing|invalid) field: (given_name|family_name|dob|ssn)", str(exc))
        return
    assert TOKEN.fullmatch(token)


@PROPERTY
@given(any_text, any_text, any_text, st.none() | any_text)
def test_arbitrary_unicode_is_a_token_or_an_identity_error(g, f, d, s) -> None:
    try:
        token = tokenizer.token(g, f, d, s)
    except IdentityError:
        return
    assert TOKEN.fullmatch(token)


@PROPERTY
@given(any_text, st.lists(words, min_size=1, max_size=3), st.dates(), st.data())
def test_tokens_are_64_lowercase_hex(g: str, f: list[str], dob: dt.date, data) -> None:
    given_name = g if g.strip(WHITE_SPACE) else "x"
    token = tokenizer.token(given_name, " ".join(f), dob.isoformat(), data.draw(any_text))
    assert TOKEN.fullmatch(token)


@PROPERTY
@given(st.dates(), ws_runs | st.just(""), ws_runs | st.just(""))
def test_every_real_date_is_accepted_as_itself(day: dt.date, before: str, after: str) -> None:
    assert canonical_dob(f"{before}{day.isoformat()}{after}") == day.isoformat()


SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@PROPERTY
@example("0000-02-29")
@example("0000-02-30")
@example("0001-02-29")
@given(any_text | st.from_regex(r"\A[0-9\u0660-\u0669]{4}.[0-9]{2}.[0-9]{1,3}\Z"))
def test_a_dob_is_accepted_only_as_a_real_yyyy_mm_dd(text: str) -> None:
    core = text.strip(WHITE_SPACE)
    try:
        # strptime has no year 0, which is real here: it has the month lengths of year 2000 (the
        # calendar repeats every 400 years).
        dt.datetime.strptime(f"2000{core[4:]}" if core.startswith("0000") else core, "%Y-%m-%d")
        real = SHAPE.fullmatch(core) is not None
    except ValueError:
        real = False
    if real:
        assert canonical_dob(text) == core
    else:
        with pytest.raises(IdentityError):
            canonical_dob(text)


@PROPERTY
@given(
    st.text(alphabet="0123456789", max_size=12),
    st.lists(
        st.characters(categories=["Nd", "Po", "Pd", "Zs"]).filter(lambda c: c not in "0123456789"),
        max_size=8,
    ),
    st.data(),
)
def test_only_ascii_digits_of_an_ssn_count(digits: str, noise: list[str], data) -> None:
    mixed = list(digits)
    for ch in noise:
        mixed.insert(data.draw(st.integers(0, len(mixed))), ch)
    assert canonical_ssn("".join(mixed)) == digits
    expected = tokenizer.token("a", "b", "2000-01-01", digits or None)
    assert tokenizer.token("a", "b", "2000-01-01", "".join(mixed)) == expected


# --------------------------------------------------------------------------------------------
# 2. JWT attack list (strict worker: JWTs only)
# --------------------------------------------------------------------------------------------

HS256_HEADER = {"alg": "HS256", "typ": "JWT"}


def _raw_hs256(header: dict | bytes, payload: dict | bytes, key: bytes = SECRET.encode()) -> str:
    """A compact JWS signed with HMAC-SHA256 under ``key``, whatever the header says."""
    h = header if isinstance(header, bytes) else orjson.dumps(header)
    p = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    signing_input = f"{b64(h)}.{b64(p)}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def _rsa_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _asymmetric(algorithm: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm.startswith("ES"):
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims(), key, algorithm=algorithm)


def _none_variant(alg: str, signed: bool = False) -> str:
    header = {"alg": alg, "typ": "JWT"}
    if signed:
        return _raw_hs256(header, claims())
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims()))}."


def _swap_signature() -> str:
    a, b = good_token(), jwt.encode(claims(sub="someone-else"), SECRET, algorithm="HS256")
    return a.rsplit(".", 1)[0] + "." + b.rsplit(".", 1)[1]


def _flip_last_signature_char() -> str:
    token = good_token()
    return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]


def _deep_header(depth: int = 1200) -> str:
    header = b'{"alg":"HS256","x":' + b"[" * depth + b"]" * depth + b"}"
    return _raw_hs256(header, claims())


def _hs(**overrides) -> Callable[[], str]:
    return lambda: jwt.encode(claims(**overrides), SECRET, algorithm="HS256")


NOW = int(time.time())
JWT_ATTACKS: dict[str, Callable[[], str]] = {
    "alg none, empty signature": alg_none_token,
    "alg None": lambda: _none_variant("None"),
    "alg NONE": lambda: _none_variant("NONE"),
    "alg nOnE": lambda: _none_variant("nOnE"),
    "alg none carrying a valid HS256 signature": lambda: _none_variant("none", signed=True),
    "key confusion: HS256 keyed with an RSA public key": lambda: _raw_hs256(
        HS256_HEADER, claims(), key=_rsa_public_pem()
    ),
    "key confusion: RS256": lambda: _asymmetric("RS256"),
    "key confusion: PS256": lambda: _asymmetric("PS256"),
    "ES256": lambda: _asymmetric("ES256"),
    "HS384 with the right secret": lambda: jwt.encode(claims(), SECRET, algorithm="HS384"),
    "expired": _hs(exp=NOW - 120),
    "expired long ago": _hs(exp=1),
    "not yet valid": _hs(nbf=NOW + 3600),
    "no exp": _hs(exp=None),
    "wrong issuer": _hs(iss="https://evil.test"),
    "issuer in another case": _hs(iss=ISS.upper()),
    "no issuer": _hs(iss=None),
    "wrong audience": _hs(aud="someone-else"),
    "audience list without ours": _hs(aud=["a", "b"]),
    "no audience": _hs(aud=None),
    "oversized, over the service limit": _hs(pad="x" * 4000),
    "malformed base64": lambda: "!!!!.@@@@.####",
    "base64 of the wrong length": lambda: good_token().replace(".", "A.", 1),
    "only two segments": lambda: good_token().rsplit(".", 1)[0],
    "four segments": lambda: good_token() + ".e30",
    "empty segments": lambda: "..",
    "header not JSON": lambda: f"{b64(b'not json')}.{b64(orjson.dumps(claims()))}.c2ln",
    "header a JSON array": lambda: _raw_hs256(b'["HS256"]', claims()),
    "header nested 1200 deep": _deep_header,
    "payload not JSON, correctly signed": lambda: _raw_hs256(HS256_HEADER, b"not json"),
    "payload a JSON array, correctly signed": lambda: _raw_hs256(HS256_HEADER, b"[1,2,3]"),
    "crit header naming an unknown extension": lambda: _raw_hs256(
        {"alg": "HS256", "crit": ["x-unknown"], "x-unknown": True}, claims()
    ),
    "kid path traversal, signed with an empty key": lambda: _raw_hs256(
        {"alg": "HS256", "kid": "../../../../../../dev/null"}, claims(), key=b""
    ),
    "kid SQL injection": lambda: _raw_hs256(
        {"alg": "HS256", "kid": "x' UNION SELECT 'attacker' --"}, claims(), key=b"attacker"
    ),
    "embedded jwk with the attacker's key": lambda: _raw_hs256(
        {"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"attacker-key")}},
        claims(),
        key=b"attacker-key",
    ),
    "jku pointing elsewhere": lambda: _raw_hs256(
        {"alg": "HS256", "jku": "http://127.0.0.1:1/jwks.json"}, claims(), key=b"attacker-key"
    ),
    "empty signature": lambda: good_token().rsplit(".", 1)[0] + ".",
    "signature of another token": _swap_signature,
    "signature with one character changed": _flip_last_signature_char,
    "empty token": lambda: "",
    "dev shortcut outside local": lambda: "dev",
}
AUTH_ROUTES = ["/v1/ingest", "/v2/ingest", "/tokenize"]
IDENTITY = {"given_name": "Ada", "family_name": "Lovelace", "dob": "1815-12-10"}


def _body_for(route: str) -> dict:
    return {"/v1/ingest": v1_body(), "/v2/ingest": v2_body()}.get(route, dict(IDENTITY))


async def _nothing_stored(db: asyncpg.Pool, keys: list[str]) -> bool:
    found = await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = ANY($1)", keys)
    return found == 0


# PyJWT warns about short HMAC keys, which some attacks use on purpose.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("attack", list(JWT_ATTACKS))
async def test_jwt_attack_is_401_on_every_route(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, attack: str
) -> None:
    token = JWT_ATTACKS[attack]()
    keys = []
    for route in AUTH_ROUTES:
        keys.append(new_key())
        status, body, _ = await post_json(
            http,
            f"{strict_worker.base_url}{route}",
            _body_for(route),
            key=keys[-1],
            token=None,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert (status, body) == (401, {"error": "unauthorized"}), route
    assert await _nothing_stored(db, keys)


async def test_a_good_token_still_passes_every_route(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    """The control for the list above: the strict worker does accept a proper token."""
    statuses = []
    for route in AUTH_ROUTES:
        status, _, _ = await post_json(
            http,
            f"{strict_worker.base_url}{route}",
            _body_for(route),
            key=new_key(),
            token=good_token(),
        )
        statuses.append(status)
    assert statuses == [202, 202, 200]


OVERSIZED_TOKEN = "A" * (64 * 1024)


async def test_a_64_kib_token_is_401_unauthorized(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    for route in AUTH_ROUTES:
        status, body, _ = await post_json(
            http,
            f"{strict_worker.base_url}{route}",
            _body_for(route),
            key=new_key(),
            token=OVERSIZED_TOKEN,
        )
        assert (status, body) == (401, {"error": "unauthorized"}), route


async def test_a_header_beyond_the_parser_limit_is_refused_without_a_5xx(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    # Past 80 KiB aiohttp's HTTP parser answers before any view runs: a 400, never a crash.
    status, _, _ = await post_json(
        http, f"{strict_worker.base_url}/tokenize", dict(IDENTITY), token="A" * (96 * 1024)
    )
    assert status == 400
    async with http.get(f"{strict_worker.base_url}/healthz") as r:
        assert r.status == 200


# --------------------------------------------------------------------------------------------
# 3. Hostile bodies and headers (local worker)
# --------------------------------------------------------------------------------------------

ROUTES = AUTH_ROUTES
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def log_start(worker: WorkerProcess) -> int:
    """Where this module's part of the worker log begins."""
    return len(worker.log_text())


async def _post(
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    route: str,
    data: bytes | AsyncIterator[bytes],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict]:
    h = {"Authorization": "Bearer dev", "Idempotency-Key": new_key()}
    h.update(headers or {})
    async with http.post(f"{worker.base_url}{route}", data=data, headers=h) as r:
        raw = await r.read()
        assert r.content_type == "application/json", (r.status, raw[:200])
        return r.status, orjson.loads(raw)


async def _raw_request(port: int, head: bytes, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (for header octets no client library sends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_11_mib_body_is_413(
    worker: WorkerProcess, http: aiohttp.ClientSession, log_start: int, route: str, declared: bool
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b" " * MIB

    data = b" " * (11 * MIB) if declared else chunks()
    assert await _post(http, worker, route, data) == (413, {"error": "payload too large"})


@pytest.mark.parametrize("route", ROUTES)
async def test_a_gzip_bomb_is_413(worker: WorkerProcess, http: aiohttp.ClientSession, route):
    bomb = gzip.compress(b" " * (64 * MIB), compresslevel=9)  # ~64 KiB on the wire
    status, body = await _post(http, worker, route, bomb, {"Content-Encoding": "gzip"})
    assert (status, body) == (413, {"error": "payload too large"})


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 1025 + b"]" * 1025,
    ],
    ids=["100k nested arrays", "100k nested objects", "1025 nested arrays"],
)
async def test_nesting_beyond_the_parser_limit_is_400(
    worker: WorkerProcess, http: aiohttp.ClientSession, route: str, body: bytes
) -> None:
    assert await _post(http, worker, route, body) == (400, {"error": "invalid JSON"})


def test_the_json_parser_refuses_depth_1025_with_a_decode_error() -> None:
    """orjson's own limit, on which the 400 above relies (not a RecursionError)."""
    orjson.loads(b"[" * 1024 + b"]" * 1024)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"[" * 1025 + b"]" * 1025)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


MALFORMED = {
    "non-UTF-8 bytes": b'{"given_name": "\xff\xfe", "family_name": "b", "dob": "1990-01-01"}',
    "lone surrogate escape": b'{"given_name": "\\ud800", "family_name": "b", "dob": "1990-01-01"}',
    "raw NUL in a string": b'{"given_name": "a\x00", "family_name": "b", "dob": "1990-01-01"}',
    "UTF-8 BOM": b'\xef\xbb\xbf{"given_name": "a", "family_name": "b", "dob": "1990-01-01"}',
    "trailing garbage": b'{"given_name": "a", "family_name": "b", "dob": "1990-01-01"} x',
    "NaN": b'{"given_name": NaN}',
    "number out of range": b'{"given_name": 1e400}',
    "empty body": b"",
    "white space only": b" \r\n\t ",
    "single quotes": b"{'given_name': 'a'}",
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_json_is_400(worker, http, log_start, route: str, case: str) -> None:
    assert await _post(http, worker, route, MALFORMED[case]) == (400, {"error": "invalid JSON"})


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body", [b"[]", b"null", b'"text"', b"42"], ids=str)
async def test_a_json_document_that_is_not_an_object_is_400(worker, http, route, body) -> None:
    assert await _post(http, worker, route, body) == (400, {"error": "body must be a JSON object"})


async def test_nul_escapes_in_identity_values_are_just_characters(worker, http) -> None:
    body = orjson.dumps({**IDENTITY, "given_name": "A\u0000da"})
    status, resp = await _post(http, worker, "/tokenize", body)
    assert status == 200 and TOKEN.fullmatch(resp["patient_token"])
    v2 = v2_body(patient={**v2_body()["patient"], "family_name": "Love\u0000lace"})
    assert (await _post(http, worker, "/v2/ingest", orjson.dumps(v2)))[0] == 202


async def test_two_hundred_thousand_keys_are_answered_and_the_worker_carries_on(
    worker, http
) -> None:
    # How fast is a bench figure; here: an answer (within the session's 60 s client timeout),
    # and the same process answering afterwards.
    extra = {f"k{i}": i for i in range(200_000)}
    starts = worker.starts
    status, _ = await _post(http, worker, "/v2/ingest", orjson.dumps({**v2_body(), **extra}))
    assert status == 202  # unknown top-level fields are ignored
    status, body = await _post(http, worker, "/tokenize", orjson.dumps({**IDENTITY, **extra}))
    assert status == 400 and body["error"].startswith("unknown field")
    async with http.get(f"{worker.base_url}/healthz") as r:
        assert r.status == 200
    assert worker.starts == starts and worker.proc is not None and worker.proc.poll() is None


@pytest.mark.parametrize(
    "key", ["x" * 100_000, "Zq patient name", "Smith", "mrn", "line\nbreak", "é-accent"], ids=len
)
async def test_an_unknown_key_is_never_echoed(worker, http, key: str) -> None:
    status, body = await _post(http, worker, "/tokenize", orjson.dumps({**IDENTITY, key: 1}))
    assert (status, body) == (400, {"error": "unknown field"})


async def test_duplicate_keys_mean_the_last_one_at_ingest_and_in_the_normalizer(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    """No parser differential: validation and the normalizer read the same patient, even with a
    legal 1,000-deep structure riding along in the payload."""
    first = orjson.dumps({"given_name": "   ", "family_name": "Nobody", "dob": "not a date"})
    last = orjson.dumps({"given_name": "Grace", "family_name": "Hopper", "dob": "1906-12-09"})
    payload = orjson.loads(orjson.dumps(partner_a_v1_encounter()))
    deep = b"[" * 1000 + b"]" * 1000
    body = (
        b'{"source": "hostile-dup", "record_kind": "encounter", "schema_hint": "partnerA.v1", '
        b'"patient": '
        + first
        + b', "patient": '
        + last
        + b', "payload": '
        + orjson.dumps(payload)[:-1]
        + b', "extra": '
        + deep
        + b"}}"
    )
    status, resp = await _post(http, worker, "/v2/ingest", body)
    assert status == 202, resp
    (row,) = await wait_canonical(db, [resp["record_id"]], timeout=180)
    secret = SHARED_WORKER_ENV["TOKENIZER_HMAC_SECRET"]
    expected = Tokenizer(secret).token("Grace", "Hopper", "1906-12-09")
    assert row["normalized"]["patient_token"] == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/json; charset=latin-1",
        "application/octet-stream",
    ],
)
async def test_the_body_is_read_as_json_whatever_its_label(worker, http, content_type: str) -> None:
    """README's curl example sends no JSON Content-Type; the label must not change the answer."""
    h = {"Content-Type": content_type}
    expected = Tokenizer(SHARED_WORKER_ENV["TOKENIZER_HMAC_SECRET"]).token(**IDENTITY)
    status, body = await _post(http, worker, "/tokenize", orjson.dumps(IDENTITY), h)
    assert (status, body) == (200, {"patient_token": expected})
    status, _ = await _post(http, worker, "/v1/ingest", orjson.dumps(v1_body()), h)
    assert status == 202
    form = b"given_name=Ada&family_name=Lovelace&dob=1815-12-10"
    assert await _post(http, worker, "/tokenize", form, h) == (400, {"error": "invalid JSON"})


@pytest.mark.parametrize("route", ["/v1/ingest", "/v2/ingest"])
async def test_a_non_utf8_idempotency_key_is_400_not_500(
    worker: WorkerProcess, db: asyncpg.Pool, route: str
) -> None:
    body = orjson.dumps(v1_body() if route == "/v1/ingest" else v2_body())
    head = (
        f"POST {route} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer dev\r\n".encode()
        + b"Content-Type: application/json\r\nIdempotency-Key: key-\xff\xfe\xfd\xfc\xfb\xfa\r\n"
    )
    status, resp = await _raw_request(worker.port, head, body)
    assert (status, orjson.loads(resp)) == (400, {"error": "invalid header: Idempotency-Key"})
    # A UTF-8 key with non-ASCII characters is fine.
    key = f"ключ-{uuid.uuid4()}"
    head = (
        f"POST {route} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer dev\r\n"
        f"Idempotency-Key: {key}\r\n"
    ).encode()
    status, resp = await _raw_request(worker.port, head, body)
    assert status == 202, resp
    assert not await _nothing_stored(db, [key])


async def test_a_non_ascii_correlation_id_is_replaced(worker: WorkerProcess) -> None:
    head = (
        b"POST /v2/ingest HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer dev\r\n"
        + f"Idempotency-Key: {new_key()}\r\n".encode()
        + b"X-Correlation-Id: corr-\xff\xfe\xfd\xfc\xfb\xfa\r\n"
    )
    status, resp = await _raw_request(worker.port, head, orjson.dumps(v2_body()))
    assert status == 202
    uuid.UUID(orjson.loads(resp)["correlation_id"])


async def test_the_worker_survived_the_hostile_run(
    worker: WorkerProcess, http: aiohttp.ClientSession, log_start: int
) -> None:
    """Last in the module: alive, healthy, and no request of this module hit the 500 handler."""
    assert worker.proc is not None and worker.proc.poll() is None
    async with http.get(f"{worker.base_url}/healthz") as r:
        assert r.status == 200
    ours = worker.log_text()[log_start:]
    assert '"msg":"unhandled error"' not in ours
