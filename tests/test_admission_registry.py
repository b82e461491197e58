"""Admission against real parts: a registry, real images, real Notary signatures.

Nothing here is simulated on the trust path. Debian's ``docker-registry`` (registry:2)
holds tiny OCI images pushed by ``skopeo``; ``vouch server`` runs as a process and holds
trust data made by the real ``notary`` CLI, which signs exactly the manifest digests the
registry serves (``notary addhash <gun> v1 <size> --sha256 <hex>``), both in ``targets``
and in a ``targets/releases`` delegation whose key the tests make. Decisions come from
vouch's admission webhook (the ASGI app over HTTP, AdmissionReview in, JSON patch out),
whose engine fetches and verifies the trust data over HTTP like in a cluster.

What is proved: an admitted image is pinned to exactly the digest the registry reports
for the signed manifest, and that pinned reference pulls the signed content; and each
attack is denied with a reason: a tag re-signed to another digest, a digest that was
never signed, a tag moved in the registry, a signer key other than the pinned one,
expired trust data, and rolled-back trust data.

The tests fail (never skip) when docker-registry, skopeo or notary are missing.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from notary_harness import DelegationKey, NotaryCLI, fetch, make_delegation_key, metadata_url
from registry_harness import (
    OCIImage,
    Registry,
    Skopeo,
    ToolMissingError,
    TrustProxy,
    layer_files,
    require_tools,
    sha256_digest,
    write_oci_image,
)
from test_admission_webhook import apply_patch, pod_spec, review, workload
from vouch.admission.app import build_admission_app
from vouch.admission.engine import Engine
from vouch.admission.policy import load_policies
from vouch.admission.webhook import ORIGINAL_ANNOTATION, Reviewer
from vouch.tuf import timefmt
from vouch_harness import VouchServer

pytestmark = pytest.mark.interop

RELEASES = "targets/releases"


# --------------------------------------------------------------------------------------------
# The world: registry, images, trust server, signer
# --------------------------------------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    registry: Registry
    skopeo: Skopeo
    vouch: VouchServer
    notary: NotaryCLI
    images: dict[str, OCIImage]  # "v1"/"v2" -> the local OCI layout
    digest: dict[str, str]  # "v1"/"v2" -> manifest digest as the registry serves it
    size: dict[str, int]  # "v1"/"v2" -> manifest size in bytes as served
    releases: DelegationKey

    @property
    def host(self) -> str:
        return self.registry.host

    def gun(self, repo: str) -> str:
        """The Notary GUN of a repository: its image name, registry host included."""
        return f"{self.host}/{repo}"

    def ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        return self.gun(repo) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    def push(self, repo: str, tag: str, image: str) -> None:
        """``skopeo copy`` the image ``image`` ("v1"/"v2") to ``repo:tag``."""
        self.skopeo.push(self.images[image], self.ref(repo, tag))

    def sign(self, repo: str, tag: str, image: str, *, role: str | None = None) -> None:
        """Stage ``tag`` → the registry digest of ``image`` with ``notary addhash``."""
        args = [
            "addhash",
            self.gun(repo),
            tag,
            str(self.size[image]),
            "--sha256",
            self.digest[image].removeprefix("sha256:"),
        ]
        self.notary.run(*args, *(["--roles", role] if role else []))

    def publish(self, repo: str) -> None:
        self.notary.run("publish", self.gun(repo))

    def lookup(self, repo: str, tag: str) -> str:
        """What the real Notary client resolves ``tag`` to: ``notary lookup``."""
        name, digest, _size = self.notary.run("lookup", self.gun(repo), tag).stdout.split()
        assert name == tag
        return digest

    def signed_digests(self, repo: str, tag: str) -> set[str]:
        """Every digest any role signs for ``tag`` (``notary list``, each role)."""
        out = set()
        for role in ("targets", RELEASES):
            listing = self.notary.run("list", self.gun(repo), "--roles", role).stdout
            for line in listing.splitlines():
                fields = line.split()
                if fields and fields[0] == tag:
                    out.add(f"sha256:{fields[1]}")
        return out

    def new_repo(self, repo: str, *, releases: bool = True) -> None:
        """Push v1 and v2 to ``repo``; sign v1 (only) in ``targets`` and, with
        ``releases``, in ``targets/releases`` with the test's delegation key."""
        self.push(repo, "v1", "v1")
        self.push(repo, "v2", "v2")
        gun = self.gun(repo)
        self.notary.run("init", gun)
        self.sign(repo, "v1", "v1")
        if releases:
            self.notary.run(
                "delegation", "add", gun, RELEASES, self.releases.cert_path, "--all-paths"
            )
        self.publish(repo)
        if releases:
            self.sign(repo, "v1", "v1", role=RELEASES)
            self.publish(repo)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    try:
        require_tools()
    except ToolMissingError as e:
        pytest.fail(str(e), pytrace=False)
    tmp = tmp_path_factory.mktemp("admission-registry")
    images = {
        tag: write_oci_image(
            tmp / f"oci-{tag}", tag, {"app/version.txt": f"release {tag}\n".encode()}
        )
        for tag in ("v1", "v2")
    }
    with (
        Registry(tmp / "registry") as registry,
        VouchServer(tmp / "vouch") as vouch,
    ):
        skopeo = Skopeo(tmp / "skopeo-home")
        # Push once to learn what the registry serves for each image (content-addressed,
        # so the same for every repository).
        digest, size = {}, {}
        for tag, image in images.items():
            skopeo.push(image, f"{registry.host}/team/app:{tag}")
            body, header, kind = registry.manifest("team/app", tag)
            assert kind == "application/vnd.oci.image.manifest.v1+json"
            assert header == sha256_digest(body), "registry's digest header is the body's sha256"
            assert skopeo.raw_manifest(f"{registry.host}/team/app:{tag}") == body
            digest[tag], size[tag] = header, len(body)
        assert digest["v1"] != digest["v2"]
        notary = NotaryCLI(vouch.url, tmp / "trust", home=tmp / "notary-home")
        releases = make_delegation_key(tmp / "delegation-keys", RELEASES)
        notary.run("key", "import", releases.key_path, "--role", RELEASES)
        w = World(tmp, registry, skopeo, vouch, notary, images, digest, size, releases)
        w.new_repo("team/app")
        yield w


# --------------------------------------------------------------------------------------------
# Policies and the webhook
# --------------------------------------------------------------------------------------------


def portieris_policy(world: World, trust_server: str | None = None) -> str:
    """Portieris' own CRD: images under ``<registry>/team/*`` must be signed."""
    return textwrap.dedent(
        f"""
        apiVersion: portieris.cloud.ibm.com/v1
        kind: ClusterImagePolicy
        metadata: {{name: registry-team}}
        spec:
          repositories:
            - name: "{world.host}/team/*"
              policy:
                trust:
                  enabled: true
                  trustServer: "{trust_server or world.vouch.url}"
        """
    )


def signer_secret_policy(world: World, public_key_pem: str) -> str:
    """Portieris' ``signerSecrets``: a namespace policy naming a Secret with the
    delegation's name and public key."""
    policy = {
        "apiVersion": "portieris.cloud.ibm.com/v1",
        "kind": "ImagePolicy",
        "metadata": {"name": "team-signed", "namespace": "team"},
        "spec": {
            "repositories": [
                {
                    "name": f"{world.host}/team/*",
                    "policy": {
                        "trust": {
                            "enabled": True,
                            "trustServer": world.vouch.url,
                            "signerSecrets": [{"name": "release-signer"}],
                        }
                    },
                }
            ]
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "release-signer", "namespace": "team"},
        "type": "Opaque",
        "stringData": {"name": "releases", "publicKey": public_key_pem},
    }
    return yaml.safe_dump_all([policy, secret])


def vouch_signer_policy(world: World, pem: str, name: str = "releases") -> str:
    """vouch's group: the ``releases`` signer pinned to one key (or certificate)."""
    return yaml.safe_dump(
        {
            "apiVersion": "policy.vouch.dev/v1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "strict"},
            "spec": {
                "repositories": [
                    {
                        "name": f"{world.host}/team/*",
                        "policy": {
                            "trust": {
                                "enabled": True,
                                "trustServer": world.vouch.url,
                                "signers": [{"name": name, "publicKey": pem}],
                            }
                        },
                    }
                ]
            },
        }
    )


def spki_pem(key: DelegationKey) -> str:
    """The delegation's public key as a bare PEM public key (what Portieris' Secret holds)."""
    cert = x509.load_pem_x509_certificate(key.cert_path.read_bytes())
    return (
        cert.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def cert_public_key(key: DelegationKey | dict[str, Any]) -> bytes:
    """The SPKI DER of a delegation certificate: from the test's key files, or from a
    notary ``ecdsa-x509`` key entry in targets metadata (base64 PEM certificate)."""
    if isinstance(key, DelegationKey):
        pem = key.cert_path.read_bytes()
    else:
        pem = base64.b64decode(key["keyval"]["public"])
    return (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def engine(policies: str, cache_dir: Path, *, cache_ttl: float = 30.0) -> Engine:
    """An engine with the production remote: real HTTP to the policy's trust server."""
    return Engine(load_policies(policies), cache_dir=cache_dir, cache_ttl=cache_ttl)


@dataclass
class Admission:
    """One AdmissionReview's answer, decoded."""

    obj: dict[str, Any]
    response: dict[str, Any]

    @property
    def allowed(self) -> bool:
        return bool(self.response["allowed"])

    @property
    def message(self) -> str:
        return str(self.response.get("status", {}).get("message", ""))

    @property
    def images(self) -> list[str]:
        """The pod's images after the webhook's JSON patch."""
        patch = (
            json.loads(base64.b64decode(self.response["patch"])) if "patch" in self.response else []
        )
        patched = apply_patch(self.obj, patch)
        return [c["image"] for c in patched["spec"]["containers"]]

    @property
    def originals(self) -> dict[str, str]:
        patch = json.loads(base64.b64decode(self.response["patch"]))
        annotations = apply_patch(self.obj, patch)["metadata"]["annotations"]
        return json.loads(annotations[ORIGINAL_ANNOTATION])  # type: ignore[no-any-return]


async def admit(eng: Engine, *images: str, namespace: str = "default") -> Admission:
    """POST a Pod's AdmissionReview to the webhook app, as the API server would."""
    app = build_admission_app(Reviewer(eng, deadline=30.0))
    obj = workload("Pod", pod_spec(list(images)), namespace=namespace)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://webhook"
    ) as client:
        resp = await client.post("/admit", json=review(obj))
    assert resp.status_code == 200, resp.text
    return Admission(obj, resp.json()["response"])


def pull_pinned(world: World, pinned: str, into: Path) -> dict[str, bytes]:
    """Pull a pinned ``name:tag@sha256:…`` reference with skopeo and return its files.

    containers/image refuses tag *and* digest in one reference; a kubelet resolves such
    a reference by its digest alone, so that is what is pulled.
    """
    name_tag, _, digest = pinned.partition("@")
    name = name_tag.rsplit(":", 1)[0]
    assert name.startswith(world.host + "/")
    path = world.skopeo.pull(f"{name}@{digest}", into)
    assert sha256_digest((path / "manifest.json").read_bytes()) == digest
    return layer_files(path)


# --------------------------------------------------------------------------------------------
# Admitted and pinned
# --------------------------------------------------------------------------------------------


def test_signed_tag_is_pinned_to_the_registry_manifest_digest(world: World, tmp_path: Path) -> None:
    d1 = world.digest["v1"]
    # Three independent witnesses agree on what v1 is before vouch is asked.
    assert world.skopeo.inspect(world.ref("team/app", "v1"))["Digest"] == d1
    assert sha256_digest(world.skopeo.raw_manifest(world.ref("team/app", "v1"))) == d1
    assert world.lookup("team/app", "v1") == d1

    async def go() -> None:
        eng = engine(portieris_policy(world), tmp_path / "engine")
        ok = await admit(eng, world.ref("team/app", "v1"))
        assert ok.allowed, ok.message
        assert ok.images == [f"{world.host}/team/app:v1@{d1}"]
        assert ok.originals == {"/spec/containers/0/image": world.ref("team/app", "v1")}
        # v2 is in the registry, pullable, but was never signed.
        unsigned = await admit(eng, world.ref("team/app", "v2"))
        assert not unsigned.allowed
        assert "no signed target for tag 'v2'" in unsigned.message
        await eng.aclose()
        # The pinned reference pulls exactly the signed image.
        files = pull_pinned(world, ok.images[0], tmp_path / "pulled")
        assert files == {"app/version.txt": b"release v1\n"}

    asyncio.run(go())


def test_pinned_signer_key_admits_with_either_policy_group(world: World, tmp_path: Path) -> None:
    """The delegation key pinned as vouch ``signers`` (a certificate) or as a Portieris
    ``signerSecret`` (a bare public key): both admit v1 and pin the registry digest."""
    d1 = world.digest["v1"]
    cert_pem = world.releases.cert_path.read_text()

    async def go() -> None:
        strict = engine(vouch_signer_policy(world, cert_pem), tmp_path / "e1")
        ok = await admit(strict, world.ref("team/app", "v1"))
        assert ok.allowed, ok.message
        assert ok.images == [f"{world.host}/team/app:v1@{d1}"]
        portieris = engine(signer_secret_policy(world, spki_pem(world.releases)), tmp_path / "e2")
        ok = await admit(portieris, world.ref("team/app", "v1"), namespace="team")
        assert ok.allowed, ok.message
        assert ok.images == [f"{world.host}/team/app:v1@{d1}"]
        for e in (strict, portieris):
            await e.aclose()

    asyncio.run(go())


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


def test_digest_never_signed_is_denied(world: World, tmp_path: Path) -> None:
    d1, d2 = world.digest["v1"], world.digest["v2"]
    # d2 is a real image in the repository: pulling it works, it is just not signed.
    assert world.skopeo.inspect(world.ref("team/app", digest=d2))["Digest"] == d2
    assert d2 not in world.signed_digests("team/app", "v2") | world.signed_digests("team/app", "v1")

    async def go() -> None:
        eng = engine(portieris_policy(world), tmp_path / "engine")
        signed = await admit(eng, world.ref("team/app", digest=d1))
        assert signed.allowed, signed.message
        assert signed.images == [world.ref("team/app", digest=d1)]  # already pinned
        unsigned = await admit(eng, world.ref("team/app", digest=d2))
        assert not unsigned.allowed
        assert f"digest {d2} is not signed in {world.gun('team/app')}" in unsigned.message
        # A signed tag with someone else's digest appended.
        mixed = await admit(eng, world.ref("team/app", "v1", d2))
        assert not mixed.allowed
        assert f"tag 'v1' is signed for {d1}, not {d2}" in mixed.message
        await eng.aclose()

    asyncio.run(go())


def test_tag_moved_in_the_registry_is_pinned_back_to_the_signed_digest(
    world: World, tmp_path: Path
) -> None:
    """Someone with push rights moves ``v1`` to other content in the registry; the
    trust data still signs the old digest, so that is what runs."""
    world.new_repo("team/retag", releases=False)
    d1, d2 = world.digest["v1"], world.digest["v2"]
    world.push("team/retag", "v1", "v2")
    assert world.skopeo.inspect(world.ref("team/retag", "v1"))["Digest"] == d2

    async def go() -> None:
        eng = engine(portieris_policy(world), tmp_path / "engine")
        ok = await admit(eng, world.ref("team/retag", "v1"))
        assert ok.allowed, ok.message
        assert ok.images == [world.ref("team/retag", "v1", d1)]
        await eng.aclose()
        files = pull_pinned(world, ok.images[0], tmp_path / "pulled")
        assert files == {"app/version.txt": b"release v1\n"}

    asyncio.run(go())


def test_tag_resigned_to_another_digest(world: World, tmp_path: Path) -> None:
    """The holder of the ``targets`` key re-signs v1 to v2's digest; the release
    signer's ``targets/releases`` still signs the old one."""
    repo = "team/resign"
    world.new_repo(repo)
    d1, d2 = world.digest["v1"], world.digest["v2"]
    world.sign(repo, "v1", "v2")
    world.publish(repo)
    assert world.signed_digests(repo, "v1") == {d1, d2}
    assert world.lookup(repo, "v1") == d2  # notary's own answer: targets wins
    assert world.skopeo.inspect(world.ref(repo, "v1"))["Digest"] == d1  # registry unchanged

    async def go() -> None:
        strict = engine(
            vouch_signer_policy(world, world.releases.cert_path.read_text()), tmp_path / "e1"
        )
        # The release is what targets/releases signs (as docker pull and Portieris
        # resolve it), so the required signer's digest is pinned, never targets' v2.
        ok = await admit(strict, world.ref(repo, "v1"))
        assert ok.allowed, ok.message
        assert ok.images == [f"{world.ref(repo, 'v1')}@{d1}"]
        secret = signer_secret_policy(world, spki_pem(world.releases))
        portieris_signers = engine(secret, tmp_path / "e2")
        ok = await admit(portieris_signers, world.ref(repo, "v1"), namespace="team")
        assert ok.allowed and ok.images == [f"{world.ref(repo, 'v1')}@{d1}"]
        # Without a required signer the same rule holds: targets/releases wins.
        plain = engine(portieris_policy(world), tmp_path / "e3")
        ok = await admit(plain, world.ref(repo, "v1"))
        assert ok.allowed, ok.message
        (pinned,) = ok.images
        name_tag, _, pinned_digest = pinned.partition("@")
        assert name_tag == world.ref(repo, "v1")
        assert pinned_digest == d1
        for e in (strict, portieris_signers, plain):
            await e.aclose()
        content = {d1: b"release v1\n", d2: b"release v2\n"}[pinned_digest]
        files = pull_pinned(world, pinned, tmp_path / "pulled")
        assert files == {"app/version.txt": content}

    asyncio.run(go())


def test_signer_key_not_the_pinned_one_is_denied(world: World, tmp_path: Path) -> None:
    """v1 is properly signed by targets/releases, but the policy pins another key."""
    other = make_delegation_key(tmp_path / "other-keys", RELEASES)

    async def go() -> None:
        strict = engine(vouch_signer_policy(world, other.cert_path.read_text()), tmp_path / "e1")
        denied = await admit(strict, world.ref("team/app", "v1"))
        assert not denied.allowed
        assert "targets/releases is not signed with the pinned key" in denied.message
        portieris = engine(signer_secret_policy(world, spki_pem(other)), tmp_path / "e2")
        denied = await admit(portieris, world.ref("team/app", "v1"), namespace="team")
        assert not denied.allowed
        assert "targets/releases is not signed with the pinned key" in denied.message
        # A required signer whose role never signed the tag.
        qa = engine(
            vouch_signer_policy(world, world.releases.cert_path.read_text(), "qa"), tmp_path / "e3"
        )
        denied = await admit(qa, world.ref("team/app", "v1"))
        assert not denied.allowed
        assert "no signature found for role targets/qa" in denied.message
        for e in (strict, portieris, qa):
            await e.aclose()

    asyncio.run(go())


def test_role_signed_by_an_added_key_but_not_by_the_pinned_one(
    world: World, tmp_path: Path
) -> None:
    """Whoever holds the ``targets`` key adds a key of their own to targets/releases
    (next to the pinned one), signs v1 → v2's digest in targets/releases with that key
    alone and in targets. Valid TUF (threshold 1), but the pinned key never signed it."""
    repo = "team/cosign"
    world.new_repo(repo)
    gun = world.gun(repo)
    # Server-managed snapshot, so a signer holding only a delegation key can publish.
    world.notary.run("key", "rotate", gun, "snapshot", "-r")
    intruder = make_delegation_key(tmp_path / "intruder-keys", RELEASES)
    world.notary.run("delegation", "add", gun, RELEASES, intruder.cert_path)
    world.sign(repo, "v1", "v2")
    world.publish(repo)
    cli = NotaryCLI(world.vouch.url, tmp_path / "intruder-trust", home=tmp_path / "intruder-home")
    cli.run("key", "import", intruder.key_path, "--role", RELEASES)
    cli.run(
        "addhash", gun, "v1", str(world.size["v2"]), "--sha256",
        world.digest["v2"].removeprefix("sha256:"), "--roles", RELEASES,
    )  # fmt: skip
    cli.run("publish", gun)
    assert world.signed_digests(repo, "v1") == {world.digest["v2"]}
    # The trust data as served: the role lists both keys; only the intruder's signed.
    targets = json.loads(fetch(metadata_url(world.vouch.url, gun, "targets.json")))["signed"]
    releases = json.loads(fetch(metadata_url(world.vouch.url, gun, f"{RELEASES}.json")))
    (spec,) = [r for r in targets["delegations"]["roles"] if r["name"] == RELEASES]
    key_ids = {cert_public_key(targets["delegations"]["keys"][k]): k for k in spec["keyids"]}
    pinned_id = key_ids[cert_public_key(world.releases)]
    intruder_id = key_ids[cert_public_key(intruder)]
    assert spec["threshold"] == 1 and set(spec["keyids"]) == {pinned_id, intruder_id}
    assert [s["keyid"] for s in releases["signatures"]] == [intruder_id]

    async def go() -> None:
        strict = engine(
            vouch_signer_policy(world, world.releases.cert_path.read_text()), tmp_path / "e"
        )
        decision = await admit(strict, world.ref(repo, "v1"))
        await strict.aclose()
        assert not decision.allowed, f"admitted {decision.images} signed only by the intruder key"
        assert "pinned key" in decision.message

    asyncio.run(go())


def test_expired_trust_data_is_denied(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trust server stops re-signing: its timestamp (14 days, signed by the real
    vouch server at publish time) runs out.

    Waiting two weeks is not an option and the server's lifetimes are not configurable,
    so the webhook's clock is moved instead: ``vouch.tuf.timefmt.now`` is the one clock
    the verifier reads. The server process and its trust data are untouched, and the
    webhook is a fresh one each time (an in-memory cache entry is bounded by the
    monotonic clock, which a wall-clock jump does not move).
    """
    real_now = timefmt.now

    async def decide(days: int) -> Admission:
        monkeypatch.setattr(timefmt, "now", lambda: real_now() + dt.timedelta(days=days))
        eng = engine(portieris_policy(world), tmp_path / f"engine-{days}")
        try:
            return await admit(eng, world.ref("team/app", "v1"))
        finally:
            await eng.aclose()

    async def go() -> None:
        fresh = await decide(13)
        assert fresh.allowed, fresh.message
        assert fresh.images == [world.ref("team/app", "v1", world.digest["v1"])]
        stale = await decide(15)
        assert not stale.allowed
        assert "timestamp expired at" in stale.message

    asyncio.run(go())


def test_rolled_back_trust_data_is_denied(world: World, tmp_path: Path) -> None:
    """A man in the middle replays an older (still valid, properly signed) timestamp to a
    webhook that already trusted a newer one, to bring back a withdrawn digest."""
    repo = "team/rollback"
    world.new_repo(repo, releases=False)
    d1, d2 = world.digest["v1"], world.digest["v2"]

    async def go() -> None:
        with TrustProxy(world.vouch.url) as proxy:
            policy = portieris_policy(world, proxy.url)
            cache = tmp_path / "engine"
            eng = engine(policy, cache, cache_ttl=0)  # every review asks the server
            first = await admit(eng, world.ref(repo, "v1"))
            assert first.allowed and first.images == [world.ref(repo, "v1", d1)], first.message
            suffix = f"/{repo}/_trust/tuf/timestamp.json"
            (ts_path,) = [p for p in proxy.recorded if p.endswith(suffix)]
            old_timestamp = proxy.recorded[ts_path]

            # v1 is re-released as d2 (d1 withdrawn); the webhook sees the new data.
            world.sign(repo, "v1", "v2")
            world.publish(repo)
            second = await admit(eng, world.ref(repo, "v1"))
            assert second.allowed and second.images == [world.ref(repo, "v1", d2)]
            assert proxy.recorded[ts_path] != old_timestamp
            old_v = json.loads(old_timestamp)["signed"]["version"]
            new_v = json.loads(proxy.recorded[ts_path])["signed"]["version"]
            assert old_v < new_v

            proxy.overrides[ts_path] = old_timestamp
            replayed = await admit(eng, world.ref(repo, "v1"))
            assert proxy.served_overrides >= 1  # the quick check, then the full refresh
            assert not replayed.allowed, f"rolled back to {replayed.images}"
            assert f"timestamp version {old_v} is older than trusted version {new_v}" in (
                replayed.message
            )
            await eng.aclose()
            # A restarted webhook keeps the versions it trusted (its on-disk cache).
            restarted = engine(policy, cache, cache_ttl=0)
            again = await admit(restarted, world.ref(repo, "v1"))
            await restarted.aclose()
            assert not again.allowed
            assert "is older than trusted version" in again.message

    asyncio.run(go())
