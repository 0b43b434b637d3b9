"""Load canonical rows for the read bench: realistic content, written fast by binary COPY.

    .venv/bin/python bench/load_canonical.py [--rows 1000000] [--patients 100000]
        [--source bench-read] [--truncate-source] [--dsn postgresql://...] [--workers N]

Every row is what the normalizer would have written for one partner record. Worker processes
build partner payloads in the three formats (partnerA.v1 flat, partnerA.v2 nested, partnerB.v1
FHIR resources templated from the Synthea bundles in ``../shared/fixtures/fhir``) for the three
kinds, with random ids, codes and times; map them with the project's ``map_payload``; tokenize a
synthetic identity with its token function; and build ``normalized`` as
``pipeline/normalize.canonicalize`` does. Each worker COPYs its chunks (canonical rows and their
``raw_object_manifest`` rows in state ``canonicalized``, one transaction per chunk) on its own
connection, so mapping and encoding run in parallel.

Records per patient are Zipf-like (``--skew``): patient 0 has the most, and every patient has a
few, so the read bench can pick a patient with 10 to 50 encounters from the list printed at the
end. Patient identities depend only on ``--seed`` and the patient number, so several runs add
records to the same patients; record ids are new on every run. Tokens are master tokens under
``TOKENIZER_HMAC_SECRET``: a worker reading these rows must run with the same secret.

No raw objects are written to S3: ``reconcile`` over this source would report every record as
"manifest without raw object", so do not run it on ``--source``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import multiprocessing as mp
import os
import queue
import random
import sys
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import asyncpg
import orjson

# The project's pure functions, in one place: when they move, this block is the only change.
from exchange_stream.core.identity import canonical_identity, token_for
from exchange_stream.core.mappings import MAPPING_VERSION, map_payload
from exchange_stream.core.timefmt import rfc3339
from exchange_stream.infra.config import Settings

ROOT = Path(__file__).resolve().parent.parent
FHIR_DIR = ROOT.parent / "shared" / "fixtures" / "fhir"

CANONICAL_COLUMNS = (
    "record_id",
    "source",
    "raw_object_key",
    "raw_sha256",
    "normalized",
    "ingested_at",
    "normalized_at",
    "correlation_id",
    "event_version",
    "record_kind",
    "schema_hint",
)
MANIFEST_COLUMNS = (
    "record_id",
    "source",
    "bucket",
    "object_key",
    "sha256",
    "size_bytes",
    "state",
    "created_at",
    "updated_at",
)

KINDS = ("encounter", "claim", "lab_result")
KIND_WEIGHTS = (3, 3, 4)  # labs outnumber visits and bills in real feeds
HINTS = ("partnerA.v1", "partnerA.v2", "partnerB.v1")

# Code tables: real codes, so that code-based queries and indexes see a realistic spread.
ICD10 = (
    "E11.9 I10 J06.9 M54.50 K21.9 F41.1 E78.5 J45.909 N39.0 R51.9 Z00.00 I25.10 E66.9 G43.909 "
    "F32.A R10.9 J18.9 M17.11 E03.9 I48.91 N18.3 K59.00 R05.9 Z23 B34.9 L03.90 S93.401A"
).split()
SNOMED_REASONS = "44054006 38341003 195662009 10509002 72892002 55822004 271737000".split()
CPT = "99213 99214 99203 99204 80053 85025 93000 71046 36415 99285 90686 81001 83036".split()
SNOMED_PROCEDURES = "410620009 185349003 162673000 430193006 710824005".split()
# (LOINC, unit, low, high, typical value, spread)
QUANTITATIVE_TESTS = (
    ("2345-7", "mg/dL", "70", "99", 95.0, 25.0),
    ("2160-0", "mg/dL", "0.6", "1.3", 0.95, 0.3),
    ("718-7", "g/dL", "12.0", "17.5", 14.2, 1.6),
    ("6690-2", "10*3/uL", "4.5", "11.0", 7.2, 2.0),
    ("2951-2", "mmol/L", "135", "145", 140.0, 3.0),
    ("2823-3", "mmol/L", "3.5", "5.1", 4.2, 0.4),
    ("4548-4", "%", "4.0", "5.6", 5.9, 1.1),
    ("2093-3", "mg/dL", None, "200", 190.0, 35.0),
    ("11580-8", "mIU/L", "0.4", "4.0", 1.8, 1.0),
    ("2756-5", None, "5.0", "8.0", 6.0, 0.7),  # urine pH: unitless
)
QUALITATIVE_TESTS = (
    ("94500-6", ("negative", "negative", "negative", "detected")),
    ("5196-1", ("non-reactive", "non-reactive", "reactive")),
    ("20454-5", ("negative", "negative", "trace")),
    ("5778-6", ("normal", "normal", "abnormal")),
)
SNOMED_FINDINGS = ("260385009", "10828004", "260415000", "260373001")
LAB_STATUSES = ("final",) * 17 + ("amended", "corrected", "preliminary")
A_V1_CLASSES = ("inpatient", "outpatient", "emergency", "ambulatory", "telehealth", "ER", "op")
A_V2_CLASSES = ("IMP", "AMB", "EMER", "VR", "outpatient", "inpatient")
FHIR_CLASSES = ("AMB", "AMB", "AMB", "IMP", "EMER", "VR", "HH")
GIVEN = (
    "Ada Grace Alan Edsger Barbara Donald Frances Margaret Katherine John Radia Tim Linus Guido "
    "Anita Shafi Leslie Hedy Claude Dorothy Niklaus Ken Dennis Bjarne Sophie Yukihiro Rasmus"
).split()
FAMILY = (
    "Lovelace Hopper Turing Dijkstra Liskov Knuth Allen Hamilton Johnson McCarthy Perlman "
    "Berners-Lee Torvalds Rossum Borg Goldwasser Lamport Lamarr Shannon Vaughan Wirth Thompson "
    "Ritchie Stroustrup Wilson Matsumoto Lerdorf Müller Øster O'Neil García"
).split()
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED_SYSTEM = "http://snomed.info/sct"
LOINC_SYSTEM = "http://loinc.org"
CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
UCUM_SYSTEM = "http://unitsofmeasure.org"
OFFSETS = ("Z", "+00:00", "-05:00", "-07:00", "+01:00", "+02:00")


@dataclass(frozen=True)
class Plan:
    """What every worker needs to build and write its chunks; picklable."""

    dsn: str
    source: str
    bucket: str
    hmac_key: bytes
    rows: int
    chunk: int
    patients: int
    skew: float
    seed: int
    run_seed: int
    fhir_dir: str

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk)

    def chunk_rows(self, index: int) -> int:
        return min(self.chunk, self.rows - index * self.chunk)


class Generator:
    """Builds one chunk of canonical and manifest rows; one per worker process."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        # Zipf-like popularity: patient r gets weight (r + 1) ** -skew.
        self.cum_weights = list(
            itertools.accumulate((r + 1) ** -plan.skew for r in range(plan.patients))
        )
        self.tokens: dict[int, tuple[str, dict[str, Any]]] = {}
        self.fhir = load_fhir_templates(Path(plan.fhir_dir))

    def patient(self, number: int) -> tuple[str, dict[str, Any]]:
        """(master token, identity fields) of patient ``number``, computed once per process."""
        cached = self.tokens.get(number)
        if cached is None:
            identity = patient_identity(self.plan.seed, number)
            cached = (master_token(identity, self.plan.hmac_key), identity)
            self.tokens[number] = cached
        return cached

    def chunk(
        self, index: int
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Counter[int]]:
        """Rows of chunk ``index``: canonical rows, manifest rows, encounters per patient."""
        plan = self.plan
        rng = random.Random(plan.run_seed * 1_000_003 + index)
        n = plan.chunk_rows(index)
        numbers = rng.choices(range(plan.patients), cum_weights=self.cum_weights, k=n)
        kinds = rng.choices(KINDS, weights=KIND_WEIGHTS, k=n)
        now = datetime.now(UTC)
        canonical_rows, manifest_rows = [], []
        encounters: Counter[int] = Counter()
        for number, kind in zip(numbers, kinds, strict=True):
            hint = rng.choice(HINTS)
            # Half of the partnerA.v1 senders still use the v1 API (record_type, first_name).
            version = "1" if hint == "partnerA.v1" and rng.random() < 0.5 else "2"
            token, identity = self.patient(number)
            ingested_at = now - timedelta(seconds=rng.uniform(60, 365 * 86400))
            # Most records describe the last weeks; one in ten is a back-loaded history item.
            clinical = ingested_at - timedelta(
                seconds=rng.uniform(3600, (3650 if rng.random() < 0.1 else 30) * 86400)
            )
            payload = build_payload(rng, kind, hint, clinical, self.fhir)
            mapped = map_payload(kind, hint, payload)
            normalized_at = ingested_at + timedelta(milliseconds=rng.uniform(20, 3000))
            normalized = {
                "patient_token": token,
                "record_kind": kind,
                kind: mapped,
                "meta": {
                    "normalized_at": rfc3339(normalized_at),
                    "schema_hint": hint,
                    "mapping_version": MAPPING_VERSION,
                },
            }
            record_id = uuid.uuid4()
            body = orjson.dumps(raw_body(plan.source, version, kind, hint, identity, payload))
            sha256 = hashlib.sha256(body).hexdigest()
            key = f"{plan.source}/{record_id}.json"
            canonical_rows.append(
                (
                    record_id,
                    plan.source,
                    key,
                    sha256,
                    orjson.dumps(normalized).decode(),
                    ingested_at,
                    normalized_at,
                    str(uuid.uuid4()),
                    version,
                    kind,
                    hint,
                )
            )
            manifest_rows.append(
                (
                    record_id,
                    plan.source,
                    plan.bucket,
                    key,
                    sha256,
                    len(body),
                    "canonicalized",
                    ingested_at,
                    normalized_at,
                )
            )
            if kind == "encounter":
                encounters[number] += 1
        return canonical_rows, manifest_rows, encounters


def patient_identity(seed: int, number: int) -> dict[str, Any]:
    """The identity fields of patient ``number``: the same in every process and every run."""
    rng = random.Random(seed * 10_000_019 + number)
    birth = f"{rng.randint(1930, 2022)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    ssn = f"{rng.randint(100, 899)}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    return {
        "given_name": rng.choice(GIVEN),
        "family_name": rng.choice(FAMILY),
        "dob": birth,
        # One in ten partners sends no SSN; the token then rests on name and birth date.
        "ssn": None if rng.random() < 0.1 else ssn,
    }


def master_token(identity: dict[str, Any], hmac_key: bytes) -> str:
    """The patient token the normalizer computes for these identity fields."""
    fields = (identity["given_name"], identity["family_name"], identity["dob"], identity["ssn"])
    return token_for(canonical_identity(*fields), hmac_key)


def raw_body(
    source: str, version: str, kind: str, hint: str, identity: dict[str, Any], payload: Any
) -> dict[str, Any]:
    """The ingest request body the raw object would hold (its hash and size go in the rows)."""
    if version == "1":
        patient = {
            "first_name": identity["given_name"],
            "last_name": identity["family_name"],
            "dob": identity["dob"],
            "ssn": identity["ssn"],
        }
        return {"source": source, "record_type": kind, "patient": patient, "payload": payload}
    return {
        "source": source,
        "record_kind": kind,
        "schema_hint": hint,
        "patient": identity,
        "payload": payload,
    }


def load_fhir_templates(directory: Path) -> dict[str, list[bytes]]:
    """Encounter, Claim and laboratory Observation resources of the bundles, as JSON bytes."""
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise SystemExit(f"no FHIR bundles in {directory} (see --fhir-dir)")
    templates: dict[str, list[bytes]] = {"encounter": [], "claim": [], "lab_result": []}
    for path in paths:
        for entry in orjson.loads(path.read_bytes()).get("entry", []):
            resource = entry.get("resource", {})
            kind = {"Encounter": "encounter", "Claim": "claim"}.get(resource.get("resourceType"))
            if resource.get("resourceType") == "Observation" and any(
                coding.get("code") == "laboratory"
                for category in resource.get("category", [])
                for coding in category.get("coding", [])
            ):
                kind = "lab_result"
            if kind:
                templates[kind].append(orjson.dumps(resource))
    return templates


def stamp(rng: random.Random, moment: datetime) -> str:
    """``moment`` as a partner writes it: RFC 3339 in some zone, sometimes with milliseconds."""
    offset = rng.choice(OFFSETS)
    if offset in ("Z", "+00:00"):
        local = moment
    else:
        sign = 1 if offset[0] == "+" else -1
        local = moment + sign * timedelta(hours=int(offset[1:3]))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if rng.random() < 0.3:
        text += f".{local.microsecond // 1000:03d}"
    return text + offset


def money(rng: random.Random) -> str:
    return f"{rng.lognormvariate(6.0, 1.2) + 20:.2f}"


def sample_codes(rng: random.Random, table: tuple[str, ...] | list[str], most: int) -> list[str]:
    return rng.sample(table, rng.randint(0, most))


def quantitative(rng: random.Random) -> tuple[str, str | None, str | None, str | None, str]:
    """(LOINC, unit, low, high, value) of a numeric test."""
    loinc, unit, low, high, typical, spread = rng.choice(QUANTITATIVE_TESTS)
    decimals = max(len(bound.partition(".")[2]) for bound in (low or "0", high or "0"))
    value = f"{max(0.0, rng.gauss(typical, spread)):.{max(decimals, 1)}f}"
    return loinc, unit, low, high, value


def build_payload(
    rng: random.Random,
    kind: str,
    hint: str,
    moment: datetime,
    fhir: dict[str, list[bytes]],
) -> dict[str, Any]:
    """A partner payload of ``kind`` in format ``hint`` about an event at ``moment``."""
    if hint == "partnerB.v1":
        return fhir_payload(rng, kind, moment, fhir)
    if hint == "partnerA.v2":
        return a_v2_payload(rng, kind, moment)
    return a_v1_payload(rng, kind, moment)


def a_v1_payload(rng: random.Random, kind: str, moment: datetime) -> dict[str, Any]:
    if kind == "encounter":
        payload: dict[str, Any] = {
            "encounter_id": f"enc-{rng.getrandbits(48):012x}",
            "facility_id": f"fac-{rng.randint(1, 400):04d}",
            "admit_ts": stamp(rng, moment),
            "encounter_type": rng.choice(A_V1_CLASSES),
            "dx_codes": sample_codes(rng, ICD10, 4),
        }
        if rng.random() < 0.85:
            payload["discharge_ts"] = stamp(rng, moment + timedelta(hours=rng.uniform(0.2, 120)))
        return payload
    if kind == "claim":
        return {
            "claim_id": f"clm-{rng.getrandbits(48):012x}",
            "payer_id": f"payer-{rng.randint(1, 40):02d}",
            "service_date": moment.date().isoformat(),
            "total_charge": float(money(rng)) if rng.random() < 0.5 else money(rng),
            "currency": "USD",
            "cpt_codes": sample_codes(rng, CPT, 4),
            "dx_codes": sample_codes(rng, ICD10, 3),
        }
    payload = {
        "order_id": f"ord-{rng.getrandbits(48):012x}",
        "collected_ts": stamp(rng, moment),
        "status": rng.choice(LAB_STATUSES),
    }
    if rng.random() < 0.8:
        loinc, unit, low, high, value = quantitative(rng)
        payload.update(loinc_code=loinc, value=value, unit=unit, ref_low=low, ref_high=high)
    else:
        loinc, words = rng.choice(QUALITATIVE_TESTS)
        payload.update(loinc_code=loinc, value=rng.choice(words).upper())
    return payload


def a_v2_payload(rng: random.Random, kind: str, moment: datetime) -> dict[str, Any]:
    if kind == "encounter":
        period = {"start": stamp(rng, moment)}
        if rng.random() < 0.85:
            period["end"] = stamp(rng, moment + timedelta(hours=rng.uniform(0.2, 120)))
        return {
            "encounter": {
                "id": f"E{rng.getrandbits(40)}",
                "facility": {"id": f"FAC{rng.randint(1, 400)}"},
                "period": period,
                "class": rng.choice(A_V2_CLASSES),
                "diagnoses": [
                    {"system": ICD10_SYSTEM, "code": code} for code in sample_codes(rng, ICD10, 4)
                ],
            }
        }
    if kind == "claim":
        return {
            "claim": {
                "id": f"C{rng.getrandbits(40)}",
                "payer": {"id": f"PAYER{rng.randint(1, 40)}"},
                "serviceDate": moment.date().isoformat(),
                "total": {"amount": money(rng), "currency": rng.choice(("USD",) * 9 + ("EUR",))},
                "lines": [
                    {"procedure": {"system": CPT_SYSTEM, "code": code}, "charge": money(rng)}
                    for code in sample_codes(rng, CPT, 4)
                ],
                "diagnoses": [
                    {"system": ICD10_SYSTEM, "code": code} for code in sample_codes(rng, ICD10, 3)
                ],
            }
        }
    result: dict[str, Any] = {
        "orderId": f"R{rng.getrandbits(40)}",
        "collectedAt": stamp(rng, moment),
        "status": rng.choice(LAB_STATUSES),
    }
    if rng.random() < 0.85:
        loinc, unit, low, high, value = quantitative(rng)
        result["test"] = {"system": LOINC_SYSTEM, "code": loinc}
        result["value"] = {"quantity": value, "unit": unit}
        result["referenceRange"] = {"low": low, "high": high}
    else:
        loinc, _ = rng.choice(QUALITATIVE_TESTS)
        result["test"] = {"system": LOINC_SYSTEM, "code": loinc}
        result["value"] = {"system": SNOMED_SYSTEM, "code": rng.choice(SNOMED_FINDINGS)}
    return {"result": result}


def fhir_payload(
    rng: random.Random, kind: str, moment: datetime, fhir: dict[str, list[bytes]]
) -> dict[str, Any]:
    """A Synthea resource of ``kind`` with a new id, new times and varied codes."""
    resource = orjson.loads(rng.choice(fhir[kind]))
    resource["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    end = moment + timedelta(minutes=rng.uniform(10, 240))
    if kind == "encounter":
        resource["period"] = {"start": stamp(rng, moment), "end": stamp(rng, end)}
        resource["class"]["code"] = rng.choice(FHIR_CLASSES)
        resource["serviceProvider"] = {
            "reference": f"Organization/org-{rng.randint(1, 400):04d}",
            "display": "PCP24285",
        }
        resource["reasonCode"] = [
            {"coding": [{"system": SNOMED_SYSTEM, "code": code}]}
            for code in sample_codes(rng, SNOMED_REASONS, 2)
        ]
    elif kind == "claim":
        resource["billablePeriod"] = {"start": stamp(rng, moment), "end": stamp(rng, end)}
        resource["created"] = stamp(rng, end)
        resource["total"] = {"value": float(money(rng)), "currency": "USD"}
        if rng.random() < 0.5:  # Synthea names the payer by display only; real EHRs often don't
            resource["insurer"] = {"reference": f"Organization/payer-{rng.randint(1, 40):02d}"}
        resource["diagnosis"] = [
            {
                "sequence": i + 1,
                "diagnosisCodeableConcept": {"coding": [{"system": ICD10_SYSTEM, "code": code}]},
            }
            for i, code in enumerate(sample_codes(rng, ICD10, 3))
        ]
        if rng.random() < 0.3:
            resource.setdefault("item", []).append(
                {
                    "sequence": 99,
                    "productOrService": {
                        "coding": [{"system": SNOMED_SYSTEM, "code": rng.choice(SNOMED_PROCEDURES)}]
                    },
                }
            )
    else:
        resource["effectiveDateTime"] = stamp(rng, moment)
        resource["issued"] = stamp(rng, end)
        resource["status"] = rng.choice(LAB_STATUSES)
        # The bundles' lab results are all coded; most real lab feeds are numeric.
        if rng.random() < 0.7:
            loinc, unit, low, high, value = quantitative(rng)
            resource.pop("valueCodeableConcept", None)
            resource["code"] = {"coding": [{"system": LOINC_SYSTEM, "code": loinc}]}
            quantity: dict[str, Any] = {"value": float(value)}
            if unit is not None:
                quantity.update(unit=unit, system=UCUM_SYSTEM, code=unit)
            resource["valueQuantity"] = quantity
            bounds = {}
            if low is not None:
                bounds["low"] = {"value": float(low), "unit": unit}
            if high is not None:
                bounds["high"] = {"value": float(high), "unit": unit}
            resource["referenceRange"] = [bounds]
    return resource


def worker_main(plan: Plan, worker: int, workers: int, results: Queue) -> None:
    """Build and COPY chunks ``worker``, ``worker + workers``, ...; report each on ``results``."""
    try:
        asyncio.run(_copy_chunks(plan, worker, workers, results))
    except BaseException:  # the parent must hear of any failure, or it would wait forever
        results.put(("error", worker, traceback.format_exc()))
        raise
    results.put(("done", worker, None))


async def _copy_chunks(plan: Plan, worker: int, workers: int, results: Queue) -> None:
    generator = Generator(plan)
    conn = await asyncpg.connect(plan.dsn)
    try:
        for index in range(worker, plan.chunks, workers):
            canonical_rows, manifest_rows, encounters = generator.chunk(index)
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "canonical_records", records=canonical_rows, columns=CANONICAL_COLUMNS
                )
                await conn.copy_records_to_table(
                    "raw_object_manifest", records=manifest_rows, columns=MANIFEST_COLUMNS
                )
            results.put(("chunk", worker, (len(canonical_rows), dict(encounters))))
    finally:
        await conn.close()


async def truncate_source(dsn: str, source: str) -> None:
    """Delete every row this loader wrote under ``source``, with the patient index built on them."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for table in (
                "derived_patient_record_index",
                "canonical_records",
                "raw_object_manifest",
            ):
                status = await conn.execute(f"DELETE FROM {table} WHERE source = $1", source)
                print(f"  {table}: {status}", flush=True)
    finally:
        await conn.close()


async def summarize(
    dsn: str, source: str, tokens: list[str]
) -> tuple[dict[str, Counter[str]], dict[str, Any]]:
    """Records per kind of the given patients in ``source`` (all runs), and the table sizes."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE canonical_records")
        await conn.execute("ANALYZE raw_object_manifest")
        counts: dict[str, Counter[str]] = {token: Counter() for token in tokens}
        rows = await conn.fetch(
            "SELECT normalized->>'patient_token' AS token, record_kind, count(*) AS n "
            "FROM canonical_records WHERE source = $1 AND normalized->>'patient_token' = ANY($2) "
            "GROUP BY 1, 2",
            source,
            tokens,
        )
        for row in rows:
            counts[row["token"]][row["record_kind"]] = row["n"]
        sizes = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM canonical_records) AS canonical_rows, "
            "(SELECT count(*) FROM canonical_records WHERE source = $1) AS source_rows, "
            "pg_total_relation_size('canonical_records') AS canonical_bytes, "
            "pg_total_relation_size('raw_object_manifest') AS manifest_bytes",
            source,
        )
        return counts, dict(sizes)
    finally:
        await conn.close()


def pick_patients(encounters: Counter[int]) -> list[int]:
    """The busiest patient, and patients whose encounter count is near 10, 20, 30 and 50."""
    picked = [encounters.most_common(1)[0][0]] if encounters else []
    for target in (10, 20, 30, 50):
        near = [p for p, n in encounters.items() if abs(n - target) <= target // 10]
        picked += sorted(near)[:2]
    return list(dict.fromkeys(picked))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--source", default="bench-read")
    parser.add_argument(
        "--truncate-source", action="store_true", help="delete the source's rows first"
    )
    parser.add_argument("--dsn", help="default: from POSTGRES_* / DATABASE_URL like the service")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--chunk", type=int, default=5_000, help="rows per COPY transaction")
    parser.add_argument("--skew", type=float, default=0.5, help="Zipf exponent of patients")
    parser.add_argument("--seed", type=int, default=14, help="seed of the patient identities")
    parser.add_argument("--fhir-dir", default=os.environ.get("EXCHANGE_FIXTURES_DIR", FHIR_DIR))
    args = parser.parse_args(argv)
    if args.rows < 0 or args.patients < 1 or args.workers < 1 or args.chunk < 1:
        parser.error("--rows must be >= 0; --patients, --workers and --chunk >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Load the rows; print progress, throughput, table sizes and patients to query."""
    args = parse_args(argv)
    settings = Settings.from_env()
    plan = Plan(
        dsn=args.dsn or settings.dsn,
        source=args.source,
        bucket=settings.raw_bucket,
        hmac_key=settings.tokenizer_hmac_secret.encode(),
        rows=args.rows,
        chunk=args.chunk,
        patients=args.patients,
        skew=args.skew,
        seed=args.seed,
        run_seed=random.SystemRandom().getrandbits(32),
        fhir_dir=str(args.fhir_dir),
    )
    if args.truncate_source:
        print(f"deleting the rows of source {plan.source!r}", flush=True)
        asyncio.run(truncate_source(plan.dsn, plan.source))

    # Fork, not spawn: the workers need nothing the parent has not already imported.
    context = mp.get_context("fork")
    results: Queue = context.Queue()
    workers = min(args.workers, max(plan.chunks, 1))
    processes = [
        context.Process(target=worker_main, args=(plan, w, workers, results), daemon=True)
        for w in range(workers)
    ]
    print(
        f"loading {plan.rows:,} rows for {plan.patients:,} patients into source "
        f"{plan.source!r} with {workers} workers, {plan.chunk:,} rows per COPY",
        flush=True,
    )
    started = last_print = time.monotonic()
    for process in processes:
        process.start()
    done_rows, running = 0, workers
    encounters: Counter[int] = Counter()
    while running:
        try:
            what, worker, data = results.get(timeout=5)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                print("a worker died without a report", file=sys.stderr)
                return 1
            continue
        if what == "error":
            print(f"worker {worker} failed:\n{data}", file=sys.stderr)
            for process in processes:
                process.terminate()
            return 1
        if what == "done":
            running -= 1
            continue
        rows, chunk_encounters = data
        done_rows += rows
        encounters.update(chunk_encounters)
        now = time.monotonic()
        if now - last_print >= 5:
            rate = done_rows / (now - started)
            print(f"  {done_rows:>10,} rows  {rate:,.0f} rows/s", flush=True)
            last_print = now
    for process in processes:
        process.join()
    elapsed = time.monotonic() - started
    print(
        f"loaded {done_rows:,} rows in {elapsed:.1f} s: "
        f"{done_rows / max(elapsed, 1e-9):,.0f} rows/s",
        flush=True,
    )

    tokens = {
        number: master_token(patient_identity(plan.seed, number), plan.hmac_key)
        for number in pick_patients(encounters)
    }
    counts, sizes = asyncio.run(summarize(plan.dsn, plan.source, list(tokens.values())))
    print(
        f"canonical_records: {sizes['canonical_rows']:,} rows ({sizes['source_rows']:,} in "
        f"{plan.source!r}), {sizes['canonical_bytes'] / 2**20:,.0f} MiB with indexes; "
        f"raw_object_manifest {sizes['manifest_bytes'] / 2**20:,.0f} MiB"
    )
    print("patients (master tokens; encounters/claims/lab_results in this source, all runs):")
    for number, token in tokens.items():
        c = counts[token]
        print(
            f"  {token}  patient #{number:<6}  {c['encounter']:>5} {c['claim']:>5} "
            f"{c['lab_result']:>5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
