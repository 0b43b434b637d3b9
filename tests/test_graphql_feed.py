"""The `records` feed on the real services: commit order that never skips a row committed late,
`updatedSince`, `resumeCursor`, the kind index, and the read limits."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import orjson
import pytest

from exchange_stream.infra.config import Settings
from exchange_stream.infra.sql import q
from exchange_stream.read.tokens import LOCAL_DEV_RECIPIENT, RecipientTokenService
from tests.payloads import new_key, v2_body
from tests.support import WorkerProcess, eventually, post_json, wait_canonical
from tests.test_graphql import gql

FEED = """
query ($s: String, $after: String, $since: DateTime) {
  records(source: $s, first: 1, after: $after, updatedSince: $since) {
    items { recordId kind encounter { encounterId } }
    nextCursor resumeCursor
  }
}"""

# The columns the normalizer writes (migration 0020's normalize_commit).
INSERT = """
INSERT INTO canonical_records
    (record_id, source, raw_object_key, raw_sha256, normalized, ingested_at, normalized_at,
     correlation_id, event_version, record_kind, schema_hint)
VALUES ($1, $2, $8, $3, $4::text::jsonb, $5, coalesce($6, now()), 'feed-test', '2', $7,
        'partnerA.v1')
"""


def _canonical(kind: str = "encounter") -> dict:
    master = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    ident = {"encounter": "encounter_id", "claim": "claim_id", "lab_result": "result_id"}[kind]
    return {
        "patient_token": master,
        "record_kind": kind,
        kind: {ident: f"feed-{uuid.uuid4().hex[:8]}", "encounter_class": "inpatient"},
        "meta": {"mapping_version": "test"},
    }


async def _insert(
    conn: asyncpg.Connection | asyncpg.Pool,
    source: str,
    *,
    ingested_at: datetime | None = None,
    normalized_at: datetime | None = None,
    kind: str = "encounter",
) -> uuid.UUID:
    record_id = uuid.uuid4()
    await conn.execute(
        INSERT,
        record_id,
        source,
        "0" * 64,
        orjson.dumps(_canonical(kind)).decode(),
        ingested_at or datetime.now(UTC),
        normalized_at,
        kind,
        f"{source}/{record_id}.json",
    )
    return record_id


async def _page_to_end(
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    variables: dict,
) -> tuple[list[str], str]:
    """Every recordId from ``variables["after"]`` on, one per page, and the last resumeCursor."""
    ids: list[str] = []
    after = variables.get("after")
    while True:
        status, doc = await gql(http, worker, FEED, {**variables, "after": after})
        assert status == 200 and "errors" not in doc, doc
        page = doc["data"]["records"]
        assert page["resumeCursor"], page
        ids += [i["recordId"] for i in page["items"]]
        if page["nextCursor"] is None:
            return ids, page["resumeCursor"]
        assert page["nextCursor"] == page["resumeCursor"]
        after = page["nextCursor"]


@pytest.fixture
async def dev_ids(db: asyncpg.Pool, settings: Settings) -> RecipientTokenService:
    return RecipientTokenService(lambda: db, settings.recipient_token_secret, ttl_s=0)


async def test_a_row_committed_late_is_read_after_the_cursor_once_it_commits(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    dev_ids: RecipientTokenService,
) -> None:
    source = f"feed-{uuid.uuid4().hex[:8]}"
    held = await asyncpg.connect(settings.dsn)
    try:
        # One record's canonical transaction stays open: accepted a minute ago, its row inserted
        # as the normalizer inserts it, not yet committed (a pause, a retry, a slow batch).
        tx = held.transaction()
        await tx.start()
        late = await _insert(held, source, ingested_at=datetime.now(UTC) - timedelta(minutes=1))
        # Later records go the whole way through the worker and commit.
        later = []
        for _ in range(2):
            status, resp, _ = await post_json(
                http, f"{worker.base_url}/v2/ingest", v2_body(source=source), key=new_key()
            )
            assert status == 202, resp
            later.append(resp["record_id"])
        await wait_canonical(db, later)

        # Paged to the end while it is open: the open row is not there, and neither are the
        # rows committed after it began (the horizon holds them back: none may pass it).
        seen, resume = await _page_to_end(http, worker, {"s": source})
        assert seen == []
        await tx.commit()
    finally:
        await held.close()

    expected = await dev_ids.record_ids(LOCAL_DEV_RECIPIENT, [late, *(uuid.UUID(r) for r in later)])
    got: list[str] = []

    async def all_read() -> bool:
        nonlocal resume
        ids, resume = await _page_to_end(http, worker, {"s": source, "after": resume})
        got.extend(ids)
        return len(got) >= 3

    await eventually(all_read, timeout=60)
    # The late row first (its transaction began first), then the others; each exactly once.
    assert got[0] == expected[0]
    assert sorted(got) == sorted(expected) and len(set(got)) == len(got) == 3
    ids, again = await _page_to_end(http, worker, {"s": source, "after": resume})
    assert (ids, again) == ([], resume), "an empty page resumes where it started"


async def test_updated_since_reads_only_rows_written_at_or_after_it(
    worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    dev_ids: RecipientTokenService,
) -> None:
    source = f"feed-{uuid.uuid4().hex[:8]}"
    since = datetime(2031, 1, 1, tzinfo=UTC)
    await _insert(db, source, normalized_at=since - timedelta(seconds=1))
    at = await _insert(db, source, normalized_at=since)
    after = await _insert(db, source, normalized_at=since + timedelta(days=1))
    expected = await dev_ids.record_ids(LOCAL_DEV_RECIPIENT, [at, after])

    async def both() -> bool:
        got, _ = await _page_to_end(
            http, worker, {"s": source, "since": "2031-01-01T01:00:00+01:00"}
        )
        return sorted(got) == sorted(expected)

    await eventually(both, timeout=30)

    # An empty first page still gives a position to poll on from, and nothing is missed there.
    far = "2032-06-01T00:00:00Z"
    got, resume = await _page_to_end(http, worker, {"s": source, "since": far})
    assert got == []
    newer = await _insert(db, source, normalized_at=datetime(2032, 7, 1, tzinfo=UTC))
    (newer_id,) = await dev_ids.record_ids(LOCAL_DEV_RECIPIENT, [newer])

    async def polled() -> bool:
        ids, _ = await _page_to_end(http, worker, {"s": source, "since": far, "after": resume})
        return ids == [newer_id]

    await eventually(polled, timeout=30)

    status, doc = await gql(http, worker, FEED, {"s": source, "since": "2031-01-01"})
    assert status in (200, 400) and "RFC 3339" in doc["errors"][0]["message"], doc


async def test_a_rare_kind_reads_only_its_rows_through_the_kind_index(
    db: asyncpg.Pool, migrated: None
) -> None:
    source = f"feed-{uuid.uuid4().hex[:8]}"
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # Enough rows that reading them all would cost; rolled back, statistics included.
            await conn.execute(
                """
                INSERT INTO canonical_records
                    (record_id, source, raw_object_key, raw_sha256, normalized, ingested_at,
                     event_version, record_kind, schema_hint)
                SELECT gen_random_uuid(), $1, 'k', 'x', '{}'::jsonb, now(), '2',
                       CASE WHEN g % 2000 = 0 THEN 'lab_result' ELSE 'encounter' END,
                       'partnerA.v1'
                FROM generate_series(1, 20000) g
                """,
                source,
            )
            await conn.execute("ANALYZE canonical_records")
            # The statement the worker runs for records(kind: "lab_result"), planner as is.
            args = (
                "0",
                uuid.UUID(int=0),
                101,
                None,
                None,
                False,
                "lab_result",
                True,
                [],
                [],
                [],
                [],
            )
            rows = await conn.fetch(f"EXPLAIN {q('read_records_of_kind')}", *args)
        finally:
            await tx.rollback()
    plan = "\n".join(r[0] for r in rows)
    assert "canonical_records_kind_feed_idx" in plan, plan
    assert "Index Cond: ((record_kind = 'lab_result'::text)" in plan, plan


@pytest.mark.parametrize(
    "query",
    [
        "{ " + " ".join(f'p{i}: patient(patientToken: "x") {{ dob }}' for i in range(11)) + " }",
        "{ ...A ...B } fragment A on Query { "
        + " ".join(f'a{i}: patient(patientToken: "x") {{ dob }}' for i in range(6))
        + " } fragment B on Query { ... on Query { "
        + " ".join(f'b{i}: patient(patientToken: "x") {{ dob }}' for i in range(5))
        + " } }",
    ],
)
async def test_more_than_ten_root_fields_is_a_graphql_error(
    worker: WorkerProcess, http: aiohttp.ClientSession, query: str
) -> None:
    status, doc = await gql(http, worker, query)
    assert status == 400 and "more than 10 root fields" in doc["errors"][0]["message"], doc
    ten = "{ " + " ".join(f'p{i}: patient(patientToken: "x") {{ dob }}' for i in range(10)) + " }"
    status, doc = await gql(http, worker, ten)
    assert status == 200 and "errors" not in doc, doc


async def test_a_variable_first_counts_as_the_largest_page(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    items = (
        "items { recordId patientToken kind source schemaHint mappingVersion ingestedAt "
        "normalizedAt encounter { encounterId patientToken facilityId admitTime dischargeTime "
        "encounterClass cursor diagnosisCodes { system code } } claim { claimId patientToken "
        "payerId serviceDate cursor } labResult { resultId patientToken collectedAt status "
        "cursor } }"
    )
    query = (
        "query ($n: Int) { "
        + " ".join(f"r{i}: records(first: $n) {{ {items} }}" for i in range(4))
        + " }"
    )
    status, doc = await gql(http, worker, query, {"n": 500})
    assert status == 400 and "too complex" in doc["errors"][0]["message"], doc
    # The same with a literal page of 100 is within the limit.
    literal = query.replace("query ($n: Int) ", "").replace("$n", "100")
    status, doc = await gql(http, worker, literal)
    assert status == 200 and "errors" not in doc, doc
