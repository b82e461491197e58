"""vouch.client.http11 against scripted servers on real sockets.

Each server here is a few lines of asyncio that answer exactly the bytes a
test needs, including the ones a well-behaved HTTP server never sends: a
body cut short, an unfinished chunked body, garbage instead of a status
line, a second response no one asked for, a keep-alive connection closed
just as it is reused, silence. What every test checks is what the client
relies on: a complete response is read whole, anything less raises an httpx
error (so :class:`~vouch.client.remote.Remote` reports the server, never a
truncated file), and a connection is reused only after a complete response.
(TLS, mutual TLS, endless and stalled bodies are tested through ``Remote``
in ``test_client_remote.py``.)
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from server_helpers import server_in_thread
from vouch.client.auth import Credentials, TokenAuth
from vouch.client.errors import BadResponse, Offline, TooLarge
from vouch.client.http11 import HIGH_WATER, MAX_HEAD, Http11Transport
from vouch.client.remote import MAX_REDIRECTS, Remote, TLSConfig
from vouch.server.devtls import ensure_dev_tls

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Scripted:
    """A TCP server on 127.0.0.1 that runs ``handler(reader, writer, n)`` for
    its ``n``-th connection and keeps count of connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and Content-Length body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except ConnectionError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Scripted]:
    server = Scripted(handler)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    async with listener:
        yield server


def ok(body: bytes, *extra: bytes) -> bytes:
    headers = b"".join(h + b"\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers, body)


def client(**kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=Http11Transport(**kw), timeout=5)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(r)) is not None:
            w.write(ok(req.split(b" ")[1]))

    async with scripted(handler) as srv, client() as c:
        for i in range(5):
            response = await c.get(f"{srv.url}/file/{i}")
            assert response.status_code == 200
            assert response.content == f"/file/{i}".encode()
        assert srv.connections == 1
        assert len(srv.requests) == 5


async def test_request_bytes_on_the_wire() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(ok(b""))

    async with scripted(handler) as srv, client() as c:
        await c.post(f"{srv.url}/v2/a/b?x=1", content=b"payload", headers={"X-T": "v"})
    (req,) = srv.requests
    head, _, body = req.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/a/b?x=1 HTTP/1.1"
    assert f"Host: {srv.url.removeprefix('http://')}".encode() in lines
    assert b"Content-Length: 7" in lines
    assert b"X-T: v" in lines
    assert body == b"payload"


async def test_streamed_request_body_is_sent_chunked() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        body = await r.readuntil(b"0\r\n\r\n")
        srv.requests.append(head + body)
        w.write(ok(b""))

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async with scripted(handler) as srv, client() as c:
        await c.post(srv.url, content=parts())
    assert srv.requests[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")


async def test_chunked_and_close_delimited_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        if n == 1:
            w.write(chunked)
            await srv.read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        # then the connection closes

    async with scripted(handler) as srv, client() as c:
        assert (await c.get(srv.url)).content == b"hello world"
        assert (await c.get(srv.url)).content == b"until the end"
        assert srv.connections == 1  # the chunked reply left the connection reusable


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", id="chunked"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Len", id="headers"),
        pytest.param(b"", id="nothing"),
    ],
)
async def test_a_response_cut_short_is_an_error(reply: bytes) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(reply)
        await w.drain()

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(srv.url)
        async with Remote(srv.url, trust_env=False) as remote:
            with pytest.raises(Offline):
                await remote.get_metadata("example.com/a", "timestamp.json", 1 << 20)


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_responses_are_refused(reply: bytes) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(reply)
        await asyncio.sleep(1)

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
            await c.get(srv.url)


async def test_unasked_data_after_a_response_retires_the_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            # A second response nobody asked for: a server (or something in between)
            # out of step. It must never be taken as the answer to the next request.
            w.write(ok(b"first %d" % n) + ok(b"smuggled"))

    async with scripted(handler) as srv, client() as c:
        assert (await c.get(srv.url)).content == b"first 1"
        assert (await c.get(srv.url)).content == b"first 2"
        assert srv.connections == 2


async def test_data_while_idle_retires_the_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(ok(b"one %d" % n))
        await w.drain()
        await asyncio.sleep(0.1)
        w.write(ok(b"smuggled"))
        await w.drain()
        while await srv.read_request(r) is not None:
            w.write(ok(b"same connection"))

    async with scripted(handler) as srv, client() as c:
        assert (await c.get(srv.url)).content == b"one 1"
        await asyncio.sleep(0.3)
        assert (await c.get(srv.url)).content == b"one 2"
        assert srv.connections == 2


async def test_a_get_is_resent_once_when_a_reused_connection_was_closed() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(ok(b"reply %d" % n))
        await w.drain()
        # The next request on this connection is read, then the connection is
        # dropped unanswered (an idle timeout racing with the reuse).
        await srv.read_request(r)

    async with scripted(handler) as srv, client() as c:
        assert (await c.get(srv.url)).content == b"reply 1"
        assert (await c.get(srv.url)).content == b"reply 2"
        assert srv.connections == 2
        assert len(srv.requests) == 3
        # A POST is not idempotent: it is not sent twice.
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await c.post(srv.url, content=b"publish")
        assert [q.split(b" ")[0] for q in srv.requests].count(b"POST") == 1


async def test_a_fresh_connection_closed_unanswered_is_not_retried() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(srv.url)
        assert srv.connections == 1


async def test_read_timeout() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        if n == 2:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        await asyncio.sleep(5)

    async with (
        scripted(handler) as srv,
        httpx.AsyncClient(transport=Http11Transport(), timeout=0.3) as c,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await c.get(srv.url)
        with pytest.raises(httpx.ReadTimeout):
            await c.get(srv.url)


async def test_connect_errors() -> None:
    async with scripted(lambda r, w, n: asyncio.sleep(0)) as srv:
        url = srv.url
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(url)  # the listener is gone: refused
        with pytest.raises(httpx.UnsupportedProtocol):
            await c.get("ftp://127.0.0.1/")


async def test_interim_responses_are_skipped_and_head_has_no_body() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"final"))
        await srv.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await asyncio.sleep(1)

    async with scripted(handler) as srv, client() as c:
        response = await c.get(srv.url)
        assert (response.status_code, response.content) == (200, b"final")
        head = await c.head(srv.url)
        assert head.status_code == 200
        assert head.headers["content-length"] == "1000"
        assert head.content == b""


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\r\nInjected: 1"}, {"X-Evil": "a\nb"}, {"X-Evil": "a\x00"}, {"Bad Name": "v"}],
)
async def test_header_injection_is_refused_before_sending(headers: dict[str, str]) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.LocalProtocolError):
            await c.get(srv.url, headers=headers)
        await asyncio.sleep(0.05)
        assert srv.connections == 0


async def test_reading_pauses_while_the_caller_does_not_read() -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    pieces = 128  # beyond what loopback's socket buffers take (up to 32 MiB + 4 MiB here)
    sent = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        await srv.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * pieces))
        for _ in range(pieces):
            w.write(piece)
            await w.drain()
            sent += 1

    async with scripted(handler) as srv, client() as c:
        async with c.stream("GET", srv.url) as response:
            await asyncio.sleep(0.5)
            # Without flow control the transport would have taken all 128 MiB by now;
            # with it, only what the kernel's socket buffers hold beyond 256 KiB.
            assert sent < pieces // 2
            digest = hashlib.sha256()
            async for chunk in response.aiter_raw():
                digest.update(chunk)
        assert digest.digest() == hashlib.sha256(piece * pieces).digest()
        assert sent == pieces


async def test_large_bodies_whole_and_unread_bodies_close() -> None:
    big = bytes(range(256)) * (HIGH_WATER // 64)  # 4x the high-water mark

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            w.write(ok(big))
            await w.drain()

    async with scripted(handler) as srv, client() as c:
        async with c.stream("GET", srv.url) as response:
            await asyncio.sleep(0.2)  # let the socket fill; reading pauses
            received = bytearray()
            async for chunk in response.aiter_raw():
                received += chunk
        assert bytes(received) == big
        assert (await c.get(srv.url)).content == big
        assert srv.connections == 1
        # A body left unread: the connection cannot be reused for the next request.
        async with c.stream("GET", srv.url) as response:
            async for _ in response.aiter_raw():
                break
        assert (await c.get(srv.url)).content == big
        assert srv.connections == 2


async def test_remote_caps_a_body_and_does_not_reuse_its_connection() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(64):
                w.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                await w.drain()
            w.write(b"0\r\n\r\n")

    async with scripted(handler) as srv, Remote(srv.url, trust_env=False) as remote:
        with pytest.raises(TooLarge):
            await remote.get_metadata("example.com/a", "timestamp.json", 100_000)
        assert len(await remote.get_metadata("example.com/a", "timestamp.json", 1 << 20)) == (
            64 * 0x4000
        )
        assert srv.connections == 2


async def test_connection_limit_and_pool_timeout() -> None:
    in_flight = 0
    most = 0
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal in_flight, most
        while await srv.read_request(r) is not None:
            in_flight += 1
            most = max(most, in_flight)
            await release.wait()
            in_flight -= 1
            w.write(ok(b"done"))

    async with scripted(handler) as srv, client(max_connections=2) as c:
        tasks = [asyncio.create_task(c.get(srv.url)) for _ in range(5)]
        await asyncio.sleep(0.3)
        assert most == 2
        release.set()
        assert [(await t).content for t in tasks] == [b"done"] * 5
        assert most == 2
        assert srv.connections == 2

    release.clear()
    async with scripted(handler) as srv:
        limits = httpx.Timeout(5, pool=0.2)
        async with httpx.AsyncClient(
            transport=Http11Transport(max_connections=1), timeout=limits
        ) as c:
            first = asyncio.create_task(c.get(srv.url))
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await c.get(srv.url)
            release.set()
            assert (await first).content == b"done"
            assert (await c.get(srv.url)).content == b"done"  # the slot came back


async def test_idle_connections_expire() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            w.write(ok(b"x"))

    async with scripted(handler) as srv, client(keepalive_expiry=0.1) as c:
        await c.get(srv.url)
        await c.get(srv.url)
        assert srv.connections == 1
        await asyncio.sleep(0.2)
        await c.get(srv.url)
        assert srv.connections == 2


async def test_cancelled_request_frees_its_slot() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        if n == 1:
            await asyncio.sleep(5)
        w.write(ok(b"after"))

    async with scripted(handler) as srv, client(max_connections=1) as c:
        task = asyncio.create_task(c.get(srv.url))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await c.get(srv.url)).content == b"after"
        assert srv.connections == 2


async def test_closed_transport_refuses_requests() -> None:
    transport = Http11Transport()
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:1/"))
    with pytest.raises(ValueError):
        Http11Transport(max_connections=0)


# -- found in review: each was a reproduced defect -------------------------------------------


async def test_an_interim_response_with_a_body_is_refused() -> None:
    """llhttp gives a body to 1xx codes other than 100, 102 and 103; those bytes
    must never end up in the final response."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(b"HTTP/1.1 199 Odd\r\nContent-Length: 5\r\n\r\nEVIL!" + ok(b"ok"))
        await asyncio.sleep(1)

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="interim"):
            await c.get(srv.url)


async def test_a_connection_released_unread_reads_again_when_reused() -> None:
    """A big response that arrived whole while the caller had not read it, then
    closed unread (a ping, a DELETE, a 401): the connection goes back to the
    pool reading, not paused with the next response stuck behind it."""
    big = b"x" * (HIGH_WATER + (150 << 10))

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(r)) is not None:
            w.write(ok(big if b"/big" in req else b"small"))
            await w.drain()

    async with scripted(handler) as srv, client() as c:
        response = await c.send(c.build_request("GET", f"{srv.url}/big"), stream=True)
        await asyncio.sleep(0.3)
        await response.aclose()
        second = await asyncio.wait_for(c.get(f"{srv.url}/small"), 3)
        assert second.content == b"small"
        assert srv.connections == 1


@pytest.mark.parametrize("where", ["value", "headers", "trailers"])
async def test_endless_headers_are_cut_off(where: str) -> None:
    sent = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        await srv.read_request(r)
        if where == "trailers":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\n")
        if where == "value":
            w.write(b"X-Endless: ")
        for _ in range(64 * 1024):  # up to 64 MiB
            w.write(b"a" * 1024 if where == "value" else b"X-Many: " + b"a" * 1014 + b"\r\n")
            sent += 1024
            await w.drain()

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            await c.get(srv.url)
    assert sent < 64 * MAX_HEAD  # stopped early, not after the server gave up


async def test_big_but_bounded_headers_pass() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        many = b"\r\n".join(b"X-H%d: %s" % (i, b"v" * 200) for i in range(200))  # ~42 KiB
        w.write(ok(b"fine", many))

    async with scripted(handler) as srv, client() as c:
        response = await c.get(srv.url)
        assert response.content == b"fine"
        assert response.headers["x-h199"] == "v" * 200


async def test_a_reset_ends_a_close_delimited_body_in_error() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst half of the bo")
        await w.drain()
        await asyncio.sleep(0.2)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # RST, not FIN

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.ReadError, match="reset"):
            await c.get(srv.url)


async def test_a_close_delimited_body_is_refused_over_tls(tmp_path: Path) -> None:
    """asyncio reports a TCP close without close_notify like a clean TLS end, so
    over TLS a body must declare its end (notary-server always does)."""
    paths = ensure_dev_tls(tmp_path, hostname="localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(paths.server_cert, paths.server_key)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            if n == 1:
                w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ntruncated bo")
                await w.drain()
                w.transport.abort()
                return
            w.write(ok(b"declared"))

    async with scripted(handler, server_tls) as srv:
        context = TLSConfig(ca_file=paths.ca_cert).ssl_context()
        async with httpx.AsyncClient(transport=Http11Transport(ssl_context=context)) as c:
            url = srv.url.replace("127.0.0.1", "localhost")
            with pytest.raises(httpx.RemoteProtocolError, match="truncated"):
                await c.get(url)
            assert (await c.get(url)).content == b"declared"


async def test_a_retry_takes_a_new_connection_not_another_idle_one() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        first = True
        while await srv.read_request(r) is not None:
            if not first and n <= 2:  # both old connections drop their next request
                return
            first = False
            w.write(ok(b"ok %d" % n))
            await w.drain()

    async with scripted(handler) as srv, client() as c:
        await asyncio.gather(c.get(srv.url), c.get(srv.url))  # two idle connections
        assert (await c.get(srv.url)).content == b"ok 3"
        assert srv.connections == 3


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    """The server closes right after a keep-alive response, and the client
    reuses the connection before its event loop has seen the FIN. The socket is
    checked first, so even a POST (never sent twice) goes on a new connection."""
    closed = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            w.write(ok(b"ok"))
            await w.drain()
            if n == 1:
                w.close()
                closed.set()
                return

    async with scripted(handler) as srv, client() as c:
        await c.get(srv.url)
        await closed.wait()
        # The server's FIN reaches the client's socket while the loop is blocked,
        # so the connection still looks usable to asyncio when it is taken.
        time.sleep(0.05)
        assert (await c.post(srv.url, content=b"once")).status_code == 200
        assert [q.split(b" ")[0] for q in srv.requests] == [b"GET", b"POST"]
        assert srv.connections == 2


async def test_a_split_status_line_keeps_its_whole_reason() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(b"HTTP/1.1 404 Not Fo")
        await w.drain()
        await asyncio.sleep(0.1)
        w.write(b"und Here\r\nContent-Length: 0\r\n\r\n")

    async with scripted(handler) as srv, client() as c:
        response = await c.get(srv.url)
        assert (response.status_code, response.reason_phrase) == (404, "Not Found Here")


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Length": "5"},
        {"Content-Length": "100"},
        {"Transfer-Encoding": "chunked"},
        {"Transfer-Encoding": "gzip"},
    ],
)
async def test_a_callers_framing_headers_must_match_the_body(headers: dict[str, str]) -> None:
    """A Content-Length shorter than the body would let the rest of the body be
    read as a second request (request smuggling)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)

    async with scripted(handler) as srv, client() as c:
        request = c.build_request("POST", srv.url, content=b"0123456789")
        for name, value in headers.items():
            request.headers[name] = value
        with pytest.raises(httpx.LocalProtocolError):
            await c.send(request)
        with pytest.raises(httpx.LocalProtocolError, match="method"):
            await c.send(c.build_request("\u00e9", srv.url))
        await asyncio.sleep(0.05)
        assert srv.connections == 0


async def test_remote_never_reads_a_redirects_body() -> None:
    """httpx reads a redirect's body whole before following it; Remote follows
    GET redirects itself and leaves the body unread, so an endless one costs
    nothing."""
    sent = 0

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        while (req := await srv.read_request(r)) is not None:
            if b"/moved" in req.split(b"\r\n", 1)[0]:
                w.write(ok(b"{}"))
                continue
            w.write(b"HTTP/1.1 301 Moved\r\nLocation: /moved\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(16 * 1024):  # up to 1 GiB, never finished
                w.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                sent += 1
                await w.drain()

    async with (
        scripted(handler) as srv,
        Remote(srv.url, trust_env=False, timeout=httpx.Timeout(5)) as remote,
    ):
        assert await remote.get_metadata("example.com/a", "root.json", 100) == b"{}"
    assert sent < 1024


async def test_remote_stops_after_too_many_redirects() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            hop = len(srv.requests)
            w.write(b"HTTP/1.1 302 Found\r\nLocation: /hop%d\r\nContent-Length: 0\r\n\r\n" % hop)

    async with scripted(handler) as srv, Remote(srv.url, trust_env=False) as remote:
        with pytest.raises(BadResponse, match="stopped after 10 redirects"):
            await remote.get_metadata("example.com/a", "root.json", 100)
        assert len(srv.requests) == MAX_REDIRECTS  # as many requests as Go's client makes
        # A POST is never redirected: the 302 is the answer (an error for publish).
        srv.requests.clear()
        with pytest.raises(Exception, match="302"):
            await remote.publish("example.com/a", {"root": b"{}"})
        assert len(srv.requests) == 1


def test_one_client_under_successive_event_loops() -> None:
    """A client made once and used under several ``asyncio.run`` calls (a script
    calling the Python API twice): each loop gets new connections and a new slot
    semaphore instead of the previous loop's (whose connections no loop reads
    any more, and whose semaphore is bound to a closed loop)."""
    transport = Http11Transport(max_connections=1)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            await asyncio.sleep(0.05)  # so that the second request waits for the slot
            w.write(ok(b"ok"))

    srv = Scripted(handler)

    async def two_gets() -> list[bytes]:
        c = httpx.AsyncClient(transport=transport, timeout=2)
        responses = await asyncio.gather(c.get(srv.url), c.get(srv.url))
        return [r.content for r in responses]

    with server_in_thread(srv._serve) as port:
        srv.url = f"http://127.0.0.1:{port}"
        for _ in range(3):
            assert asyncio.run(two_gets()) == [b"ok", b"ok"]
        assert srv.connections == 3  # one per loop, kept alive within it


async def test_a_redirect_elsewhere_never_gets_the_trust_servers_credentials() -> None:
    """The trust server redirects a GET to another origin, which answers 401 with
    a Bearer challenge naming its own token realm. Answering it would send the
    trust server's login there; the challenge is refused and not remembered."""

    async def foreign(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await other.read_request(r) is not None:
            challenge = f'Bearer realm="{other.url}/token",service="evil"'.encode()
            w.write(
                b"HTTP/1.1 401 No\r\nWWW-Authenticate: %s\r\nContent-Length: 0\r\n\r\n" % challenge
            )

    async def trust(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(r)) is not None:
            path = req.split(b" ")[1]
            w.write(
                b"HTTP/1.1 302 Found\r\nLocation: %s%s\r\nContent-Length: 0\r\n\r\n"
                % (other.url.encode(), path)
            )

    logins: list[str] = []

    def login(server: str) -> Credentials:
        logins.append(server)
        return Credentials("alice", "s3cret-for-the-trust-server", source="test")

    auth = TokenAuth(login, environ={}, use_docker_config=False)
    async with scripted(foreign) as other, scripted(trust) as srv:
        async with Remote(srv.url, auth=auth, trust_env=False) as remote:
            with pytest.raises(BadResponse, match="answers only the trust server's own"):
                await remote.get_metadata("example.com/a", "root.json", 100)
            assert auth.challenge_for(remote.url) is None
        assert logins == []
        assert not any(b"authorization" in q.lower() for q in other.requests)
        assert all(b"/token" not in q.split(b"\r\n", 1)[0] for q in other.requests)


async def test_a_redirect_to_another_scheme_than_http_is_refused() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            w.write(
                b"HTTP/1.1 301 Moved\r\nLocation: ftp://example.com/x\r\nContent-Length: 0\r\n\r\n"
            )

    async with scripted(handler) as srv, Remote(srv.url, trust_env=False) as remote:
        with pytest.raises(BadResponse, match="redirected to ftp://"):
            await remote.get_metadata("example.com/a", "root.json", 100)


async def test_a_token_realm_that_redirects_is_followed() -> None:
    """docker's token client follows the realm's redirects (Go's http.Client);
    so does vouch's, keeping the login on the same origin, without reading the
    redirect's body."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(r)) is not None:
            line, _, rest = req.partition(b"\r\n")
            path = line.split(b" ")[1]
            authorized = b"authorization: bearer the-token" in rest.lower()
            if path.startswith(b"/auth?"):
                w.write(b"HTTP/1.1 307 Moved\r\nLocation: /auth2?" + path.split(b"?", 1)[1])
                w.write(b"\r\nContent-Length: 4\r\n\r\nnope")
            elif path.startswith(b"/auth2?") and b"authorization: basic " in rest.lower():
                w.write(ok(b'{"token": "the-token"}'))
            elif authorized:
                w.write(ok(b"{}"))
            else:
                challenge = f'Bearer realm="{srv.url}/auth",service="trust"'.encode()
                w.write(b"HTTP/1.1 401 No\r\nWWW-Authenticate: %s\r\n" % challenge)
                w.write(b"Content-Length: 0\r\n\r\n")

    def login(server: str) -> Credentials:
        return Credentials("alice", "pw", source="test")

    auth = TokenAuth(login, environ={}, use_docker_config=False)
    async with scripted(handler) as srv, Remote(srv.url, auth=auth, trust_env=False) as remote:
        assert await remote.get_metadata("example.com/a", "root.json", 100) == b"{}"
    paths = [q.split(b" ")[1].split(b"?")[0] for q in srv.requests]
    assert paths[-3:] == [b"/auth", b"/auth2", b"/v2/example.com/a/_trust/tuf/root.json"]


async def test_as_many_401s_as_connections_do_not_lock_the_pool() -> None:
    """Every request in flight gets a 401 at once, as many as the pool has
    connections: each lets go of its connection before asking the token server,
    so the token requests find one (the admission webhook shares one client
    between reviews)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(r)) is not None:
            line, _, rest = req.partition(b"\r\n")
            if line.split(b" ")[1].startswith(b"/token"):
                w.write(ok(b'{"token": "t", "expires_in": 300}'))
            elif b"authorization: bearer t" in rest.lower():
                w.write(ok(b"{}"))
            else:
                challenge = f'Bearer realm="{srv.url}/token",service="s"'.encode()
                w.write(b"HTTP/1.1 401 No\r\nWWW-Authenticate: %s\r\n" % challenge)
                w.write(b"Content-Length: 11\r\n\r\nunauthorized")

    async with (
        scripted(handler) as srv,
        Remote(
            srv.url,
            transport=Http11Transport(max_connections=4),
            auth=TokenAuth(environ={}, use_docker_config=False),
            timeout=httpx.Timeout(10, pool=2),
        ) as remote,
    ):
        bodies = await asyncio.gather(
            *(remote.get_metadata(f"example.com/r{i}", "timestamp.json", 100) for i in range(8))
        )
        assert bodies == [b"{}"] * 8


@pytest.mark.parametrize(("status", "followed"), [(307, True), (308, True), (303, False)])
async def test_a_publish_follows_307_and_308_with_its_body(status: int, followed: bool) -> None:
    """Go resends notary's buffered publish body on 307/308; on 301-303 a POST
    would become a GET, so that answer stands (an error for a publish)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while (req := await srv.read_request(r)) is not None:
            if req.startswith(b"POST /moved/"):
                w.write(ok(b""))
            else:
                w.write(b"HTTP/1.1 %d Moved\r\nLocation: /moved/\r\n" % status)
                w.write(b"Content-Length: 0\r\n\r\n")

    async with scripted(handler) as srv, Remote(srv.url, trust_env=False) as remote:
        if followed:
            await remote.publish("example.com/a", {"root": b'{"signed":1}'})
            first, second = srv.requests
            assert first.partition(b"\r\n\r\n")[2] == second.partition(b"\r\n\r\n")[2]
            assert b'{"signed":1}' in second
        else:
            with pytest.raises(Exception, match=str(status)):
                await remote.publish("example.com/a", {"root": b"{}"})
            assert len(srv.requests) == 1


async def test_cookies_are_not_kept() -> None:
    """Go's http.Client has no cookie jar (notary, docker): a cookie set by one
    answer is not sent with the next request."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            w.write(ok(b"{}", b"Set-Cookie: session=abc; Path=/"))

    async with scripted(handler) as srv, Remote(srv.url, trust_env=False) as remote:
        await remote.get_metadata("example.com/a", "timestamp.json", 100)
        await remote.get_metadata("example.com/a", "timestamp.json", 100)
    assert not any(b"cookie:" in q.lower() for q in srv.requests)


async def test_an_answer_before_the_body_is_sent_is_the_response() -> None:
    """The server answers 413 early and stops reading the (large) body: the
    client returns that answer instead of waiting to finish writing until the
    write timeout, and does not reuse the connection."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        await asyncio.sleep(5)  # reads nothing more

    async with (
        scripted(handler) as srv,
        httpx.AsyncClient(transport=Http11Transport(), timeout=httpx.Timeout(5, write=3)) as c,
    ):
        started = time.monotonic()
        response = await c.post(srv.url, content=b"x" * (64 << 20))
        assert response.status_code == 413
        assert time.monotonic() - started < 2.5


async def test_the_header_cap_does_not_depend_on_packets() -> None:
    """100 KB of headers whose last bytes arrive in one read with the body are
    refused as surely as when the body comes separately."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)
    )

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await srv.read_request(r)
        w.write(head[:60_000])  # under the cap
        await w.drain()
        await asyncio.sleep(0.1)
        w.write(head[60_000:] + b"\r\nok")  # the rest of the head and the body together
        await asyncio.sleep(1)

    async with scripted(handler) as srv, client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            await c.get(srv.url)


async def test_closing_the_transport_stops_requests_waiting_for_a_slot() -> None:
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while await srv.read_request(r) is not None:
            await release.wait()
            w.write(ok(b"ok"))

    transport = Http11Transport(max_connections=1)
    async with scripted(handler) as srv:
        c = httpx.AsyncClient(transport=transport, timeout=5)
        tasks = [asyncio.create_task(c.get(srv.url)) for _ in range(3)]
        await asyncio.sleep(0.2)
        await transport.aclose()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [r.status_code for r in results if isinstance(r, httpx.Response)] == [200]
        assert sum(isinstance(r, RuntimeError) for r in results) == 2
        assert srv.connections == 1


async def test_a_trailing_dot_is_not_part_of_the_tls_server_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``https://notary.example.com.:4443`` is the same host; certificates and SNI
    never carry the dot (Go strips it as well)."""
    seen: dict[str, object] = {}
    loop = asyncio.get_running_loop()

    async def create_connection(*args: object, **kwargs: object) -> None:
        seen.update(host=args[1], server_hostname=kwargs.get("server_hostname"))
        raise OSError("not connecting in this test")

    monkeypatch.setattr(loop, "create_connection", create_connection)
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("https://notary.example.com.:4443/v2/")
    assert seen == {"host": "notary.example.com.", "server_hostname": "notary.example.com"}
