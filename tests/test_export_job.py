"""The run of a bulk export (``ops/export.py``): what its files hold, against the database.

Records are ingested through a worker of this module's own (topics, consumer group and exports
topic of its own), normalized and linked to persons by it; each export is kicked off the way
``web/fhir.py`` does it (an ``exports`` row and, in the same transaction, the ``export`` command
in the outbox) and run by that worker's export agent. Every wait polls what an operator would
look at (``exports``, ``job_checkpoints``, the bucket), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from exchange_stream.core.fhir import KIND_OF_TYPE, token_of_fhir_id
from exchange_stream.core.scoped_ids import ScopedIds
from exchange_stream.infra.config import Settings
from exchange_stream.infra.sql import q
from exchange_stream.infra.topics import ensure_topics
from exchange_stream.ops.export import export_prefix, job_name, plan_of
from exchange_stream.read.grants import Grant, Grants
from tests.conftest import SHARED_WORKER_ENV
from tests.exchange_client import birth_date, family, letters, patient
from tests.payloads import new_key
from tests.support import (
    WorkerProcess,
    independent_s3_client,
    isolated_env,
    post_json,
    running_worker,
    wait_canonical,
    wait_for_state,
)

try:
    from fhir.resources.claim import Claim
    from fhir.resources.encounter import Encounter
    from fhir.resources.observation import Observation
    from fhir.resources.patient import Patient

    MODELS: dict[str, Any] | None = {
        "Patient": Patient,
        "Encounter": Encounter,
        "Claim": Claim,
        "Observation": Observation,
    }
except ImportError:  # the models only add a check; everything else still runs
    MODELS = None

ALL_TYPES = ["Patient", "Encounter", "Claim", "Observation"]
# Small files and pages: every export here spans several of each.
FILE_MAX_BYTES = 4096
PAGE_ROWS = 16
EXPORT_ENV = {
    "EXPORT_FILE_MAX_BYTES": str(FILE_MAX_BYTES),
    "EXPORT_PAGE_ROWS": str(PAGE_ROWS),
    # Three minutes: the tests read the files well before; the sweeper looks every 1.8 s.
    "EXPORT_RETENTION_HOURS": "0.05",
}
DAYS = ("2023-05-10", "2023-11-20", "2024-02-14", "2024-06-30")


# --- the kick-off, as web/fhir.py does it -----------------------------------------------------


async def kick_off(
    db: asyncpg.Pool,
    topic: str,
    recipient: str,
    types: Iterable[str] = ALL_TYPES,
    *,
    since: str | None = None,
    until: str | None = None,
    type_filters: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    """An accepted export and its command in the outbox, in one transaction."""
    export_id = uuid.uuid4()
    wanted = set(types)
    params = {
        "types": [t for t in ALL_TYPES if t in wanted],
        "since": since,
        "until": until,
        "type_filters": dict(type_filters or {}),
        "output_format": "application/fhir+ndjson",
        "patient_level": False,
    }
    command = {
        "command_id": f"export:{export_id}",
        "command": "export",
        "params": {"export_id": str(export_id)},
        "requested_by": f"recipient:{recipient}",
    }
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO exports (export_id, recipient_id, request_url, params, transaction_time,"
            " horizon) VALUES ($1, $2, $3, $4, now(), pg_snapshot_xmin(pg_current_snapshot()))",
            export_id,
            recipient,
            "http://127.0.0.1/fhir/$export",
            params,
        )
        await conn.execute(q("outbox_enqueue"), [topic], [str(export_id)], [command])
    return export_id


async def new_recipient(db: asyncpg.Pool, *grants: Mapping[str, Any]) -> str:
    """A registered recipient with ``grants`` (sources, kinds, from_date, until_date each)."""
    recipient = f"export-test-{secrets.token_hex(4)}"
    await db.fetchval(q("recipients_add"), recipient, "test", None)
    for g in grants:
        await db.execute(
            "INSERT INTO recipient_grants (recipient_id, sources, kinds, from_date, until_date,"
            " created_by) VALUES ($1, $2, $3, $4, $5, 'test')",
            recipient,
            g.get("sources"),
            g.get("kinds"),
            g.get("from_date"),
            g.get("until_date"),
        )
    return recipient


async def export_row(db: asyncpg.Pool, export_id: uuid.UUID) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM exports WHERE export_id = $1", export_id)


async def wait_ended(
    db: asyncpg.Pool, export_id: uuid.UUID, timeout: float = 180
) -> asyncpg.Record:
    """The export once its run has ended (completed, failed or cancelled, and its job run
    recorded)."""

    async def ended() -> bool:
        row = await db.fetchrow(
            "SELECT e.status, j.status AS run FROM exports e"
            " LEFT JOIN job_runs j ON j.job_run_id = e.job_run_id WHERE e.export_id = $1",
            export_id,
        )
        return (
            row is not None and row["status"] != "running" and row["run"] not in (None, "running")
        )

    async def explain() -> str:
        row = await export_row(db, export_id)
        cp = await db.fetchval(
            "SELECT checkpoint FROM job_checkpoints WHERE job_name = $1", job_name(export_id)
        )
        return f"export: {dict(row) if row else None}\ncheckpoint: {cp}"

    await wait_for_state(ended, what="the export's run to end", explain=explain, timeout=timeout)
    return await export_row(db, export_id)


# --- reading what an export wrote ------------------------------------------------------------


async def read_files(settings: Settings, files: list[Mapping[str, Any]]) -> dict[str, list[bytes]]:
    """Every line of the manifest's files, by type, read with botocore (not the service's
    client)."""
    lines: dict[str, list[bytes]] = {}
    async with independent_s3_client(settings) as s3:
        for f in files:
            resp = await s3.get_object(Bucket=settings.export_bucket, Key=f["key"])
            async with resp["Body"] as stream:
                body = await stream.read()
            assert len(body) == f["bytes"]
            assert body.endswith(b"\n")
            got = body.splitlines()
            assert len(got) == f["count"], f["key"]
            lines.setdefault(f["type"], []).extend(got)
    return lines


async def keys_under(settings: Settings, prefix: str) -> list[str]:
    async with independent_s3_client(settings) as s3:
        listed = await s3.list_objects_v2(Bucket=settings.export_bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]


def parse_and_validate(lines: dict[str, list[bytes]]) -> dict[str, list[dict[str, Any]]]:
    """Each line as JSON, checked against its type and, when installed, the R4 models."""
    resources: dict[str, list[dict[str, Any]]] = {}
    for rtype, raw in lines.items():
        for line in raw:
            resource = orjson.loads(line)
            assert resource["resourceType"] == rtype
            if MODELS is not None:
                MODELS[rtype].parse_obj(resource)
            resources.setdefault(rtype, []).append(resource)
    return resources


def opened_ids(
    ids: ScopedIds, recipient: str, resources: dict[str, list[dict[str, Any]]]
) -> dict[str, list[Any]]:
    """Every resource's id opened with the recipient's keys: record ids (UUIDs) for records,
    person ids for Patients; None for an id that does not open."""
    opened: dict[str, list[Any]] = {}
    for rtype, items in resources.items():
        tokens = [token_of_fhir_id(r["id"]) for r in items]
        if rtype == "Patient":
            opened[rtype] = ids.open_person_ids(tokens, recipient, [1])
        else:
            opened[rtype] = ids.open_record_ids(tokens, recipient, [1])
    return opened


async def expected_rows(
    db: asyncpg.Pool, export_id: uuid.UUID, sources: list[str], grants: Grants
) -> list[asyncpg.Record]:
    """The rows the export must hold: the test's sources, below the export's horizon, linked
    to a person, not opted out, allowed by ``grants`` (checked here in Python)."""
    rows = await db.fetch(
        "SELECT c.record_id, c.source, c.record_kind, record_day(c.normalized) AS day,"
        " c.normalized ->> 'patient_token' AS master, c.normalized, c.normalized_at,"
        " (SELECT coalesce(p.merged_into, p.person_id) FROM record_persons rp"
        "  JOIN persons p ON p.person_id = rp.person_id WHERE rp.record_id = c.record_id)"
        "  AS person_id"
        " FROM canonical_records c, exports e"
        " WHERE e.export_id = $1 AND c.source = ANY($2) AND c.insert_xid < e.horizon"
        " AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)",
        export_id,
        sources,
    )
    return [
        r
        for r in rows
        if r["person_id"] is not None and grants.allows(r["source"], r["record_kind"], r["day"])
    ]


# --- the module's worker and records ---------------------------------------------------------


@pytest.fixture(scope="module")
async def exporter(
    db: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[WorkerProcess, str]]:
    """A worker on topics of its own, exports topic included; (worker, exports topic)."""
    async with exporting_worker(tmp_path_factory.mktemp("exporter"), "export") as started:
        yield started


@contextlib.asynccontextmanager
async def exporting_worker(
    workdir: Path, label: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[WorkerProcess, str]]:
    isolated = isolated_env(label)
    full = {**SHARED_WORKER_ENV, **isolated, **EXPORT_ENV, **(env or {})}
    await ensure_topics(Settings.from_env({**os.environ, **full, "ENV": "local"}))
    async with running_worker(workdir, full) as worker:
        yield worker, isolated["TOPIC_EXPORTS"]


def person(n: int) -> dict[str, str]:
    """Patient ``n`` of this module's run: random names and birth date, so that its records
    link with each other and with nobody else's."""
    return {
        **patient(letters().capitalize(), family(), birth_date()),
        "ssn": f"{600 + n}-{10 + n}-{secrets.randbelow(9000) + 1000}",
    }


def payload(kind: str, n: int, day: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    if kind == "encounter":
        return {
            "encounter_id": f"enc-{tag}",
            "facility_id": "fac-9",
            "admit_ts": f"{day}T08:30:00Z",
            "discharge_ts": f"{day}T18:00:00Z" if n % 2 else None,
            "encounter_type": ("inpatient", "outpatient", "emergency")[n % 3],
            "dx_codes": ["E11.9", "I10"][: 1 + n % 2],
        }
    if kind == "claim":
        return {
            "claim_id": f"clm-{tag}",
            "payer_id": "payer-3",
            "service_date": day,
            "total_charge": f"{100 + n}.50",
            "currency": "USD",
            "cpt_codes": ["99213"],
            "dx_codes": ["E11.9"],
        }
    return {
        "order_id": f"ord-{tag}",
        "loinc_code": "2345-7",
        "value": str(80 + n),
        "unit": "mg/dL",
        "ref_low": "70",
        "ref_high": "99",
        "collected_ts": f"{day}T09:15:00Z",
        "status": "final",
    }


class Records:
    """What the module ingested: two sources, three kinds, four days, six patients."""

    def __init__(self, sources: list[str], patients: list[dict[str, str]]) -> None:
        self.sources = sources
        self.patients = patients


@pytest.fixture(scope="module")
async def records(
    exporter: tuple[WorkerProcess, str], http: aiohttp.ClientSession, db: asyncpg.Pool
) -> Records:
    worker, _ = exporter
    tag = secrets.token_hex(3)
    sources = [f"export-a-{tag}", f"export-b-{tag}"]
    patients = [person(n) for n in range(6)]
    bodies = []
    for s, source in enumerate(sources):
        for n, who in enumerate(patients):
            for k, kind in enumerate(("encounter", "claim", "lab_result")):
                for d in range(2 + (n + k + s) % 2):
                    day = DAYS[(n + d + k) % len(DAYS)]
                    bodies.append(
                        {
                            "source": source,
                            "record_kind": kind,
                            "schema_hint": "partnerA.v1",
                            "patient": who,
                            "payload": payload(kind, n + d, day),
                        }
                    )
    slots = asyncio.Semaphore(16)

    async def ingest(body: dict[str, Any]) -> str:
        async with slots:
            status, resp, _ = await post_json(
                http, f"{worker.base_url}/v2/ingest", body, key=new_key()
            )
        assert status == 202, resp
        return resp["record_id"]

    ids = await asyncio.gather(*(ingest(b) for b in bodies))
    await wait_canonical(db, list(ids))

    async def linked() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM record_persons WHERE record_id = ANY($1::uuid[])", list(ids)
        )
        return n == len(ids)

    await wait_for_state(
        linked, what="every record linked to a person", explain=lambda: _none(), timeout=120
    )
    return Records(sources, patients)


async def _none() -> str:
    return ""


# --- the plan (pure) ------------------------------------------------------------------------


def test_the_plan_keeps_the_request_order_and_drops_observations_no_category_matches() -> None:
    plan = plan_of({"types": ["Observation", "Patient"], "since": "2024-01-01T00:00:00Z"})
    assert plan.types == ("Patient", "Observation")
    assert plan.since is not None and plan.since.year == 2024
    assert plan.empty == frozenset()
    other = plan_of(
        {"types": ["Observation"], "type_filters": {"Observation": {"category": ["vital-signs"]}}}
    )
    assert other.empty == {"Observation"}
    coded = plan_of(
        {
            "types": ["Observation"],
            "type_filters": {
                "Observation": {
                    "category": [
                        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
                    ]
                }
            },
        }
    )
    assert coded.empty == frozenset()


# --- exports against the database -------------------------------------------------------------


async def test_an_export_of_every_type_holds_exactly_the_granted_rows_once_each(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    _, topic = exporter
    grant = {"sources": records.sources}
    recipient = await new_recipient(db, grant)
    export_id = await kick_off(db, topic, recipient)
    row = await wait_ended(db, export_id)
    assert row["status"] == "completed", row["error"]
    files = row["output"]
    # The manifest's files in the request's type order, each at most the maximum size.
    order = [f["type"] for f in files]
    assert order == sorted(order, key=ALL_TYPES.index)
    assert all(f["bytes"] <= FILE_MAX_BYTES for f in files)
    assert all(f["key"].startswith(f"{export_prefix(export_id)}1/") for f in files)
    per_type = Counter(f["type"] for f in files)
    assert all(per_type[t] >= 2 for t in KIND_OF_TYPE), per_type  # split at the maximum size

    lines = await read_files(settings, files)
    resources = parse_and_validate(lines)
    ids = ScopedIds(settings.recipient_token_secret)
    opened = opened_ids(ids, recipient, resources)
    grants = Grants.of([{"grant_id": 1, **grant}])
    expected = await expected_rows(db, export_id, records.sources, grants)
    assert expected
    for rtype, kind in KIND_OF_TYPE.items():
        want = sorted(r["record_id"] for r in expected if r["record_kind"] == kind)
        assert sorted(opened[rtype]) == want, rtype  # every row, once; ids open for the recipient
    persons = {r["person_id"] for r in expected}
    assert sorted(opened["Patient"]) == sorted(persons)
    # Each record references its own person's Patient, which the export holds.
    patient_ids = {r["id"] for r in resources["Patient"]}
    person_of = {r["record_id"]: r["person_id"] for r in expected}
    patient_id_of = dict(
        zip(opened["Patient"], (r["id"] for r in resources["Patient"]), strict=True)
    )
    for rtype in ("Encounter", "Claim", "Observation"):
        field = "patient" if rtype == "Claim" else "subject"
        for resource, record_id in zip(resources[rtype], opened[rtype], strict=True):
            reference = resource[field]["reference"].removeprefix("Patient/")
            assert reference in patient_ids
            assert reference == patient_id_of[person_of[record_id]]

    # Nothing that names a record or a patient outside the exchange: no master token, record
    # id or partner id.
    body = b"".join(b"".join(v) for v in lines.values())
    for r in expected:
        assert r["master"].encode() not in body
        assert str(r["record_id"]).encode() not in body
        kind_obj = r["normalized"][r["record_kind"]]
        partner_id = kind_obj.get(
            {"encounter": "encounter_id", "claim": "claim_id"}.get(r["record_kind"], "result_id")
        )
        assert partner_id and partner_id.encode() not in body

    # Visible to the operator: a succeeded job run, progress at 100, one read_audit row.
    run = await db.fetchrow("SELECT * FROM job_runs WHERE job_run_id = $1", row["job_run_id"])
    assert (run["status"], run["job_name"], run["command_id"]) == (
        "succeeded",
        "export",
        f"export:{export_id}",
    )
    assert run["progress"]["percent"] == 100
    assert run["result"]["resources"] == sum(len(v) for v in lines.values())
    audit = await db.fetch(
        "SELECT * FROM read_audit WHERE recipient_id = $1 AND operation = 'export'", recipient
    )
    assert [(a["rows"], a["status"]) for a in audit] == [(run["result"]["resources"], "completed")]
    assert row["expires_at"] > row["completed_at"]


async def test_grants_narrow_an_export_to_their_sources_kinds_and_days(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    _, topic = exporter
    grant = {
        "sources": records.sources[:1],
        "kinds": ["encounter", "lab_result"],
        "from_date": date(2023, 11, 1),
        "until_date": date(2024, 3, 1),
    }
    recipient = await new_recipient(db, grant)
    export_id = await kick_off(db, topic, recipient)
    row = await wait_ended(db, export_id)
    assert row["status"] == "completed", row["error"]
    resources = parse_and_validate(await read_files(settings, row["output"]))
    assert "Claim" not in resources  # a kind the grant does not name: no file at all
    opened = opened_ids(ScopedIds(settings.recipient_token_secret), recipient, resources)
    grants = Grants(
        (
            Grant(
                1,
                tuple(grant["sources"]),
                tuple(grant["kinds"]),
                grant["from_date"],
                grant["until_date"],
            ),
        )
    )
    expected = await expected_rows(db, export_id, records.sources, grants)
    everything = await expected_rows(db, export_id, records.sources, Grants((Grant(1),)))
    assert 0 < len(expected) < len(everything) / 3
    got = set(opened["Encounter"]) | set(opened["Observation"])
    assert got == {r["record_id"] for r in expected}
    outside = {r["record_id"] for r in everything} - got
    sources = {r["source"] for r in everything if r["record_id"] in got}
    days = {r["day"] for r in everything if r["record_id"] in got}
    assert sources == {records.sources[0]}
    assert all(grant["from_date"] <= d <= grant["until_date"] for d in days)
    assert outside
    assert sorted(opened["Patient"]) == sorted({r["person_id"] for r in expected})


async def test_since_and_an_observation_category_that_is_not_laboratory_filter_the_export(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    _, topic = exporter
    recipient = await new_recipient(db, {"sources": records.sources})
    future = "2999-01-01T00:00:00Z"
    export_id = await kick_off(
        db,
        topic,
        recipient,
        ["Encounter", "Observation"],
        since=future,
    )
    row = await wait_ended(db, export_id)
    assert (row["status"], row["output"]) == ("completed", [])
    export_id = await kick_off(
        db,
        topic,
        recipient,
        ["Encounter", "Observation"],
        type_filters={"Observation": {"category": ["vital-signs"]}},
    )
    row = await wait_ended(db, export_id)
    assert row["status"] == "completed"
    assert {f["type"] for f in row["output"]} == {"Encounter"}


async def test_an_opted_out_patient_is_absent_from_an_export(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    from exchange_stream.core.identity import Tokenizer
    from exchange_stream.core.match_tokens import MatchKeys
    from exchange_stream.core.optouts import tokenize_identity
    from exchange_stream.ops.optouts import record_opt_outs

    _, topic = exporter
    grant = {"sources": records.sources}
    recipient = await new_recipient(db, grant)
    who = records.patients[0]
    keys = MatchKeys(SHARED_WORKER_ENV["MATCH_TOKEN_SECRET"])
    identity = tokenize_identity(who, Tokenizer(SHARED_WORKER_ENV["TOKENIZER_HMAC_SECRET"]), keys)
    before = await db.fetch(
        "SELECT c.record_id, rp.person_id FROM canonical_records c"
        " JOIN record_persons rp ON rp.record_id = c.record_id"
        " WHERE c.source = ANY($1) AND c.normalized ->> 'patient_token' = $2",
        records.sources,
        identity.patient_token,
    )
    assert before
    await record_opt_outs(db, [identity], "test")
    export_id = await kick_off(db, topic, recipient)
    row = await wait_ended(db, export_id)
    assert row["status"] == "completed", row["error"]
    resources = parse_and_validate(await read_files(settings, row["output"]))
    opened = opened_ids(ScopedIds(settings.recipient_token_secret), recipient, resources)
    exported = {i for rtype, v in opened.items() if rtype != "Patient" for i in v}
    assert exported
    assert not exported & {r["record_id"] for r in before}
    assert not set(opened["Patient"]) & {r["person_id"] for r in before}
    expected = await expected_rows(
        db, export_id, records.sources, Grants.of([{"grant_id": 1, **grant}])
    )
    assert exported == {r["record_id"] for r in expected}


async def test_an_opt_out_committed_while_an_export_runs_is_taken_out_of_its_written_files(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    from exchange_stream.core.identity import Tokenizer
    from exchange_stream.core.match_tokens import MatchKeys
    from exchange_stream.core.optouts import tokenize_identity

    _, topic = exporter
    grant = {"sources": records.sources}
    recipient = await new_recipient(db, grant)
    who = records.patients[1]
    keys = MatchKeys(SHARED_WORKER_ENV["MATCH_TOKEN_SECRET"])
    identity = tokenize_identity(who, Tokenizer(SHARED_WORKER_ENV["TOKENIZER_HMAC_SECRET"]), keys)
    theirs = await db.fetch(
        "SELECT c.record_id, rp.person_id FROM canonical_records c"
        " JOIN record_persons rp ON rp.record_id = c.record_id"
        " WHERE c.source = ANY($1) AND c.normalized ->> 'patient_token' = $2",
        records.sources,
        identity.patient_token,
    )
    assert theirs
    async with db.acquire() as holder:
        # The opt-out is recorded, not yet committed: every page of the export reads without
        # it, so its records are written; its commit comes before the export may complete.
        tx = holder.transaction()
        await tx.start()
        try:
            rules, tokens = identity.rows()
            await holder.fetchval(
                q("opt_out_add"), identity.patient_token, rules, tokens, "test", None
            )
            export_id = await kick_off(db, topic, recipient)

            async def completing() -> bool:
                # The completion waits for the opt-out's transaction (its share lock).
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_locks"
                        " WHERE relation = 'opted_out_records'::regclass AND NOT granted"
                        "   AND mode = 'ShareLock'"
                    )
                )

            await wait_for_state(
                completing,
                what="the export's completion waiting on the opt-out",
                explain=lambda: _none(),
                timeout=120,
            )
            checkpoint = await db.fetchval(
                "SELECT checkpoint FROM job_checkpoints WHERE job_name = $1", job_name(export_id)
            )
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
    written = checkpoint["totals"]["resources"]
    row = await wait_ended(db, export_id)
    assert row["status"] == "completed", row["error"]
    run = await db.fetchrow("SELECT result FROM job_runs WHERE job_run_id = $1", row["job_run_id"])
    withdrawn = run["result"]["withdrawn"]
    # Their records and their Patient were in the files before the commit, and are not now.
    their_records = {r["record_id"] for r in theirs}
    their_persons = {r["person_id"] for r in theirs}
    assert withdrawn >= len(their_records) + len(their_persons)
    assert run["result"]["resources"] == written - withdrawn
    resources = parse_and_validate(await read_files(settings, row["output"]))
    assert sum(len(v) for v in resources.values()) == written - withdrawn
    opened = opened_ids(ScopedIds(settings.recipient_token_secret), recipient, resources)
    exported = {i for rtype, v in opened.items() if rtype != "Patient" for i in v}
    assert not exported & {r["record_id"] for r in theirs}
    assert not set(opened["Patient"]) & {r["person_id"] for r in theirs}
    expected = await expected_rows(
        db, export_id, records.sources, Grants.of([{"grant_id": 1, **grant}])
    )
    assert exported == {r["record_id"] for r in expected}
    # The files replaced are gone from the bucket: only the manifest's remain.
    assert sorted(await keys_under(settings, export_prefix(export_id))) == sorted(
        f["key"] for f in row["output"]
    )


async def test_expired_export_files_are_deleted_by_the_sweeper(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    _, topic = exporter
    recipient = await new_recipient(db, {"sources": records.sources})
    export_id = await kick_off(db, topic, recipient, ["Patient"])
    row = await wait_ended(db, export_id)
    assert row["status"] == "completed" and row["output"]
    assert len(await keys_under(settings, export_prefix(export_id))) == len(row["output"])
    await db.execute(
        "UPDATE exports SET expires_at = now() - interval '1 second' WHERE export_id = $1",
        export_id,
    )

    async def deleted() -> bool:
        gone = await db.fetchval(
            "SELECT files_deleted_at IS NOT NULL FROM exports WHERE export_id = $1", export_id
        )
        return gone and not await keys_under(settings, export_prefix(export_id))

    await wait_for_state(deleted, what="the files deleted", explain=lambda: _none(), timeout=60)


async def test_a_cancelled_export_stops_at_its_next_page_and_its_files_go(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    _, topic = exporter
    recipient = await new_recipient(db, {"sources": records.sources})
    async with db.acquire() as holder:
        # Every page statement reads opted_out_records: held, the run waits at its first page.
        tx = holder.transaction()
        await tx.start()
        try:
            await holder.execute("LOCK TABLE opted_out_records IN ACCESS EXCLUSIVE MODE")
            export_id = await kick_off(db, topic, recipient, ["Encounter", "Observation"])

            async def waiting_on_a_page() -> bool:
                return bool(
                    await db.fetchval(
                        "SELECT count(*) FROM pg_locks"
                        " WHERE relation = 'opted_out_records'::regclass AND NOT granted"
                    )
                )

            await wait_for_state(
                waiting_on_a_page,
                what="the run waiting on its first page",
                explain=lambda: _none(),
                timeout=120,
            )
            # What web/fhir.py's DELETE does.
            await db.execute(
                "UPDATE exports SET status = 'cancelled' WHERE export_id = $1", export_id
            )
        finally:
            await tx.rollback()
    row = await wait_ended(db, export_id)
    assert row["status"] == "cancelled"
    run = await db.fetchrow("SELECT * FROM job_runs WHERE job_run_id = $1", row["job_run_id"])
    assert run["status"] == "succeeded"
    assert run["result"]["status"] == "cancelled"
    assert run["result"]["resources"] == 0  # no page was written after the cancel
    assert row["files_deleted_at"] is not None
    assert await keys_under(settings, export_prefix(export_id)) == []
    audit = await db.fetchval(
        "SELECT status FROM read_audit WHERE recipient_id = $1 AND operation = 'export'",
        recipient,
    )
    assert audit == "cancelled"


async def test_an_export_of_a_revoked_recipient_fails_without_files(
    exporter: tuple[WorkerProcess, str],
    records: Records,
    db: asyncpg.Pool,
    settings: Settings,
) -> None:
    _, topic = exporter
    recipient = await new_recipient(db, {"sources": records.sources})
    await db.execute(
        "UPDATE recipients SET status = 'revoked', revoked_at = now() WHERE recipient_id = $1",
        recipient,
    )
    export_id = await kick_off(db, topic, recipient)
    row = await wait_ended(db, export_id)
    assert (row["status"], row["error"], row["output"]) == (
        "failed",
        "the recipient is not active",
        [],
    )

    async def swept() -> bool:
        return bool(
            await db.fetchval(
                "SELECT files_deleted_at IS NOT NULL FROM exports WHERE export_id = $1", export_id
            )
        )

    await wait_for_state(swept, what="the failed export swept", explain=lambda: _none(), timeout=60)
