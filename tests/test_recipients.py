"""Recipients on the real database: the key lifecycle through the CLI, and the token service."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import pytest

from exchange_stream.infra.config import Settings
from exchange_stream.read.tokens import LOCAL_DEV_RECIPIENT, RecipientTokenService
from tests.support import WorkerProcess, eventually, run_cli

SECRET = "test-recipient-token-secret-0123456789"
ENV = {"RECIPIENT_TOKEN_SECRET": SECRET}


def _master(i: int) -> str:
    return hashlib.sha256(f"patient-{i}".encode()).hexdigest()


async def _cli(*args: str) -> tuple[int, dict]:
    return await run_cli("recipients", *args, "--local", env=ENV)


class CountingPool:
    """The real pool, counting the statements the service sends through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements = 0

    async def fetchrow(self, *args: object) -> asyncpg.Record | None:
        self.statements += 1
        return await self.pool.fetchrow(*args)


@pytest.fixture
def recipient() -> str:
    return f"rcp-{uuid.uuid4().hex[:10]}"


async def test_the_key_lifecycle_add_rotate_retire_revoke(
    db: asyncpg.Pool, migrated: None, recipient: str
) -> None:
    service = RecipientTokenService(lambda: db, SECRET, ttl_s=0)
    masters = [_master(i) for i in range(3)]

    code, report = await _cli("add", recipient)
    assert code == 0, report
    assert report["result"] == {"recipient": recipient, "status": "active", "version": 1}
    v1 = await service.issue_many(recipient, masters)
    assert all(t.startswith(f"rt1.{recipient}.1.") for t in v1)
    assert await service.resolve_many(recipient, v1) == masters

    code, report = await _cli("rotate-key", recipient)
    assert code == 0, report
    assert report["result"]["current_version"] == 2
    assert report["result"]["resolvable_versions"] == [1, 2]
    v2 = await service.issue_many(recipient, masters)
    assert all(t.startswith(f"rt1.{recipient}.2.") for t in v2) and v2 != v1
    # Until it is retired, the older version still resolves.
    assert await service.resolve_many(recipient, v1 + v2) == masters + masters

    code, report = await _cli("retire-key", recipient, "2")
    assert code == 1 and "rotate first" in report["error"], report
    code, report = await _cli("retire-key", recipient, "1")
    assert code == 0, report
    assert report["result"]["resolvable_versions"] == [2]
    assert await service.resolve_many(recipient, v1) == [None, None, None]
    assert await service.resolve_many(recipient, v2) == masters

    code, report = await _cli("list")
    assert code == 0, report
    (mine,) = [r for r in report["result"]["recipients"] if r["recipient"] == recipient]
    assert (mine["status"], mine["current_version"], mine["resolvable_versions"]) == (
        "active",
        2,
        [2],
    )
    assert [(k["version"], k["status"]) for k in mine["keys"]] == [(1, "retired"), (2, "active")]

    code, report = await _cli("revoke", recipient)
    assert code == 0, report
    assert await service.resolve_many(recipient, v2) == [None, None, None]
    assert await service.issue_many(recipient, masters) == []
    code, report = await _cli("rotate-key", recipient)
    assert code == 1 and report["error"] == "recipient is revoked"

    actions = await db.fetch(
        "SELECT action, actor, details FROM audit_log WHERE entity_type = 'recipient' "
        "AND entity_id = $1 ORDER BY id",
        recipient,
    )
    assert [a["action"] for a in actions] == [
        "recipients.add",
        "recipients.rotate_key",
        "recipients.retire_key",
        "recipients.revoke",
    ]
    assert all(a["actor"].startswith("cli:") for a in actions)
    assert actions[2]["details"] == {"version": 1}


async def test_bad_or_taken_ids_are_refused_clearly(
    db: asyncpg.Pool, migrated: None, recipient: str
) -> None:
    for bad in ("Upper", "with space", "edge-", "x" * 33, "a_b"):
        code, report = await _cli("add", bad)
        assert code == 2, (bad, report)
        assert "invalid field: recipient (a slug" in report["_stderr"]
    assert (await _cli("add", recipient))[0] == 0
    code, report = await _cli("add", recipient)
    assert (code, report["error"]) == (1, "recipient already registered")
    code, report = await _cli("rotate-key", "no-such-recipient")
    assert (code, report["error"]) == (1, "no such recipient")


async def test_another_recipients_tokens_resolve_to_nothing(
    db: asyncpg.Pool, migrated: None
) -> None:
    a, b = f"rcp-a-{uuid.uuid4().hex[:8]}", f"rcp-b-{uuid.uuid4().hex[:8]}"
    for r in (a, b):
        assert (await _cli("add", r))[0] == 0
    service = RecipientTokenService(lambda: db, SECRET, ttl_s=0)
    master = _master(7)
    (ta,) = await service.issue_many(a, [master])
    (tb,) = await service.issue_many(b, [master])
    assert ta != tb
    assert await service.resolve(a, ta) == master
    assert await service.resolve(b, ta) is None
    assert await service.resolve(a, tb) is None
    # Relabelled as b's, a's ciphertext still does not resolve.
    assert await service.resolve(b, ta.replace(f".{a}.", f".{b}.")) is None
    assert await service.resolve("no-such-recipient", ta) is None


async def test_a_page_of_tokens_costs_one_query_per_recipient(
    db: asyncpg.Pool, migrated: None, recipient: str
) -> None:
    assert (await _cli("add", recipient))[0] == 0
    pool = CountingPool(db)
    service = RecipientTokenService(lambda: pool, SECRET, ttl_s=300)
    masters = [_master(i) for i in range(500)]
    tokens = await service.issue_many(recipient, masters)
    assert await service.resolve_many(recipient, tokens) == masters
    assert pool.statements == 1


async def test_a_local_worker_registers_the_dev_recipient_and_commands_run_on_workers(
    worker: WorkerProcess, db: asyncpg.Pool, settings: Settings, recipient: str
) -> None:
    async def registered() -> bool:
        status = await db.fetchval(
            "SELECT status FROM recipients WHERE recipient_id = $1", LOCAL_DEV_RECIPIENT
        )
        return status == "active"

    await eventually(registered, timeout=30)
    code, report = await run_cli("recipients", "add", recipient)
    assert code == 0, report
    assert report["status"] == "succeeded" and report["runner"]
    actor = await db.fetchval(
        "SELECT actor FROM audit_log WHERE entity_id = $1 AND action = 'recipients.add'",
        recipient,
    )
    assert actor.startswith("control:cli:")
