"""A standard Bulk Data client, written by others, runs an export from discovery to download
against a real worker with nothing specific to this exchange: only the FHIR base URL, its client
id and its private key. The client is SMART's own ``smart-fetch``
(``tests/bulk_client.py``); it signs its assertion ES384 with a key registered by
``recipients add --jwks``, finds the token endpoint and the resource types itself, and downloads
what the manifest names. What it downloaded is compared with the canonical rows."""

from __future__ import annotations

import asyncio
import json
import random
import string
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.auth_tokens import SECRET, claims
from tests.bulk_client import (
    CLIENT,
    VERSION,
    RegistryUnreachable,
    ensure_installed,
    private_jwk,
    public_jwks,
    run_standard_client,
)
from tests.conftest import STRICT_ENV
from tests.fhir_fixtures import fhir_records
from tests.payloads import new_key
from tests.support import WorkerProcess, eventually, post_json, run_cli, wait_canonical

CLI_ENV = {"RECIPIENT_TOKEN_SECRET": STRICT_ENV["RECIPIENT_TOKEN_SECRET"]}
# FHIR resource type of each record kind, as the export writes them.
RESOURCE_OF_KIND = {"encounter": "Encounter", "claim": "Claim", "lab_result": "Observation"}
# The records ingested: per patient, how many of each kind (FHIR resources from the Synthea
# fixtures, sent as partnerB.v1).
RECORDS_PER_PATIENT = (
    {"encounter": 2, "claim": 1, "lab_result": 2},
    {"encounter": 1, "claim": 1, "lab_result": 1},
)


@pytest.fixture(scope="session")
async def standard_client() -> Path:
    """The client, installed into .cache/bulk-client/ once; the test is skipped only when no
    package registry can be reached to install it."""
    try:
        return await asyncio.to_thread(ensure_installed)
    except RegistryUnreachable as exc:
        pytest.skip(f"{CLIENT} {VERSION} cannot be installed here: {exc}")


def _name() -> str:
    """A made-up name of letters only: no other test's opt-out or person can reach it."""
    return "".join(random.choices(string.ascii_lowercase, k=10)).title()


def _patient() -> dict[str, str]:
    return {
        "given_name": _name(),
        "family_name": _name(),
        "dob": f"19{random.randint(30, 99)}-0{random.randint(1, 9)}-1{random.randint(0, 9)}",
    }


@pytest.fixture
async def ingested(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> dict:
    """Records of two new patients from a source of their own, canonical and assigned to
    persons: ``{"source", "record_ids", "patients"}``."""
    source = f"bulk-client-{uuid.uuid4().hex[:8]}"
    by_kind: dict[str, list[dict]] = {}
    for record in fhir_records():
        by_kind.setdefault(record["record_kind"], []).append(record["resource"])
    partner = jwt.encode(claims(), SECRET, algorithm="HS256")
    record_ids: list[str] = []
    patients = []
    for counts in RECORDS_PER_PATIENT:
        patient = _patient()
        patients.append(patient)
        for kind, n in counts.items():
            for resource in random.sample(by_kind[kind], n):
                body = {
                    "source": source,
                    "record_kind": kind,
                    "schema_hint": "partnerB.v1",
                    "patient": patient,
                    "payload": resource,
                }
                status, resp, _ = await post_json(
                    http,
                    f"{strict_worker.base_url}/v2/ingest",
                    body,
                    key=new_key(),
                    token=partner,
                )
                assert status == 202, resp
                record_ids.append(resp["record_id"])
    await wait_canonical(db, record_ids)
    ids = [uuid.UUID(r) for r in record_ids]

    async def every_record_has_a_person() -> bool:
        n = await db.fetchval("SELECT count(*) FROM record_persons WHERE record_id = ANY($1)", ids)
        return n == len(ids)

    await eventually(every_record_has_a_person, timeout=60)
    return {"source": source, "record_ids": ids, "patients": patients}


async def _register(tmp_path: Path, source: str) -> tuple[str, dict]:
    """A recipient with an ES384 key, granted the records of ``source``; (id, private JWK)."""
    recipient = f"bulk-{uuid.uuid4().hex[:10]}"
    key = private_jwk(ec.generate_private_key(ec.SECP384R1()), kid="bulk-es384-1")
    jwks_path = tmp_path / f"{recipient}.jwks.json"
    jwks_path.write_text(json.dumps(public_jwks(key)))
    code, report = await run_cli(
        "recipients", "add", recipient, "--jwks", str(jwks_path), "--local", env=CLI_ENV
    )
    assert code == 0, report
    # The recipient's own source only: what it may read is then exactly what this test sent,
    # whatever other tests of the session put in the database.
    code, report = await run_cli(
        "recipients", "grant", recipient, "--sources", source, "--local", env=CLI_ENV
    )
    assert code == 0, report
    return recipient, key


async def _canonical_counts(db: asyncpg.Pool, record_ids: list[uuid.UUID]) -> Counter:
    """Canonical rows of each FHIR type among ``record_ids``, and their persons as Patient."""
    rows = await db.fetch(
        "SELECT record_kind, count(*) AS n FROM canonical_records "
        "WHERE record_id = ANY($1) GROUP BY record_kind",
        record_ids,
    )
    counts = Counter({RESOURCE_OF_KIND[r["record_kind"]]: r["n"] for r in rows})
    counts["Patient"] = await db.fetchval(
        "SELECT count(DISTINCT coalesce(p.merged_into, p.person_id)) "
        "FROM record_persons rp JOIN persons p USING (person_id) WHERE rp.record_id = ANY($1)",
        record_ids,
    )
    return counts


async def test_a_standard_client_exports_from_discovery_to_download(
    standard_client: Path,
    strict_worker: WorkerProcess,
    db: asyncpg.Pool,
    ingested: dict,
    tmp_path: Path,
) -> None:
    recipient, key = await _register(tmp_path, ingested["source"])
    fhir_base = f"{strict_worker.base_url}/fhir"

    run = await run_standard_client(fhir_base, recipient, key, tmp_path / "export", timeout_s=300)

    # The client exits non-zero on any failed step and on an error-severity OperationOutcome in
    # the manifest's ``error`` files (informational ones it only prints).
    assert run.returncode == 0, run.describe()
    events = [e["eventId"] for e in run.log_events()]
    assert events[0] == "kickoff" and events[-1] == "export_complete", run.describe()
    kickoff = run.log_events()[0]["eventDetail"]
    assert kickoff["exportUrl"].startswith(f"{fhir_base}/$export"), kickoff
    assert kickoff["errorCode"] is None, kickoff
    assert run.output_files, run.describe()

    lines_of: Counter = Counter()
    patient_ids: set[str] = set()
    subjects: set[str] = set()
    for path, resources in run.resources().items():
        file_type = path.name.split(".")[0]
        for resource in resources:
            assert resource["resourceType"] == file_type, (path, resource)
            assert isinstance(resource.get("id"), str) and resource["id"], resource
            lines_of[file_type] += 1
            if file_type == "Patient":
                patient_ids.add(resource["id"])
            else:
                subjects.add((resource.get("subject") or resource.get("patient"))["reference"])

    # The client asks for the types it knows that /fhir/metadata lists: Claim is not among
    # the ones it knows, so the canonical claims are in no file.
    expected = await _canonical_counts(db, ingested["record_ids"])
    del expected["Claim"]
    assert lines_of == expected, run.describe()
    assert subjects <= {f"Patient/{pid}" for pid in patient_ids}, (subjects, patient_ids)
    text = json.dumps(list(run.resources().values()))
    for patient in ingested["patients"]:
        for value in (patient["given_name"], patient["family_name"], patient["dob"]):
            assert value not in text, f"the export carries a patient identifier: {value}"
