"""The hot-path S3 client: SigV4 against AWS's published example, key encoding, and the HTTP/1.1
edges of kept-alive connections against a scripted peer on a local socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from exchange_stream.infra.s3http import EMPTY_SHA256, ProtocolError, S3Http, SigV4

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_sigv4_matches_the_aws_documentation_example_for_get_object() -> None:
    # "Example: GET Object" of the S3 SigV4 documentation (header-based authentication).
    signer = SigV4("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1")
    headers = {
        "host": "examplebucket.s3.amazonaws.com",
        "range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    assert signer.authorization("GET", "/test.txt", headers, EMPTY_SHA256) == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_a_new_day_derives_a_new_signing_key() -> None:
    signer = SigV4("AK", "SK", "us-east-1")
    headers = {"host": "h", "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": "20260101T235959Z"}
    first = signer.authorization("GET", "/b/k", headers, EMPTY_SHA256)
    fresh = SigV4("AK", "SK", "us-east-1")
    later = {**headers, "x-amz-date": "20260102T000000Z"}
    assert signer.authorization("GET", "/b/k", later, EMPTY_SHA256) == fresh.authorization(
        "GET", "/b/k", later, EMPTY_SHA256
    )
    assert (
        first.split("Signature=")[1]
        != fresh.authorization("GET", "/b/k", later, EMPTY_SHA256).split("Signature=")[1]
    )


def test_keys_are_percent_encoded_except_unreserved_characters_and_slashes() -> None:
    client = S3Http("http://127.0.0.1:9", "raw-objects", access_key="a", secret_key="s", region="r")
    assert client.path("Hospital A/1.json") == "/raw-objects/Hospital%20A/1.json"
    assert client.path("100% a+b?c#d=%2F/x~y_z-.json") == (
        "/raw-objects/100%25%20a%2Bb%3Fc%23d%3D%252F/x~y_z-.json"
    )
    assert client.path("東京/1.json") == "/raw-objects/%E6%9D%B1%E4%BA%AC/1.json"
    prefixed = S3Http(
        "https://s3.example:8443/store/", "b", access_key="a", secret_key="s", region="r"
    )
    assert prefixed.path("k") == "/store/b/k"


def test_an_endpoint_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        S3Http("ftp://host", "b", access_key="a", secret_key="s", region="r")


Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


class Peer:
    """A local server that answers each accepted connection with ``script(n, ...)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(self.connections, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        head = await _read_request(reader)
        self.requests.append(head)
        return head


@pytest.fixture
async def peer_client() -> AsyncIterator[Callable[[Script], tuple[Peer, S3Http]]]:
    servers: list[asyncio.Server] = []
    clients: list[S3Http] = []

    async def start(script: Script) -> tuple[Peer, S3Http]:
        peer = Peer(script)
        server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        client = S3Http(
            f"http://127.0.0.1:{port}",
            "b",
            access_key="a",
            secret_key="s",
            region="r",
            total_timeout=10,
        )
        clients.append(client)
        return peer, client

    yield start  # type: ignore[misc]
    for client in clients:
        client.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_one_kept_alive_connection_serves_consecutive_requests(peer_client) -> None:
    async def script(n: int, reader, writer) -> None:
        while True:
            await peer.read(reader)
            writer.write(OK)

    peer, client = await peer_client(script)
    for i in range(3):
        resp = await client.put(f"k{i}", b"{}", sha256="x" * 64, content_type="application/json")
        assert (resp.status, resp.body) == (200, b"ok")
    assert (peer.connections, len(peer.requests)) == (1, 3)
    first = peer.requests[0].decode()
    assert first.startswith("PUT /b/k0 HTTP/1.1\r\n")
    assert "\r\nContent-Length: 2\r\n" in first
    assert "\r\nAuthorization: AWS4-HMAC-SHA256 Credential=a/" in first


async def test_a_connection_the_server_closed_while_idle_is_not_reused(peer_client) -> None:
    async def script(n: int, reader, writer) -> None:
        await peer.read(reader)
        writer.write(OK)
        await writer.drain()
        # The response said keep-alive; then the server drops the connection, as a server
        # does when its keep-alive timeout passes.

    peer, client = await peer_client(script)
    assert (await client.get("a")).status == 200
    assert (await client.get("b")).status == 200
    assert peer.connections == 2
    assert [r.split(b" ")[1] for r in peer.requests] == [b"/b/a", b"/b/b"]


async def test_a_request_the_server_dropped_unanswered_on_a_reused_connection_is_sent_again(
    peer_client,
) -> None:
    async def script(n: int, reader, writer) -> None:
        await peer.read(reader)
        writer.write(OK)
        await writer.drain()
        if n == 1:
            await peer.read(reader)  # the second request arrives, and the server closes

    peer, client = await peer_client(script)
    assert (await client.get("a")).status == 200
    resp = await client.put("b", b"{}", sha256="x" * 64, content_type="application/json")
    assert resp.status == 200
    assert peer.connections == 2
    assert [r.split(b" ")[1] for r in peer.requests] == [b"/b/a", b"/b/b", b"/b/b"]


async def test_a_connection_lost_mid_response_fails_the_request_without_sending_it_again(
    peer_client,
) -> None:
    async def script(n: int, reader, writer) -> None:
        await peer.read(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    peer, client = await peer_client(script)
    with pytest.raises(ConnectionResetError):
        await client.get("a")
    assert len(peer.requests) == 1


async def test_a_malformed_response_is_a_protocol_error_and_the_connection_is_dropped(
    peer_client,
) -> None:
    async def script(n: int, reader, writer) -> None:
        await peer.read(reader)
        if n == 1:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await reader.read()  # until the client closes
        else:
            writer.write(OK)
            await peer.read(reader)

    peer, client = await peer_client(script)
    with pytest.raises(ProtocolError):
        await client.get("a")
    assert (await client.get("b")).status == 200
    assert peer.connections == 2


async def test_connection_close_and_chunked_bodies(peer_client) -> None:
    async def script(n: int, reader, writer) -> None:
        await peer.read(reader)
        writer.write(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5\r\nNoSuc\r\n6\r\nhKey..\r\n0\r\n\r\n"
        )
        # The server keeps the socket open: a client that ignored "close" would get this.
        await peer.read(reader)
        writer.write(OK)

    peer, client = await peer_client(script)
    resp = await client.get("a")
    assert (resp.status, resp.body) == (404, b"NoSuchKey..")
    assert (await client.get("b")).status == 404
    assert peer.connections == 2  # "Connection: close" was honoured


async def test_a_server_that_never_answers_times_out(peer_client) -> None:
    async def script(n: int, reader, writer) -> None:
        await peer.read(reader)
        await reader.read()

    peer, client = await peer_client(script)
    client._total_timeout = 0.2
    with pytest.raises(TimeoutError):
        await client.get("a")
