"""vouch.client.remote against the real servers and against misbehaving ones.

The same scenarios run against vouch's server (in process, through
``httpx.ASGITransport``) and the real notary-server 0.7 (a process on a real
socket): if the client's requests or its reading of replies were off in
anything notary-server cares about, the notary runs would fail.

Misbehaving servers are tiny ASGI apps (error envelopes, bodies that are too
large or lie in ``Content-Length``), ``httpx.MockTransport`` where a test must
count exactly how many bytes the client pulled, and uvicorn on a real socket
where the network itself matters (endless bodies, stalls, TLS).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notary_harness import NotaryServer, free_port
from server_helpers import Publisher, server_in_thread
from vouch.client.errors import (
    BadResponse,
    NotFound,
    Offline,
    RemoteError,
    ServerUnavailable,
    TooLarge,
    Unauthorized,
    UpdateRejected,
    VersionConflict,
)
from vouch.client.proxy import ProxyConfig
from vouch.client.remote import (
    MAX_ERROR_BODY,
    MAX_ROOT_SIZE,
    MAX_TIMESTAMP_SIZE,
    USER_AGENT,
    Remote,
    TLSConfig,
    multipart_body,
)
from vouch.keyservice.memory import MemoryKeyService
from vouch.server.app import build_app
from vouch.server.devtls import ensure_dev_tls
from vouch.server.service import TrustService
from vouch.storage.memory import MemoryStore
from vouch.tuf import build, roles
from vouch.tuf.keys import Key
from vouch.tuf.trusted import TrustedSet

pytestmark = pytest.mark.anyio

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def vouch_remote() -> Remote:
    """A Remote on a fresh in-process vouch server (memory storage and keys)."""
    app = build_app(TrustService(MemoryStore(), MemoryKeyService()))
    return Remote("http://vouch.test", transport=httpx.ASGITransport(app=app))


def app_remote(app: Any, url: str = "http://bad.test", **kw: Any) -> Remote:
    return Remote(url, transport=httpx.ASGITransport(app=app), **kw)


@pytest.fixture(
    params=["vouch", pytest.param("notary", marks=pytest.mark.interop)],
)
async def remote(request: pytest.FixtureRequest) -> AsyncIterator[Remote]:
    """The same client against vouch's server and the real notary-server."""
    if request.param == "vouch":
        r = vouch_remote()
    else:
        server: NotaryServer = request.getfixturevalue("notary_server")
        r = Remote(server.url)
    async with r:
        yield r


def new_gun() -> str:
    return f"example.com/client/{secrets.token_hex(6)}"


async def initialised(remote: Remote, gun: str | None = None) -> Publisher:
    """A published repository: root v1, targets v1 (one target), snapshot v1."""
    pub = Publisher(gun or new_gun())
    ts_key = await remote.get_key(pub.gun, roles.TIMESTAMP)
    pub.root = build.root(
        {
            roles.ROOT: [pub.root_pub],
            roles.TARGETS: [pub.targets_priv.public],
            roles.SNAPSHOT: [pub.snapshot_priv.public],
            roles.TIMESTAMP: [ts_key],
        },
        pub.now,
    )
    pub.targets[roles.TARGETS] = build.targets(pub.now)
    pub.add("v1", b"one")
    pub.sign_root()
    pub.sign_targets(roles.TARGETS)
    await remote.publish(pub.gun, pub.upload(roles.ROOT, roles.TARGETS))
    return pub


async def verify(remote: Remote, gun: str) -> TrustedSet:
    """A cold-start client update over ``remote``, with notary's size limits."""
    ts = TrustedSet(gun, await remote.get_metadata(gun, "root.json", MAX_ROOT_SIZE), bootstrap=True)
    t = ts.update_timestamp(await remote.get_metadata(gun, "timestamp.json", MAX_TIMESTAMP_SIZE))
    snap_meta = t.signed.meta["snapshot"]
    s = ts.update_snapshot(
        await remote.get_metadata(gun, f"snapshot.{snap_meta.sha256_hex()}.json", snap_meta.length)
    )
    tmeta = s.signed.meta["targets"]
    ts.update_targets(
        await remote.get_metadata(gun, f"targets.{tmeta.sha256_hex()}.json", tmeta.length)
    )
    for d in ts.delegations_of(roles.TARGETS):
        if d.name in s.signed.meta:
            m = s.signed.meta[d.name]
            data = await remote.get_metadata(gun, f"{d.name}.{m.sha256_hex()}.json", m.length)
            ts.update_delegated_targets(data, d.name)
    return ts


# -- against the real servers ---------------------------------------------------


async def test_ping_is_online(remote: Remote) -> None:
    assert await remote.ping() is True


async def test_get_key_and_rotate(remote: Remote) -> None:
    gun = new_gun()
    key = await remote.get_key(gun, "timestamp")
    # vouch's server defaults to ECDSA, the harness's notary-server to Ed25519.
    assert isinstance(key, Key) and key.keytype in ("ecdsa", "ed25519")
    snapshot_key = await remote.get_key(gun, "snapshot")
    assert snapshot_key.keyid != key.keyid
    rotated = await remote.rotate_key(gun, "timestamp")
    assert rotated.keytype == key.keytype and rotated.keyid != key.keyid
    with pytest.raises(ValueError, match="timestamp and snapshot only"):
        await remote.get_key(gun, "targets")


async def test_publish_and_fetch_by_name_version_and_hash(remote: Remote) -> None:
    pub = await initialised(remote)
    gun = pub.gun
    ts = await verify(remote, gun)
    assert set(ts.all_targets()) == {"v1"}
    root = await remote.get_metadata(gun, "root.json", MAX_ROOT_SIZE)
    assert root == pub.files[roles.ROOT]
    assert await remote.get_metadata(gun, "1.root.json", MAX_ROOT_SIZE) == root
    digest = hashlib.sha256(root).hexdigest()
    assert await remote.get_metadata(gun, f"root.{digest}.json", len(root)) == root
    assert await remote.get_metadata(gun, "1.targets.json", MAX_ROOT_SIZE) == pub.files["targets"]

    # A delegation, fetched by hash and by version.
    pub.delegate("targets/releases", ["rel/"])
    pub.add("rel/1", b"r1", role="targets/releases")
    pub.sign_targets(roles.TARGETS)
    pub.sign_targets("targets/releases")
    await remote.publish(gun, pub.upload(roles.TARGETS, "targets/releases"))
    ts = await verify(remote, gun)
    assert ts.find_target("rel/1") is not None
    deleg = pub.files["targets/releases"]
    hexd = hashlib.sha256(deleg).hexdigest()
    assert await remote.get_metadata(gun, f"targets/releases.{hexd}.json", len(deleg)) == deleg
    assert await remote.get_metadata(gun, "1.targets/releases.json", len(deleg)) == deleg


async def test_missing_metadata(remote: Remote) -> None:
    gun = new_gun()
    with pytest.raises(NotFound) as info:
        await remote.get_metadata(gun, "root.json", MAX_ROOT_SIZE)
    assert info.value.repository_missing
    assert str(info.value) == f"{remote.url} does not have trust data for {gun}"
    pub = await initialised(remote, gun)
    with pytest.raises(NotFound) as info:
        await remote.get_metadata(pub.gun, "7.root.json", MAX_ROOT_SIZE)
    assert not info.value.repository_missing
    assert "7.root.json trust data unavailable" in str(info.value)


async def test_size_limits_on_real_servers(remote: Remote) -> None:
    pub = await initialised(remote)
    with pytest.raises(TooLarge) as info:
        await remote.get_metadata(pub.gun, "timestamp.json", 10)
    assert info.value.limit == 10
    root = pub.files[roles.ROOT]
    digest = hashlib.sha256(root).hexdigest()
    with pytest.raises(TooLarge):
        await remote.get_metadata(pub.gun, f"root.{digest}.json", len(root) - 1)
    assert await remote.get_metadata(pub.gun, f"root.{digest}.json", len(root)) == root


async def test_rejected_updates_render_like_notary(remote: Remote) -> None:
    pub = await initialised(remote)
    files = {roles.ROOT: pub.files[roles.ROOT], roles.TARGETS: pub.files[roles.TARGETS]}
    files[roles.SNAPSHOT] = pub.files[roles.SNAPSHOT]
    with pytest.raises(VersionConflict) as conflict:
        await remote.publish(pub.gun, files)  # exactly the same versions again
    assert conflict.value.code == "VERSION"

    pub.root.version = 3
    pub.sign_root()
    with pytest.raises(UpdateRejected) as info:
        await remote.publish(pub.gun, pub.upload(roles.ROOT))
    assert info.value.code == "INVALID_UPDATE"
    assert info.value.validation is not None and info.value.validation.name == "ErrBadRoot"
    assert str(info.value) == (
        "The root metadata is invalid: "
        "Root modifications must increment the version. Current 1, new 3"
    )

    with pytest.raises(UpdateRejected) as role_info:
        await remote.publish(pub.gun, {"foo/targets/x": pub.files[roles.TARGETS]})
    assert role_info.value.code == "INVALID_ROLE"
    assert role_info.value.detail == "foo/targets/x"
    assert role_info.value.validation is None


async def test_delete_and_changefeed(remote: Remote) -> None:
    pub = await initialised(remote)
    feed = await remote.changefeed(pub.gun, 0, 100)
    assert feed.count == 1 and len(feed.records) == 1
    (change,) = feed.records
    assert change.gun == pub.gun and change.category == "update" and change.version == 1
    timestamp = await remote.get_metadata(pub.gun, "timestamp.json", MAX_TIMESTAMP_SIZE)
    assert change.sha256 == hashlib.sha256(timestamp).hexdigest()
    assert abs(change.created_at - datetime.now(UTC)) < timedelta(minutes=5)

    await remote.delete(pub.gun)
    with pytest.raises(NotFound):
        await remote.get_metadata(pub.gun, "root.json", MAX_ROOT_SIZE)
    await remote.delete(pub.gun)  # nothing left: still fine
    feed = await remote.changefeed(pub.gun, change.id, 10)
    assert [c.category for c in feed.records] == ["deletion"]
    newest = await remote.changefeed(None, -1, -1)
    assert newest.count == 1 and newest.records[0].gun == pub.gun


# -- unreachable servers ----------------------------------------------------------


async def test_unreachable_server_is_offline() -> None:
    async with Remote(f"http://127.0.0.1:{free_port()}") as r:
        assert await r.ping() is False
        with pytest.raises(Offline) as info:
            await r.get_metadata("example.com/x", "timestamp.json", MAX_TIMESTAMP_SIZE)
    assert info.value.status is None
    assert isinstance(info.value, ServerUnavailable)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def _status_app(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Any:
    async def endpoint(request: Request) -> Response:
        return Response(body, status_code=status, headers=headers)

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST", "DELETE"])])


@pytest.mark.parametrize(
    ("status", "online"),
    [(200, True), (204, True), (401, True), (404, False), (500, False), (503, False)],
)
async def test_ping_status(status: int, online: bool) -> None:
    async with app_remote(_status_app(status)) as r:
        assert await r.ping() is online


async def test_ping_timeout() -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await anyio.sleep(10)

    async with app_remote(slow, ping_timeout=0.2) as r:
        started = time.monotonic()
        assert await r.ping() is False
        assert time.monotonic() - started < 5


# -- status and error envelope mapping ------------------------------------------------


def _errors(*errors: dict[str, Any]) -> bytes:
    return json.dumps({"errors": list(errors)}).encode() + b"\n"


def _invalid(name: str, msg: str, **extra: str) -> bytes:
    detail = {"Name": name, "Error": {**extra, "Msg": msg}}
    return _errors({"code": "INVALID_UPDATE", "message": "Update sent…", "detail": detail})


@pytest.mark.parametrize(
    ("name", "rendered"),
    [
        ("ErrValidation", "An error occurred during validation: boom"),
        ("ErrBadRoot", "The root metadata is invalid: boom"),
        ("ErrBadTargets", "The targets metadata is invalid: boom"),
        ("ErrBadSnapshot", "The snapshot metadata is invalid: boom"),
        ("ErrBadHierarchy", "Metadata hierarchy is incomplete: boom"),
    ],
)
async def test_validation_errors_render_like_the_notary_cli(name: str, rendered: str) -> None:
    extra = {"Missing": "targets/a"} if name == "ErrBadHierarchy" else {}
    async with app_remote(_status_app(400, _invalid(name, "boom", **extra))) as r:
        with pytest.raises(UpdateRejected) as info:
            await r.publish("example.com/x", {"targets": b"{}"})
    assert str(info.value) == rendered
    assert info.value.validation is not None and info.value.validation.name == name
    if extra:
        assert info.value.validation.missing == "targets/a"


NOT_FOUND = _errors({"code": "METADATA_NOT_FOUND", "message": "You have…", "detail": {}})


@pytest.mark.parametrize(
    ("status", "body", "expected", "attrs"),
    [
        (404, NOT_FOUND, NotFound, {"code": "METADATA_NOT_FOUND"}),
        (404, b"", NotFound, {"code": ""}),
        (
            500,
            _errors({"code": "UNKNOWN", "message": "unknown error"}),
            ServerUnavailable,
            {"status": 500, "code": "UNKNOWN"},
        ),
        (
            503,
            _errors({"code": "UNAVAILABLE", "message": "x"}),
            ServerUnavailable,
            {"status": 503, "code": "UNAVAILABLE"},
        ),
        (502, b"<html>bad gateway</html>", ServerUnavailable, {"status": 502, "code": ""}),
        (403, b"forbidden", ServerUnavailable, {"status": 403}),
        (302, b"", ServerUnavailable, {"status": 302}),
        (
            400,
            _errors({"code": "VERSION", "message": "newer", "detail": {}}),
            VersionConflict,
            {"code": "VERSION", "validation": None},
        ),
        (
            400,
            _errors({"code": "MALFORMED_UPLOAD", "message": "bad", "detail": "no parts"}),
            UpdateRejected,
            {"code": "MALFORMED_UPLOAD", "detail": "no parts"},
        ),
        (400, b"not json", UpdateRejected, {"code": "", "validation": None}),
        (
            413,
            _errors({"code": "TOO_LARGE", "message": "big"}),
            UpdateRejected,
            {"status": 413, "code": "TOO_LARGE"},
        ),
        (401, b"", Unauthorized, {"scope": None}),
    ],
)
async def test_status_mapping(
    status: int, body: bytes, expected: type[RemoteError], attrs: dict[str, Any]
) -> None:
    async with app_remote(_status_app(status, body)) as r:
        with pytest.raises(expected) as info:
            await r.publish("example.com/x", {"targets": b"{}"})
    assert type(info.value) is expected
    for name, value in attrs.items():
        assert getattr(info.value, name) == value, name
    assert info.value.url == "http://bad.test/v2/example.com/x/_trust/tuf/"


async def test_plain_400_renders_generic_message() -> None:
    async with app_remote(_status_app(400, b"")) as r:
        with pytest.raises(UpdateRejected) as info:
            await r.delete("example.com/x")
    assert str(info.value) == "trust server rejected operation."


async def test_validation_detail_needs_exactly_one_error() -> None:
    one = json.loads(_invalid("ErrBadRoot", "boom"))["errors"][0]
    body = _errors(one, {"code": "UNKNOWN", "message": "more"})
    async with app_remote(_status_app(400, body)) as r:
        with pytest.raises(UpdateRejected) as info:
            await r.publish("example.com/x", {"root": b"{}"})
    assert info.value.validation is None and info.value.code == "INVALID_UPDATE"


async def test_error_body_is_read_only_up_to_1_kib() -> None:
    # A valid validation error padded past 1 KiB is not parsed (notary reads 1 KiB too).
    doc = json.loads(_invalid("ErrBadRoot", "boom"))
    doc["errors"][0]["padding"] = "x" * 2000
    async with app_remote(_status_app(400, json.dumps(doc).encode())) as r:
        with pytest.raises(UpdateRejected) as info:
            await r.publish("example.com/x", {"root": b"{}"})
    assert info.value.validation is None
    assert str(info.value) == "trust server rejected operation."

    # An endless error body: the client stops after 1 KiB (plus one chunk).
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"e" * 100

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, stream=_AsyncStream(endless()))

    async with Remote("http://mock.test", transport=httpx.MockTransport(handler)) as r:
        with pytest.raises(ServerUnavailable) as err:
            await r.get_metadata("example.com/x", "timestamp.json", MAX_TIMESTAMP_SIZE)
    assert err.value.status == 500
    assert pulled <= MAX_ERROR_BODY // 100 + 1


async def test_unauthorized_carries_the_challenge_scope() -> None:
    challenge = (
        'Bearer realm="ftp://nowhere/token",service="notary-server",'
        'scope="repository:example.com/x:pull",error="insufficient_scope"'
    )
    app = _status_app(401, b"", {"WWW-Authenticate": challenge})
    async with app_remote(app) as r:
        with pytest.raises(BadResponse, match="unusable realm"):
            await r.get_metadata("example.com/x", "timestamp.json", 100)
    app = _status_app(401, b"", {"WWW-Authenticate": 'Basic realm="registry"'})
    async with app_remote(app) as r:
        with pytest.raises(Unauthorized) as info:
            await r.get_metadata("example.com/x", "timestamp.json", 100)
    assert info.value.scope is None
    assert str(info.value).startswith("you are not authorized to perform this operation")


async def test_bad_key_and_changefeed_replies() -> None:
    async with app_remote(_status_app(200, b'{"keytype":"ecdsa"}')) as r:
        with pytest.raises(BadResponse, match="bad timestamp key"):
            await r.get_key("example.com/x", "timestamp")
        with pytest.raises(BadResponse, match="bad changefeed"):
            await r.changefeed("example.com/x")
    async with app_remote(_status_app(200, b'{"count":0,"records":null}')) as r:
        feed = await r.changefeed("example.com/x")
    assert feed.count == 0 and feed.records == []


async def test_names_that_would_leave_their_path_are_refused() -> None:
    async with vouch_remote() as r:
        bad = ("../x.json", "targets/../root.json", "/root.json", "a//b.json", "x y.json")
        controls = ("x\x00.json", "x\n.json", "x\x1f.json", "x\x7f.json", "x\t.json")
        for name in (*bad, *controls):
            with pytest.raises(ValueError, match="invalid metadata name"):
                await r.get_metadata("example.com/x", name, 100)
        for gun in ("", "example.com/../x", "/abs", "example.com/x/"):
            with pytest.raises(ValueError, match="invalid GUN"):
                await r.get_metadata(gun, "root.json", 100)
    with pytest.raises(ValueError, match="http"):
        Remote("ftp://example.com")


# -- size limits against lying servers -------------------------------------------------


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


def _body_app(body: bytes, *, declared: int | None = None) -> ASGIApp:
    """Sends ``body`` with a ``Content-Length`` of ``declared`` (the truth by default)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        length = len(body) if declared is None else declared
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(length).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def test_exact_limit_passes_one_more_byte_fails() -> None:
    async with app_remote(_body_app(b"x" * 1000)) as r:
        assert await r.get_metadata("example.com/x", "snapshot.json", 1000) == b"x" * 1000
        with pytest.raises(TooLarge) as info:
            await r.get_metadata("example.com/x", "snapshot.json", 999)
    assert info.value.declared == 1000 and info.value.limit == 999


async def test_content_length_lying_low_is_caught_by_counting() -> None:
    # Declares 10 bytes, sends 5000: the header cannot vouch for the body.
    async with app_remote(_body_app(b"y" * 5000, declared=10)) as r:
        with pytest.raises(TooLarge) as info:
            await r.get_metadata("example.com/x", "timestamp.json", 100)
    assert info.value.declared is None


async def test_large_content_length_is_refused_before_reading() -> None:
    pulled = 0

    async def stalls() -> AsyncIterator[bytes]:
        nonlocal pulled
        pulled += 1
        await anyio.sleep_forever()
        yield b""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": str(MAX_TIMESTAMP_SIZE + 1)}
        return httpx.Response(200, headers=headers, stream=_AsyncStream(stalls()))

    async with Remote("http://mock.test", transport=httpx.MockTransport(handler)) as r:
        with anyio.fail_after(5), pytest.raises(TooLarge) as info:
            await r.get_metadata("example.com/x", "timestamp.json", MAX_TIMESTAMP_SIZE)
    assert info.value.declared == MAX_TIMESTAMP_SIZE + 1
    assert pulled == 0


async def test_reading_stops_just_past_the_limit() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"z" * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_AsyncStream(endless()))

    async with Remote("http://mock.test", transport=httpx.MockTransport(handler)) as r:
        with pytest.raises(TooLarge) as info:
            await r.get_metadata("example.com/x", "snapshot.abc.json", 10 * 1024)
    assert info.value.declared is None
    assert pulled == 11  # 10 KiB allowed, the 11th chunk crosses the limit: stop


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """``app`` under uvicorn on a real 127.0.0.1 socket, in a thread; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="error", lifespan="off", timeout_graceful_shutdown=1, **config
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        scheme = "https" if config.get("ssl_certfile") else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def test_endless_body_over_a_real_socket() -> None:
    sent = 0

    async def endless(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal sent
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(4096):  # at most 256 MiB, then give up
            await send({"type": "http.response.body", "body": b"t" * 65536, "more_body": True})
            sent += 1
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})

    with serve(endless) as url:
        async with Remote(url) as r:
            with anyio.fail_after(20), pytest.raises(TooLarge):
                await r.get_metadata("example.com/x", "timestamp.json", MAX_TIMESTAMP_SIZE)


async def test_stalled_huge_declared_body_over_a_real_socket() -> None:
    async def stall(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(200 << 20).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await asyncio.sleep(30)

    with serve(stall) as url:
        async with Remote(url) as r:
            with anyio.fail_after(10), pytest.raises(TooLarge) as info:
                await r.get_metadata("example.com/x", "root.json", MAX_ROOT_SIZE)
    assert info.value.declared == 200 << 20


# -- what goes on the wire -------------------------------------------------------------------


async def test_publish_sends_notarys_multipart() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await request.aread()
        seen.append(request)
        return httpx.Response(200)

    files = {"root": b'{"signed":1}', "targets/releases": b"{}"}
    async with Remote("http://mock.test", transport=httpx.MockTransport(handler)) as r:
        await r.publish("example.com/app", files)
    (req,) = seen
    assert req.method == "POST"
    assert str(req.url) == "http://mock.test/v2/example.com/app/_trust/tuf/"
    m = re.fullmatch(r"multipart/form-data; boundary=([0-9a-f]{60})", req.headers["content-type"])
    assert m is not None
    b = m.group(1)
    assert (
        req.content
        == (
            f"--{b}\r\n"
            'Content-Disposition: form-data; name="files"; filename="root"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
            '{"signed":1}\r\n'
            f"--{b}\r\n"
            'Content-Disposition: form-data; name="files"; filename="targets/releases"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
            "{}\r\n"
            f"--{b}--\r\n"
        ).encode()
    )
    assert req.headers["content-length"] == str(len(req.content))
    assert req.headers["user-agent"] == USER_AGENT == "vouch/0.1.0"
    assert req.headers["accept-encoding"] == "identity"
    assert "authorization" not in req.headers
    with pytest.raises(ValueError, match="invalid role"):
        multipart_body({"root\r\nX-Evil: 1": b""})


async def test_requests_use_notarys_routes() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        if request.url.path.endswith(".key"):
            return httpx.Response(200, json={"keytype": "ecdsa", "keyval": {"public": "AA=="}})
        if "changefeed" in request.url.path:
            return httpx.Response(200, json={"count": 0, "records": []})
        return httpx.Response(200, content=b"{}")

    async with Remote("http://mock.test/", transport=httpx.MockTransport(handler)) as r:
        await r.ping()
        await r.get_metadata("localhost:5000/a/b", "targets/rel.json", 10)
        await r.get_key("g", "snapshot")
        await r.rotate_key("g", "timestamp")
        await r.delete("g")
        await r.changefeed("g", "7", -5)
        await r.changefeed(None)
    base = "http://mock.test"
    assert seen == [
        f"GET {base}/v2/",
        f"GET {base}/v2/localhost:5000/a/b/_trust/tuf/targets/rel.json",
        f"GET {base}/v2/g/_trust/tuf/snapshot.key",
        f"POST {base}/v2/g/_trust/tuf/timestamp.key",
        f"DELETE {base}/v2/g/_trust/tuf/",
        f"GET {base}/v2/g/_trust/changefeed?change_id=7&records=-5",
        f"GET {base}/v2/_trust/changefeed?change_id=0&records=100",
    ]


async def test_get_follows_redirects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/g/_trust/tuf/root.json":
            return httpx.Response(301, headers={"Location": "/moved/root.json"})
        return httpx.Response(200, content=b"moved")

    async with Remote("http://mock.test", transport=httpx.MockTransport(handler)) as r:
        assert await r.get_metadata("g", "root.json", 100) == b"moved"


# -- TLS -----------------------------------------------------------------------------------------


def _client_cert(ca_cert: Path, ca_key: Path, out: Path) -> tuple[Path, Path]:
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    ca_priv = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    assert isinstance(ca_priv, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vouch client")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_priv, hashes.SHA256())
    )
    cert_path, key_path = out / "client.crt", out / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_options(tmp_path: Path) -> None:
    paths = ensure_dev_tls(tmp_path / "tls", hostname="vouch-test")
    app = build_app(TrustService(MemoryStore(), MemoryKeyService()))
    cert, key = _client_cert(paths.ca_cert, paths.ca_key, tmp_path)
    tls = {
        "ssl_certfile": str(paths.server_cert),
        "ssl_keyfile": str(paths.server_key),
        "ssl_ca_certs": str(paths.ca_cert),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    with serve(app, **tls) as url:
        # The system roots do not know the dev CA; neither does an unrelated CA file.
        async with Remote(url, tls=TLSConfig(client_cert=cert, client_key=key)) as r:
            assert await r.ping() is False
            with pytest.raises(Offline):
                await r.get_key("example.com/tls", "timestamp")
        # The right CA but no client certificate: the server refuses the handshake.
        async with Remote(url, tls=TLSConfig(ca_file=paths.ca_cert)) as r:
            assert await r.ping() is False
        # CA and client certificate.
        mtls = TLSConfig(ca_file=paths.ca_cert, client_cert=cert, client_key=key)
        async with Remote(url, tls=mtls) as r:
            assert await r.ping() is True
            assert (await r.get_key("example.com/tls", "timestamp")).keytype == "ecdsa"
        # Skipping verification still presents the client certificate.
        skip = TLSConfig(client_cert=cert, client_key=key, skip_verify=True)
        async with Remote(url, tls=skip) as r:
            assert await r.ping() is True
        # A ready SSLContext is used as is.
        async with Remote(url, tls=mtls.ssl_context()) as r:
            assert await r.ping() is True
    with pytest.raises(ValueError, match="needs its key"):
        TLSConfig(client_cert=cert)


def test_system_roots_loaded_before_the_first_handshake() -> None:
    """Without a CA file the system roots are loaded lazily (start-up time), but
    always before a TLS connection is set up, so verification never runs on
    an empty pool; the context verifies as ``ssl.create_default_context`` does."""
    ctx = TLSConfig().ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.cert_store_stats()["x509_ca"] == 0
    ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert system > 0, "the machine has no system CA roots to compare with"
    assert ctx.cert_store_stats()["x509_ca"] == system
    other = TLSConfig().ssl_context()
    with socket.socket() as sock, other.wrap_socket(sock, server_hostname="example.com"):
        pass  # not connected: no handshake, but the roots are loaded
    assert other.cert_store_stats()["x509_ca"] == system


# -- proxies from the environment ------------------------------------------------------------


class ForwardProxy:
    """An HTTP proxy on 127.0.0.1 that records each request line: ``CONNECT`` is
    tunnelled to port of its target on 127.0.0.1 (whatever the host name), a
    plain (absolute-form) request is answered by the proxy itself."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            self.lines.append(line)
            method, target, _ = line.split(" ")
            while method != "CONNECT":  # answered here, the connection kept alive
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                self.lines.append(line)
                method = line.split(" ")[0]
            port = int(target.rsplit(":", 1)[1])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "request_method")


async def test_proxies_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY as the notary CLI applies them: a TLS
    request goes through a CONNECT tunnel (the trust server still verified end
    to end), a plain one to the proxy in absolute form, a NO_PROXY host and
    loopback directly."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    proxy = ForwardProxy()
    listener = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy_url = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"  # no scheme: http://
    paths = ensure_dev_tls(tmp_path / "tls", hostname="trust.test")
    app = build_app(TrustService(MemoryStore(), MemoryKeyService()))
    tls = {"ssl_certfile": str(paths.server_cert), "ssl_keyfile": str(paths.server_key)}
    ca = TLSConfig(ca_file=paths.ca_cert)
    async with listener:
        with serve(app, **tls) as url:
            port = url.rsplit(":", 1)[1]
            via_proxy = f"https://trust.test:{port}"  # a name only the proxy resolves
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("HTTPS_PROXY", proxy_url)
            async with Remote(via_proxy, tls=ca) as r:
                assert (await r.get_key("example.com/proxy", "timestamp")).keytype == "ecdsa"
            assert proxy.lines == [f"CONNECT trust.test:{port} HTTP/1.1"]
            async with Remote("http://plain.test:8080") as r:
                assert await r.ping() is True  # answered by the proxy
            assert proxy.lines[-1] == "GET http://plain.test:8080/v2/ HTTP/1.1"
            # Loopback is never proxied (the dev certificate also names 127.0.0.1).
            async with Remote(url, tls=ca) as r:
                assert await r.ping() is True
            assert len(proxy.lines) == 2
            # Nor a NO_PROXY host (trust.test does not resolve: the attempt fails
            # direct), nor anything with trust_env=False.
            monkeypatch.setenv("NO_PROXY", "example.org, .other.test,TRUST.test")
            async with Remote(via_proxy, tls=ca) as r:
                assert await r.ping() is False
            async with Remote("http://plain.test:8080", trust_env=False) as r:
                assert await r.ping() is False
            assert len(proxy.lines) == 2
            # A SOCKS proxy cannot be used: the error names the variable.
            monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1")
            monkeypatch.delenv("NO_PROXY")
            async with Remote(via_proxy, tls=ca) as r:
                with pytest.raises(Offline, match="HTTPS_PROXY=socks5://"):
                    await r.get_key("example.com/proxy", "timestamp")


P = "http://p"


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({"HTTPS_PROXY": "p:3128"}, "https://notary.example.com", "http://p:3128"),
        ({"HTTPS_PROXY": "https://p"}, "http://notary.example.com", None),
        ({"HTTP_PROXY": "http://p"}, "http://notary.example.com:4443", "http://p"),
        # Upper case first; an empty value counts as unset; ALL_PROXY is not used.
        ({"HTTPS_PROXY": "http://up", "https_proxy": "http://low"}, "https://a.b", "http://up"),
        ({"HTTPS_PROXY": "", "https_proxy": "http://low"}, "https://a.b", "http://low"),
        ({"ALL_PROXY": "http://all", "all_proxy": "http://all"}, "https://a.b", None),
        # CGI: HTTP_PROXY may come from a request header (httpoxy).
        ({"HTTP_PROXY": "http://p", "REQUEST_METHOD": "GET"}, "http://a.b", None),
        ({"HTTPS_PROXY": "http://p", "REQUEST_METHOD": "GET"}, "https://a.b", "http://p"),
        # Loopback and localhost, always direct.
        ({"HTTPS_PROXY": "http://p"}, "https://localhost:4443", None),
        ({"HTTPS_PROXY": "http://p"}, "https://127.0.0.2", None),
        ({"HTTPS_PROXY": "http://p"}, "https://[::1]:4443", None),
        # NO_PROXY: domains with and without their subdomains, ports, IPs, CIDR, *.
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"}, "https://example.com", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"}, "https://a.example.com", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"}, "https://badexample.com", P),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": ".example.com"}, "https://example.com", P),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "*.example.com"}, "https://a.example.com", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "*.example.com"}, "https://example.com", P),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "a.b:4443"}, "https://a.b:4443", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "a.b:4443"}, "https://a.b", P),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "10.0.0.0/8"}, "https://11.1.2.3", P),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "10.1.2.3"}, "https://10.1.2.3:1", None),
        (
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "[2001:db8::1]:443"},
            "https://[2001:db8::1]",
            None,
        ),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "2001:db8::/32"}, "https://[2001:db8::5]", None),
        ({"HTTPS_PROXY": "http://p", "no_proxy": "*"}, "https://anything.example", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": " , ,bad/cidr"}, "https://a.b", P),
        # As Go: IDNA names, ports compared as written, [v6] only with a port,
        # IPv4-mapped IPv6 addresses as IPv4, no netmask-form CIDR.
        ({"HTTPS_PROXY": P, "NO_PROXY": "bücher.example"}, "https://bücher.example", None),
        ({"HTTPS_PROXY": P, "NO_PROXY": "example.com:0443"}, "https://example.com", P),
        ({"HTTPS_PROXY": P, "NO_PROXY": "example.com:abc"}, "https://example.com", P),
        ({"HTTPS_PROXY": P, "NO_PROXY": "[fe80::1]"}, "https://[fe80::1]", P),
        ({"HTTPS_PROXY": P, "NO_PROXY": "10.0.0.0/8"}, "https://[::ffff:10.1.2.3]", None),
        ({"HTTPS_PROXY": P}, "https://[::ffff:127.0.0.1]", None),
        ({"HTTPS_PROXY": P, "NO_PROXY": "10.0.0.0/255.0.0.0"}, "https://10.1.2.3", P),
        ({"HTTPS_PROXY": P, "NO_PROXY": "straße.de"}, "https://www.straße.de", None),
        ({"HTTPS_PROXY": P, "NO_PROXY": "1,0.1"}, "https://10.0.0.1", P),
    ],
)
def test_which_requests_go_through_the_proxy(
    environ: dict[str, str], url: str, expected: str | None
) -> None:
    """Go's rules (golang.org/x/net/http/httpproxy), which the notary CLI uses."""
    config = ProxyConfig.from_environment(environ)
    proxy = config.proxy_for(httpx.URL(url)) if config is not None else None
    assert (proxy.url if proxy else None) == expected
    assert ProxyConfig.from_environment({"NO_PROXY": "x", "ALL_PROXY": "http://p"}) is None


async def test_an_https_proxy_is_verified_like_the_trust_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https:// proxy's own certificate is checked with the trust server's TLS
    settings (its CA file here), as Go's transport does; the password in a
    proxy URL never appears in an error."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    paths = ensure_dev_tls(tmp_path / "tls", hostname="trust.test")
    proxy_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    proxy_tls.load_cert_chain(paths.server_cert, paths.server_key)
    proxy = ForwardProxy()
    listener = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, ssl=proxy_tls)
    proxy_port = listener.sockets[0].getsockname()[1]
    app = build_app(TrustService(MemoryStore(), MemoryKeyService()))
    tls = {"ssl_certfile": str(paths.server_cert), "ssl_keyfile": str(paths.server_key)}
    async with listener:
        with serve(app, **tls) as url:
            port = url.rsplit(":", 1)[1]
            monkeypatch.setenv("HTTPS_PROXY", f"https://user:s3cret@127.0.0.1:{proxy_port}")
            async with Remote(
                f"https://trust.test:{port}", tls=TLSConfig(ca_file=paths.ca_cert)
            ) as r:
                assert await r.ping() is True
            assert proxy.lines == [f"CONNECT trust.test:{port} HTTP/1.1"]
            # Without the CA the proxy itself is not trusted.
            async with Remote(f"https://trust.test:{port}") as r:
                with pytest.raises(Offline) as failed:
                    await r.get_key("example.com/proxy", "timestamp")
            assert "s3cret" not in str(failed.value)
    monkeypatch.setenv("HTTPS_PROXY", "socks5://alice:s3cret@127.0.0.1:1")
    async with Remote("https://trust.test") as r:
        with pytest.raises(Offline, match="socks5://alice:xxxxx@") as failed:
            await r.get_key("example.com/proxy", "timestamp")
    assert "s3cret" not in str(failed.value)


def test_a_proxied_client_under_successive_event_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy transports' connections (a CONNECT tunnel with TLS inside) belong
    to the loop that made them; a Remote used again under a new asyncio.run
    gets new ones instead of failing on the old loop's."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    proxy = ForwardProxy()
    paths = ensure_dev_tls(tmp_path / "tls", hostname="trust.test")
    app = build_app(TrustService(MemoryStore(), MemoryKeyService()))
    tls = {"ssl_certfile": str(paths.server_cert), "ssl_keyfile": str(paths.server_key)}
    with server_in_thread(proxy.handle) as proxy_port, serve(app, **tls) as url:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
        port = url.rsplit(":", 1)[1]
        remote = Remote(f"https://trust.test:{port}", tls=TLSConfig(ca_file=paths.ca_cert))

        async def key_type() -> str:
            return (await remote.get_key("example.com/loops", "timestamp")).keytype

        assert [asyncio.run(key_type()) for _ in range(3)] == ["ecdsa"] * 3
    assert proxy.lines == [f"CONNECT trust.test:{port} HTTP/1.1"] * 3
