"""A client of one worker for tests that ingest patients and read them back: random
scenario names and dates, ingest through ``/v2/ingest``, reads through ``/graphql``."""

from __future__ import annotations

import secrets
import string
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import asyncpg

from tests.payloads import new_key, partner_a_v1_encounter
from tests.support import WorkerProcess, eventually, post_json

CLAIM = {
    "payer_id": "payer-3",
    "service_date": "2024-02-28",
    "total_charge": "1234.50",
    "currency": "USD",
    "cpt_codes": ["99213"],
    "dx_codes": ["E11.9"],
}

ITEMS = (
    "items { recordId patientToken personToken kind source "
    "encounter { encounterId } claim { claimId } }"
)
FEED = f"query ($s: String) {{ records(source: $s, first: 50) {{ {ITEMS} nextCursor }} }}"
PERSON = (
    "query ($p: ID!, $kind: String, $first: Int, $after: String) { person(personToken: $p) { "
    f"personToken records(kind: $kind, first: $first, after: $after) {{ {ITEMS} "
    "nextCursor resumeCursor } } }"
)


def letters(n: int = 10) -> str:
    """A random word of letters only: names keep letters alone (``core/matching.py``)."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(n))


def family() -> str:
    return letters().capitalize()


def birth_date() -> str:
    """A date of birth of one scenario (every rule compares it)."""
    year, month, day = (
        1930 + secrets.randbelow(70),
        1 + secrets.randbelow(12),
        1 + secrets.randbelow(28),
    )
    return f"{year}-{month:02d}-{day:02d}"


def patient(given: str, surname: str, dob: str, **extra: str) -> dict[str, str]:
    return {"given_name": given, "family_name": surname, "dob": dob, **extra}


class Exchange:
    """Ingest and read through one worker."""

    def __init__(self, http: aiohttp.ClientSession, worker: WorkerProcess, db: asyncpg.Pool):
        self.http, self.worker, self.db = http, worker, db

    async def ingest(
        self, source: str, person: Mapping[str, str], kind: str = "encounter"
    ) -> uuid.UUID:
        payload = partner_a_v1_encounter()
        if kind == "claim":
            payload = {**CLAIM, "claim_id": f"clm-{uuid.uuid4().hex[:12]}"}
        body = {
            "source": source,
            "record_kind": kind,
            "schema_hint": "partnerA.v1",
            "patient": dict(person),
            "payload": payload,
        }
        status, resp, _ = await post_json(
            self.http, f"{self.worker.base_url}/v2/ingest", body, key=new_key()
        )
        assert status == 202, resp
        return uuid.UUID(resp["record_id"])

    async def persons(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Each record's person as it is now (merges followed), once every one is linked."""
        found: dict[uuid.UUID, int] = {}

        async def linked() -> bool:
            rows = await self.db.fetch(
                "SELECT rp.record_id, coalesce(p.merged_into, p.person_id) AS person "
                "FROM record_persons rp JOIN persons p USING (person_id) "
                "WHERE rp.record_id = ANY($1)",
                ids,
            )
            found.clear()
            found.update({r["record_id"]: r["person"] for r in rows})
            return len(found) == len(ids)

        await eventually(linked, timeout=120)
        return dict(found)

    async def receipt_order(self, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        rows = await self.db.fetch(
            "SELECT record_id FROM canonical_records WHERE record_id = ANY($1) "
            "ORDER BY ingested_at, record_id",
            ids,
        )
        return [r["record_id"] for r in rows]

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, token: str = "dev"
    ) -> dict[str, Any]:
        body = {"query": query, "variables": variables or {}}
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.post(
            f"{self.worker.base_url}/graphql", json=body, headers=headers
        ) as r:
            doc = await r.json()
            assert r.status == 200, doc
            return doc

    async def data(
        self, query: str, variables: dict[str, Any] | None = None, token: str = "dev"
    ) -> dict[str, Any]:
        doc = await self.gql(query, variables, token)
        assert "errors" not in doc, doc
        return doc["data"]

    async def feed(self, source: str, token: str = "dev") -> list[dict[str, Any]]:
        return (await self.data(FEED, {"s": source}, token))["records"]["items"]

    async def person(self, person_token: str, token: str = "dev", **args: Any) -> Any:
        return (await self.data(PERSON, {"p": person_token, **args}, token))["person"]

    async def statements(self) -> tuple[float, float]:
        """The worker's ``graphql_sql_statements`` histogram: (requests, statements)."""
        values = {"graphql_sql_statements_count": 0.0, "graphql_sql_statements_sum": 0.0}
        async with self.http.get(f"{self.worker.base_url}/metrics") as r:
            for line in (await r.text()).splitlines():
                name, _, value = line.partition(" ")
                if name in values:
                    values[name] = float(value)
        return values["graphql_sql_statements_count"], values["graphql_sql_statements_sum"]

    async def cost(
        self, query: str, variables: dict[str, Any] | None = None, token: str = "dev"
    ) -> float:
        """The statements one answer of ``query`` cost (this worker answers only this module)."""
        count, total = await self.statements()
        await self.data(query, variables, token)
        after_count, after_total = await self.statements()
        assert after_count == count + 1
        return after_total - total
