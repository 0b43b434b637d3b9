"""Delivery under agreements on the real services (issue 23, items 1-3): grants, deny by default;
opt-outs by file and by ``POST /v1/opt-outs``, whole persons, from the commit on; the read audit.

Records are ingested through a worker of this module's own (topics and consumer group of its own,
``isolated_worker``) and each scenario's patients have names and dates of their own, so nothing
another test sends is in their answers. Recipients are registered with the CLI, as an operator
would, and read with the access tokens ``POST /auth/token`` issues. Every wait polls the database
or the answer, never a fixed sleep.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from exchange_stream.core.access_token import issue_access_token, signing_key
from exchange_stream.core.identity import Tokenizer
from exchange_stream.core.recipient_token import RecipientTokens
from exchange_stream.infra.config import Settings
from tests.exchange_client import Exchange, birth_date, family, letters, patient
from tests.payloads import new_key, partner_a_v1_encounter
from tests.support import WorkerProcess, eventually, isolated_worker, post_json, run_cli

FEED = (
    "query ($s: String, $k: String) { records(source: $s, kind: $k, first: 100) "
    "{ items { kind source } nextCursor resumeCursor } }"
)
PATIENT = (
    "query ($p: ID!) { patient(patientToken: $p) { patientToken } "
    "encounters(patientToken: $p) { encounterId } claims(patientToken: $p) { claimId } }"
)


@pytest.fixture(scope="module")
async def worker(
    db: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    workdir: Path = tmp_path_factory.mktemp("grants-worker")
    async with isolated_worker(workdir, "grants", db) as proc:
        yield proc


@pytest.fixture
def ex(http: aiohttp.ClientSession, worker: WorkerProcess, db: asyncpg.Pool) -> Exchange:
    return Exchange(http, worker, db)


def reader_token(settings: Settings, recipient: str) -> str:
    """A recipient's access token with ``records:read``, as ``POST /auth/token`` issues it."""
    return issue_access_token(
        signing_key(settings.access_token_signing_key),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        recipient=recipient,
        scope="records:read",
        issued_at=int(time.time()),
        lifetime_s=600,
    )


def patient_token(settings: Settings, recipient: str, person: dict[str, str]) -> str:
    """The recipient's token of ``person`` (the exchange's own computation)."""
    master = Tokenizer(settings.tokenizer_hmac_secret).token(
        person["given_name"], person["family_name"], person["dob"], person.get("ssn")
    )
    return RecipientTokens(settings.recipient_token_secret).issue(master, recipient, 1)


async def new_recipient(*grant: str) -> str:
    recipient = f"r-{letters(8)}"
    code, out = await run_cli("recipients", "add", recipient, "--local")
    assert code == 0, out
    if grant:
        code, out = await run_cli("recipients", "grant", recipient, *grant, "--local")
        assert code == 0, out
    return recipient


async def ingest(
    ex: Exchange, source: str, person: dict[str, str], kind: str = "encounter", day: str = ""
) -> uuid.UUID:
    """One record of ``kind``; ``day``: its admission or service date (default 2024-03-01)."""
    if kind == "encounter":
        payload = partner_a_v1_encounter()
        if day:
            payload["admit_ts"] = f"{day}T08:30:00Z"
    else:
        payload = {
            "claim_id": f"clm-{uuid.uuid4().hex[:12]}",
            "payer_id": "payer-3",
            "service_date": day or "2024-03-01",
            "total_charge": "10.00",
            "currency": "USD",
            "cpt_codes": ["99213"],
            "dx_codes": ["E11.9"],
        }
    body = {
        "source": source,
        "record_kind": kind,
        "schema_hint": "partnerA.v1",
        "patient": person,
        "payload": payload,
    }
    status, resp, _ = await post_json(
        ex.http, f"{ex.worker.base_url}/v2/ingest", body, key=new_key()
    )
    assert status == 202, resp
    return uuid.UUID(resp["record_id"])


async def feed(ex: Exchange, token: str, source: str | None = None, kind: str | None = None):
    return (await ex.data(FEED, {"s": source, "k": kind}, token))["records"]


async def feed_kinds(ex: Exchange, token: str, source: str) -> list[tuple[str, str]]:
    return sorted((i["source"], i["kind"]) for i in (await feed(ex, token, source))["items"])


# --- grants -------------------------------------------------------------------------------------


async def test_a_recipient_without_a_grant_reads_nothing_of_what_exists(
    ex: Exchange, settings: Settings
) -> None:
    source, person = f"g-{letters(6)}", patient("Ann", family(), birth_date())
    await ex.persons([await ingest(ex, source, person)])
    recipient = await new_recipient()
    token = reader_token(settings, recipient)
    assert (await feed(ex, token, source))["items"] == []
    answer = await ex.data(PATIENT, {"p": patient_token(settings, recipient, person)}, token)
    assert answer == {"patient": None, "encounters": [], "claims": []}
    # local-dev has its grant of everything from the worker's start (ENV=local).
    assert await feed_kinds(ex, "dev", source) == [(source, "encounter")]


async def test_a_grant_allows_its_sources_kinds_and_days_only(
    ex: Exchange, settings: Settings
) -> None:
    mine, other = f"g-{letters(6)}", f"g-{letters(6)}"
    person = patient("Bea", family(), birth_date())
    await ex.persons(
        [
            await ingest(ex, mine, person, "encounter", "2024-03-01"),
            await ingest(ex, mine, person, "encounter", "2022-05-05"),
            await ingest(ex, mine, person, "claim", "2024-03-02"),
            await ingest(ex, other, person, "encounter", "2024-03-01"),
        ]
    )
    recipient = await new_recipient(
        "--sources", mine, "--kinds", "encounter", "--from", "2024-01-01", "--until", "2024-12-31"
    )
    token = reader_token(settings, recipient)
    # Every feed shape: no filter, the granted source, another source, another kind.
    assert await feed_kinds(ex, token, None) == [(mine, "encounter")]
    assert await feed_kinds(ex, token, mine) == [(mine, "encounter")]
    assert await feed_kinds(ex, token, other) == []
    assert (await feed(ex, token, mine, "claim"))["items"] == []
    answer = await ex.data(PATIENT, {"p": patient_token(settings, recipient, person)}, token)
    assert answer["patient"] is not None
    assert len(answer["encounters"]) == 1 and answer["claims"] == []

    # A second grant adds the claim; revoking it takes it away again, on the worker at once.
    code, out = await run_cli("recipients", "grant", recipient, "--sources", mine, "--local")
    assert code == 0, out
    added = out["result"]["grant"]["grant_id"]

    async def sees(expected: list[tuple[str, str]]) -> bool:
        return await feed_kinds(ex, token, mine) == expected

    everything_of_mine = [(mine, "claim"), (mine, "encounter"), (mine, "encounter")]
    await eventually(lambda: sees(everything_of_mine), timeout=10)
    code, out = await run_cli("recipients", "revoke-grant", recipient, str(added), "--local")
    assert code == 0 and out["result"] == {"recipient": recipient, "revoked_grant": added}, out
    await eventually(lambda: sees([(mine, "encounter")]), timeout=10)
    code, out = await run_cli("recipients", "grants", recipient, "--local")
    assert code == 0 and out["result"]["count"] == 1, out
    assert [g["revoked_at"] is not None for g in out["result"]["grants"]] == [False, True]


async def test_a_record_outside_the_grants_is_answered_as_one_that_does_not_exist(
    ex: Exchange, settings: Settings
) -> None:
    """Same answer, same cursor, same statements: nothing says the record is there."""
    granted, hidden = f"g-{letters(6)}", f"g-{letters(6)}"
    person = patient("Cy", family(), birth_date())
    nobody = patient("Dee", family(), birth_date())
    await ex.persons([await ingest(ex, hidden, person)])
    recipient = await new_recipient("--sources", granted)
    token = reader_token(settings, recipient)
    for query, there, absent in (
        (
            PATIENT,
            {"p": patient_token(settings, recipient, person)},
            {"p": patient_token(settings, recipient, nobody)},
        ),
        (FEED, {"s": hidden}, {"s": f"g-{letters(6)}"}),
    ):
        answers = [await ex.data(query, v, token) for v in (there, absent)]
        assert answers[0] == answers[1]
        assert await ex.cost(query, there, token) == await ex.cost(query, absent, token)


async def test_grants_through_the_control_topic_are_audited(ex: Exchange, db: asyncpg.Pool) -> None:
    recipient = await new_recipient()
    code, out = await run_cli(
        "recipients",
        "grant",
        recipient,
        "--all-sources",
        "--kinds",
        "claim",
        env=ex.worker.env_overrides,
    )
    assert code == 0 and out["status"] == "succeeded", out
    grant = out["result"]["grant"]
    assert grant["sources"] is None and grant["kinds"] == ["claim"]
    rows = await db.fetch(
        "SELECT action, actor, details FROM audit_log WHERE entity_id = $1 ORDER BY occurred_at",
        recipient,
    )
    assert [r["action"] for r in rows] == ["recipients.add", "recipients.grant"]
    assert rows[1]["actor"].startswith("control:")
    code, out = await run_cli("recipients", "grant", recipient, "--local")
    assert code == 2, "neither --sources nor --all-sources"
    code, out = await run_cli(
        "recipients", "grant", recipient, "--all-sources", "--from", "2024-02-30", "--local"
    )
    assert code == 2, "not a real date"


# --- opt-outs -----------------------------------------------------------------------------------


async def post_opt_outs(
    ex: Exchange, patients: list[dict[str, Any]], token: str = "dev", remove: bool = False
) -> tuple[int, dict]:
    route = "/v1/opt-outs/remove" if remove else "/v1/opt-outs"
    async with ex.http.post(
        f"{ex.worker.base_url}{route}",
        json={"patients": patients},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        return r.status, await r.json()


async def test_an_opt_out_excludes_the_whole_person_from_its_commit_on_and_removal_undoes_it(
    ex: Exchange, db: asyncpg.Pool
) -> None:
    source, surname, dob = f"o-{letters(6)}", family(), birth_date()
    margaret, peggy = patient("Margaret", surname, dob), patient("Peggy", surname, dob)
    ids = [await ingest(ex, source, margaret), await ingest(ex, source, peggy, "claim")]
    assert len(set((await ex.persons(ids)).values())) == 1, "one person: nickname, same dob"
    assert len(await feed_kinds(ex, "dev", source)) == 2

    status, body = await post_opt_outs(ex, [margaret])
    assert (status, body) == (200, {"accepted": 1})
    # Committed when the answer came: nothing of the person, Peggy's claim included.
    assert await feed_kinds(ex, "dev", source) == []
    # A record of the person arriving later is excluded from its own commit on.
    late = await ingest(ex, source, peggy, "encounter")
    await ex.persons([late])
    assert await db.fetchval("SELECT count(*) FROM opted_out_records WHERE record_id = $1", late)
    assert await feed_kinds(ex, "dev", source) == []

    status, body = await post_opt_outs(ex, [margaret], remove=True)
    assert (status, body) == (200, {"accepted": 1})
    assert len(await feed_kinds(ex, "dev", source)) == 3


async def test_an_opt_out_recorded_before_any_record_excludes_the_records_that_come(
    ex: Exchange,
) -> None:
    source, person = f"o-{letters(6)}", patient("Ed", family(), birth_date(), ssn="123-45-6789")
    assert (await post_opt_outs(ex, [person]))[0] == 200
    await ex.persons([await ingest(ex, source, person)])
    assert await feed_kinds(ex, "dev", source) == []


async def test_opt_outs_keep_no_identity_and_refuse_bad_input_whole(
    ex: Exchange, db: asyncpg.Pool, settings: Settings
) -> None:
    surname = family()
    person = patient("Flo", surname, birth_date())
    before = await db.fetchval("SELECT count(*) FROM opt_outs")
    status, body = await post_opt_outs(ex, [person, {"given_name": "Gus", "family_name": surname}])
    assert status == 400 and body["error"].startswith("invalid field: patients"), body
    assert surname not in body["error"]
    assert await db.fetchval("SELECT count(*) FROM opt_outs") == before, "nothing recorded"
    # A recipient may read, not opt patients out.
    status, body = await post_opt_outs(ex, [person], token=reader_token(settings, "local-dev"))
    assert (status, body) == (403, {"error": "forbidden"})
    assert (await post_opt_outs(ex, [person]))[0] == 200
    dump = b""
    for table in ("opt_outs", "opt_out_tokens", "audit_log"):
        rows = await db.fetch(f"SELECT * FROM {table}")
        dump += orjson.dumps([dict(r) for r in rows], default=str)
    assert surname.encode() not in dump and surname.lower().encode() not in dump


async def test_opt_outs_by_file_tokenize_every_line_or_send_nothing(
    ex: Exchange, db: asyncpg.Pool, tmp_path: Path
) -> None:
    source, person = f"o-{letters(6)}", patient("Hal", family(), birth_date())
    await ex.persons([await ingest(ex, source, person)])
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(orjson.dumps(person) + b"\n" + b'{"given_name": "Ivy"}\n')
    before = await db.fetchval("SELECT count(*) FROM opt_outs")
    code, out = await run_cli("opt-outs", "add", "--file", str(bad))
    assert code == 2, out
    assert "line 2" in out["_stderr"] and "Ivy" not in out["_stderr"]
    assert await db.fetchval("SELECT count(*) FROM opt_outs") == before
    good = tmp_path / "good.ndjson"
    good.write_bytes(orjson.dumps(person) + b"\n")
    # Sent on the control topic: only tokens travel there (the CLI tokenized the file).
    code, out = await run_cli("opt-outs", "add", "--file", str(good), env=ex.worker.env_overrides)
    assert code == 0 and out["result"]["accepted"] == 1, out
    assert await feed_kinds(ex, "dev", source) == []
    code, out = await run_cli("opt-outs", "remove", "--file", str(good), "--local")
    assert code == 0, out
    assert await feed_kinds(ex, "dev", source) == [(source, "encounter")]


# --- read audit ---------------------------------------------------------------------------------


async def test_every_read_is_audited_without_tokens_or_arguments(
    ex: Exchange, db: asyncpg.Pool, settings: Settings
) -> None:
    source, person = f"a-{letters(6)}", patient("Jo", family(), birth_date())
    await ex.persons([await ingest(ex, source, person), await ingest(ex, source, person, "claim")])
    recipient = await new_recipient("--all-sources")
    token = reader_token(settings, recipient)
    page = await feed(ex, token, source)
    assert len(page["items"]) == 2
    p = patient_token(settings, recipient, person)
    await ex.data(PATIENT, {"p": p}, token)

    async def audited() -> list[asyncpg.Record]:
        return await db.fetch(
            "SELECT * FROM read_audit WHERE recipient_id = $1 ORDER BY occurred_at", recipient
        )

    await eventually(lambda: _len_is(audited, 2), timeout=30)
    rows = await audited()
    assert [(r["operation"], r["kinds"], r["rows"], r["status"]) for r in rows] == [
        ("records", ["claim", "encounter"], 2, "ok"),
        ("claims,encounters,patient", ["claim", "encounter", "patient"], 3, "ok"),
    ]
    dump = orjson.dumps([dict(r) for r in rows], default=str)
    assert p.encode() not in dump and source.encode() not in dump


async def _len_is(fetch: Any, n: int) -> bool:
    return len(await fetch()) == n
