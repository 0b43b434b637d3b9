"""PUT and GET of one S3 object over a small HTTP/1.1 client of our own.

Those two calls are on the hot path of every record (the ingest PUT, the normalizer's GET), and
through aiohttp-s3-client each cost about 0.17-0.19 ms of CPU, this client 0.05-0.07 ms
(``bench/s3_client.py``). Here a request is one write of signed headers and body on a kept-alive
connection, and the answer is parsed by httptools (llhttp, the parser Node.js uses). Everything
else S3 offers (HEAD, listings) stays with aiohttp-s3-client in ``storage.py``.

Failures are raised as ``OSError`` or ``TimeoutError``; a request on a kept-alive connection
the server had closed meanwhile (nothing read back) is sent once more on a new connection, which
is safe because a PUT of the same bytes to the same key and a GET are idempotent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httptools

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class ProtocolError(OSError):
    """The server sent something that is not an HTTP/1.1 response."""


class SigV4:
    """AWS Signature Version 4 in the Authorization header. The signing key depends only on the
    day, so it is derived once a day rather than four HMACs per request."""

    def __init__(self, access_key: str, secret_key: str, region: str, service: str = "s3"):
        self.access_key = access_key
        self._secret = secret_key
        self.region = region
        self.service = service
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = f"AWS4{self._secret}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, key
        return self._key

    def authorization(
        self, method: str, path: str, headers: dict[str, str], payload_sha256: str
    ) -> str:
        """The header for a request without a query string. ``path`` is already URI-encoded;
        ``headers`` are the signed ones, lower-case names, ``host`` and ``x-amz-date`` included."""
        amz_date = headers["x-amz-date"]
        day = amz_date[:8]
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            (
                method,
                path,
                "",
                *(f"{name}:{headers[name].strip()}" for name in names),
                "",
                signed,
                payload_sha256,
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            ("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._body: list[bytes] = []
        self.received = False
        self.reusable = False
        self.lost = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (a TCP transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the connection cannot be trusted with the next request.
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(ProtocolError("malformed HTTP response"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionResetError("connection closed before the response ended"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.reusable = self._parser.should_keep_alive()
            waiter.set_result(Response(self._parser.get_status_code(), b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def exchange(self, data: bytes) -> Response:
        """Send one request and wait for its whole response."""
        if self.transport is None or self.lost:
            raise ConnectionResetError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._body = []
        self.received = self.reusable = False
        self.transport.write(data)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.reusable = False
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class S3Http:
    """PUT, GET and DELETE of objects in one bucket over a pool of kept-alive connections."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        region: str,
        connect_timeout: float = 2.0,
        total_timeout: float = 30.0,
        max_connections: int = 100,
        keepalive_s: float = 30.0,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("the S3 endpoint must be an http:// or https:// URL")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._host_header = url.netloc.rpartition("@")[2]
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = f"{url.path.rstrip('/')}/{bucket}/"
        self._signer = SigV4(access_key, secret_key, region)
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    def path(self, key: str) -> str:
        """The URI-encoded path of ``key``: every byte but unreserved characters and ``/``."""
        return quote(self._prefix + key, safe="/")

    async def put(self, key: str, body: bytes, *, sha256: str, content_type: str) -> Response:
        return await self._request("PUT", key, body, sha256, content_type)

    async def get(self, key: str) -> Response:
        return await self._request("GET", key, b"", EMPTY_SHA256, None)

    async def delete(self, key: str) -> Response:
        return await self._request("DELETE", key, b"", EMPTY_SHA256, None)

    async def _request(
        self, method: str, key: str, body: bytes, sha256: str, content_type: str | None
    ) -> Response:
        path = self.path(key)
        signed = {
            "host": self._host_header,
            "x-amz-content-sha256": sha256,
            "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
        }
        head = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self._host_header}",
            f"x-amz-content-sha256: {sha256}",
            f"x-amz-date: {signed['x-amz-date']}",
            f"Authorization: {self._signer.authorization(method, path, signed, sha256)}",
        ]
        if method == "PUT":
            head.append(f"Content-Length: {len(body)}")
        if content_type:
            head.append(f"Content-Type: {content_type}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        async with asyncio.timeout(self._total_timeout), self._slots:
            return await self._send(data)

    async def _send(self, data: bytes) -> Response:
        while True:
            conn = self._take_idle()
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                response = await conn.exchange(data)
            except OSError:
                conn.close()
                if reused and not conn.received:
                    continue  # the server had closed it while it was idle; try a new one
                raise
            except BaseException:
                conn.close()  # cancelled or timed out mid-request: its state is unknown
                raise
            if conn.reusable and not conn.lost:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return response

    def _take_idle(self) -> _Connection | None:
        fresh_after = time.monotonic() - self._keepalive_s
        while self._idle:
            conn = self._idle.pop()
            if not conn.lost and conn.idle_since >= fresh_after:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl
            )
        return conn

    def close(self) -> None:
        """Close every idle connection (connections in use close when their request ends)."""
        while self._idle:
            self._idle.pop().close()
