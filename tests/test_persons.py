"""Persons on the real services: every canonical record gets one, in its transaction, by the
decision rule of ``core/match_tokens.py`` (migration 0015's ``link_records``).

Each test runs workers with a match-token secret of its own, so its records link only among
themselves (another secret gives other tokens), on topics and in a consumer group of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from exchange_stream.core.match_tokens import MatchKeys, link, match_tokens
from exchange_stream.core.matching import match_attributes
from exchange_stream.infra.config import Settings
from exchange_stream.infra.migrate import migrate
from tests.conftest import SHARED_WORKER_ENV
from tests.payloads import partner_a_v1_encounter
from tests.support import (
    WorkerProcess,
    drop_database,
    isolated_topics,
    post_json,
    run_cli,
    running_worker,
    wait_for_state,
)

SETTLE_S = 180.0

# People, each with the variants their records arrive under (v2 patient objects). The variants
# are those real feeds differ by; which of them link is the decision rule's business, and the
# test compares the database's partition with the pure rule's on the same records.
PEOPLE: dict[str, list[dict[str, Any]]] = {
    "william": [
        {
            "given_name": "William",
            "family_name": "Smith",
            "dob": "1980-05-17",
            "ssn": "321-54-9876",
            "sex": "male",
            "postal_code": "02139",
        },
        {"given_name": "Bill", "family_name": "Smith", "dob": "1980-05-17"},
        {
            "given_name": "William",
            "family_name": "Smith",
            "dob": "1980-05-17",
            "ssn": "321-54-9876",
        },
    ],
    "margaret": [
        {
            "given_name": "Margaret",
            "family_name": "Jones",
            "dob": "1975-02-03",
            "ssn": "412-33-1234",
        },
        {"given_name": "Peggy", "family_name": "Jones", "dob": "1975-02-03"},
        {
            "given_name": "Margaret",
            "family_name": "Brown",
            "dob": "1975-02-03",
            "ssn": "412-33-1234",
        },
    ],
    # Twins: one family name, one date of birth, one household; never one person.
    "anna": [
        {
            "given_name": "Anna",
            "family_name": "Lee",
            "dob": "2001-09-09",
            "ssn": "523-11-4321",
            "sex": "female",
            "postal_code": "94110",
        },
        {"given_name": "Anna", "family_name": "Lee", "dob": "2001-09-09"},
    ],
    "emma": [
        {
            "given_name": "Emma",
            "family_name": "Lee",
            "dob": "2001-09-09",
            "ssn": "523-11-4322",
            "sex": "female",
            "postal_code": "94110",
        },
    ],
    # Father and son of one name, decades apart.
    "john-sr": [
        {"given_name": "John", "family_name": "Carter", "dob": "1950-01-01", "ssn": "610-22-3344"},
        {"given_name": "John", "family_name": "Carter Sr.", "dob": "1950-01-01"},
    ],
    "john-jr": [
        {"given_name": "John", "family_name": "Carter", "dob": "1980-06-06", "ssn": "610-22-3355"},
    ],
    "jose": [
        {"given_name": "José", "family_name": "Núñez", "dob": "1990-12-24"},
        {"given_name": "Jose", "family_name": "Nunez", "dob": "1990-12-24", "ssn": "701-45-6789"},
    ],
    "alone": [{"given_name": "Zora", "family_name": "Quill", "dob": "1966-07-07"}],
}


def records() -> list[tuple[str, dict[str, Any]]]:
    """(label, patient) for every record: the label names the person and the variant."""
    return [(f"{p}/{i}", v) for p, variants in PEOPLE.items() for i, v in enumerate(variants)]


def expected_partition(secret: str) -> frozenset[frozenset[str]]:
    """The pure decision rule's persons of ``records()``, as sets of labels."""
    keys = MatchKeys(secret)
    tokens = [
        (label, match_tokens(match_attributes(patient), keys)) for label, patient in records()
    ]
    return link(tokens)


def body(source: str, patient: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": source,
        "record_kind": "encounter",
        "schema_hint": "partnerA.v1",
        "patient": patient,
        "payload": partner_a_v1_encounter(),
    }


async def ingest(
    http: aiohttp.ClientSession,
    workers: list[WorkerProcess],
    source: str,
    labelled: list[tuple[str, dict[str, Any]]],
) -> dict[str, str]:
    """POST every record (round-robin over ``workers``, all at once); record id → label."""

    async def one(i: int, label: str, patient: dict[str, Any]) -> tuple[str, str]:
        url = f"{workers[i % len(workers)].base_url}/v2/ingest"
        status, answer, _ = await post_json(http, url, body(source, patient), key=str(uuid.uuid4()))
        assert status == 202, (status, answer)
        return answer["record_id"], label

    pairs = await asyncio.gather(*(one(i, lb, p) for i, (lb, p) in enumerate(labelled)))
    return dict(pairs)


async def partition(db: asyncpg.Pool, ids: dict[str, str]) -> frozenset[frozenset[str]]:
    """The persons of the records ``ids`` names, once every one has a person, as label sets."""
    wanted = [uuid.UUID(r) for r in ids]

    async def linked() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM record_persons WHERE record_id = ANY($1)", wanted
        )
        return n == len(wanted)

    async def state() -> str:
        n = await db.fetchval(
            "SELECT count(*) FROM record_persons WHERE record_id = ANY($1)", wanted
        )
        c = await db.fetchval(
            "SELECT count(*) FROM canonical_records WHERE record_id = ANY($1)", wanted
        )
        return f"{c} of {len(wanted)} canonical, {n} with a person"

    await wait_for_state(linked, what="every record has a person", explain=state, timeout=SETTLE_S)
    rows = await db.fetch(
        """SELECT rp.record_id, coalesce(p.merged_into, p.person_id) AS person
           FROM record_persons rp JOIN persons p USING (person_id)
           WHERE rp.record_id = ANY($1)""",
        wanted,
    )
    groups: dict[int, set[str]] = {}
    for r in rows:
        groups.setdefault(r["person"], set()).add(ids[str(r["record_id"])])
    return frozenset(frozenset(g) for g in groups.values())


@contextlib.asynccontextmanager
async def workers(
    tmp_path: Path, db: asyncpg.Pool, label: str, secret: str, n: int
) -> AsyncIterator[list[WorkerProcess]]:
    """``n`` workers in one consumer group of their own, with the match-token secret ``secret``."""
    async with isolated_topics(label, db) as env, contextlib.AsyncExitStack() as stack:
        env = {**SHARED_WORKER_ENV, **env, "MATCH_TOKEN_SECRET": secret}
        procs = [
            await stack.enter_async_context(running_worker(tmp_path / f"{label}-{i}", env))
            for i in range(n)
        ]
        yield procs


def _secret() -> str:
    return f"test-match-secret-{uuid.uuid4().hex}"


async def test_persons_do_not_depend_on_arrival_order_or_the_number_of_workers(
    migrated: None, http: aiohttp.ClientSession, db: asyncpg.Pool, tmp_path: Path
) -> None:
    labelled = records()
    found = []
    for run, n_workers in enumerate((1, 2)):
        secret = _secret()
        shuffled = labelled[:]
        random.Random(run).shuffle(shuffled)
        async with workers(tmp_path, db, f"persons{run}", secret, n_workers) as procs:
            ids = await ingest(http, procs, f"persons-{uuid.uuid4().hex[:8]}", shuffled)
            found.append(await partition(db, ids))
        # The database's persons are the pure decision rule's, for this run's tokens.
        assert found[-1] == expected_partition(secret)
    assert found[0] == found[1]
    # What any sound rule must give: a nickname links, twins and a father and son do not.
    persons = {label: group for group in found[0] for label in group}
    assert persons["william/0"] == persons["william/1"] == persons["william/2"]
    assert persons["anna/0"] != persons["emma/0"]
    assert persons["john-sr/0"] != persons["john-jr/0"]


async def test_records_of_one_person_linked_at_once_by_two_workers_make_one_person(
    migrated: None, http: aiohttp.ClientSession, db: asyncpg.Pool, tmp_path: Path
) -> None:
    secret = _secret()
    people = [
        {"given_name": f"Pat{i}", "family_name": "Concurrent", "dob": f"19{50 + i}-03-04"}
        for i in range(20)
    ]
    # Each person's two records go to different workers at the same moment.
    labelled = [(f"p{i}/{copy}", p) for i, p in enumerate(people) for copy in (0, 1)]
    async with workers(tmp_path, db, "personsrace", secret, 2) as procs:
        ids = await ingest(http, procs, f"race-{uuid.uuid4().hex[:8]}", labelled)
        got = await partition(db, ids)
    assert got == frozenset(frozenset({f"p{i}/0", f"p{i}/1"}) for i in range(len(people)))


async def test_a_replay_and_the_backfill_job_change_no_person(
    migrated: None, http: aiohttp.ClientSession, db: asyncpg.Pool, tmp_path: Path
) -> None:
    secret = _secret()
    source = f"persons-replay-{uuid.uuid4().hex[:8]}"
    async with workers(tmp_path, db, "personsreplay", secret, 1) as procs:
        ids = await ingest(http, procs, source, records())
        before = await partition(db, ids)
        wanted = [uuid.UUID(r) for r in ids]
        people_of = "SELECT record_id, person_id FROM record_persons WHERE record_id = ANY($1)"
        persons_before = sorted(map(tuple, await db.fetch(people_of, wanted)))
        attempts = await db.fetchval(
            "SELECT count(*) FROM processing_attempts WHERE record_id = ANY($1)", wanted
        )
        # The replay publishes to the workers' own topics.
        topics = ("TOPIC_RECORD_INGESTED_V1", "TOPIC_RECORD_INGESTED_V2")
        env = {name: procs[0].env_overrides[name] for name in topics}
        code, report = await run_cli("replay", "--source", source, "--local", env=env)
        assert code == 0, report
        assert report["result"]["emitted"] == len(ids)

        async def replayed() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM processing_attempts WHERE record_id = ANY($1) "
                "AND status = 'succeeded'",
                wanted,
            )
            return n >= attempts + len(ids)

        async def state() -> str:
            return str(
                await db.fetch(
                    "SELECT status, count(*) FROM processing_attempts WHERE record_id = ANY($1) "
                    "GROUP BY 1",
                    wanted,
                )
            )

        await wait_for_state(replayed, what="the replay processed", explain=state, timeout=SETTLE_S)
        assert await partition(db, ids) == before
        assert sorted(map(tuple, await db.fetch(people_of, wanted))) == persons_before

    # Records written before linking existed have neither tokens nor a person: the job gives
    # them both, from their raw objects, and the same persons the normalizer gave.
    await db.execute("DELETE FROM record_persons WHERE record_id = ANY($1)", wanted)
    await db.execute("DELETE FROM match_tokens WHERE record_id = ANY($1)", wanted)
    code, report = await run_cli(
        "jobs",
        "run",
        "link-persons",
        "--local",
        "--from-start",
        "--batch-size",
        "3",
        env={"MATCH_TOKEN_SECRET": secret},
    )
    assert code == 0, report
    assert report["result"]["linked"] >= len(ids)
    assert report["result"]["batches"] >= len(ids) // 3
    assert await partition(db, ids) == before
    checkpoint = await db.fetchval(
        "SELECT checkpoint FROM job_checkpoints WHERE job_name = 'link-persons'"
    )
    assert checkpoint["cursor"] == report["result"]["cursor"]
    # A second run finds nothing left to link after its checkpoint.
    code, again = await run_cli(
        "jobs", "run", "link-persons", "--local", env={"MATCH_TOKEN_SECRET": secret}
    )
    assert code == 0, again
    assert again["result"]["linked"] == 0


async def test_a_bridging_record_merges_two_persons_and_the_merge_is_recorded(
    migrated: None, http: aiohttp.ClientSession, db: asyncpg.Pool, tmp_path: Path
) -> None:
    secret = _secret()
    keys = MatchKeys(secret)
    # Two records that share no token, then one that shares a token with each.
    first = {"given_name": "Ruth", "family_name": "Baker", "dob": "1961-04-12"}
    second = {
        "given_name": "Ruth",
        "family_name": "Walsh",
        "dob": "1961-04-12",
        "ssn": "455-67-1289",
    }
    bridge = {
        "given_name": "Ruth",
        "family_name": "Baker",
        "dob": "1961-04-12",
        "ssn": "455-67-1289",
    }
    t1, t2, t3 = (
        set(match_tokens(match_attributes(p), keys).items()) for p in (first, second, bridge)
    )
    assert not t1 & t2 and t3 & t1 and t3 & t2
    source = f"persons-merge-{uuid.uuid4().hex[:8]}"
    async with workers(tmp_path, db, "personsmerge", secret, 1) as procs:
        ids = await ingest(http, procs, source, [("a", first)])
        ids |= await ingest(http, procs, source, [("b", second)])
        assert await partition(db, ids) == {frozenset({"a"}), frozenset({"b"})}
        by_label = {label: uuid.UUID(rid) for rid, label in ids.items()}
        before = {
            label: await db.fetchval(
                "SELECT person_id FROM record_persons WHERE record_id = $1", by_label[label]
            )
            for label in ("a", "b")
        }
        ids |= await ingest(http, procs, source, [("c", bridge)])
        assert await partition(db, ids) == {frozenset({"a", "b", "c"})}
    survivor, loser = min(before.values()), max(before.values())
    by_label = {label: uuid.UUID(rid) for rid, label in ids.items()}
    for label in ("a", "b", "c"):
        assert (
            await db.fetchval(
                "SELECT person_id FROM record_persons WHERE record_id = $1", by_label[label]
            )
            == survivor
        )
    # The merged person still resolves, to the survivor; the merge names the record that did it.
    row = await db.fetchrow(
        "SELECT p.merged_into, m.into_id, m.by_record FROM persons p "
        "JOIN person_merges m ON m.merged = p.person_id WHERE p.person_id = $1",
        loser,
    )
    assert row is not None
    assert row["merged_into"] == row["into_id"] == survivor
    assert row["by_record"] == by_label["c"]


async def test_the_linker_reads_match_tokens_by_index_after_the_table_outgrew_its_plans(
    settings: Settings,
) -> None:
    """A session keeps its plans of ``link_records``. Made while match_tokens was small (a new
    database, analyzed at a few rows), they must still look tokens up by index once the table
    has grown, before anything analyzes it again (migration 0018): no row of match_tokens is
    read by a sequential scan."""
    name = f"linkplans_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(settings.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = urllib.parse.urlsplit(settings.dsn)._replace(path=f"/{name}").geturl()
    try:
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            # Counters read afresh each time, from this backend's flushed statistics.
            await conn.execute("SET stats_fetch_consistency = none")

            async def link_batch(n: int) -> None:
                ids = [uuid.uuid4() for _ in range(n)]
                await conn.executemany(
                    "INSERT INTO canonical_records (record_id, source, raw_object_key,"
                    " raw_sha256, normalized, ingested_at, correlation_id, event_version,"
                    " record_kind, schema_hint) VALUES ($1::uuid, 'plans', $1::uuid::text,"
                    " repeat('0', 64), '{}', now(), 'test', '2', 'encounter', 'partnerA.v1')",
                    [(i,) for i in ids],
                )
                owners = [i for i in ids for _ in range(4)]
                rules = ["M1", "M2", "M3", "M6"] * n
                tokens = [random.randbytes(32) for _ in owners]
                await conn.execute(
                    "SELECT link_records($1::uuid[], $2::uuid[], $3::text[], $4::bytea[])",
                    ids,
                    owners,
                    rules,
                    tokens,
                )

            async def seq_rows_read() -> int:
                await conn.execute("SELECT pg_stat_force_next_flush()")
                # A new transaction publishes what the last one counted.
                await conn.execute("SELECT 1")
                return await conn.fetchval(
                    "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables"
                    " WHERE relname = 'match_tokens'"
                )

            for _ in range(3):
                await link_batch(20)
            await conn.execute("ANALYZE match_tokens")
            for _ in range(8):  # past the five runs after which a generic plan is kept
                await link_batch(20)
            for _ in range(100):
                await link_batch(20)
            before = await seq_rows_read()
            for _ in range(5):
                await link_batch(20)
            assert await seq_rows_read() - before == 0
            assert await conn.fetchval("SELECT count(*) FROM match_tokens") == 116 * 20 * 4
        finally:
            await conn.close()
    finally:
        await drop_database(settings.dsn, name)
