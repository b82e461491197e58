"""vouch's client API end to end: against vouch server and the real notary-server,
and sharing one trust directory with the real notary CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from notary_harness import PASSPHRASE, NotaryCLI, NotaryServer
from server_helpers import make_client
from vouch.client.apply import ChangeError
from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.crypto.keystore import EnvPassphraseRetriever
from vouch.crypto.privkey import PrivateKey
from vouch.tuf.errors import HashMismatchError

ENV = {f"NOTARY_{r}_PASSPHRASE": PASSPHRASE for r in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")}


def _repo(gun: str, remote: Remote, trust: Path) -> Repository:
    return Repository(gun, remote, trust, passphrases=EnvPassphraseRetriever(environ=ENV))


def _in_process_remote() -> Remote:
    client, _service = make_client()
    transport = client._transport  # the ASGI transport of the in-process vouch server
    assert isinstance(transport, httpx.ASGITransport)
    return Remote("http://vouch.test", transport=transport)


async def _scenario(remote: Remote, trust: Path, gun: str) -> None:
    repo = _repo(gun, remote, trust)
    await repo.initialize()
    assert await repo.publish() == ["root", "snapshot", "targets"]
    repo.add_target("v1", b"image one", custom=b'{"by":"vouch"}')
    repo.add_target("a<b>&c/é x", b"odd name")
    assert len(repo.status()) == 2
    await repo.publish()
    assert repo.status() == []
    listed = {t.name: t for t in await repo.list_targets()}
    assert set(listed) == {"v1", "a<b>&c/é x"}
    assert listed["v1"].length == len(b"image one") and listed["v1"].custom == {"by": "vouch"}
    # A delegate with their own key signs a tag inside their paths only.
    delegate = PrivateKey.generate("ecdsa")
    repo.keys.save(delegate, "targets/releases")
    repo.add_delegation("targets/releases", [delegate.public], paths=["rel/"])
    await repo.publish()
    repo.add_target("rel/2.0", b"release", roles_to=["targets/releases"])
    await repo.publish()
    found = await repo.lookup("rel/2.0")
    assert found is not None and found.role == "targets/releases"
    await repo.verify("rel/2.0", b"release")
    with pytest.raises(HashMismatchError):
        await repo.verify("rel/2.0", b"tampered")
    repo.add_target("outside/x", b"x", roles_to=["targets/releases"])
    with pytest.raises(ChangeError, match="outside its delegated paths"):
        await repo.publish()
    repo.reset()
    repo.remove_target("v1")
    await repo.publish()
    assert {t.name for t in await repo.list_targets()} == {"a<b>&c/é x", "rel/2.0"}


def test_client_against_vouch_server(tmp_path: Path) -> None:
    asyncio.run(_scenario(_in_process_remote(), tmp_path / "trust", "example.com/client/app"))


def test_client_against_real_notary_server(notary_server: NotaryServer, tmp_path: Path) -> None:
    async def go() -> None:
        async with Remote(notary_server.url) as remote:
            await _scenario(remote, tmp_path / "trust", "example.com/client/notary")

    asyncio.run(go())


def test_trust_dir_shared_with_the_notary_cli(notary_server: NotaryServer, tmp_path: Path) -> None:
    """notary inits and publishes; vouch adds and publishes with notary's keys;
    notary lists vouch's target, adds its own; vouch lists both."""
    gun = "example.com/client/shared"
    trust = tmp_path / "trust"
    cli = NotaryCLI(notary_server.url, trust, home=tmp_path / "home")
    cli.run("init", gun)
    cli.run("publish", gun)

    async def vouch_adds() -> None:
        async with Remote(notary_server.url) as remote:
            repo = _repo(gun, remote, trust)
            repo.add_target("from-vouch", b"v")
            await repo.publish()

    asyncio.run(vouch_adds())
    assert "from-vouch" in cli.run("list", gun).stdout
    (tmp_path / "n.bin").write_bytes(b"n")
    cli.run("add", gun, "from-notary", str(tmp_path / "n.bin"))
    cli.run("publish", gun)

    async def vouch_lists() -> set[str]:
        async with Remote(notary_server.url) as remote:
            return {t.name for t in await _repo(gun, remote, trust).list_targets()}

    assert asyncio.run(vouch_lists()) == {"from-vouch", "from-notary"}


def test_vouch_init_then_notary_publishes(notary_server: NotaryServer, tmp_path: Path) -> None:
    gun = "example.com/client/vouchinit"
    trust = tmp_path / "trust"

    async def init() -> None:
        async with Remote(notary_server.url) as remote:
            repo = _repo(gun, remote, trust)
            await repo.initialize()
            await repo.publish()

    asyncio.run(init())
    cli = NotaryCLI(notary_server.url, trust, home=tmp_path / "home")
    (tmp_path / "n.bin").write_bytes(b"n")
    cli.run("add", gun, "by-notary", str(tmp_path / "n.bin"))
    cli.run("publish", gun)
    assert "by-notary" in cli.run("list", gun).stdout
    keys = cli.run("key", "list").stdout
    assert "root" in keys and "targets" in keys
    assert serialization is not None
