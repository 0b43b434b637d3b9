"""Persons in the read API (issue 22, item 5): records the normalizer linked to one person, read
across sources by a recipient's own ``personToken``.

Records are linked by their match tokens (``core/match_tokens.py``, whose rules are still being
tuned): every scenario first checks with ``match_attributes``, ``match_tokens`` and ``link`` that
the decision rule of today links (or keeps apart) the patients it sends, so a change of rule
fails here with that reason rather than as a wrong answer. Each scenario's patients have a date
of birth and family names of their own (random letters: rules compare parts of names), so no
record of another scenario or test links with them.

The records are normalized by a worker of this module's own (topics and consumer group of its
own, ``isolated_worker``): the session's two shared workers share a consumer group but not
their ``MATCH_TOKEN_SECRET`` (the strict worker's is ``STRICT_ENV``'s), so a record either of
them normalized would carry match tokens that never meet the other's. Every wait polls
``record_persons`` or the GraphQL answer, never a fixed sleep.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from exchange_stream.core.access_token import issue_access_token, signing_key
from exchange_stream.core.match_tokens import MatchKeys, link, match_tokens
from exchange_stream.core.matching import match_attributes
from exchange_stream.infra.config import Settings
from exchange_stream.infra.sql import q
from exchange_stream.read.graphql import MAX_ROOT_FIELDS, Documents, executable_schema
from exchange_stream.read.tokens import LOCAL_DEV_RECIPIENT, RecipientTokenService
from tests.exchange_client import (
    PERSON,
    Exchange,
    birth_date,
    family,
    letters,
    patient,
)
from tests.support import WorkerProcess, eventually, isolated_worker, run_cli


def linked_as(settings: Settings, patients: Mapping[str, Mapping[str, Any]]) -> set[frozenset]:
    """The persons today's decision rule makes of ``patients`` (name -> patient object)."""
    keys = MatchKeys(settings.match_token_secret)
    tokens = [(name, match_tokens(match_attributes(p), keys)) for name, p in patients.items()]
    return {frozenset(cluster) for cluster in link(tokens)}


@pytest.fixture(scope="module")
async def linker(
    db: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """The worker that ingests, normalizes and links this module's records, and answers its
    reads (ENV=local: ``Bearer dev`` is ``local-dev``)."""
    workdir: Path = tmp_path_factory.mktemp("persons-worker")
    async with isolated_worker(workdir, "persons", db) as proc:
        yield proc


@pytest.fixture
def ex(linker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool) -> Exchange:
    return Exchange(http, linker, db)


def access_token(settings: Settings, recipient: str, kinds: list[str] | None = None) -> str:
    """A recipient's access token as ``POST /auth/token`` issues it (``kinds``: what a SMART
    type scope narrows it to)."""
    return issue_access_token(
        signing_key(settings.access_token_signing_key),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        recipient=recipient,
        scope="records:read",
        issued_at=int(time.time()),
        lifetime_s=600,
        kinds=kinds,
    )


def by_record(items: list[dict[str, Any]], ids: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Items by the test's names for them (``ids``: the caller's record id -> name)."""
    return {ids[i["recordId"]]: i for i in items if i["recordId"] in ids}


@pytest.fixture
async def scoped_ids(db: asyncpg.Pool, settings: Settings) -> RecipientTokenService:
    return RecipientTokenService(lambda: db, settings.recipient_token_secret, ttl_s=0)


async def names_of(
    tokens: RecipientTokenService, recipient: str, ids: Mapping[str, uuid.UUID]
) -> dict[str, str]:
    """The recipient's record id -> the test's name of the record."""
    scoped = await tokens.record_ids(recipient, list(ids.values()))
    return dict(zip(scoped, ids, strict=True))


# --- one person across sources ------------------------------------------------------------------


async def test_records_of_one_person_from_two_sources_share_one_person_token(
    ex: Exchange, settings: Settings, scoped_ids: RecipientTokenService
) -> None:
    surname, dob = family(), birth_date()
    william = patient("William", surname, dob)
    bill = patient("Bill", surname, dob)
    unrelated = patient("William", family(), dob)
    assert linked_as(settings, {"william": william, "bill": bill, "other": unrelated}) == {
        frozenset({"william", "bill"}),
        frozenset({"other"}),
    }, "today's decision rule no longer links William and Bill of one family and birth date"
    hospital, lab = f"persons-a-{letters(6)}", f"persons-b-{letters(6)}"
    ids = {
        "william": await ex.ingest(hospital, william),
        "bill": await ex.ingest(lab, bill, kind="claim"),
        "other": await ex.ingest(hospital, unrelated),
    }
    persons = await ex.persons(list(ids.values()))
    assert persons[ids["william"]] == persons[ids["bill"]] != persons[ids["other"]]

    names = await names_of(scoped_ids, LOCAL_DEV_RECIPIENT, ids)
    fed = by_record(await ex.feed(hospital) + await ex.feed(lab), names)
    assert fed.keys() == {"william", "bill", "other"}
    # Two patients (their master tokens differ), one person; the unrelated patient is another.
    assert fed["william"]["patientToken"] != fed["bill"]["patientToken"]
    person_token = fed["william"]["personToken"]
    assert person_token.startswith("rp1.") and len(person_token) == 36
    assert fed["bill"]["personToken"] == person_token
    assert fed["other"]["personToken"] not in (person_token, None)

    found = await ex.person(person_token)
    assert found["personToken"] == person_token
    page = found["records"]
    order = await ex.receipt_order([ids["william"], ids["bill"]])
    assert [names[i["recordId"]] for i in page["items"]] == [
        "william" if r == ids["william"] else "bill" for r in order
    ]
    # Each item is the feed's record: the same shaping and the same identifiers.
    assert [fed[names[i["recordId"]]] for i in page["items"]] == page["items"]
    assert page["nextCursor"] is None and page["resumeCursor"].startswith("rc1.local-dev.")

    query = "query ($t: ID!) { patient(patientToken: $t) { patientToken personToken dob } }"
    for name in ("william", "bill"):
        answer = await ex.data(query, {"t": fed[name]["patientToken"]})
        assert answer["patient"] == {
            "patientToken": fed[name]["patientToken"],
            "personToken": person_token,
            "dob": None,
        }
    answer = await ex.data(query, {"t": fed["other"]["patientToken"]})
    assert answer["patient"]["personToken"] == fed["other"]["personToken"]
    other = await ex.person(fed["other"]["personToken"])
    assert [names[i["recordId"]] for i in other["records"]["items"]] == ["other"]


async def test_two_recipients_get_their_own_person_tokens_and_neither_opens_the_others(
    ex: Exchange, settings: Settings
) -> None:
    surname, dob = family(), birth_date()
    source = f"persons-c-{letters(6)}"
    ids = [
        await ex.ingest(source, patient("Margaret", surname, dob)),
        await ex.ingest(source, patient("Peggy", surname, dob), kind="claim"),
    ]
    assert len(set((await ex.persons(ids)).values())) == 1
    other = f"persons-{letters(8)}"
    code, report = await run_cli("recipients", "add", other, "--local")
    assert code == 0, report
    code, report = await run_cli("recipients", "grant", other, "--all-sources", "--local")
    assert code == 0, report
    theirs = access_token(settings, other)

    mine = {i["personToken"] for i in await ex.feed(source)}
    their = {i["personToken"] for i in await ex.feed(source, token=theirs)}
    assert len(mine) == len(their) == 1 and mine != their
    (my_token,), (their_token,) = mine, their
    assert (await ex.person(their_token, token=theirs))["personToken"] == their_token
    assert len((await ex.person(their_token, token=theirs))["records"]["items"]) == 2
    # Another recipient's token, as it is or relabelled, resolves to nothing for the caller.
    assert await ex.person(their_token) is None
    assert await ex.person(my_token, token=theirs) is None
    record_id = (await ex.feed(source))[0]["recordId"]
    for bad in ("garbage", "", record_id, record_id.replace("rr1.", "rp1."), my_token[:-1] + "A"):
        if bad != my_token:
            assert await ex.person(bad) is None, bad


async def test_a_kind_limited_credential_reads_only_its_kinds_of_a_person(
    ex: Exchange, settings: Settings
) -> None:
    surname, dob = family(), birth_date()
    people = {name: patient(name, surname, dob) for name in ("Robert", "Bob", "Rob")}
    assert linked_as(settings, people) == {frozenset(people)}, "Robert, Bob, Rob: one person"
    a, b = f"persons-d-{letters(6)}", f"persons-e-{letters(6)}"
    ids = [
        await ex.ingest(a, people["Robert"]),
        await ex.ingest(b, people["Bob"], kind="claim"),
        await ex.ingest(b, people["Rob"]),
    ]
    assert len(set((await ex.persons(ids)).values())) == 1
    (person_token,) = {i["personToken"] for i in await ex.feed(a)}

    encounters_only = access_token(settings, LOCAL_DEV_RECIPIENT, kinds=["encounter"])
    page = (await ex.person(person_token, token=encounters_only))["records"]
    assert sorted((i["kind"], i["source"]) for i in page["items"]) == [
        ("encounter", a),
        ("encounter", b),
    ]
    asked = await ex.person(person_token, token=encounters_only, kind="claim")
    assert asked["records"]["items"] == [] and asked["records"]["nextCursor"] is None
    everything = (await ex.person(person_token))["records"]["items"]
    assert sorted(i["kind"] for i in everything) == ["claim", "encounter", "encounter"]
    labs_only = access_token(settings, LOCAL_DEV_RECIPIENT, kinds=["lab_result"])
    assert await ex.person(person_token, token=labs_only) is None, "no record it may read"


# --- merges -----------------------------------------------------------------------------------


async def test_a_person_token_given_out_before_a_merge_resolves_to_the_merged_person(
    ex: Exchange, settings: Settings, scoped_ids: RecipientTokenService
) -> None:
    # A valid SSN (area 100-599) of this run, so that only this test's records share it.
    ssn = f"{secrets.randbelow(500) + 100:03d}-{secrets.randbelow(90) + 10:02d}-4821"
    maiden_name, married_name, dob = family(), family(), birth_date()
    people = {
        "maiden": patient("Margaret", maiden_name, dob),
        "married": patient("Peggy", married_name, dob, ssn=ssn),
        "bridge": patient("Margaret", maiden_name, dob, ssn=ssn),
    }
    apart = {k: v for k, v in people.items() if k != "bridge"}
    assert linked_as(settings, apart) == {frozenset({"maiden"}), frozenset({"married"})}
    assert linked_as(settings, people) == {frozenset(people)}, "the bridge no longer links both"
    source = f"persons-f-{letters(6)}"
    ids = {name: await ex.ingest(source, people[name]) for name in ("maiden", "married")}
    before = await ex.persons(list(ids.values()))
    assert before[ids["maiden"]] != before[ids["married"]]
    names = await names_of(scoped_ids, LOCAL_DEV_RECIPIENT, ids)
    fed = by_record(await ex.feed(source), names)
    # The younger person is the one merged away (into the oldest): its token is the test.
    merged, survivor = sorted(ids, key=lambda n: before[ids[n]], reverse=True)
    old_token, survivor_token = fed[merged]["personToken"], fed[survivor]["personToken"]
    assert old_token != survivor_token
    page = (await ex.person(old_token))["records"]["items"]
    assert [names[i["recordId"]] for i in page] == [merged]

    ids["bridge"] = await ex.ingest(f"persons-g-{letters(6)}", people["bridge"])

    async def merged_into_one() -> bool:
        return len(set((await ex.persons(list(ids.values()))).values())) == 1

    await eventually(merged_into_one, timeout=120)
    names = await names_of(scoped_ids, LOCAL_DEV_RECIPIENT, ids)
    found = await ex.person(old_token)
    assert found["personToken"] == survivor_token
    order = await ex.receipt_order(list(ids.values()))
    by_id = {v: k for k, v in ids.items()}
    assert [names[i["recordId"]] for i in found["records"]["items"]] == [by_id[r] for r in order]
    assert {i["personToken"] for i in found["records"]["items"]} == {survivor_token}
    # The feed carries the merged person's token now, for the record merged away too.
    assert {i["personToken"] for i in await ex.feed(source)} == {survivor_token}


# --- paging and limits ------------------------------------------------------------------------


async def test_a_persons_records_page_with_first_and_after_in_receipt_order(
    ex: Exchange, settings: Settings, scoped_ids: RecipientTokenService
) -> None:
    surname, dob = family(), birth_date()
    people = {name: patient(name, surname, dob) for name in ("Elizabeth", "Liz")}
    assert linked_as(settings, people) == {frozenset(people)}, "Elizabeth, Liz: one person"
    sources = [f"persons-h-{letters(6)}", f"persons-i-{letters(6)}"]
    # Five records, alternating source, name and kind: r0, r2, r4 claims; r1, r3 encounters.
    ids = {}
    for n in range(5):
        person = people["Elizabeth" if n % 2 else "Liz"]
        ids[f"r{n}"] = await ex.ingest(sources[n % 2], person, ("claim", "encounter")[n % 2])
    assert len(set((await ex.persons(list(ids.values()))).values())) == 1
    names = await names_of(scoped_ids, LOCAL_DEV_RECIPIENT, ids)
    (person_token,) = {i["personToken"] for i in await ex.feed(sources[0])}
    by_id = {v: k for k, v in ids.items()}
    expected = [by_id[r] for r in await ex.receipt_order(list(ids.values()))]

    seen, after, pages = [], None, 0
    while True:
        page = (await ex.person(person_token, first=2, after=after))["records"]
        pages += 1
        seen += [names[i["recordId"]] for i in page["items"]]
        assert page["resumeCursor"] is not None
        if page["nextCursor"] is None:
            resume = page["resumeCursor"]
            break
        assert page["nextCursor"] == page["resumeCursor"]
        after = page["nextCursor"]
    assert (pages, seen) == (3, expected)
    rest = (await ex.person(person_token, after=resume))["records"]
    assert rest["items"] == [] and rest["nextCursor"] is None and rest["resumeCursor"] == resume
    # Another list's cursor is not a position in a person's records.
    feed_cursor = (await ex.data("{ records(first: 1) { resumeCursor } }"))["records"]
    doc = await ex.gql(PERSON, {"p": person_token, "after": feed_cursor["resumeCursor"]})
    assert doc["errors"][0]["message"] == "invalid cursor" and doc["data"]["person"] is None
    doc = await ex.gql(PERSON, {"p": person_token, "first": 501})
    assert doc["errors"][0]["message"] == "first must be between 1 and 500"
    doc = await ex.gql(PERSON, {"p": person_token, "kind": "surgery"})
    assert doc["errors"][0]["message"].startswith("kind must be")

    # Aliases and fragments reach the same resolver: each list with its own arguments.
    text = (
        "query ($p: ID!) { person(personToken: $p) { ...P } } fragment P on Person { "
        'claims: records(kind: "claim") { items { kind } } '
        "two: records(first: 2) { items { recordId } nextCursor } }"
    )
    found = (await ex.data(text, {"p": person_token}))["person"]
    assert [i["kind"] for i in found["claims"]["items"]] == ["claim"] * 3
    assert [names[i["recordId"]] for i in found["two"]["items"]] == expected[:2]
    assert found["two"]["nextCursor"] is not None


async def test_a_person_token_costs_one_statement_and_only_when_selected(ex: Exchange) -> None:
    surname, dob = family(), birth_date()
    source = f"persons-j-{letters(6)}"
    await ex.persons([await ex.ingest(source, patient("Katherine", surname, dob))])
    (item,) = await ex.feed(source)
    plain = "query ($s: String) { records(source: $s) { items { recordId patientToken } } }"
    with_person = plain.replace("patientToken", "patientToken personToken")
    assert await ex.cost(plain, {"s": source}) == 1
    assert await ex.cost(with_person, {"s": source}) == 2
    patient_query = "query ($t: ID!) { patient(patientToken: $t) { patientToken dob } }"
    assert await ex.cost(patient_query, {"t": item["patientToken"]}) == 1
    asked = patient_query.replace("dob", "dob personToken")
    assert await ex.cost(asked, {"t": item["patientToken"]}) == 1
    person_only = "query ($p: ID!) { person(personToken: $p) { personToken } }"
    assert await ex.cost(person_only, {"p": item["personToken"]}) == 1
    assert await ex.cost(PERSON, {"p": item["personToken"]}) == 2
    assert await ex.cost(person_only, {"p": "garbage"}) == 0


def test_a_query_of_more_lists_of_person_records_than_root_fields_is_refused() -> None:
    documents = Documents(executable_schema(), introspection=False)
    lists = " ".join(f"r{n}: records(first: 1) {{ nextCursor }}" for n in range(MAX_ROOT_FIELDS))
    allowed = documents.prepare(f'{{ person(personToken: "x") {{ {lists} }} }}')
    assert allowed.errors == () and allowed.plan is None, "graphql-core answers person records"
    refused = documents.prepare(
        f'{{ person(personToken: "x") {{ {lists} more: records {{ nextCursor }} }} }}'
    )
    assert [e.message for e in refused.errors] == [
        f"query has more than {MAX_ROOT_FIELDS} lists of person records (aliases count)"
    ]
    plain = documents.prepare('{ person(personToken: "x") { personToken } }')
    assert plain.errors == () and plain.plan is not None, "without records, the compiled plan"
    # A list without any argument is measured with its default page size.
    for text in (
        '{ person(personToken: "x") { records { nextCursor } } }',
        "{ records { nextCursor } }",
    ):
        assert documents.prepare(text).errors == (), text


def test_fragments_that_each_spread_the_next_twice_are_measured_in_linear_time() -> None:
    # 2**40 spreads in all: measured fragment by fragment, refused at once.
    documents = Documents(executable_schema(), introspection=False)
    chain = " ".join(f"fragment F{n} on Person {{ ...F{n + 1} ...F{n + 1} }}" for n in range(40))
    for leaf, message in (
        ("personToken", "query is too complex (cost over 50000)"),
        ("records(first: 1) { nextCursor }", "lists of person records"),
    ):
        text = f'{{ person(personToken: "x") {{ ...F0 }} }} {chain} '
        text += f"fragment F40 on Person {{ {leaf} }}"
        started = time.perf_counter()
        errors = [e.message for e in documents.prepare(text).errors]
        assert len(errors) == 1 and message in errors[0], errors
        assert time.perf_counter() - started < 1.0


# --- a patient whose records are linked to no person -------------------------------------------


async def test_a_patient_without_a_linked_record_has_no_person_token(
    ex: Exchange, db: asyncpg.Pool, scoped_ids: RecipientTokenService
) -> None:
    # A canonical row written before persons existed (migration 0015), as the exchange may
    # still hold: no record_persons row. Written directly, and removed again.
    master = secrets.token_hex(32)
    record_id = uuid.uuid4()
    source = f"persons-legacy-{letters(6)}"
    await db.execute(
        "INSERT INTO canonical_records (record_id, source, raw_object_key, raw_sha256, "
        "normalized, ingested_at, event_version, record_kind, schema_hint) "
        "VALUES ($1, $2, $3, $4, $5, now(), '2', 'encounter', 'partnerA.v1')",
        record_id,
        source,
        f"{source}/{record_id}.json",
        "0" * 64,
        {"patient_token": master, "record_kind": "encounter", "encounter": {}},
    )
    try:
        token = await scoped_ids.issue(LOCAL_DEV_RECIPIENT, master)
        query = "query ($t: ID!) { patient(patientToken: $t) { patientToken personToken } }"
        answer = await ex.data(query, {"t": token})
        assert answer["patient"] == {"patientToken": token, "personToken": None}
    finally:
        await db.execute("DELETE FROM canonical_records WHERE record_id = $1", record_id)


# --- plans --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("read_record_persons", ([uuid.UUID(int=n) for n in range(500)],)),
        ("read_patient_person", ("x" * 64, None)),
        ("read_patient_person", ("x" * 64, ["encounter"])),
        ("read_person", (1, None)),
        ("read_person", (1, ["claim"])),
        (
            "read_person_records",
            (1, datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0), 101, None, None),
        ),
        (
            "read_person_records",
            (1, datetime(2024, 1, 1, tzinfo=UTC), uuid.UUID(int=0), 101, ["claim"], "claim"),
        ),
    ],
)
@pytest.mark.parametrize(
    "grants",
    [(True, [], [], [], []), (False, ["s"], ["claim"], [None], [None])],
    ids=["all-granted", "one-grant"],
)
async def test_person_statements_read_indexes_only(
    db: asyncpg.Pool, name: str, args: tuple, grants: tuple
) -> None:
    """Each new statement reads its tables through indexes, whatever their sizes here; only a
    person's own records are sorted (by receipt), never a table.

    A test database's tables are small, and on small tables the planner may rightly hash a join
    or scan a table whole; scans and hash and merge joins are turned off, as their cost would
    on tables of production size. A table with no index the statement can use would still be
    scanned (a disabled plan is used when it is the only one), and fail here."""
    async with db.acquire() as conn, conn.transaction():
        for method in ("seqscan", "hashjoin", "mergejoin"):
            await conn.execute(f"SET LOCAL enable_{method} = off")
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            given = args if name == "read_record_persons" else (*args, *grants)
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {q(name)}", *given))
            assert "Index" in plan and "Seq Scan" not in plan and "Hash" not in plan, plan
            if name != "read_person_records":
                assert "Sort" not in plan, plan
