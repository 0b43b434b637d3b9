"""The read API on the real services: the contract file served as is, recipients' tokens in and
out, no master token or patient data out, limits, batching, and index-backed lookups."""

from __future__ import annotations

import uuid

import aiohttp
import asyncpg
import graphql
import orjson
import pytest

from exchange_stream.infra.config import Settings
from exchange_stream.read.graphql import SCHEMA_PATH
from exchange_stream.read.tokens import LOCAL_DEV_RECIPIENT, RecipientTokenService
from tests.auth_tokens import SECRET as JWT_SECRET
from tests.auth_tokens import claims
from tests.conftest import STRICT_ENV
from tests.payloads import new_key, v2_body
from tests.support import WorkerProcess, eventually, post_json, run_cli, wait_canonical

ENCOUNTERS = """
query ($t: ID!, $first: Int, $after: String) {
  patient(patientToken: $t) { patientToken dob }
  encounters(patientToken: $t, first: $first, after: $after) {
    encounterId patientToken facilityId admitTime dischargeTime encounterClass cursor
    diagnosisCodes { system code }
  }
}
"""


def _nested(levels: int) -> str:
    selection = "{ name }"
    for _ in range(levels):
        selection = f"{{ ofType {selection} }}"
    return selection


# Deeper than any real query; the standard introspection query is 15 levels.
DEEP_INTROSPECTION = "{ __schema { types { fields { type " + _nested(14) + " } } } }"


async def gql(
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    query: str,
    variables: dict | None = None,
    token: str | None = "dev",
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"query": query, "variables": variables or {}}
    async with http.post(f"{worker.base_url}/graphql", json=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.fixture(scope="module")
async def patient(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, settings: Settings
) -> dict:
    """Three encounters and a claim of one new patient, canonical; its master and dev tokens."""
    source = f"gql-{uuid.uuid4().hex[:8]}"
    person = {"given_name": f"Gql{uuid.uuid4().hex[:6]}", "family_name": "Reader"}
    ids = []
    for _ in range(3):
        body = v2_body(source=source, patient={**v2_body()["patient"], **person})
        status, resp, _ = await post_json(http, f"{worker.base_url}/v2/ingest", body, key=new_key())
        assert status == 202, resp
        ids.append(resp["record_id"])
    rows = await wait_canonical(db, ids)
    master = rows[0]["normalized"]["patient_token"]
    tokens = RecipientTokenService(lambda: db, settings.recipient_token_secret, ttl_s=0)
    dev_token = await tokens.issue(LOCAL_DEV_RECIPIENT, master)
    assert dev_token is not None
    dev_ids = await tokens.record_ids(LOCAL_DEV_RECIPIENT, [uuid.UUID(i) for i in ids])
    return {
        "source": source,
        "ids": ids,
        "dev_ids": dev_ids,
        "master": master,
        "token": dev_token,
    }


async def test_the_served_schema_is_the_contract_file(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    status, doc = await gql(
        http, worker, graphql.get_introspection_query(descriptions=True, schema_description=True)
    )
    assert status == 200, doc
    served = graphql.build_client_schema(doc["data"])
    from_file = graphql.build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert graphql.print_schema(served) == graphql.print_schema(from_file)


async def test_a_patients_encounters_by_the_callers_own_token(
    worker: WorkerProcess, http: aiohttp.ClientSession, patient: dict
) -> None:
    status, doc = await gql(http, worker, ENCOUNTERS, {"t": patient["token"]})
    assert status == 200, doc
    assert doc["data"]["patient"] == {"patientToken": patient["token"], "dob": None}
    encounters = doc["data"]["encounters"]
    assert len(encounters) == 3
    assert {e["patientToken"] for e in encounters} == {patient["token"]}
    assert encounters[0]["encounterClass"] == "inpatient"
    assert encounters[0]["diagnosisCodes"][0]["system"].startswith("http")
    raw = orjson.dumps(doc).decode()
    assert patient["master"] not in raw, "the master token never reaches a recipient"
    assert "Reader" not in raw and "1815" not in raw and "6789" not in raw

    # Pages of one, in order, following each item's cursor.
    seen, after = [], None
    for _ in range(3):
        status, page = await gql(
            http, worker, ENCOUNTERS, {"t": patient["token"], "first": 1, "after": after}
        )
        (item,) = page["data"]["encounters"]
        seen.append(item["encounterId"])
        after = item["cursor"]
    assert seen == [e["encounterId"] for e in encounters]
    status, page = await gql(http, worker, ENCOUNTERS, {"t": patient["token"], "after": after})
    assert page["data"]["encounters"] == []


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "rt1.local-dev.1." + "A" * 64,
        "rt1.someone-else.1." + "A" * 64,
        "",
    ],
)
async def test_tokens_that_do_not_resolve_get_the_empty_answer(
    worker: WorkerProcess, http: aiohttp.ClientSession, patient: dict, bad: str
) -> None:
    status, doc = await gql(http, worker, ENCOUNTERS, {"t": bad})
    assert (status, doc) == (200, {"data": {"patient": None, "encounters": []}})


async def test_another_recipients_token_reveals_nothing(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    patient: dict,
) -> None:
    other = f"rcp-{uuid.uuid4().hex[:8]}"
    assert (await run_cli("recipients", "add", other, "--local"))[0] == 0
    tokens = RecipientTokenService(lambda: db, settings.recipient_token_secret, ttl_s=0)
    theirs = await tokens.issue(other, patient["master"])
    status, doc = await gql(http, worker, ENCOUNTERS, {"t": theirs})
    assert (status, doc) == (200, {"data": {"patient": None, "encounters": []}})


async def test_records_pages_in_a_stable_order_until_the_last(
    worker: WorkerProcess, http: aiohttp.ClientSession, patient: dict
) -> None:
    query = """
    query ($s: String, $after: String) {
      records(source: $s, first: 2, after: $after) {
        items { recordId patientToken kind source schemaHint ingestedAt normalizedAt
                encounter { encounterId } claim { claimId } labResult { resultId } }
        nextCursor
      }
    }"""
    ids, after, pages = [], None, 0
    while True:
        status, doc = await gql(http, worker, query, {"s": patient["source"], "after": after})
        assert status == 200, doc
        page = doc["data"]["records"]
        pages += 1
        for item in page["items"]:
            assert item["patientToken"] == patient["token"]
            assert item["encounter"]["encounterId"] and item["claim"] is None
            ids.append(item["recordId"])
        after = page["nextCursor"]
        if after is None:
            break
    assert (pages, sorted(ids)) == (2, sorted(patient["dev_ids"]))


async def test_auth_missing_is_401_and_without_read_scope_or_recipient_403(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    def jwt_(**extra: object) -> str:
        import jwt

        return jwt.encode(claims(**extra), JWT_SECRET, algorithm="HS256")

    query = "{ records(first: 1) { nextCursor } }"
    assert (await gql(http, strict_worker, query, token=None))[0] == 401
    assert (await gql(http, strict_worker, query, token="dev"))[0] == 401
    status, doc = await gql(http, strict_worker, query, token=jwt_())
    assert (status, doc["errors"][0]["message"]) == (403, "forbidden")
    status, _ = await gql(http, strict_worker, query, token=jwt_(scope="records:read"))
    assert status == 403, "no recipient claim"
    status, _ = await gql(
        http, strict_worker, query, token=jwt_(recipient="never-registered", scope="records:read")
    )
    assert status == 403, "not a registered recipient"

    recipient = f"rcp-{uuid.uuid4().hex[:8]}"
    env = {"RECIPIENT_TOKEN_SECRET": STRICT_ENV["RECIPIENT_TOKEN_SECRET"]}
    assert (await run_cli("recipients", "add", recipient, "--local", env=env))[0] == 0
    good = jwt_(recipient=recipient, scope="records:read")
    status, doc = await gql(http, strict_worker, query, token=good)
    assert status == 200 and "records" in doc["data"], doc
    status, _ = await gql(http, strict_worker, query, token=jwt_(recipient=recipient))
    assert status == 403, "no records:read scope"
    # Introspection is off outside ENV=local.
    status, doc = await gql(http, strict_worker, "{ __schema { types { name } } }", token=good)
    assert status == 400 and "introspection" in doc["errors"][0]["message"].lower()

    assert (await run_cli("recipients", "revoke", recipient, "--local", env=env))[0] == 0

    async def refused() -> bool:
        return (await gql(http, strict_worker, query, token=good))[0] == 403

    await eventually(refused, timeout=30)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("{ records(first: 501) { nextCursor } }", "first must be between 1 and 500"),
        ("{ records(first: 0) { nextCursor } }", "first must be between 1 and 500"),
        ('{ records(after: "%%%") { nextCursor } }', "invalid cursor"),
        ('{ records(kind: "surgery") { nextCursor } }', "kind must be"),
        (DEEP_INTROSPECTION, "deeper than"),
        (
            "{ "
            + " ".join(
                f"r{i}: records(first: 500) {{ items {{ recordId kind source schemaHint "
                "ingestedAt encounter { encounterId facilityId admitTime } } }"
                for i in range(10)
            )
            + " }",
            "too complex",
        ),
        ("{ nope }", "Cannot query field 'nope'"),
        ("{ records { ", "syntax error"),
    ],
)
async def test_limits_and_bad_queries_get_graphql_errors(
    worker: WorkerProcess, http: aiohttp.ClientSession, query: str, message: str
) -> None:
    status, doc = await gql(http, worker, query)
    assert status in (200, 400), doc
    assert doc["errors"] and message in doc["errors"][0]["message"], doc
    assert "Traceback" not in orjson.dumps(doc).decode()


async def test_an_oversized_request_is_413(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    query = "{ records { nextCursor } }" + " " * (65 * 1024)
    status, doc = await gql(http, worker, query)
    assert status == 413 and doc["errors"][0]["message"] == "request too large"


async def _metric(http: aiohttp.ClientSession, worker: WorkerProcess, name: str) -> float:
    async with http.get(f"{worker.base_url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def test_a_page_of_500_records_costs_a_bounded_number_of_statements(
    worker: WorkerProcess, http: aiohttp.ClientSession, patient: dict
) -> None:
    query = """{ records(first: 500) { items { recordId patientToken kind
                 encounter { encounterId diagnosisCodes { code } } claim { claimId totalCharge
                 { amount } } labResult { resultId value { __typename } } } nextCursor } }"""
    count = await _metric(http, worker, "graphql_sql_statements_count")
    total = await _metric(http, worker, "graphql_sql_statements_sum")
    status, doc = await gql(http, worker, query)
    assert status == 200, doc
    items = doc["data"]["records"]["items"]
    assert len(items) >= 3
    assert await _metric(http, worker, "graphql_sql_statements_count") == count + 1
    spent = await _metric(http, worker, "graphql_sql_statements_sum") - total
    # The page, and at most one read of the recipient's keys: never one per item.
    assert 1 <= spent <= 2, spent


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("read_patient_kind", ("x" * 64, "encounter", "2020-01-01", uuid.UUID(int=0), 500, None)),
        ("read_records_of_source", ("0", uuid.UUID(int=0), 100, None, None, False, "s")),
        ("read_records_of_kind", ("0", uuid.UUID(int=0), 100, None, None, False, "claim")),
        ("read_records", ("0", uuid.UUID(int=0), 100, None, None, False)),
        (
            "read_records_of_source_kind",
            ("0", uuid.UUID(int=0), 100, None, None, False, "s", "claim"),
        ),
    ],
)
@pytest.mark.parametrize(
    "grants",
    [(True, [], [], [], []), (False, ["s"], ["claim"], [None], [None])],
    ids=["all-granted", "one-grant"],
)
async def test_read_lookups_are_index_scans(
    db: asyncpg.Pool, migrated: None, name: str, args: tuple, grants: tuple
) -> None:
    from datetime import datetime

    from exchange_stream.infra.sql import q

    values = [
        datetime.fromisoformat(a + "T00:00:00+00:00") if a == "2020-01-01" else a for a in args
    ] + list(grants)
    async with db.acquire() as conn, conn.transaction():
        # The table may be small here; what matters is that an index serves the query's shape.
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_sort = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {q(name)}", *values))
    assert "Index" in plan and "Sort" not in plan, plan
