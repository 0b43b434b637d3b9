"""The CLI commands a newcomer and an operator type, on the real stack: ``recipients dev-token``
(a recipient's token on a local stack), ``control send`` (a JSON command file, followed to its
result) and ``topics`` (the stack's topics, and raising their partitions)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from exchange_stream.infra.config import Settings
from tests.conftest import STRICT_ENV
from tests.payloads import new_key, v2_body
from tests.support import (
    VENV_BIN,
    TopicReader,
    WorkerProcess,
    eventually,
    isolated_topics,
    post_json,
    run_cli,
    wait_canonical,
)
from tests.test_smart_auth import ASSERTION_TYPE, Client

RECORDS_OF_SOURCE = (
    "query($s: String) { records(source: $s, first: 10) { items { recordId patientToken } } }"
)


async def _cli(
    *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """``exchange-stream <args>`` as a user runs it: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "exchange-stream"),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 180)
    return proc.returncode, out.decode(), err.decode()


async def _add_recipient(recipient: str, *more: str) -> None:
    """Register ``recipient`` and grant it every source, as an operator does before it reads."""
    code, report = await run_cli("recipients", "add", recipient, *more, "--local")
    assert code == 0, report
    code, report = await run_cli("recipients", "grant", recipient, "--all-sources", "--local")
    assert code == 0, report


async def _graphql(
    http: aiohttp.ClientSession, worker: WorkerProcess, token: str, variables: dict
) -> tuple[int, dict]:
    async with http.post(
        f"{worker.base_url}/graphql",
        json={"query": RECORDS_OF_SOURCE, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        return r.status, await r.json()


async def _ingest_one(http: aiohttp.ClientSession, worker: WorkerProcess, db, source: str) -> str:
    status, body, _ = await post_json(
        http, f"{worker.base_url}/v2/ingest", v2_body(source), key=new_key()
    )
    assert status == 202, body
    await wait_canonical(db, [body["record_id"]])
    return body["record_id"]


# recipients dev-token


async def test_a_dev_token_reads_graphql_as_its_recipient_and_is_403_at_ingest(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    recipient = f"dev-{uuid.uuid4().hex[:10]}"
    await _add_recipient(recipient)
    source = f"cli-dev-token-{uuid.uuid4().hex[:8]}"
    record_id = await _ingest_one(http, worker, db, source)

    code, out, err = await _cli("recipients", "dev-token", recipient, "--scope", "records:read")
    assert code == 0, err
    token = out.strip()
    assert out == f"{token}\n" and token.count(".") == 2  # the token alone, so $(…) works
    status, body = await _graphql(http, worker, token, {"s": source})
    assert status == 200, body
    (item,) = body["data"]["records"]["items"]
    # Identifiers are the recipient's own: it reads as that recipient, not as local-dev.
    assert item["patientToken"].startswith(f"rt1.{recipient}.1.")
    assert item["recordId"] != record_id

    status, resp, _ = await post_json(
        http, f"{worker.base_url}/v2/ingest", v2_body(source), key=new_key(), token=token
    )
    assert (status, resp) == (403, {"error": "forbidden"})
    status, resp, _ = await post_json(
        http, f"{worker.base_url}/tokenize", {"given_name": "A"}, token=token
    )
    assert (status, resp) == (403, {"error": "forbidden"})


async def test_a_dev_token_holds_only_the_scopes_asked(
    worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    recipient = f"dev-{uuid.uuid4().hex[:10]}"
    await _add_recipient(recipient)
    before = int(time.time())
    args = ("dev-token", recipient, "--scope", "export", "--ttl", "120", "--output", "json")
    code, out, err = await _cli("recipients", *args)
    assert code == 0, err
    doc = orjson.loads(out)
    assert set(doc) == {"token", "expires_at", "scopes"} and doc["scopes"] == ["export"]
    claims = jwt.decode(doc["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120 and claims["iat"] >= before
    assert doc["expires_at"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(claims["exp"])))
    # export alone does not read records.
    status, _ = await _graphql(http, worker, doc["token"], {"s": "any"})
    assert status == 403


async def test_a_dev_token_is_the_access_token_auth_token_issues(
    worker: WorkerProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = Client()
    jwks = tmp_path / "client.jwks.json"
    jwks.write_text(json.dumps(client.jwks()))
    await _add_recipient(client.id, "--jwks", str(jwks))
    url = f"{worker.base_url}/auth/token"
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client.assertion(url),
        "scope": "records:read",
    }
    async with http.post(url, data=form) as r:
        assert r.status == 200, await r.text()
        real = (await r.json())["access_token"]
    code, out, err = await _cli("recipients", "dev-token", client.id)
    assert code == 0, err
    dev = out.strip()

    assert jwt.get_unverified_header(dev) == jwt.get_unverified_header(real)
    dev_claims, real_claims = (
        jwt.decode(t, options={"verify_signature": False}) for t in (dev, real)
    )
    assert set(dev_claims) == set(real_claims)
    same = ("iss", "aud", "sub", "recipient", "client_id", "scope")
    assert {k: dev_claims[k] for k in same} == {k: real_claims[k] for k in same}
    assert dev_claims["jti"] != real_claims["jti"]


async def test_dev_token_is_refused_outside_env_local(migrated: None) -> None:
    recipient = f"dev-{uuid.uuid4().hex[:10]}"
    await _add_recipient(recipient)
    production = {
        **STRICT_ENV,
        "ENV": "production",
        "TOKENIZER_HMAC_SECRET": "test-hmac-secret-0123456789",
        "POSTGRES_PASSWORD": "not-the-local-password",
        "MINIO_SECRET_KEY": "not-the-local-secret",
    }
    code, out, err = await _cli("recipients", "dev-token", recipient, env=production)
    assert (code, out) == (2, "")
    assert "ENV=production" in err and "ENV=local" in err and "/auth/token" in err
    # With the local stack's secrets, ENV=production stops at the configuration check: still 2.
    code, out, err = await _cli("recipients", "dev-token", recipient, env={"ENV": "production"})
    assert (code, out) == (2, "") and "configuration error" in err


async def test_dev_token_for_an_unknown_or_revoked_recipient_is_refused(migrated: None) -> None:
    unknown = f"dev-{uuid.uuid4().hex[:10]}"
    code, out, err = await _cli("recipients", "dev-token", unknown)
    assert (code, out) == (1, "")
    assert "not registered" in err and f"exchange-stream recipients add {unknown}" in err

    revoked = f"dev-{uuid.uuid4().hex[:10]}"
    await _add_recipient(revoked)
    code, report = await run_cli("recipients", "revoke", revoked, "--local")
    assert code == 0, report
    code, out, err = await _cli("recipients", "dev-token", revoked)
    assert (code, out) == (1, "") and "revoked" in err


async def test_dev_token_with_an_unknown_scope_lists_the_valid_ones(migrated: None) -> None:
    code, out, err = await _cli("recipients", "dev-token", "local-dev", "--scope", "ingest")
    assert (code, out) == (2, "")
    assert "unknown scope ingest" in err and "records:read" in err and "export" in err


# control send


async def test_control_send_follows_a_command_file_to_its_final_result(
    worker: WorkerProcess, http: aiohttp.ClientSession, db: asyncpg.Pool, tmp_path: Path
) -> None:
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"command": "recipients_list", "params": {}}))
    code, out, err = await _cli("control", "send", str(listing), "--output", "json")
    assert code == 0, err
    final = orjson.loads(out)
    assert (final["operation"], final["status"]) == ("recipients_list", "succeeded")
    uuid.UUID(final["command_id"])  # generated, since the file has none
    assert "local-dev" in {r["recipient"] for r in final["result"]["recipients"]}

    # A replay dry run from stdin, with an id of its own: it reports, and emits nothing.
    source = f"cli-control-{uuid.uuid4().hex[:8]}"
    await _ingest_one(http, worker, db, source)
    command_id = f"cli-test-{uuid.uuid4()}"
    replay = {
        "command_id": command_id,
        "command": "replay",
        "params": {"source": source, "dry_run": True},
    }
    code, out, err = await _cli(
        "control", "send", "-", "--output", "json", stdin=json.dumps(replay).encode()
    )
    assert code == 0, err
    final = orjson.loads(out)
    assert (final["command_id"], final["status"]) == (command_id, "succeeded")
    assert final["result"]["dry_run"] is True and final["result"]["would_emit"] == 1
    # The same id again: acted on once, answered with the first outcome.
    code, out, err = await _cli(
        "control", "send", "-", "--output", "json", stdin=json.dumps(replay).encode()
    )
    assert code == 0, err
    final = orjson.loads(out)
    assert (final["status"], final["previous_status"]) == ("duplicate", "succeeded")
    # Text output, as every operation prints it.
    code, out, err = await _cli("control", "send", str(listing))
    assert code == 0, err
    assert out.startswith("recipients list: succeeded")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "a command is a JSON object"),
        (b'{"command": "replay", "params": {}}', "missing field: params.source"),
        (b'{"command": "replay", "params": {"source": "a", "dry-run": true}}', "unknown field"),
        (b'{"command": "no_such_thing", "params": {}}', "invalid field: command (one of"),
        (b'{"command_id": "short", "command": "recipients_list", "params": {}}', "command_id"),
        (b'{"command": "recipients_list", "params": {}, "extra": 1}', "unknown field: extra"),
    ],
)
async def test_control_send_refuses_a_bad_file_and_publishes_nothing(
    migrated: None, settings: Settings, tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "command.json"
    path.write_bytes(content)
    async with TopicReader(settings.broker_list, settings.topic_control) as control:
        code, out, err = await _cli("control", "send", str(path), "--timeout", "5")
        assert (code, out) == (2, ""), err
        assert reason in err and "nothing sent" in err
        # The control topic's end offsets are where they were: nothing was published.
        assert await control.collect_to_end() == []


# topics


async def _partitions(settings: Settings, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(topics)}
    finally:
        await admin.close()


async def test_topics_shows_every_topic_of_the_stack(migrated: None, settings: Settings) -> None:
    code, out, err = await _cli("topics", "--output", "json")
    assert code == 0, err
    doc = orjson.loads(out)
    assert [t["topic"] for t in doc["topics"]] == settings.all_topics()
    for t in doc["topics"]:
        assert t["exists"] and t["partitions"] >= 1 and t["replication_factor"] == 1, t
    code, out, err = await _cli("topics")
    assert code == 0, err
    assert all(name in out for name in settings.all_topics())


async def test_topics_raises_partitions_once_and_refuses_a_decrease(db: asyncpg.Pool) -> None:
    # Topics of this test alone (unique names, deleted after): the shared ones are never changed.
    async with isolated_topics("cli-topics", db) as env:
        settings = Settings.from_env({**os.environ, **env, "ENV": "local"})
        names = settings.all_topics()
        start = settings.topic_partitions
        v1 = settings.ingest_topic_for("1")

        args = ("--raise-partitions", str(start + 1), "--topic", v1, "--output", "json")
        code, out, err = await _cli("topics", *args, env=env)
        assert code == 0, err
        report = orjson.loads(out)
        assert report["raised"] == [{"topic": v1, "from": start, "to": start + 1}]
        assert "warning" in err and "key" in err and "order" in err.lower()

        async def raised() -> bool:
            now = await _partitions(settings, names)
            return now == {n: start + 1 if n == v1 else start for n in names}

        await eventually(raised)

        # Again: nothing to do, exit 0, no warning.
        code, out, err = await _cli(
            "topics", "--raise-partitions", str(start + 1), "--topic", v1, env=env
        )
        assert code == 0, err
        assert out.startswith("nothing to do") and "warning" not in err
        # Every topic of the (isolated) stack: those below are raised, v1 is left alone.
        code, out, err = await _cli(
            "topics", "--raise-partitions", str(start + 1), "--output", "json", env=env
        )
        assert code == 0, err
        report = orjson.loads(out)
        assert report["unchanged"] == [v1]
        assert sorted(r["topic"] for r in report["raised"]) == sorted(set(names) - {v1})
        assert {t["topic"]: t["partitions"] for t in report["topics"]} == dict.fromkeys(
            names, start + 1
        )

        # A decrease is refused, and nothing changes.
        code, out, err = await _cli("topics", "--raise-partitions", str(start), env=env)
        assert (code, out) == (2, "")
        assert "cannot lower" in err and "nothing changed" in err
        assert await _partitions(settings, names) == dict.fromkeys(names, start + 1)

        # A topic that is not the stack's (a Faust changelog, say) is refused by name.
        changelog = f"{env['APP_ID']}-some_table-changelog"
        code, out, err = await _cli(
            "topics", "--raise-partitions", str(start + 2), "--topic", changelog, env=env
        )
        assert (code, out) == (2, "") and "not a topic of the stack" in err


async def test_topics_shows_a_missing_topic_and_does_not_create_it(
    migrated: None, settings: Settings
) -> None:
    control = f"cli-topics-missing.{uuid.uuid4().hex[:8]}.control"
    env = {"TOPIC_CONTROL": control}
    code, out, err = await _cli("topics", "--output", "json", env=env)
    assert code == 0, err
    rows = {t["topic"]: t for t in orjson.loads(out)["topics"]}
    assert rows[control]["exists"] is False and rows[control]["partitions"] is None
    assert rows[f"{control}.results"]["exists"] is False
    code, out, err = await _cli("topics", "--raise-partitions", "9", "--topic", control, env=env)
    assert (code, out) == (1, "") and "create-topics" in err
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_list)
    await admin.start()
    try:
        assert control not in await admin.list_topics()
    finally:
        await admin.close()
