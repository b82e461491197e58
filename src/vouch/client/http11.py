"""An HTTP/1.1 transport for httpx over asyncio sockets, parsed by llhttp (``httptools``).

Why not httpx's own transport: httpcore, h11 and anyio cost about 1 ms of CPU
per request on the machines vouch is measured on, against about 0.1 ms for
the same exchange over a bare asyncio socket. A cold ``vouch list`` of a
repository with 100 delegations makes 104 requests, so that alone was about
a tenth of its run time (``docs/performance.md``). This transport keeps
httpx's client (auth, redirects, proxies from the environment, cookies,
timeouts, its exceptions) and replaces only the wire: asyncio's transports
(with ``TCP_NODELAY``, TLS through :mod:`ssl`) and the parser Node.js uses,
which uvicorn already brings in.

What it does and does not do:

* HTTP/1.1 with keep-alive. Idle connections are kept per origin (at most
  ``max_keepalive``, each for ``keepalive_expiry`` seconds); at most
  ``max_connections`` requests are in flight, further ones wait for a slot
  (httpx's ``pool`` timeout).
* A request that fails on a *reused* connection before any byte of a
  response arrived (the server closed it while idle) is sent again once on a
  new connection, for idempotent methods only.
* Response bodies are streamed with flow control: reading from the socket
  pauses while more than 256 KiB wait for the caller, so a caller that caps
  a body (every metadata read does) never holds much more than its cap.
* A body cut short (fewer bytes than ``Content-Length``, an unfinished
  chunked body, a parse error) raises an httpx error; a connection is reused
  only after a complete response that allows keep-alive.
* One event loop at a time: a transport used again under a new event loop
  (a second ``asyncio.run``) drops the old loop's connections first.
* Not supported: HTTP/2, upgrades, ``Expect: 100-continue``; interim (1xx)
  responses are skipped. Proxies are httpx's business: it mounts its own
  transports for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import httptools
import httpx

MAX_CONNECTIONS: Final = 100
MAX_KEEPALIVE: Final = 20
#: Below the idle timeout of common servers (uvicorn's is 5 s), so that the
#: client drops an idle connection before a server might close it under a POST.
KEEPALIVE_EXPIRY: Final = 4.0
#: Socket reads pause while this much body waits for the caller, and resume
#: when it has taken all but a quarter of it.
HIGH_WATER: Final = 256 << 10
LOW_WATER: Final = HIGH_WATER // 4
#: The port of each scheme when a URL names none.
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Bytes a server may send in a row that are not body (status lines, headers,
#: trailers): llhttp keeps a header value whole before handing it over, so
#: without a cap one endless header would fill memory. h11 allows 64 KiB too.
MAX_HEAD: Final = 64 << 10

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")

Origin = tuple[bytes, str, int]


def _timeout(request: httpx.Request, which: str) -> float | None:
    value = request.extensions.get("timeout", {}).get(which)
    return None if value is None else float(value)


def _request_head(request: httpx.Request, body: bytes) -> bytes:
    """Request line and headers, refusing anything that would split them or
    frame the body as something else than ``body`` (a caller's own
    ``Content-Length`` or ``Transfer-Encoding`` must agree with it)."""
    method = request.method.encode("ascii", "replace")
    target = request.url.raw_path
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"invalid method {request.method!r}")
    if not target or _BAD_TARGET.search(target):
        raise httpx.LocalProtocolError(f"invalid request target {target!r}")
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    for name, value in request.headers.raw:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
        lower = name.lower()
        if lower == b"content-length":
            lengths.append(value.strip())
        elif lower == b"transfer-encoding":
            encodings.append(value.strip().lower())
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    chunked = encodings == [b"chunked"]
    if (encodings and (lengths or not chunked)) or len(lengths) > 1:
        raise httpx.LocalProtocolError("conflicting Content-Length / Transfer-Encoding headers")
    if lengths and lengths[0] != b"%d" % len(body):
        raise httpx.LocalProtocolError("Content-Length does not match the request body")
    if body and not lengths and not chunked:
        raise httpx.LocalProtocolError("a request body needs Content-Length")
    if chunked:  # httpx says chunked for a streamed body; it has been read whole by now
        if body:
            lines += (b"%x\r\n" % len(body), body, b"\r\n")
        lines.append(b"0\r\n\r\n")
    else:
        lines.append(body)
    return b"".join(lines)


class _Retry(Exception):
    """The request may be sent again on a new connection."""


class _Connection(asyncio.Protocol):
    """One socket and the response being read from it, if any.

    Parser callbacks (``on_*``) are called by llhttp from inside
    :meth:`data_received`; they only record what arrived and wake the one
    task waiting for it.
    """

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.served = 0
        self.reusable = True
        #: The slot semaphore of the request it serves (released with it).
        self.slots: asyncio.Semaphore | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self._expecting = False
        self._head_only = False
        self._interim = False
        self._headers_done = False
        self._complete = False
        self._got_bytes = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._length_known = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._fed_body = 0
        self._not_body = 0
        self._head_bytes = 0
        self._reading_paused = False
        self._writing_paused = False
        self._error: httpx.TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._expecting:
            self._fail(httpx.RemoteProtocolError("server sent data no request asked for"))
            return
        self._got_bytes = True
        body_before = self._fed_body
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("server switched protocols unasked"))
            return
        except httptools.HttpParserError as exc:
            if self._complete:  # bytes after the end of the response: it stands, the socket not
                self.close()
                return
            cause = exc.__context__  # what a callback raised
            if isinstance(cause, httpx.TransportError):
                self._fail(cause)
            else:
                self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            return
        if self._complete:
            return
        # Bytes that were not body, counted since the last body bytes: status
        # lines and headers (interim ones included), then trailers.
        if self._fed_body != body_before:
            self._not_body = 0
        else:
            self._not_body += len(data)
            if self._not_body > MAX_HEAD:
                self._fail(httpx.RemoteProtocolError("response headers are too large"))
                return
        if (
            self._buffered > HIGH_WATER
            and not self._reading_paused
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._expecting and not self._complete and self._error is None:
            if not self._headers_done:
                detail = f": {exc}" if exc else ""
                self._error = httpx.RemoteProtocolError(
                    f"server disconnected without sending a response{detail}"
                )
            elif self._length_known:
                self._error = httpx.RemoteProtocolError(
                    "server closed the connection before the end of the body"
                )
            elif exc is not None:
                self._error = httpx.ReadError(f"connection failed during the body: {exc}")
            elif self.origin[0] == b"https":
                # asyncio reports a TCP close without TLS close_notify as a clean
                # end, so a truncated body would pass for a whole one.
                self._error = httpx.RemoteProtocolError(
                    "a TLS response without Content-Length or chunked encoding "
                    "cannot be told from a truncated one"
                )
            else:  # a body delimited by the (clean) end of the connection
                self._complete = True
                self._expecting = False
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- llhttp callbacks --

    def on_message_begin(self) -> None:
        if not self._expecting:
            raise httpx.RemoteProtocolError("server sent a response no request asked for")
        self._headers = []
        self._reason = b""
        self._head_bytes = 0
        self._length_known = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # called once per piece when the line arrives split
        self._count_head(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self._headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._length_known = True

    def _count_head(self, n: int) -> None:
        """What one message keeps of its status line, headers and trailers: the
        same cap whatever the packets were (the per-read count in
        :meth:`data_received` also catches what llhttp buffers before a callback)."""
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD:
            raise httpx.RemoteProtocolError("response headers are too large")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True
            return
        self._status = status
        self._headers_done = True
        if self._drain is not None and not self._drain.done():
            # An answer before the request was written whole (an early 413):
            # stop waiting to send the rest; the connection is not reused.
            self._drain.set_result(None)
        if self._head_only:  # a HEAD reply has no body, whatever it declares
            self._complete = True
            self._expecting = False
            self.reusable = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._interim:
            raise httpx.RemoteProtocolError("server sent an interim (1xx) response with a body")
        if self._head_only:
            return
        self._fed_body += len(body)
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._head_only:
            return
        self._complete = True
        self._expecting = False
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._wake()

    # -- used by the transport --

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def forget(self) -> None:
        """Drop a connection of an event loop that may be closed by now (whose
        transports cannot schedule their own cleanup any more)."""
        with contextlib.suppress(RuntimeError):
            self.close()

    @property
    def usable(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def idle(self) -> None:
        """Back to the pool: nothing buffered, reading on (so that a close by
        the server is noticed while idle)."""
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self.idle_since = time.monotonic()

    def readable(self) -> bool:
        """Whether the socket has something to read while idle: the server's
        close (or stray bytes) that the event loop has not delivered yet.
        Either way the connection must not carry another request."""
        if self.transport is None:
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        if not hasattr(select, "poll"):  # Windows
            return bool(select.select([sock.fileno()], [], [], 0)[0])
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    async def _wait(self, timeout: float | None) -> None:
        self._waiter = self.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        finally:
            self._waiter = None

    async def send(self, data: bytes, *, head_only: bool, write_timeout: float | None) -> None:
        assert self.transport is not None
        self._expecting = True
        self._head_only = head_only
        self._headers_done = self._complete = self._got_bytes = self._interim = False
        self._error = None
        self._chunks.clear()
        self._buffered = self._not_body = 0
        self.served += 1
        self.transport.write(data)
        if self._writing_paused:
            self._drain = self.loop.create_future()
            try:
                async with asyncio.timeout(write_timeout):
                    await self._drain
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            finally:
                self._drain = None
            if self._writing_paused:  # answered before the body was sent
                self.reusable = False
        if self.transport.is_closing() and self._error is None and not self._got_bytes:
            raise _Retry

    async def response_head(
        self, read_timeout: float | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        while not self._headers_done:
            if self._error is not None:
                if not self._got_bytes:
                    raise _Retry from self._error
                raise self._error
            try:
                await self._wait(read_timeout)
            except TimeoutError:
                raise httpx.ReadTimeout("timed out waiting for the response") from None
        return self._status, self._reason, self._headers

    async def body(self, read_timeout: float | None) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                yield data
                continue
            if self._complete:
                return
            if self._error is not None:
                raise self._error
            try:
                await self._wait(read_timeout)
            except TimeoutError:
                raise httpx.ReadTimeout("timed out reading the response body") from None

    @property
    def complete(self) -> bool:
        return self._complete


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, pool: Http11Transport, conn: _Connection, read_timeout: float | None):
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._conn.body(self._read_timeout):
                yield chunk
        except BaseException:
            self._release(keep=False)
            raise

    async def aclose(self) -> None:
        self._release(keep=self._conn.complete)

    def _release(self, *, keep: bool) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._conn, keep=keep)


class Http11Transport(httpx.AsyncBaseTransport):
    """A pooling HTTP/1.1 transport; pass it to ``httpx.AsyncClient(transport=…)``.

    ``ssl_context`` verifies (and authenticates to) ``https`` origins; by
    default the system's roots.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_keepalive: int = MAX_KEEPALIVE,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        if max_connections < 1 or max_keepalive < 0 or keepalive_expiry < 0:
            raise ValueError("connection limits must not be negative")
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport has been closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or DEFAULT_PORTS[url.scheme]
        origin = (scheme, url.raw_host.decode("ascii"), port)
        body = await request.aread()
        data = _request_head(request, body)
        head_only = request.method == "HEAD"
        read_timeout = _timeout(request, "read")
        slots = await self._acquire_slot(_timeout(request, "pool"))
        try:
            if self._closed:  # closed while this request waited for a slot
                raise RuntimeError("the transport has been closed")
            for attempt in (0, 1):
                conn = await self._connection(
                    origin, _timeout(request, "connect"), fresh=attempt > 0
                )
                reused = conn.served > 0
                try:
                    await conn.send(
                        data, head_only=head_only, write_timeout=_timeout(request, "write")
                    )
                    status, reason, headers = await conn.response_head(read_timeout)
                except _Retry as retry:
                    conn.close()
                    if reused and attempt == 0 and request.method in IDEMPOTENT:
                        continue
                    cause = retry.__cause__
                    if isinstance(cause, httpx.TransportError):
                        raise cause from None
                    raise httpx.RemoteProtocolError(
                        "server closed the connection before answering"
                    ) from None
                except BaseException:
                    conn.close()
                    raise
                conn.slots = slots
                return httpx.Response(
                    status,
                    headers=headers,
                    stream=_ResponseStream(self, conn, read_timeout),
                    extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
                )
            raise AssertionError("unreachable")
        except BaseException:
            slots.release()
            raise

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- the pool --

    async def _acquire_slot(self, timeout: float | None) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections and the semaphore belong to the loop that made them; a
            # client used again under a new ``asyncio.run`` starts afresh.
            for conns in self._idle.values():
                for conn in conns:
                    conn.forget()
            self._idle.clear()
            self._loop = loop
            self._slots = None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_connections)
        slots = self._slots
        try:
            async with asyncio.timeout(timeout):
                await slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("timed out waiting for a free connection") from None
        return slots

    def _release(self, conn: _Connection, *, keep: bool) -> None:
        if conn.slots is not None:
            conn.slots.release()  # the semaphore it was taken from, even of an old loop
            conn.slots = None
        if conn.loop is not self._loop:  # a response of an old event loop, closed late
            conn.forget()
            return
        idle = self._idle.setdefault(conn.origin, [])
        now = time.monotonic()
        while idle and now - idle[0].idle_since >= self._expiry:  # oldest first
            idle.pop(0).close()
        if keep and conn.usable and not self._closed and len(idle) < self._max_keepalive:
            conn.idle()
            idle.append(conn)
        else:
            conn.close()

    async def _connection(
        self, origin: Origin, timeout: float | None, *, fresh: bool = False
    ) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < self._expiry and not conn.readable():
                return conn
            conn.close()
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == b"https":
            context = self._ssl if self._ssl is not None else ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=context,
                    # "example.com." is the same name; certificates never end in a dot.
                    server_hostname=host.rstrip(".") if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS verification (ssl.SSLError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return conn


__all__ = ["DEFAULT_PORTS", "Http11Transport"]
