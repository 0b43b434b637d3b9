"""The raw-object store: S3-compatible storage for the exact bytes partners sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aioboto3
from botocore.config import Config

from exchange_stream.config import Settings


class StorageUnavailable(RuntimeError):
    """The object store did not answer (transient)."""


class ObjectMissing(LookupError):
    """The requested object does not exist (permanent for that key)."""


@dataclass
class RawStore:
    """A thin async facade over one bucket; every call maps errors onto the two types above."""

    client: Any
    bucket: str

    async def put(self, key: str, body: bytes, *, content_type: str = "application/json") -> None:
        try:
            await self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            )
        except Exception as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    async def get(self, key: str) -> bytes:
        try:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as stream:
                return await stream.read()
        except self.client.exceptions.NoSuchKey as exc:
            raise ObjectMissing(key) from exc
        except Exception as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    async def exists_bucket(self) -> None:
        """Raise ``StorageUnavailable`` unless the bucket answers a HEAD."""
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    async def list_keys(self, prefix: str) -> AsyncIterator[tuple[str, int]]:
        """Yield ``(key, size)`` under ``prefix`` in key order, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], int(obj["Size"])
        except Exception as exc:
            raise StorageUnavailable(type(exc).__name__) from exc


def client_config(
    *, connect_timeout: float = 2.0, read_timeout: float = 10.0, attempts: int = 2, pool: int = 64
) -> Config:
    """botocore settings: path-style addressing, short timeouts, bounded retries."""
    return Config(
        s3={"addressing_style": "path"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        max_pool_connections=pool,
        # Checksums only where S3 requires them: the service stores its own SHA-256 anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


@contextlib.asynccontextmanager
async def open_store(settings: Settings, config: Config | None = None) -> AsyncIterator[RawStore]:
    """An S3 client for the raw bucket, closed on exit."""
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=settings.minio_endpoint,
        aws_access_key_id=settings.minio_access_key,
        aws_secret_access_key=settings.minio_secret_key,
        region_name=settings.s3_region,
        config=config or client_config(),
    ) as client:
        yield RawStore(client=client, bucket=settings.raw_bucket)
