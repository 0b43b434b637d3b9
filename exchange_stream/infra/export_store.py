"""The export store: the bulk exports' NDJSON files in their own S3 bucket (``EXPORT_BUCKET``).

A file is written by multipart upload (``MultipartWriter``): lines are gathered into a part of
``PART_BYTES`` and each full part is sent while the next one fills, so a writer holds at most two
parts in memory whatever the size of the file (S3 wants every part but the last to be at least
5 MiB). A file is read back as a stream of chunks (``stream``), never whole, and everything under
an export's prefix is deleted at once (``delete_prefix``), unfinished uploads included.

Failures map onto the raw store's two error types: ``StorageUnavailable`` (transient) and
``ObjectMissing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp_s3_client import S3Client
from aiohttp_s3_client.xml import (
    create_complete_upload_request,
    parse_create_multipart_upload_id,
)

from exchange_stream.infra.config import Settings
from exchange_stream.infra.s3http import EMPTY_SHA256
from exchange_stream.infra.storage import ObjectMissing, StorageUnavailable

log = logging.getLogger(__name__)

# Parts of 8 MiB: above S3's 5 MiB minimum with room to spare, and two of them (the one filling,
# the one in flight) are all a writer keeps.
PART_BYTES = 8 << 20
MIN_PART_BYTES = 5 << 20
STREAM_CHUNK_BYTES = 64 << 10
SEND_SLICE_BYTES = 256 << 10
PART_ATTEMPTS = 3
DELETE_CONCURRENCY = 8
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    return StorageUnavailable(type(exc).__name__)


@dataclass
class ExportStore:
    """One bucket of export files."""

    client: S3Client
    bucket: str
    part_bytes: int = PART_BYTES

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (idempotent)."""
        try:
            async with self.client.request("HEAD", "", content_sha256=EMPTY_SHA256) as resp:
                if resp.status == 200:
                    return
            async with self.client.request("PUT", "", content_sha256=EMPTY_SHA256) as resp:
                # 409: another worker created it meanwhile.
                if resp.status not in (200, 409):
                    raise StorageUnavailable(f"PUT bucket answered {resp.status}")
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc

    def writer(self, key: str, content_type: str = "application/fhir+ndjson") -> MultipartWriter:
        """A multipart upload to ``key``; ``start()`` it, ``write()``, then ``close()``."""
        return MultipartWriter(self, key, content_type)

    async def size(self, key: str) -> int:
        """The size in bytes of the object at ``key``; ``ObjectMissing`` when there is none."""
        try:
            async with self.client.head(key) as resp:
                if resp.status == 404:
                    raise ObjectMissing(key)
                if resp.status != 200:
                    raise StorageUnavailable(f"HEAD answered {resp.status}")
                return int(resp.headers.get("Content-Length", "0"))
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc

    async def stream(self, key: str, chunk_bytes: int = STREAM_CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The object at ``key``, chunk by chunk as S3 sends it; ``ObjectMissing`` (before the
        first chunk) when there is none. Close the iterator (``aclose``) when stopping early."""
        try:
            async with self.client.get(key, content_sha256=EMPTY_SHA256) as resp:
                if resp.status == 404:
                    raise ObjectMissing(key)
                if resp.status != 200:
                    raise StorageUnavailable(f"GET answered {resp.status}")
                async for chunk in resp.content.iter_chunked(chunk_bytes):
                    yield chunk
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc

    async def read(self, key: str) -> bytes:
        """The whole object (tests and small files only: exports are streamed)."""
        return b"".join([chunk async for chunk in self.stream(key)])

    async def list_keys(self, prefix: str) -> AsyncIterator[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix``, in key order."""
        try:
            async for metas, _ in self.client.list_objects_v2(prefix=prefix):
                for meta in metas:
                    yield meta.key, meta.size
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc

    async def uploads(self, prefix: str) -> list[tuple[str, str]]:
        """``(key, upload id)`` of every unfinished multipart upload under ``prefix``."""
        try:
            async with self.client.request(
                "GET", "", params={"uploads": "", "prefix": prefix}, content_sha256=EMPTY_SHA256
            ) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise StorageUnavailable(f"list uploads answered {resp.status}")
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc
        root = ET.fromstring(payload)  # noqa: S314  (our own S3 server's answer)
        found = []
        for upload in root.iter(f"{_S3_NS}Upload"):
            key, upload_id = upload.findtext(f"{_S3_NS}Key"), upload.findtext(f"{_S3_NS}UploadId")
            if key and upload_id:
                found.append((key, upload_id))
        return found

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; its parts are dropped (a missing one is fine)."""
        try:
            async with self.client.delete(key, params={"uploadId": upload_id}) as resp:
                if resp.status not in (200, 204, 404):
                    raise StorageUnavailable(f"abort upload answered {resp.status}")
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc

    async def abort_uploads(self, prefix: str) -> int:
        """Abort every unfinished upload under ``prefix``; how many there were."""
        found = await self.uploads(prefix)
        for key, upload_id in found:
            await self.abort_upload(key, upload_id)
        return len(found)

    async def delete(self, key: str) -> None:
        try:
            async with self.client.delete(key) as resp:
                if resp.status not in (200, 204, 404):
                    raise StorageUnavailable(f"DELETE answered {resp.status}")
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` and abort its unfinished uploads; how many
        objects were deleted. Idempotent."""
        await self.abort_uploads(prefix)
        keys = [key async for key, _ in self.list_keys(prefix)]
        slots = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(key: str) -> None:
            async with slots:
                await self.delete(key)

        await asyncio.gather(*(one(k) for k in keys))
        return len(keys)


class MultipartWriter:
    """One object written by multipart upload, part by part (see the module docstring).

    ``bytes`` counts what was written so far. A writer that is neither closed nor aborted (its
    process died) leaves an unfinished upload, which ``ExportStore.abort_uploads`` removes."""

    def __init__(self, store: ExportStore, key: str, content_type: str) -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        self.upload_id: str | None = None
        self.bytes = 0
        self._buffer = bytearray()
        self._etags: list[str] = []
        self._in_flight: asyncio.Task[None] | None = None

    async def start(self) -> MultipartWriter:
        try:
            async with self.store.client.post(
                self.key,
                headers={"Content-Type": self.content_type},
                params={"uploads": ""},
                content_sha256=EMPTY_SHA256,
            ) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise StorageUnavailable(f"create upload answered {resp.status}")
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc
        self.upload_id = parse_create_multipart_upload_id(payload)
        return self

    async def write(self, data: bytes) -> None:
        """Append ``data``; a full part is sent while the next one fills."""
        self._buffer += data
        self.bytes += len(data)
        if len(self._buffer) >= self.store.part_bytes:
            await self._send_part()

    async def close(self) -> int:
        """Send the last part and complete the upload: the object exists from here on. Returns
        its size."""
        if self._buffer or not self._etags:
            await self._send_part()
        await self._wait_in_flight()
        body = create_complete_upload_request(list(enumerate(self._etags, start=1)))
        try:
            async with self.store.client.post(
                self.key,
                headers={"Content-Type": "text/xml"},
                params={"uploadId": self.upload_id or ""},
                data=body,
                content_sha256=hashlib.sha256(body).hexdigest(),
            ) as resp:
                payload = await resp.read()
                # S3 may answer 200 with an error document when completing fails late.
                if resp.status != 200 or b"<Error>" in payload:
                    raise StorageUnavailable(f"complete upload answered {resp.status}")
        except _TRANSIENT as exc:
            raise _unavailable(exc) from exc
        self.upload_id = None
        return self.bytes

    async def abort(self) -> None:
        """Drop the upload and its parts; nothing is left at ``key``. Never raises for a
        transient failure (the sweeper's ``delete_prefix`` aborts what is left)."""
        if self._in_flight is not None:
            self._in_flight.cancel()
            with contextlib.suppress(BaseException):
                await self._in_flight
            self._in_flight = None
        self._buffer = bytearray()
        if self.upload_id is None:
            return
        upload_id, self.upload_id = self.upload_id, None
        try:
            await self.store.abort_upload(self.key, upload_id)
        except StorageUnavailable:
            log.warning("could not abort an export upload; the sweeper will", exc_info=False)

    async def _send_part(self) -> None:
        # One part in flight at a time: the previous must have gone before this one leaves.
        await self._wait_in_flight()
        # The filled buffer itself becomes the part (no copy of 8 MiB on the event loop).
        part, self._buffer = self._buffer, bytearray()
        self._etags.append("")
        number = len(self._etags)
        self._in_flight = asyncio.create_task(self._upload(number, part))

    async def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            await task

    async def _upload(self, number: int, part: bytearray) -> None:
        # Hashing 8 MiB takes a few milliseconds; off the event loop (hashlib drops the GIL).
        sha = await asyncio.to_thread(lambda: hashlib.sha256(part).hexdigest())
        for attempt in range(1, PART_ATTEMPTS + 1):
            try:
                async with self.store.client.put(
                    self.key,
                    params={"partNumber": str(number), "uploadId": self.upload_id or ""},
                    data=_slices(part),
                    data_length=len(part),
                    content_sha256=sha,
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self._etags[number - 1] = resp.headers["ETag"].strip('"')
                        return
                    # 404: the upload was aborted (a newer run of the export took over).
                    if resp.status == 404 or attempt == PART_ATTEMPTS:
                        raise StorageUnavailable(f"upload part answered {resp.status}")
            except _TRANSIENT as exc:
                if attempt == PART_ATTEMPTS:
                    raise _unavailable(exc) from exc
            await asyncio.sleep(0.2 * attempt)


async def _slices(part: bytearray) -> AsyncIterator[memoryview]:
    """A part as a body sent ``SEND_SLICE_BYTES`` at a time: each write (and whatever copy the
    transport makes of what the socket did not take) holds the event loop briefly."""
    view = memoryview(part)
    for start in range(0, len(view), SEND_SLICE_BYTES):
        yield view[start : start + SEND_SLICE_BYTES]


@contextlib.asynccontextmanager
async def open_export_store(
    settings: Settings, *, connect_timeout: float = 2.0, read_timeout: float = 60.0
) -> AsyncIterator[ExportStore]:
    """A client for the export bucket over its own connections, closed on exit. No total
    timeout: a download of a large file to a slow client takes as long as it takes; each read
    of the socket has ``read_timeout``."""
    connector = aiohttp.TCPConnector(limit=32, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout, sock_read=read_timeout
    )
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = S3Client(
            session=session,
            url=f"{settings.minio_endpoint.rstrip('/')}/{settings.export_bucket}",
            access_key_id=settings.minio_access_key,
            secret_access_key=settings.minio_secret_key,
            region=settings.s3_region,
        )
        yield ExportStore(client=client, bucket=settings.export_bucket)
