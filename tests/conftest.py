"""Shared fixtures: the real stack once per run, a migrated database, a running worker."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest

from exchange_stream.infra.config import Settings
from exchange_stream.infra.db import create_pool
from exchange_stream.infra.migrate import migrate
from tests.support import ROOT, WorkerProcess, running_worker, s3_gateway_with_credentials

# Both test workers share the consumer group and these settings, so either may process an event.
WORKER_MAX_ATTEMPTS = 3
SHARED_WORKER_ENV = {
    "APP_ID": "exchange-stream-test",
    "TOKENIZER_HMAC_SECRET": "test-hmac-secret-0123456789",
    "MAX_ATTEMPTS": str(WORKER_MAX_ATTEMPTS),
    "BACKOFF_BASE_MS": "100",
    # The same for every worker of the group (the strict one included), so records of one
    # person link whichever worker normalizes them.
    "MATCH_TOKEN_SECRET": "test-match-token-secret-0123456789abcdef",
}


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The stack's settings from the environment (defaults: the local stack), always local."""
    return Settings.from_env({**os.environ, "ENV": "local"})


@pytest.fixture(scope="session")
def stack() -> None:
    """Start (or find running) Postgres, Kafka and S3, and create the topics."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack.sh"), "up"], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"the stack did not come up:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
async def migrated(stack: None, settings: Settings) -> None:
    await migrate(settings.dsn)


@pytest.fixture(scope="session")
async def db(migrated: None, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings, max_size=10)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def worker(
    migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """One worker for the whole run, as an operator would start it."""
    async with running_worker(tmp_path_factory.mktemp("worker"), SHARED_WORKER_ENV) as proc:
        yield proc


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
def restore_services() -> Iterator[list[str]]:
    """Services a test stops are listed here and brought back up whatever happens."""
    from tests.support import stack_service

    stopped: list[str] = []
    yield stopped
    for name in stopped:
        stack_service(name, "up")


def new_signing_key_pem() -> str:
    """A fresh Ed25519 private key in PEM, for ACCESS_TOKEN_SIGNING_KEY (never committed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


STRICT_ENV = {
    "ENV": "staging",
    "ACCESS_TOKEN_SIGNING_KEY": new_signing_key_pem(),
    "JWT_SECRET": "test-jwt-secret-0123456789abcdef",
    "JWT_ISSUER": "https://issuer.test",
    "JWT_AUDIENCE": "exchange-stream-test",
    "RECIPIENT_TOKEN_SECRET": "test-recipient-token-secret-0123456789",
    "MATCH_TOKEN_SECRET": "test-match-token-secret-0123456789abcdef",
}
# A login of the test database with a password of its own: outside ENV=local the local stack's
# password "exchange" is refused.
STRICT_PG_ROLE = "exchange_strict"


@pytest.fixture(scope="session")
async def strict_credentials(db: asyncpg.Pool, settings: Settings) -> AsyncIterator[dict[str, str]]:
    """Postgres and S3 credentials that are not the local stack's defaults, for a worker that
    runs with ENV=staging: a login role that is a member of ``exchange``, and a second S3
    server over the same data with its own keys."""
    password = secrets.token_urlsafe(24)  # URL-safe characters only: fine inside the statement
    await db.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{STRICT_PG_ROLE}') "
        f"THEN CREATE ROLE {STRICT_PG_ROLE} LOGIN; END IF; END $$"
    )
    await db.execute(f"ALTER ROLE {STRICT_PG_ROLE} PASSWORD '{password}'")
    await db.execute(f"GRANT {settings.postgres_user} TO {STRICT_PG_ROLE}")
    s3_access, s3_secret = "strict-access", secrets.token_urlsafe(24)
    async with s3_gateway_with_credentials(s3_access, s3_secret) as s3_url:
        yield {
            "POSTGRES_USER": STRICT_PG_ROLE,
            "POSTGRES_PASSWORD": password,
            "MINIO_ENDPOINT": s3_url,
            "MINIO_ACCESS_KEY": s3_access,
            "MINIO_SECRET_KEY": s3_secret,
        }


@pytest.fixture(scope="session")
async def strict_worker(
    migrated: None, strict_credentials: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker with ENV=staging: JWTs only, every secret set explicitly and none a default."""
    env = {**SHARED_WORKER_ENV, **STRICT_ENV, **strict_credentials}
    async with running_worker(tmp_path_factory.mktemp("strict-worker"), env) as proc:
        yield proc
