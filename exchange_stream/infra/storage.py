"""The raw-object store: S3-compatible storage for the exact bytes partners sent.

S3 calls are on the hot path twice per record (the ingest PUT, the normalizer's GET). Those two go
through ``s3http.S3Http``, a small kept-alive HTTP/1.1 client; the rare ones (HEAD of the bucket,
listings for reconcile) through aiohttp-s3-client. ``bench/s3_client.py`` measures the CPU per
call of each client, botocore's included.

Objects are written once under a fresh key and never changed, so a worker keeps the bodies it has
just stored (``RecentBodies``, bounded in bytes and age) and its normalizer takes them from
memory instead of reading them back: the checksum against the event still runs, on the same
bytes S3 acknowledged. A body another worker stored, or one evicted, is read from S3 as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from aiohttp_s3_client import S3Client

from exchange_stream.infra import metrics
from exchange_stream.infra.config import Settings
from exchange_stream.infra.s3http import EMPTY_SHA256, S3Http


class StorageUnavailable(RuntimeError):
    """The object store did not answer, or answered with an error (transient)."""


class ObjectMissing(LookupError):
    """The requested object does not exist (permanent for that key)."""


class RecentBodies:
    """Bodies this process stored in the last ``max_age_s``, up to ``max_bytes`` in all; a body
    is handed out once (the normalizer's read) and then forgotten."""

    def __init__(self, max_bytes: int, max_age_s: float = 120.0, max_body: int = 1 << 20):
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_body = max_body
        self._bodies: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def keep(self, key: str, body: bytes) -> None:
        if len(body) > self.max_body or self.max_bytes <= 0:
            return
        self._bodies[key] = (time.monotonic(), body)
        self._bytes += len(body)
        self._evict()

    def take(self, key: str) -> bytes | None:
        entry = self._bodies.pop(key, None)
        if entry is None:
            return None
        self._bytes -= len(entry[1])
        return entry[1] if time.monotonic() - entry[0] <= self.max_age_s else None

    def _evict(self) -> None:
        oldest_kept = time.monotonic() - self.max_age_s
        while self._bodies and (
            self._bytes > self.max_bytes or next(iter(self._bodies.values()))[0] < oldest_kept
        ):
            _, (_, body) = self._bodies.popitem(last=False)
            self._bytes -= len(body)


@dataclass
class RawStore:
    """One bucket; every call maps failures onto the two error types above."""

    client: S3Client
    http: S3Http
    bucket: str
    recent: RecentBodies | None = None

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        sha256: str | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Store ``body``; its SHA-256 (computed when not given) is signed, so a body damaged
        in transit is refused by the server."""
        sha = sha256 or hashlib.sha256(body).hexdigest()
        metrics.RAW_STORE_CALLS["put"].inc()
        try:
            resp = await self.http.put(key, body, sha256=sha, content_type=content_type)
        except (OSError, TimeoutError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        if resp.status != 200:
            raise StorageUnavailable(f"PUT answered {resp.status}")
        if self.recent is not None:
            self.recent.keep(key, body)

    async def get(self, key: str) -> bytes:
        if self.recent is not None and (body := self.recent.take(key)) is not None:
            metrics.RAW_STORE_CALLS["get_cached"].inc()
            return body
        metrics.RAW_STORE_CALLS["get"].inc()
        try:
            resp = await self.http.get(key)
        except (OSError, TimeoutError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        if resp.status == 404:
            raise ObjectMissing(key)
        if resp.status != 200:
            raise StorageUnavailable(f"GET answered {resp.status}")
        return resp.body

    async def delete(self, key: str) -> None:
        """Remove the object at ``key`` (also from the recent bodies); a missing one is fine."""
        if self.recent is not None:
            self.recent.take(key)
        metrics.RAW_STORE_CALLS["delete"].inc()
        try:
            resp = await self.http.delete(key)
        except (OSError, TimeoutError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc
        if resp.status not in (200, 204, 404):
            raise StorageUnavailable(f"DELETE answered {resp.status}")

    async def exists_bucket(self) -> None:
        """Raise ``StorageUnavailable`` unless the bucket answers a HEAD."""
        try:
            async with self.client.request("HEAD", "", content_sha256=EMPTY_SHA256) as resp:
                if resp.status != 200:
                    raise StorageUnavailable(f"HEAD bucket answered {resp.status}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    async def list_objects(self, prefix: str) -> AsyncIterator[tuple[str, int, datetime]]:
        """Yield ``(key, size, last_modified)`` under ``prefix`` in key order, 1,000 a page."""
        try:
            async for metas, _ in self.client.list_objects_v2(prefix=prefix):
                for meta in metas:
                    yield meta.key, meta.size, meta.last_modified
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    async def list_keys(self, prefix: str) -> AsyncIterator[tuple[str, int]]:
        """Yield ``(key, size)`` under ``prefix`` in key order."""
        async for key, size, _ in self.list_objects(prefix):
            yield key, size


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings,
    *,
    connect_timeout: float = 2.0,
    total_timeout: float = 30.0,
    pool: int = 100,
    recent_bytes: int = 0,
) -> AsyncIterator[RawStore]:
    """S3 clients for the raw bucket over their own keep-alive connections, closed on exit;
    with ``recent_bytes``, bodies it stores are kept that long in memory (``RecentBodies``)."""
    connector = aiohttp.TCPConnector(limit=pool, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = S3Client(
            session=session,
            url=f"{settings.minio_endpoint.rstrip('/')}/{settings.raw_bucket}",
            access_key_id=settings.minio_access_key,
            secret_access_key=settings.minio_secret_key,
            region=settings.s3_region,
        )
        http = S3Http(
            settings.minio_endpoint,
            settings.raw_bucket,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            region=settings.s3_region,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            max_connections=pool,
        )
        recent = RecentBodies(recent_bytes) if recent_bytes > 0 else None
        try:
            yield RawStore(client=client, http=http, bucket=settings.raw_bucket, recent=recent)
        finally:
            http.close()
