"""Recipient changes reach every worker by notification, not by the cache TTL: two workers whose
cached keys would last an hour both refuse a revoked recipient and a retired key soon after."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import pytest

from exchange_stream.infra.config import Settings
from exchange_stream.read.tokens import RecipientTokenService
from tests.auth_tokens import SECRET as JWT_SECRET
from tests.auth_tokens import claims
from tests.conftest import SHARED_WORKER_ENV, STRICT_ENV
from tests.payloads import new_key, v2_body
from tests.support import WorkerProcess, eventually, post_json, run_cli, running_worker

CLI_ENV = {"RECIPIENT_TOKEN_SECRET": STRICT_ENV["RECIPIENT_TOKEN_SECRET"]}
# Only a notification can explain a change seen within the test's timeouts.
HOUR_TTL = {"RECIPIENT_CACHE_TTL_S": "3600"}
RECORDS = "{ records(first: 1) { nextCursor } }"


@pytest.fixture(scope="module")
async def two_workers(
    migrated: None, strict_credentials: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[WorkerProcess]]:
    env = {**SHARED_WORKER_ENV, **STRICT_ENV, **strict_credentials, **HOUR_TTL}
    base: Path = tmp_path_factory.mktemp("notify-workers")
    async with running_worker(base / "a", env) as a, running_worker(base / "b", env) as b:
        yield [a, b]


def recipient_jwt(recipient: str) -> str:
    return jwt.encode(
        claims(recipient=recipient, scope="records:read"), JWT_SECRET, algorithm="HS256"
    )


async def gql(
    http: aiohttp.ClientSession, worker: WorkerProcess, query: str, token: str, **variables: object
) -> tuple[int, dict]:
    body = {"query": query, "variables": variables}
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{worker.base_url}/graphql", json=body, headers=headers) as r:
        return r.status, await r.json()


async def cli(*args: str) -> None:
    code, report = await run_cli("recipients", *args, "--local", env=CLI_ENV)
    assert code == 0, report


async def until_all(workers: list[WorkerProcess], probe) -> float:
    """Wait until ``probe(worker)`` holds on every worker; how long that took, in seconds."""
    started = time.monotonic()

    async def everywhere() -> bool:
        return all([await probe(w) for w in workers])

    await eventually(everywhere, timeout=30, interval=0.02)
    return time.monotonic() - started


async def test_a_revocation_reaches_both_workers_without_waiting_for_the_ttl(
    two_workers: list[WorkerProcess], http: aiohttp.ClientSession, capsys
) -> None:
    recipient = f"ntf-{uuid.uuid4().hex[:8]}"
    await cli("add", recipient)
    await cli("grant", recipient, "--all-sources")
    token = recipient_jwt(recipient)
    for worker in two_workers:
        status, doc = await gql(http, worker, RECORDS, token)
        assert status == 200, doc  # each worker has now cached the recipient as active

    await cli("revoke", recipient)

    async def refused(worker: WorkerProcess) -> bool:
        return (await gql(http, worker, RECORDS, token))[0] == 403

    took = await until_all(two_workers, refused)
    with capsys.disabled():
        print(f"\nrevoke -> 403 on both workers: {took * 1000:.0f} ms after the CLI exited")


async def test_a_revoked_grant_reaches_both_workers_without_waiting_for_the_ttl(
    two_workers: list[WorkerProcess], http: aiohttp.ClientSession, db: asyncpg.Pool, capsys
) -> None:
    recipient = f"ntf-{uuid.uuid4().hex[:8]}"
    await cli("add", recipient)
    code, report = await run_cli(
        "recipients", "grant", recipient, "--all-sources", "--local", env=CLI_ENV
    )
    assert code == 0, report
    grant_id = report["result"]["grant"]["grant_id"]
    token = recipient_jwt(recipient)
    query = "{ records(first: 1) { items { kind } } }"
    # A canonical row exists (the module's other tests ingest); each worker reads one, cached.
    await eventually(lambda: _has_canonical(db), timeout=120)
    for worker in two_workers:
        status, doc = await gql(http, worker, query, token)
        assert status == 200 and len(doc["data"]["records"]["items"]) == 1, doc

    await cli("revoke-grant", recipient, str(grant_id))

    async def nothing(worker: WorkerProcess) -> bool:
        status, doc = await gql(http, worker, query, token)
        return status == 200 and doc["data"]["records"]["items"] == []

    took = await until_all(two_workers, nothing)
    with capsys.disabled():
        print(f"\nrevoke-grant -> nothing read on both workers: {took * 1000:.0f} ms")


async def _has_canonical(db: asyncpg.Pool) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM canonical_records)"))


async def test_a_retired_key_stops_resolving_on_both_workers_without_waiting_for_the_ttl(
    two_workers: list[WorkerProcess],
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    settings: Settings,
    capsys,
) -> None:
    recipient = f"ntf-{uuid.uuid4().hex[:8]}"
    await cli("add", recipient)
    await cli("grant", recipient, "--all-sources")
    # A canonical record of a new patient, and that patient's token for the recipient (version 1).
    source = f"ntf-{uuid.uuid4().hex[:8]}"
    partner = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    status, resp, _ = await post_json(
        http,
        f"{two_workers[0].base_url}/v2/ingest",
        v2_body(source=source),
        key=new_key(),
        token=partner,
    )
    assert status == 202, resp
    record_id = uuid.UUID(resp["record_id"])

    async def canonical() -> bool:
        return bool(
            await db.fetchval("SELECT 1 FROM canonical_records WHERE record_id = $1", record_id)
        )

    await eventually(canonical, timeout=120)
    row = await db.fetchrow(
        "SELECT normalized->>'patient_token' AS master FROM canonical_records WHERE record_id = $1",
        record_id,
    )
    service = RecipientTokenService(lambda: db, CLI_ENV["RECIPIENT_TOKEN_SECRET"], ttl_s=0)
    v1 = await service.issue(recipient, row["master"])
    assert v1 is not None and v1.startswith(f"rt1.{recipient}.1.")

    token = recipient_jwt(recipient)
    query = "query ($t: ID!) { patient(patientToken: $t) { patientToken } }"

    async def resolves(worker: WorkerProcess) -> bool:
        status, doc = await gql(http, worker, query, token, t=v1)
        assert status == 200, doc
        return doc["data"]["patient"] is not None

    await cli("rotate-key", recipient)
    # Both workers now hold versions 1 and 2 (the rotation notified them too): v1 still resolves.
    await until_all(two_workers, resolves)
    assert all([await resolves(w) for w in two_workers])

    await cli("retire-key", recipient, "1")

    async def refused(worker: WorkerProcess) -> bool:
        return not await resolves(worker)

    took = await until_all(two_workers, refused)
    with capsys.disabled():
        print(f"\nretire-key -> refused on both workers: {took * 1000:.0f} ms after the CLI exited")


async def test_a_lost_listening_connection_drops_every_cached_state_and_listens_again(
    db: asyncpg.Pool, settings: Settings
) -> None:
    recipient = f"ntf-{uuid.uuid4().hex[:8]}"
    await cli("add", recipient)
    await cli("grant", recipient, "--all-sources")
    service = RecipientTokenService(
        lambda: db, CLI_ENV["RECIPIENT_TOKEN_SECRET"], ttl_s=3600, dsn=settings.dsn
    )
    await service.start()
    try:
        await asyncio.wait_for(service.listening.wait(), timeout=30)
        first_pid = service.listener_pid
        assert first_pid is not None
        assert (await service.keys(recipient)).active
        # A change whose notification is missed: made with the trigger off.
        async with db.acquire() as conn, conn.transaction():
            await conn.execute("ALTER TABLE recipients DISABLE TRIGGER recipients_notify")
            await conn.execute(
                "UPDATE recipients SET status = 'revoked', revoked_at = now() "
                "WHERE recipient_id = $1",
                recipient,
            )
            await conn.execute("ALTER TABLE recipients ENABLE TRIGGER recipients_notify")
        assert (await service.keys(recipient)).active, "cached for an hour, nothing notified"

        await db.execute("SELECT pg_terminate_backend($1)", first_pid)

        async def listening_again_and_reread() -> bool:
            pid = service.listener_pid
            return pid not in (None, first_pid) and not (await service.keys(recipient)).active

        await eventually(listening_again_and_reread, timeout=30)
    finally:
        await service.stop()
