"""First contact in one round trip, against a real ``vouch server`` process.

The client's requests go over real HTTP through a transport that only watches
them: how many were in flight together, and how many times the client went
from idle to asking (its sequential round trips). Timing is never asserted.
A publish made *between* the client's concurrent requests shows the race
handling on the real server: the files fetched early do not match what the
newer timestamp pins, so the pinned versions are fetched by checksum.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.crypto.keystore import EnvPassphraseRetriever
from vouch.crypto.privkey import PrivateKey
from vouch_harness import VouchServer

PW = "concurrency-test"
ENV = {f"NOTARY_{r}_PASSPHRASE": PW for r in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")}
Hook = Callable[[], Awaitable[None]]


class WatchingTransport(httpx.AsyncBaseTransport):
    """Real HTTP, with the requests counted; ``hooks`` run before a request
    (by the last part of its path) is sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.in_flight = 0
        self.peak = 0
        self.waves = 0
        self.paths: list[str] = []
        self.answered: set[str] = set()
        self.hooks: dict[str, Hook] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.split("/_trust/tuf/", 1)[-1]
        if self.in_flight == 0:
            self.waves += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.paths.append(name)
        try:
            hook = self.hooks.pop(name, None)
            if hook is not None:
                await hook()
            response = await self.inner.handle_async_request(request)
            body = await response.aread()  # the whole answer, before the next step
            await response.aclose()
            self.answered.add(name)
            return httpx.Response(
                response.status_code, headers=response.headers, content=body, request=request
            )
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VouchServer]:
    with VouchServer(tmp_path_factory.mktemp("concurrency-server")) as srv:
        yield srv


def _repo(gun: str, remote: Remote, trust: Path) -> Repository:
    return Repository(gun, remote, trust, passphrases=EnvPassphraseRetriever(environ=ENV))


async def _publish_repo(url: str, trust: Path, gun: str) -> Repository:
    """targets with v1, and a targets/releases delegation signing rel/1."""
    remote = Remote(url, trust_env=False)
    repo = _repo(gun, remote, trust)
    await repo.initialize()
    await repo.publish()
    repo.add_target("v1", b"one")
    key = PrivateKey.generate("ecdsa")
    repo.keys.save(key, "targets/releases")
    repo.add_delegation("targets/releases", [key.public], paths=["rel/"])
    await repo.publish()
    repo.add_target("rel/1", b"r1", roles_to=["targets/releases"])
    await repo.publish()
    return repo


async def _names(repo: Repository) -> dict[str, str]:
    return {t.name: t.role for t in await repo.list_targets()}


def test_cold_first_contact_is_one_round_trip(server: VouchServer, tmp_path: Path) -> None:
    gun = "example.com/concurrency/cold"

    async def go() -> None:
        publisher = await _publish_repo(server.url, tmp_path / "publisher", gun)
        watch = WatchingTransport()
        async with Remote(server.url, transport=watch) as remote:
            reader = _repo(gun, remote, tmp_path / "reader")
            result = await reader.refresh(prefetch=["targets/releases"])
            assert watch.waves == 1 and watch.peak == 5
            assert sorted(watch.paths) == sorted(
                [
                    "root.json",
                    "timestamp.json",
                    "snapshot.json",
                    "targets.json",
                    "targets/releases.json",
                ]
            )
            listed = {name: info.role for name, info in result.trusted.all_targets().items()}
            assert (
                listed == await _names(publisher) == {"v1": "targets", "rel/1": "targets/releases"}
            )
            # Warm: the timestamp alone, one round trip.
            watch.paths.clear()
            watch.waves = 0
            await reader.refresh(prefetch=["targets/releases"])
            assert watch.paths == ["timestamp.json"] and watch.waves == 1
        assert publisher.remote is not None
        await publisher.remote.aclose()

    asyncio.run(go())


def test_publish_racing_first_contact(server: VouchServer, tmp_path: Path) -> None:
    gun = "example.com/concurrency/race"

    async def go() -> None:
        publisher = await _publish_repo(server.url, tmp_path / "publisher", gun)
        watch = WatchingTransport()
        early = {"snapshot.json", "targets.json", "targets/releases.json"}

        async def publish_in_between() -> None:
            # The early files are answered (old state); then a publish; then
            # the timestamp is fetched (new state).
            for _ in range(500):
                if early <= watch.answered:
                    break
                await asyncio.sleep(0.01)
            assert early <= watch.answered, "the early requests were not made"
            publisher.add_target("v2", b"two")
            publisher.add_target("rel/2", b"r2", roles_to=["targets/releases"])
            await publisher.publish()

        watch.hooks["timestamp.json"] = publish_in_between
        async with Remote(server.url, transport=watch) as remote:
            reader = _repo(gun, remote, tmp_path / "reader")
            result = await reader.refresh(prefetch=["targets/releases"])
        listed = {name: info.role for name, info in result.trusted.all_targets().items()}
        assert listed == await _names(publisher)
        assert set(listed) == {"v1", "v2", "rel/1", "rel/2"}
        # Exactly the pinned versions were fetched, by checksum, and cached.
        for role in ("snapshot", "targets", "targets/releases"):
            data = reader.cache.read(role)
            assert data is not None
            assert f"{role}.{hashlib.sha256(data).hexdigest()}.json" in watch.paths
            assert data == publisher.cache.read(role)
        assert publisher.remote is not None
        await publisher.remote.aclose()

    asyncio.run(go())
