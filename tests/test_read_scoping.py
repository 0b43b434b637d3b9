"""Two recipients read the same records and get nothing they could join on: no record, item or
patient id and no cursor in common, only the shared values (organisations, codes, dates,
amounts, kinds, sources, formats)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator

import aiohttp
import asyncpg
import graphql
import jwt
import pytest

from exchange_stream.read.graphql import SCHEMA_PATH
from tests.auth_tokens import SECRET as JWT_SECRET
from tests.auth_tokens import claims
from tests.conftest import STRICT_ENV
from tests.payloads import new_key, patient_v2, v2_body
from tests.support import WorkerProcess, post_json, run_cli, wait_canonical

CLI_ENV = {"RECIPIENT_TOKEN_SECRET": STRICT_ENV["RECIPIENT_TOKEN_SECRET"]}

CLAIM = {
    "claim_id": "clm-scope-1",
    "payer_id": "payer-3",
    "service_date": "2024-02-28",
    "total_charge": "1234.50",
    "currency": "USD",
    "cpt_codes": ["99213"],
    "dx_codes": ["E11.9"],
}
LAB = {
    "result": {
        "orderId": "ord-scope-1",
        "test": {"system": "http://loinc.org", "code": "2345-7"},
        "value": {"quantity": 95.5, "unit": "mg/dL"},
        "referenceRange": {"low": 70, "high": 99},
        "collectedAt": "2024-03-01T09:15:00+01:00",
        "status": "final",
    }
}

# Fields whose values are the same for every recipient by design (docs/CONTRACT.md): who sent
# or was billed (organisations), what (codes, kinds, classes, statuses), when, how much, and in
# which format. Anything else two recipients share would let them join their extracts.
SHARED_BY_DESIGN = {
    "facilityId",
    "payerId",
    "system",
    "code",
    "kind",
    "source",
    "schemaHint",
    "mappingVersion",
    "encounterClass",
    "status",
    "admitTime",
    "dischargeTime",
    "serviceDate",
    "collectedAt",
    "ingestedAt",
    "normalizedAt",
    "amount",
    "currency",
    "quantity",
    "unit",
    "low",
    "high",
    "result",
    "__typename",
}
IDENTIFIERS = {
    "recordId",
    "patientToken",
    "encounterId",
    "claimId",
    "resultId",
    "cursor",
    "nextCursor",
    "resumeCursor",
}


def every_field(type_: graphql.GraphQLNamedType) -> str:
    """A selection of every field of ``type_``, nested types included, from the contract file:
    whatever the schema adds (a ``resumeCursor``, say) is read too."""
    if isinstance(type_, graphql.GraphQLUnionType):
        return (
            "{ __typename "
            + " ".join(f"... on {t.name} {every_field(t)}" for t in type_.types)
            + " }"
        )
    assert isinstance(type_, graphql.GraphQLObjectType)
    parts = []
    for name, fld in type_.fields.items():
        if any(arg.type.__class__ is graphql.GraphQLNonNull for arg in fld.args.values()):
            continue  # needs an argument we cannot invent
        inner = graphql.get_named_type(fld.type)
        parts.append(name if graphql.is_leaf_type(inner) else f"{name} {every_field(inner)}")
    return "{ " + " ".join(parts) + " }"


SCHEMA = graphql.build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))
RECORDS = (
    "query ($source: String, $after: String) { records(source: $source, first: 2, after: $after) "
    + every_field(SCHEMA.type_map["RecordPage"])
    + " }"
)


def leaves(doc: object, field: str = "") -> Iterator[tuple[str, object]]:
    """Every (field name, scalar value) of an answer; nulls and empty strings say nothing."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, key)
    elif isinstance(doc, list):
        for item in doc:
            yield from leaves(item, field)
    elif doc is not None and doc != "":
        yield field, doc


def recipient_jwt(recipient: str) -> str:
    return jwt.encode(
        claims(recipient=recipient, scope="records:read"), JWT_SECRET, algorithm="HS256"
    )


async def read_all(
    http: aiohttp.ClientSession, worker: WorkerProcess, recipient: str, source: str
) -> list[dict]:
    """Every page of ``records(source)`` as ``recipient`` sees it."""
    pages: list[dict] = []
    after = None
    headers = {"Authorization": f"Bearer {recipient_jwt(recipient)}"}
    while True:
        body = {"query": RECORDS, "variables": {"source": source, "after": after}}
        async with http.post(f"{worker.base_url}/graphql", json=body, headers=headers) as r:
            doc = await r.json()
            assert r.status == 200 and not doc.get("errors"), doc
        pages.append(doc["data"])
        after = doc["data"]["records"]["nextCursor"]
        if after is None:
            return pages
        assert len(pages) < 10, "paging does not end"


@pytest.fixture
async def records_of_every_kind(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> str:
    """Two records of each kind, of two patients, canonical, under a new source."""
    source = f"scope-{uuid.uuid4().hex[:8]}"
    partner = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    record_ids = []
    for n in range(2):
        patient = patient_v2(given_name=f"Scope{uuid.uuid4().hex[:6]}", family_name=f"P{n}")
        bodies = [
            v2_body(source=source, patient=patient),
            v2_body(source=source, patient=patient, record_kind="claim", payload=CLAIM),
            v2_body(
                source=source,
                patient=patient,
                record_kind="lab_result",
                schema_hint="partnerA.v2",
                payload=LAB,
            ),
        ]
        for body in bodies:
            status, resp, _ = await post_json(
                http, f"{strict_worker.base_url}/v2/ingest", body, key=new_key(), token=partner
            )
            assert status == 202, resp
            record_ids.append(resp["record_id"])
    await wait_canonical(db, record_ids)
    return source


async def test_two_recipients_share_no_identifier_of_the_same_records(
    strict_worker: WorkerProcess, http: aiohttp.ClientSession, records_of_every_kind: str
) -> None:
    recipients = [f"scope-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for recipient in recipients:
        code, report = await run_cli("recipients", "add", recipient, "--local", env=CLI_ENV)
        assert code == 0, report
        code, report = await run_cli(
            "recipients", "grant", recipient, "--all-sources", "--local", env=CLI_ENV
        )
        assert code == 0, report

    answers = [await read_all(http, strict_worker, r, records_of_every_kind) for r in recipients]
    for pages in answers:
        items = [item for page in pages for item in page["records"]["items"]]
        assert sorted(i["kind"] for i in items) == [
            "claim",
            "claim",
            "encounter",
            "encounter",
            "lab_result",
            "lab_result",
        ]
    # Every identifier field was answered, so its absence from the overlap means something.
    answered = {field for pages in answers for field, _ in leaves(pages)}
    assert {"recordId", "encounterId", "claimId", "resultId", "cursor", "nextCursor"} <= answered

    fields_of: list[dict[object, set[str]]] = []
    for pages in answers:
        seen: dict[object, set[str]] = defaultdict(set)
        for field, value in leaves(pages):
            seen[value].add(field)
        fields_of.append(seen)
    common = fields_of[0].keys() & fields_of[1].keys()
    joinable = {
        value: sorted(fields_of[0][value] | fields_of[1][value])
        for value in common
        if not (fields_of[0][value] | fields_of[1][value]) <= SHARED_BY_DESIGN
    }
    assert joinable == {}, "values two recipients could join on"
    # And the other way round: not one identifier value is shared.
    assert not any((fields_of[0][v] | fields_of[1][v]) & IDENTIFIERS for v in common)
