"""Shared pieces for the server tests: an in-process vouch app and a
repository publisher that builds metadata with vouch's own core."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from vouch.crypto.certs import root_key
from vouch.crypto.privkey import PrivateKey
from vouch.keyservice.memory import MemoryKeyService
from vouch.server.app import HTTPSettings, build_app
from vouch.server.service import TrustService
from vouch.storage.memory import MemoryStore
from vouch.tuf import build, roles
from vouch.tuf.keys import Key
from vouch.tuf.metadata import DelegatedRole, FileMeta, Metadata, Root, Targets


def make_client(**settings: object) -> tuple[httpx.AsyncClient, TrustService]:
    service = TrustService(MemoryStore(), MemoryKeyService())
    app = build_app(service, settings=HTTPSettings(**settings))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://vouch.test"), service


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(30)
    body = b""
    for role, data in files.items():
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{role}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Publisher:
    """A client that owns root, targets (and optionally snapshot) keys of one GUN."""

    gun: str
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    snapshot_by_server: bool = False

    def __post_init__(self) -> None:
        self.root_priv = PrivateKey.generate("ecdsa")
        self.root_pub = root_key(self.root_priv, self.gun, now=self.now)
        self.targets_priv = PrivateKey.generate("ecdsa")
        self.snapshot_priv = PrivateKey.generate("ecdsa")
        self.delegates: dict[str, PrivateKey] = {}
        self.targets: dict[str, Targets] = {}
        self.versions: dict[str, int] = {}
        self.files: dict[str, bytes] = {}

    async def init(self, client: httpx.AsyncClient) -> None:
        ts_key = await self.server_key(client, "timestamp")
        snap_key = (
            await self.server_key(client, "snapshot")
            if self.snapshot_by_server
            else self.snapshot_priv.public
        )
        self.root = build.root(
            {
                roles.ROOT: [self.root_pub],
                roles.TARGETS: [self.targets_priv.public],
                roles.SNAPSHOT: [snap_key],
                roles.TIMESTAMP: [ts_key],
            },
            self.now,
        )
        self.targets[roles.TARGETS] = build.targets(self.now)

    async def server_key(self, client: httpx.AsyncClient, role: str) -> Key:
        resp = await client.get(f"/v2/{self.gun}/_trust/tuf/{role}.key")
        assert resp.status_code == 200, resp.text
        return Key.from_dict(json.loads(resp.content))

    def sign_root(self, *extra: PrivateKey) -> bytes:
        md: Metadata[Root] = Metadata(self.root)
        md.sign(self.root_priv.signer(self.root_pub))
        self.files[roles.ROOT] = md.to_bytes()
        return self.files[roles.ROOT]

    def delegate(self, name: str, paths: list[str]) -> PrivateKey:
        key = PrivateKey.generate("ecdsa")
        parent = self.targets[roles.TARGETS]
        assert parent.delegations is not None
        parent.delegations.keys[key.keyid] = key.public
        parent.delegations.roles.append(DelegatedRole(name, [key.keyid], 1, paths))
        self.delegates[name] = key
        self.targets[name] = build.targets(self.now, role=name)
        return key

    def add(self, name: str, data: bytes, role: str = roles.TARGETS) -> None:
        self.targets[role].targets[name] = FileMeta.for_bytes(data)

    def sign_targets(self, role: str) -> bytes:
        self.versions[role] = self.versions.get(role, 0) + 1
        self.targets[role].version = self.versions[role]
        md: Metadata[Targets] = Metadata(self.targets[role])
        key = self.targets_priv if role == roles.TARGETS else self.delegates[role]
        md.sign(key.signer())
        self.files[role] = md.to_bytes()
        return self.files[role]

    def sign_snapshot(self, extra_pins: dict[str, bytes] | None = None) -> bytes:
        self.versions[roles.SNAPSHOT] = self.versions.get(roles.SNAPSHOT, 0) + 1
        pins = {r: d for r, d in self.files.items() if r not in (roles.SNAPSHOT, roles.TIMESTAMP)}
        pins.update(extra_pins or {})
        md = Metadata(build.snapshot(pins, self.now, version=self.versions[roles.SNAPSHOT]))
        md.sign(self.snapshot_priv.signer())
        self.files[roles.SNAPSHOT] = md.to_bytes()
        return self.files[roles.SNAPSHOT]

    def upload(self, *role_names: str, snapshot: bool = True) -> dict[str, bytes]:
        out = {r: self.files[r] for r in role_names}
        if snapshot and not self.snapshot_by_server:
            out[roles.SNAPSHOT] = self.sign_snapshot()
        return out

    async def publish(self, client: httpx.AsyncClient, files: dict[str, bytes]) -> httpx.Response:
        body, ctype = multipart(files)
        return await client.post(
            f"/v2/{self.gun}/_trust/tuf/", content=body, headers={"Content-Type": ctype}
        )


@contextmanager
def server_in_thread(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> Iterator[int]:
    """``handle`` as a TCP server on 127.0.0.1 in an event loop of its own thread,
    for tests that run several ``asyncio.run`` loops of their own against one
    server. Yields the port; on exit the connections are closed, then the loop."""
    ready = threading.Event()
    port = 0
    stop: asyncio.Event | None = None
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handle(reader, writer)

    async def main() -> None:
        nonlocal port, stop
        stop = asyncio.Event()
        listener = await asyncio.start_server(tracked, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        ready.set()
        async with listener:
            await stop.wait()
            for writer in writers:
                writer.close()
            await asyncio.sleep(0.1)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    try:
        if not ready.wait(5):
            raise RuntimeError("the test server did not start")
        yield port
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()
