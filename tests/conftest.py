"""Shared fixtures: the real stack once per run, a migrated database, a running worker."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest

from exchange_stream.config import Settings
from exchange_stream.db import create_pool
from exchange_stream.migrate import migrate
from tests.support import ROOT, WorkerProcess, running_worker

# Both test workers share the consumer group and these settings, so either may process an event.
WORKER_MAX_ATTEMPTS = 3
SHARED_WORKER_ENV = {
    "APP_ID": "exchange-stream-test",
    "TOKENIZER_HMAC_SECRET": "test-hmac-secret-0123456789",
    "MAX_ATTEMPTS": str(WORKER_MAX_ATTEMPTS),
    "BACKOFF_BASE_MS": "100",
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


STRICT_ENV = {
    "ENV": "staging",
    "JWT_SECRET": "test-jwt-secret-0123456789abcdef",
    "JWT_ISSUER": "https://issuer.test",
    "JWT_AUDIENCE": "exchange-stream-test",
    # The local stack's credentials, passed explicitly as a real deployment would.
    "POSTGRES_PASSWORD": "exchange",
    "MINIO_SECRET_KEY": "minioadmin",
}


@pytest.fixture(scope="session")
async def strict_worker(
    migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker with ENV=staging: JWTs only, every secret set explicitly."""
    env = {**SHARED_WORKER_ENV, **STRICT_ENV}
    async with running_worker(tmp_path_factory.mktemp("strict-worker"), env) as proc:
        yield proc
