"""Privacy scan: patient identifiers sent in, then searched for everywhere the system writes.

Records whose patient fields are unique sentinels go through every path: canonical rows (v1, v2,
partnerA and FHIR), an unmappable payload and a free-text lab value (DLQ at once), a raw object
whose checksum does not match (DLQ at once), a raw object that is missing (transient: retried
``MAX_ATTEMPTS`` times, then DLQ), unparseable and invalid events on the topic (DLQ in hash form),
400s, a 409, a 401, /tokenize, and one JWT-authenticated ingest on the strict worker. Then every
sentinel is searched for, case-insensitively, in: both workers' log files, every message on both
DLQ topics and both ingested-event topics since the test began (less the raw events this test
injects), every row of every table in the database (ledger, audit, job runs, idempotency keys,
outbox, canonical rows, manifest, derived index...), both workers' /metrics, every HTTP body
received (the read API's answers and errors for this test's records included: they must also hold
no master token, and the recipient tokens in them must appear in no log), and the logs of the
stack the run uses (Postgres, Kafka, S3 under ``STACK_DIR``), each of which must have lines to
scan. Zero hits is the pass.

Sentinels: given and family names ``Zq<tag>given`` / ``Zq<tag>family``, an 11-digit SSN (searched
as digits and as sent, with dashes), and free text ``Zq<tag>note`` in payload fields that are not
patient fields (a partnerA ``patient_note``, FHIR ``text.div``, ``display``, ``text``, a
``valueString``). Names, SSN and note are unique to this run, so they are searched for everywhere.

Persons (migration 0015): the canonical records of this run are linked to persons, and their
match tokens are keyed hashes of the patient's details. Neither may leave the exchange but as a
recipient's own ``personToken``: the raw person ids of this run's records (and of any person
merged into theirs) and their match tokens (hex and base64) are searched for in every log line,
topic message and HTTP body (answers, errors, /metrics). Person ids are small integers that any
line might hold by chance, so the test first moves the persons' identity sequence up to a random
14-digit range (once: a later run finds it there); the ids are then searched for as whole
numbers. The database is not searched for them: its person tables hold them by design.

The date of birth must be a real date, so it cannot be unique: it is the rare 1903-07-19, searched
for in its ISO form. Dates legitimately appear in canonical rows (admit times, service dates), and
another test's payload might use that day for one, so the dob is searched for: everywhere except
canonical rows; in this test's canonical rows anywhere (their payload dates are all in 2024, so any
1903-07-19 there came from the patient); and in every other canonical row outside its date fields.

Not used: stopping S3 to cause the transient failure. Other engineers' tests share the stack, so
a missing raw object stands in for it: the same retry, ledger and DLQ path, without an outage.

Positive controls keep the scan honest: the raw objects in S3 do hold the sentinels (the raw body
is kept whole by design), the logs scanned do mention this test's dead-lettered record ids, and
the DLQ messages scanned include this test's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import uuid
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from exchange_stream.infra.config import Settings
from tests.auth_tokens import good_token
from tests.conftest import WORKER_MAX_ATTEMPTS
from tests.payloads import new_key, partner_a_v1_encounter
from tests.support import (
    TopicReader,
    WorkerProcess,
    eventually,
    raw_object_event,
    s3_read_independently,
    stack_dir,
    wait_canonical,
)

DOB = "1903-07-19"
# Fields of canonical objects holding dates or times (docs/CONTRACT.md §4): may hold 1903-07-19.
DATE_FIELDS = {"admit_time", "discharge_time", "service_date", "collected_at", "normalized_at"}
STACK_SERVICES = ("postgres", "kafka", "s3")  # scripts/stack.sh: each logs to <STACK_DIR>/logs
INJECTED = b"privacy-scan-injected"  # key of the raw, sentinel-bearing messages this test produces
EXPECTED_TABLES = {
    "processing_attempts",
    "processing_stage_state",
    "audit_log",
    "job_runs",
    "idempotency_keys",
    "outbox_events",
    "canonical_records",
    "raw_object_manifest",
}


class Sentinels:
    """This run's patient identity and free text, and the search over any text."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:12]
        self.given = f"Zq{tag}given"
        self.family = f"Zq{tag}family"
        self.ssn_digits = f"{uuid.uuid4().int % 10**11:011d}"
        self.ssn = f"{self.ssn_digits[:3]}-{self.ssn_digits[3:5]}-{self.ssn_digits[5:]}"
        self.note = f"Zq{tag}note"
        self.unique = [self.given, self.family, self.ssn_digits, self.ssn, self.note]

    def hits(self, text: str, *, with_dob: bool = True) -> list[str]:
        low = text.lower()
        terms = self.unique + ([DOB] if with_dob else [])
        return [t for t in terms if t.lower() in low]

    def v2_patient(self) -> dict[str, Any]:
        return {"given_name": self.given, "family_name": self.family, "dob": DOB, "ssn": self.ssn}

    def v1_patient(self) -> dict[str, Any]:
        return {"first_name": self.given, "last_name": self.family, "dob": DOB, "ssn": self.ssn}


def _fhir_encounter(s: Sentinels) -> dict[str, Any]:
    """A FHIR Encounter whose free-text parts carry the note and the patient's name."""
    coding = {"system": "http://snomed.info/sct", "code": "185349003", "display": s.note}
    return {
        "resourceType": "Encounter",
        "id": f"enc-{uuid.uuid4().hex[:12]}",
        "status": "finished",
        "text": {"status": "generated", "div": f"<div>{s.note} for {s.given} {s.family}</div>"},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [coding], "text": s.note}],
        "subject": {"reference": "Patient/p-1", "display": f"{s.given} {s.family}"},
        "participant": [{"individual": {"reference": "Practitioner/9", "display": s.note}}],
        "period": {"start": "2024-03-01T08:30:00Z", "end": "2024-03-01T09:00:00Z"},
        "reasonCode": [{"coding": [{**coding, "code": "444814009"}], "text": s.note}],
        "serviceProvider": {"reference": "Organization/org-1", "display": s.note},
    }


def _fhir_free_text_observation(s: Sentinels) -> dict[str, Any]:
    """A laboratory Observation whose value is free text: not mappable (a permanent error)."""
    return {
        "resourceType": "Observation",
        "id": f"obs-{uuid.uuid4().hex[:12]}",
        "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": s.note}]},
        "subject": {"display": f"{s.given} {s.family}"},
        "effectiveDateTime": "2024-03-01T08:30:00Z",
        "valueString": f"{s.note}: {s.given} {s.family}, born {DOB}, SSN {s.ssn}",
    }


class Exchange:
    """HTTP calls that keep every body received."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.bodies: list[bytes] = []

    async def post(
        self, url: str, body: Any, *, key: str | None = None, token: str | None = "dev"
    ) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if key is not None:
            headers["Idempotency-Key"] = key
        async with self.http.post(url, data=orjson.dumps(body), headers=headers) as r:
            raw = await r.read()
            self.bodies.append(raw)
            return r.status, orjson.loads(raw)

    async def get_query(self, url: str, query: str, variables: dict | None = None) -> int:
        """``GET /graphql?query=...`` as a browser or curl sends it; the body is kept."""
        params = {"query": query}
        if variables is not None:
            params["variables"] = orjson.dumps(variables).decode()
        async with self.http.get(url, params=params, headers={"Authorization": "Bearer dev"}) as r:
            self.bodies.append(await r.read())
            return r.status

    async def get_text(self, url: str) -> str:
        async with self.http.get(url) as r:
            raw = await r.read()
            self.bodies.append(raw)
            return raw.decode()


async def _direct_event(
    settings: Settings,
    producer: AIOKafkaProducer,
    body: dict,
    *,
    store: bool,
    sha256: str | None = None,
) -> str:
    """A v2 event produced straight to the topic, for a raw object written (or not) to S3."""
    event, value = await raw_object_event(settings, body, sha256=sha256, store_it=store)
    record_id = event["record_id"]
    await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=record_id.encode())
    return record_id


async def _table_hits(db: asyncpg.Pool, table: str, terms: list[str]) -> list[dict]:
    """Rows of ``table`` whose text (all columns) contains any of ``terms``, case-insensitively.

    Every row, not only this test's: one case-insensitive regular expression per table (faster
    than ILIKE ANY on large tables; the row-to-text cast is most of the cost either way)."""
    pattern = "|".join(re.escape(t) for t in terms)
    rows = await db.fetch(f'SELECT t::text AS row FROM "{table}" t WHERE t::text ~* $1', pattern)
    return [{"table": table, "row": r["row"][:300]} for r in rows]


# Person ids of this run are at least this large (``_distinctive_person_ids``): 14 digits.
DISTINCTIVE_PERSON_IDS = 10**13


async def _distinctive_person_ids(db: asyncpg.Pool) -> None:
    """Move the persons' identity sequence to a random 14-digit range, unless it is there
    already: a person id then shows as itself, not as any small number a line may hold."""
    sequence = await db.fetchval("SELECT pg_get_serial_sequence('persons', 'person_id')")
    last = await db.fetchval(f"SELECT last_value FROM {sequence}")
    if last < DISTINCTIVE_PERSON_IDS:
        start = DISTINCTIVE_PERSON_IDS * (3 + secrets.randbelow(6)) + secrets.randbelow(10**12)
        await db.execute("SELECT setval($1::regclass, $2)", sequence, start)


async def _persons_of(db: asyncpg.Pool, record_ids: list[str]) -> tuple[set[int], set[bytes]]:
    """The persons of ``record_ids`` (as they are now, and any merged into them) and their
    match tokens: what the scan looks for."""
    ids = [uuid.UUID(r) for r in record_ids]
    rows = await db.fetch(
        "WITH current AS (SELECT DISTINCT coalesce(p.merged_into, p.person_id) AS person_id "
        "FROM record_persons rp JOIN persons p USING (person_id) WHERE rp.record_id = ANY($1)) "
        "SELECT person_id FROM persons "
        "WHERE person_id IN (SELECT person_id FROM current) "
        "OR merged_into IN (SELECT person_id FROM current)",
        ids,
    )
    linked = await db.fetchval("SELECT count(*) FROM record_persons WHERE record_id = ANY($1)", ids)
    tokens = await db.fetch("SELECT token FROM match_tokens WHERE record_id = ANY($1)", ids)
    persons = {r["person_id"] for r in rows}
    # Positive controls: every record is linked, under a distinctive id, with tokens to look for.
    assert linked == len(ids), "a canonical record of this run has no person"
    assert persons and min(persons) >= DISTINCTIVE_PERSON_IDS, sorted(persons)
    assert tokens, "no match token to look for"
    return persons, {bytes(r["token"]) for r in tokens}


def _linkage_search(persons: set[int], tokens: set[bytes]) -> Any:
    """A function from text (or bytes) to its lines holding a raw person id (as a whole number)
    or a match token (hex or base64, either alphabet), case-insensitively."""
    encodings = set()
    for token in tokens:
        encodings |= {
            token.hex(),
            base64.b64encode(token).decode().rstrip("="),
            base64.urlsafe_b64encode(token).decode().rstrip("="),
        }
    terms = [rf"(?<![0-9]){p}(?![0-9])" for p in sorted(persons)]
    terms += [re.escape(e) for e in sorted(encodings)]
    pattern = re.compile("|".join(terms), re.IGNORECASE)

    def search(text: str | bytes) -> list[str]:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return [line for line in text.splitlines() if pattern.search(line)]

    return search


def _without_dates(value: Any) -> Any:
    """A canonical ``normalized`` object with its date and time fields removed."""
    if isinstance(value, dict):
        return {k: _without_dates(v) for k, v in value.items() if k not in DATE_FIELDS}
    if isinstance(value, list):
        return [_without_dates(v) for v in value]
    return value


async def _canonical_dob_hits(db: asyncpg.Pool, ours: list[str]) -> list[dict]:
    """The date of birth in canonical rows: anywhere in this test's, outside date fields in all."""
    mine = {uuid.UUID(r) for r in ours}
    rows = await db.fetch(
        "SELECT record_id, t::text AS row, normalized FROM canonical_records t "
        "WHERE t::text LIKE $1",
        f"%{DOB}%",
    )
    return [
        {"table": "canonical_records (dob)", "row": r["row"][:300]}
        for r in rows
        if r["record_id"] in mine or DOB in orjson.dumps(_without_dates(r["normalized"])).decode()
    ]


@pytest.fixture
async def producer(settings: Settings):
    p = AIOKafkaProducer(bootstrap_servers=settings.broker_list, acks="all")
    await p.start()
    yield p
    await p.stop()


async def test_no_patient_identifier_leaves_the_raw_store(
    worker: WorkerProcess,
    strict_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    producer: AIOKafkaProducer,
) -> None:
    s = Sentinels()
    ex = Exchange(http)
    source = f"privacy-{uuid.uuid4().hex[:8]}"
    v1_url, v2_url = f"{worker.base_url}/v1/ingest", f"{worker.base_url}/v2/ingest"

    def v2(kind: str, hint: str, payload: dict) -> dict:
        return {
            "source": source,
            "record_kind": kind,
            "schema_hint": hint,
            "patient": s.v2_patient(),
            "payload": payload,
        }

    canonical_ids: list[str] = []
    dlq_keys: dict[bytes, str] = {}  # DLQ message key -> the case it stands for
    await _distinctive_person_ids(db)

    async with (
        TopicReader(settings.broker_list, settings.dlq_topic_for("1")) as dlq_v1,
        TopicReader(settings.broker_list, settings.dlq_topic_for("2")) as dlq_v2,
        TopicReader(settings.broker_list, settings.ingest_topic_for("1")) as events_v1,
        TopicReader(settings.broker_list, settings.ingest_topic_for("2")) as events_v2,
    ):
        # --- accepted and canonical -------------------------------------------------------
        noted = {**partner_a_v1_encounter(), "patient_note": s.note}
        good_key = new_key()
        cases = [
            (v2_url, v2("encounter", "partnerA.v1", noted), good_key),
            (v2_url, v2("encounter", "partnerB.v1", _fhir_encounter(s)), new_key()),
            (
                v1_url,
                {
                    "source": source,
                    "record_type": "encounter",
                    "patient": s.v1_patient(),
                    "payload": {**partner_a_v1_encounter(), "patient_note": s.note},
                    "comment": s.note,
                },
                new_key(),
            ),
        ]
        for url, body, key in cases:
            status, resp = await ex.post(url, body, key=key)
            assert status == 202, resp
            canonical_ids.append(resp["record_id"])
        status, resp = await ex.post(
            f"{strict_worker.base_url}/v2/ingest",
            v2("encounter", "partnerA.v1", noted),
            key=new_key(),
            token=good_token(),
        )
        assert status == 202, resp
        canonical_ids.append(resp["record_id"])

        # --- accepted, then dead-lettered at once (permanent) ------------------------------
        unmappable = {k: v for k, v in noted.items() if k != "encounter_id"}
        for body in (
            v2("encounter", "partnerA.v1", unmappable),
            v2("lab_result", "partnerB.v1", _fhir_free_text_observation(s)),
        ):
            status, resp = await ex.post(v2_url, body, key=new_key())
            assert status == 202, resp
            dlq_keys[resp["record_id"].encode()] = "unmappable"
        sent_raw = v2("encounter", "partnerA.v1", noted)
        mismatch_id = await _direct_event(settings, producer, sent_raw, store=True, sha256="0" * 64)
        dlq_keys[mismatch_id.encode()] = "checksum mismatch"

        # --- transient: retried MAX_ATTEMPTS times, then dead-lettered ----------------------
        missing_id = await _direct_event(settings, producer, sent_raw, store=False)
        dlq_keys[missing_id.encode()] = "raw object missing"

        # --- events that cannot be parsed: dead-lettered as a hash and a size ----------------
        bad_events = [
            b"not an event: " + orjson.dumps(s.v2_patient()),
            orjson.dumps(
                {"event_version": "2", "event_type": "record.ingested", "patient": s.v2_patient()}
            ),
        ]
        for value in bad_events:
            await producer.send_and_wait(settings.ingest_topic_for("2"), value, key=INJECTED)
            dlq_keys[hashlib.sha256(value).digest()[:16]] = "unparseable event"

        # --- refused requests: every error body is kept ------------------------------------
        bad_ssn = v2("encounter", "partnerA.v1", noted)
        bad_ssn["patient"]["ssn"] = int(s.ssn_digits)
        blank_family = v2("encounter", "partnerA.v1", noted)
        blank_family["patient"]["family_name"] = " \u3000 "
        impossible_dob = {"given_name": s.given, "family_name": s.family, "dob": "1903-02-30"}
        refused = [
            (v2_url, bad_ssn, new_key(), "dev", 400),
            (v2_url, blank_family, new_key(), "dev", 400),
            (v1_url, {"source": source, "patient": s.v1_patient()}, new_key(), "dev", 400),
            (v2_url, v2("claim", "partnerA.v1", noted), good_key, "dev", 409),
            (v2_url, v2("encounter", "partnerA.v1", noted), new_key(), "wrong", 401),
            (f"{worker.base_url}/tokenize", impossible_dob, None, "dev", 400),
            (f"{worker.base_url}/tokenize", {**impossible_dob, "mrn": s.note}, None, "dev", 400),
        ]
        for url, body, key, token, expected in refused:
            status, resp = await ex.post(url, body, key=key, token=token)
            assert status == expected, (url, resp)
            assert set(resp) == {"error"}
        status, resp = await ex.post(
            f"{worker.base_url}/tokenize",
            {"given_name": s.given, "family_name": s.family, "dob": DOB, "ssn": s.ssn},
        )
        assert status == 200 and set(resp) == {"patient_token"}

        # --- wait until the pipeline is done with all of it --------------------------------
        rows = await wait_canonical(db, canonical_ids, timeout=180)
        # Linked in the canonical rows' transaction: the persons are there with them.
        person_ids, match_token_values = await _persons_of(db, canonical_ids)
        dlq_messages = await dlq_v2.collect(
            lambda ms: dlq_keys.keys() <= {m.key for m in ms}, timeout=180
        )
        assert dlq_keys.keys() <= {m.key for m in dlq_messages}, "not every DLQ message arrived"
        # The rest of that topic up to its end, and the v1 DLQ (nothing of this test goes there;
        # whatever did arrive is scanned too): read to the end as of now, not for a while.
        dlq_messages += await dlq_v2.collect_to_end(timeout=120)
        dlq_messages += await dlq_v1.collect_to_end(timeout=120)
        # The ingested-event topics too, less the unparseable events this test put there itself.
        topic_messages = [
            m
            for reader in (events_v1, events_v2)
            for m in await reader.collect_to_end(timeout=120)
            if m.key != INJECTED
        ]

    dead_ids = [
        uuid.UUID(k.decode()) for k, case in dlq_keys.items() if case != "unparseable event"
    ]

    async def marked() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM processing_stage_state WHERE record_id = ANY($1) "
            "AND status = 'dlq'",
            dead_ids,
        )
        return n == len(dead_ids)

    await eventually(marked, timeout=120)
    # The transient path really retried: the first DLQ mark is on attempt MAX_ATTEMPTS (a
    # rebalance may redeliver the event and repeat the round; at least once is the contract).
    first_dlq = await db.fetchval(
        "SELECT min(attempt_no) FROM processing_attempts WHERE record_id = $1 "
        "AND status = 'dlq_published' AND transient",
        uuid.UUID(missing_id),
    )
    assert first_dlq == WORKER_MAX_ATTEMPTS

    # --- the read API: what a recipient receives, answers and errors -------------------------
    graphql_url = f"{worker.base_url}/graphql"
    first = len(ex.bodies)
    status, page = await ex.post(
        graphql_url,
        {
            "query": "query ($s: String) { records(source: $s, first: 50) { items { recordId "
            "patientToken personToken kind encounter { encounterId facilityId admitTime } "
            "claim { claimId "
            "payerId totalCharge { amount } } labResult { resultId status value { __typename "
            "... on Quantity { quantity unit } ... on QualitativeResult { result } } } } "
            "nextCursor } }",
            "variables": {"s": source},
        },
    )
    assert status == 200 and page["data"]["records"]["items"], page
    recipient_tokens = {i["patientToken"] for i in page["data"]["records"]["items"]}
    person_tokens = {i["personToken"] for i in page["data"]["records"]["items"]}
    for token in sorted(person_tokens):
        status, answer = await ex.post(
            graphql_url,
            {
                "query": "query ($p: ID!) { person(personToken: $p) { personToken records { "
                "items { recordId patientToken personToken kind encounter { encounterId } } "
                "nextCursor resumeCursor } } }",
                "variables": {"p": token},
            },
        )
        assert status == 200 and answer["data"]["person"]["records"]["items"], answer
    for token in sorted(recipient_tokens):
        status, answer = await ex.post(
            graphql_url,
            {
                "query": "query ($t: ID!) { patient(patientToken: $t) { patientToken dob "
                "personToken } "
                "encounters(patientToken: $t) { encounterId cursor } claims(patientToken: $t) "
                "{ claimId } labResults(patientToken: $t) { resultId } }",
                "variables": {"t": token},
            },
        )
        assert status == 200
        person_tokens.add(answer["data"]["patient"]["personToken"])
    for query, token in (
        ("{ records(first: 501) { nextCursor } }", "dev"),
        ('{ records(after: "x") { nextCursor } }', "dev"),
        (f'{{ encounters(patientToken: "{s.given}") {{ encounterId }} }}', "dev"),
        (f'{{ person(personToken: "{s.given}") {{ personToken }} }}', "dev"),
        ('{ person(personToken: "x") { records(after: "x") { nextCursor } } }', "dev"),
        ("{ records { items { nope } } }", "dev"),
        ("{ records { nextCursor } }", None),
    ):
        await ex.post(graphql_url, {"query": query}, token=token)
    # The same reads as GET queries: what they log and return is scanned as well.
    records_query = (
        "query ($s: String) { records(source: $s, first: 50) { items { recordId patientToken "
        "personToken kind encounter { encounterId facilityId admitTime cursor } } nextCursor "
        "resumeCursor } }"
    )
    assert await ex.get_query(graphql_url, records_query, {"s": source}) == 200
    for token in sorted(person_tokens):
        query = (
            "query ($p: ID!) { person(personToken: $p) { personToken records(first: 1) { "
            "items { recordId personToken } nextCursor } } }"
        )
        assert await ex.get_query(graphql_url, query, {"p": token}) == 200
    for token in sorted(recipient_tokens):
        query = (
            "query ($t: ID!) { patient(patientToken: $t) { patientToken dob } "
            "encounters(patientToken: $t) { encounterId cursor } }"
        )
        assert await ex.get_query(graphql_url, query, {"t": token}) == 200
    await ex.get_query(
        graphql_url, f'{{ encounters(patientToken: "{s.given}") {{ encounterId }} }}'
    )
    await ex.get_query(graphql_url, '{ records(after: "x") { nextCursor } }')
    graphql_bodies = [b.decode(errors="replace") for b in ex.bodies[first:]]
    masters = {row["normalized"]["patient_token"] for row in rows}

    for w in (worker, strict_worker):
        await ex.get_text(f"{w.base_url}/metrics")

    # --- positive controls: the sentinels were really in play -------------------------------
    for row in rows:
        raw = await s3_read_independently(settings, row["raw_object_key"])
        assert set(s.hits(raw.decode())) >= {s.given, s.family, s.ssn, s.note, DOB}
    logs = {"worker log": worker.log_text(), "strict worker log": strict_worker.log_text()}
    # The log lines of this test's records are there (a dead letter is logged with its id).
    assert any(str(rid) in text for rid in dead_ids for text in logs.values())

    # --- the scan ---------------------------------------------------------------------------
    # The stack this run uses (STACK_DIR), each of its services' logs, and lines in every one:
    # a scan that read nothing would find nothing.
    stack_logs = stack_dir() / "logs"
    for path in sorted(stack_logs.glob("*.log")):
        logs[path.name] = path.read_text(encoding="utf-8", errors="replace")
    assert {f"{svc}.log" for svc in STACK_SERVICES} <= logs.keys(), (stack_logs, sorted(logs))
    leaks: list[Any] = []
    # Every service of the stack and both workers have written lines; other logs there (a build
    # log, say) may be empty, and are scanned all the same.
    must_have_lines = {"worker log", "strict worker log"} | {f"{v}.log" for v in STACK_SERVICES}
    for name, text in logs.items():
        lines = text.splitlines()
        assert lines or name not in must_have_lines, f"{name}: no line to scan"
        leaks += [(name, line[:300]) for line in lines if s.hits(line)]
    for m in dlq_messages + topic_messages:
        value = (m.value or b"").decode(errors="replace")
        if s.hits(value):
            leaks.append(("topic", m.topic, value[:300]))
    leaks += [("HTTP body", b[:300]) for b in ex.bodies if s.hits(b.decode(errors="replace"))]
    # Persons: raw person ids and match tokens, in every log line, message and HTTP body.
    linkage = _linkage_search(person_ids, match_token_values)
    for name, text in logs.items():
        leaks += [(name, "person id or match token", line[:300]) for line in linkage(text)]
    for m in dlq_messages + topic_messages:
        for line in linkage((m.value or b"").decode(errors="replace")):
            leaks.append(("topic", m.topic, "person id or match token", line[:300]))
    for b in ex.bodies:
        leaks += [("HTTP body", "person id or match token", line[:300]) for line in linkage(b)]

    tables = {
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables >= EXPECTED_TABLES
    scans = [
        _table_hits(db, table, s.unique if table == "canonical_records" else [*s.unique, DOB])
        for table in sorted(tables)
    ]
    control = _table_hits(db, "raw_object_manifest", [source.upper()])
    *results, found = await asyncio.gather(*scans, _canonical_dob_hits(db, canonical_ids), control)
    for hits in results:
        leaks += hits
    assert leaks == []
    assert len(found) >= len(canonical_ids)  # the scan query does find what is there

    # A recipient never receives a master token; a recipient's tokens are never logged.
    assert recipient_tokens and all(t.startswith("rt1.local-dev.") for t in recipient_tokens)
    # Nor its person tokens (its own, ``rp1.``), which it does receive.
    assert person_tokens and all(t.startswith("rp1.") for t in person_tokens)
    assert not [
        (name, line[:300])
        for name, text in logs.items()
        for line in text.splitlines()
        if any(t in line for t in person_tokens)
    ]
    assert not [b[:300] for b in graphql_bodies for m in masters if m in b]
    assert not [
        (name, line[:300])
        for name, text in logs.items()
        for line in text.splitlines()
        if any(t in line for t in recipient_tokens)
    ]

    # idempotency_keys.response holds the two ids and nothing else.
    responses = await db.fetch(
        "SELECT response FROM idempotency_keys WHERE record_id = ANY($1)",
        [uuid.UUID(r) for r in canonical_ids],
    )
    assert len(responses) == len(canonical_ids)
    assert all(set(r["response"]) == {"record_id", "correlation_id"} for r in responses)
    other_shapes = await db.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE NOT (response ?& "
        "array['record_id', 'correlation_id'] AND response - 'record_id' - 'correlation_id' = "
        "'{}'::jsonb)"
    )
    assert other_shapes == 0  # and so in every row, not only this test's
    # The free text never reached a canonical row (already covered above; said explicitly).
    assert not any(s.note.lower() in orjson.dumps(r["normalized"]).decode().lower() for r in rows)
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["normalized"]["patient_token"]) for r in rows)
