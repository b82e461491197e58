"""The admission policy engine: references, Portieris matching without its
bypasses, policy documents, and decisions over real trust data (an in-process
vouch server, repositories signed with vouch's client)."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from server_helpers import make_client
from vouch.admission.engine import Engine
from vouch.admission.match import best_match, glob, pattern_matches
from vouch.admission.policy import PolicyError, load_policies
from vouch.admission.reference import InvalidReferenceError, parse
from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.crypto.keystore import EnvPassphraseRetriever
from vouch.crypto.privkey import PrivateKey

PW = {f"NOTARY_{r}_PASSPHRASE": "pw" for r in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")}
REGISTRY = "registry.example.com:5000"


# -- references -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "tag", "match"),
    [
        ("nginx", "docker.io/library/nginx", None, "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx", "1.25", "docker.io/library/nginx:1.25"),
        ("index.docker.io/me/app:v", "docker.io/me/app", "v", "docker.io/me/app:v"),
        ("localhost:5000/a/b:c", "localhost:5000/a/b", "c", "localhost:5000/a/b:c"),
        (f"{REGISTRY}/team/app", f"{REGISTRY}/team/app", None, f"{REGISTRY}/team/app:latest"),
    ],
)
def test_references_normalised(text: str, name: str, tag: str | None, match: str) -> None:
    ref = parse(text)
    assert (ref.name, ref.tag, ref.match_string()) == (name, tag, match)


@pytest.mark.parametrize(
    "bad",
    ["", "app/UPPER", "a b", "nginx@sha256:abc", "x" * 300, "nginx@md5:" + "a" * 32, " nginx"],
)
def test_invalid_references_refused(bad: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse(bad)


# -- matching ---------------------------------------------------------------------


def test_glob_semantics() -> None:
    assert glob("a*c", "abc") and not glob("a*c", "ac")  # * is one or more
    assert glob("*", "x") and not glob("*", "")
    assert glob("a.b", "a.b") and not glob("a.b", "axb")  # no regex leaks


@pytest.mark.parametrize(
    ("pattern", "image"),
    [
        ("*.trusted.example.com/*", "evil.com/x.trusted.example.com/app:v1"),  # host in path
        ("registry.example.com/*", "registry.example.com.evil.net/app:v1"),  # longer host
        ("registry.example.com/*", "registry.example.com:5000/app:v1"),  # another port
        ("registry.example.com:5000/*", "registry.example.com:5001/app:v1"),
        ("docker.io/library/*", "docker.io/evil/library/app:v1"),
        # patterns without a "/": the literal before the "*" is the whole host
        ("registry.example.com*", "registry.example.com.evil.net/app:v1"),
        ("registry.example.com:5000*", "registry.example.com:50001/app:v1"),
        ("registry.example.com*", "registry.example.com:5000/app:v1"),
        ("registry.example*", "registry.example.com/app:v1"),
    ],
)
def test_host_anchored_matching_refuses_bypasses(pattern: str, image: str) -> None:
    assert not pattern_matches(pattern, image)
    assert not pattern_matches(pattern + ":*", image)


def test_host_prefix_patterns_still_match_their_host() -> None:
    assert pattern_matches("registry.example.com*", "registry.example.com/app:v1")
    assert pattern_matches("registry.example.com:5000*", "registry.example.com:5000/a/b:v1")
    assert pattern_matches("*", "evil.example/app:v1")
    assert pattern_matches("*:v1", "evil.example/app:v1")


POLICIES = textwrap.dedent(
    f"""
    apiVersion: portieris.cloud.ibm.com/v1
    kind: ClusterImagePolicy
    metadata: {{name: default}}
    spec:
      repositories:
        - name: "*"
          policy: {{trust: {{enabled: true, trustServer: "http://vouch.test"}}}}
        - name: "{REGISTRY}/open/*"
        - name: "nginx"
          policy: {{}}
    ---
    apiVersion: portieris.cloud.ibm.com/v1
    kind: ImagePolicy
    metadata: {{name: team, namespace: team}}
    spec:
      repositories:
        - name: "{REGISTRY}/team/*"
          policy:
            trust:
              enabled: true
              trustServer: "http://vouch.test"
              signerSecrets: [{{name: release-signer}}]
    """
)


def test_portieris_selection_semantics() -> None:
    ps = load_policies(POLICIES)
    m, _ = best_match(ps.documents, "other", parse(f"{REGISTRY}/open/tool:1"))
    assert m is not None and m.rule.name == f"{REGISTRY}/open/*"  # most specific wins
    m, _ = best_match(ps.documents, "other", parse("nginx:1.25"))
    assert m is not None and m.rule.name == "nginx"  # normalised, exact name wins
    # Namespace policies are exclusive: the cluster "*" does not apply in "team".
    m, why = best_match(ps.documents, "team", parse(f"{REGISTRY}/open/tool:1"))
    assert m is None and "ImagePolicies in namespace team" in why


def test_bad_policy_documents_are_errors() -> None:
    with pytest.raises(PolicyError):
        load_policies(
            "kind: ClusterImagePolicy\napiVersion: portieris.cloud.ibm.com/v1\n"
            "spec: {repositories: [{}]}"
        )
    with pytest.raises(PolicyError):
        load_policies(
            "apiVersion: policy.vouch.dev/v1\nkind: ClusterImagePolicy\nspec:\n"
            "  repositories:\n  - name: x\n    policy: {mode: maybe}"
        )
    with pytest.raises(PolicyError):
        load_policies(": : :")
    for field in ("trustServerCA", "rootCA"):
        with pytest.raises(PolicyError, match=f"{field} is not a PEM certificate bundle"):
            load_policies(
                "apiVersion: policy.vouch.dev/v1\nkind: ClusterImagePolicy\nspec:\n"
                f"  repositories:\n  - name: x\n    policy: {{trust: {{{field}: not-a-pem}}}}"
            )


# -- decisions over real trust data ------------------------------------------------


class Stack:
    """An in-process vouch server, a publisher's client, and an engine factory."""

    def __init__(self, tmp: Path) -> None:
        client, self.service = make_client()
        self.transport = client._transport
        assert isinstance(self.transport, httpx.ASGITransport)
        self.tmp = tmp

    def remote(self, *_: object) -> Remote:
        return Remote("http://vouch.test", transport=self.transport)

    def repo(self, gun: str, trust: str = "publisher") -> Repository:
        return Repository(
            gun, self.remote(), self.tmp / trust, passphrases=EnvPassphraseRetriever(environ=PW)
        )

    def engine(self, policies: str, **kw: object) -> Engine:
        return Engine(
            load_policies(policies), cache_dir=self.tmp / "engine", remote_factory=self.remote, **kw
        )  # type: ignore[arg-type]


MANIFEST_V1 = b'{"schemaVersion":2,"config":"v1"}'
MANIFEST_V2 = b'{"schemaVersion":2,"config":"v2"}'


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _publish(stack: Stack, gun: str, *, signer: PrivateKey | None = None) -> Repository:
    repo = stack.repo(gun)
    await repo.initialize()
    await repo.publish()
    repo.add_target("v1", MANIFEST_V1)
    await repo.publish()
    if signer is not None:
        repo.keys.save(signer, "targets/releases")
        repo.add_delegation("targets/releases", [signer.public], all_paths=True)
        await repo.publish()
        repo.add_target("v1", MANIFEST_V1, roles_to=["targets/releases"])
        await repo.publish()
    return repo


def _pem(key: PrivateKey) -> str:
    return (
        key.obj.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_signed_tag_allowed_and_pinned(tmp_path: Path) -> None:
    async def go() -> None:
        stack = Stack(tmp_path)
        await _publish(stack, f"{REGISTRY}/app/web")
        engine = stack.engine(POLICIES)
        d = await engine.check(f"{REGISTRY}/app/web:v1", "default")
        assert d.allowed, d.reasons
        assert d.digest == _digest(MANIFEST_V1)
        assert d.pinned == f"{REGISTRY}/app/web:v1@{_digest(MANIFEST_V1)}"
        unsigned = await engine.check(f"{REGISTRY}/app/web:v2", "default")
        assert not unsigned.allowed and "no signed target for tag 'v2'" in unsigned.reasons[0]
        missing = await engine.check(f"{REGISTRY}/app/nothing:v1", "default")
        assert not missing.allowed
        # Digest-only: allowed only if that digest is signed.
        by_digest = await engine.check(f"{REGISTRY}/app/web@{_digest(MANIFEST_V1)}", "default")
        assert by_digest.allowed and by_digest.digest == _digest(MANIFEST_V1)
        other = await engine.check(f"{REGISTRY}/app/web@{_digest(b'evil')}", "default")
        assert not other.allowed and "is not signed" in other.reasons[0]
        # tag@digest must agree with what the tag is signed for.
        wrong = await engine.check(f"{REGISTRY}/app/web:v1@{_digest(b'evil')}", "default")
        assert not wrong.allowed and "not sha256:" in wrong.reasons[0]
        assert engine.cache_hits >= 1
        await engine.aclose()

    asyncio.run(go())


def test_signer_secrets_and_pinned_keys(tmp_path: Path) -> None:
    async def go() -> None:
        stack = Stack(tmp_path)
        signer = PrivateKey.generate("ecdsa")
        await _publish(stack, f"{REGISTRY}/team/api", signer=signer)

        def secret_for(key: PrivateKey) -> str:
            doc = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "release-signer", "namespace": "team"},
                "stringData": {"name": "releases", "publicKey": _pem(key)},
            }
            return "\n---\n" + yaml.safe_dump(doc)

        secret = secret_for(signer)
        engine = stack.engine(POLICIES + secret)
        ok = await engine.check(f"{REGISTRY}/team/api:v1", "team")
        assert ok.allowed, ok.reasons
        # The same role signed by a key other than the pinned one is refused.
        impostor = PrivateKey.generate("ecdsa")
        bad = stack.engine(POLICIES + secret_for(impostor))
        denied = await bad.check(f"{REGISTRY}/team/api:v1", "team")
        assert not denied.allowed and "pinned key" in denied.reasons[0]

    asyncio.run(go())


def test_tag_resigned_to_another_digest_by_signer_only(tmp_path: Path) -> None:
    """The required signer signs v1 for one digest, top-level targets for another."""

    async def go() -> None:
        stack = Stack(tmp_path)
        signer = PrivateKey.generate("ecdsa")
        repo = await _publish(stack, f"{REGISTRY}/team/db", signer=signer)
        repo.add_target("v1", MANIFEST_V2)  # top-level now says v1 is MANIFEST_V2
        await repo.publish()
        policy = yaml.safe_dump(
            {
                "apiVersion": "policy.vouch.dev/v1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": "strict"},
                "spec": {
                    "repositories": [
                        {
                            "name": f"{REGISTRY}/team/*",
                            "policy": {
                                "trust": {
                                    "enabled": True,
                                    "trustServer": "http://vouch.test",
                                    "signers": [{"name": "releases", "publicKey": _pem(signer)}],
                                }
                            },
                        }
                    ]
                },
            }
        )
        d = await stack.engine(policy).check(f"{REGISTRY}/team/db:v1")
        # The release is targets/releases' digest (docker pull's rule): the
        # required signer's digest is pinned, never the one top-level re-signed.
        assert d.allowed and d.digest == _digest(MANIFEST_V1)
        # A second required signer that signs v1 for another digest denies.
        qa = PrivateKey.generate("ecdsa")
        repo.keys.save(qa, "targets/qa")
        repo.add_delegation("targets/qa", [qa.public], all_paths=True)
        await repo.publish()
        repo.add_target("v1", MANIFEST_V2, roles_to=["targets/qa"])
        await repo.publish()
        doc = yaml.safe_load(policy)
        trust = doc["spec"]["repositories"][0]["policy"]["trust"]
        trust["signers"].append({"name": "qa", "publicKey": _pem(qa)})
        denied = await stack.engine(yaml.safe_dump(doc)).check(f"{REGISTRY}/team/db:v1")
        assert not denied.allowed and "another digest" in denied.reasons[0]

    asyncio.run(go())


def test_pinned_root_refuses_a_different_root_and_audit_mode_warns(tmp_path: Path) -> None:
    async def go() -> None:
        stack = Stack(tmp_path)
        await _publish(stack, f"{REGISTRY}/pinned/app")
        policy = textwrap.dedent(
            f"""
            apiVersion: policy.vouch.dev/v1
            kind: ClusterImagePolicy
            metadata: {{name: pinned}}
            spec:
              repositories:
                - name: "{REGISTRY}/pinned/*"
                  policy:
                    trust:
                      enabled: true
                      trustServer: "http://vouch.test"
                      rootKeyIDs: ["{"0" * 64}"]
                - name: "{REGISTRY}/audit/*"
                  policy:
                    mode: audit
                    trust: {{enabled: true, trustServer: "http://vouch.test"}}
            """
        )
        engine = stack.engine(policy)
        d = await engine.check(f"{REGISTRY}/pinned/app:v1")
        assert not d.allowed and "trust_pinning" in d.reasons[0]
        audit = await engine.check(f"{REGISTRY}/audit/unsigned:v1")
        assert audit.allowed and audit.pinned is None and audit.warnings

    asyncio.run(go())


def test_unsupported_portieris_features_fail_closed(tmp_path: Path) -> None:
    async def go() -> None:
        stack = Stack(tmp_path)
        policy = textwrap.dedent(
            """
            apiVersion: portieris.cloud.ibm.com/v1
            kind: ClusterImagePolicy
            metadata: {name: simple}
            spec:
              repositories:
                - name: "*"
                  policy: {simple: {requirements: [{type: signedBy, keySecret: gpg}]}}
            """
        )
        d = await stack.engine(policy).check("nginx:1")
        assert not d.allowed and "not support" in d.reasons[0]
        none = await stack.engine("").check("nginx:1")
        assert not none.allowed and "no image policies" in none.reasons[0]

    asyncio.run(go())


def test_k_of_n_signers(tmp_path: Path) -> None:
    """vouch's ``threshold``: k of the listed signers must sign the same digest."""

    async def go() -> None:
        stack = Stack(tmp_path)
        releases = PrivateKey.generate("ecdsa")
        qa = PrivateKey.generate("ecdsa")
        repo = await _publish(stack, f"{REGISTRY}/kofn/app", signer=releases)
        repo.keys.save(qa, "targets/qa")
        repo.add_delegation("targets/qa", [qa.public], all_paths=True)
        await repo.publish()

        def policy(threshold: int | None) -> str:
            trust: dict[str, object] = {
                "enabled": True,
                "trustServer": "http://vouch.test",
                "signers": [
                    {"name": "releases", "publicKey": _pem(releases)},
                    {"name": "qa", "publicKey": _pem(qa)},
                ],
            }
            if threshold is not None:
                trust["threshold"] = threshold
            rule = {"name": f"{REGISTRY}/kofn/*", "policy": {"trust": trust}}
            return yaml.safe_dump(
                {
                    "apiVersion": "policy.vouch.dev/v1",
                    "kind": "ClusterImagePolicy",
                    "metadata": {"name": "kofn"},
                    "spec": {"repositories": [rule]},
                }
            )

        image = f"{REGISTRY}/kofn/app:v1"
        # only releases has signed v1
        for threshold in (2, None):  # None: all of them
            d = await stack.engine(policy(threshold)).check(image)
            assert not d.allowed and "1 of 2 required signers" in d.reasons[0], d.reasons
            assert "targets/qa" in d.reasons[0]
        one = await stack.engine(policy(1)).check(image)
        assert one.allowed and one.digest == _digest(MANIFEST_V1), one.reasons
        # qa signs another digest: still 1 of 2
        repo.add_target("v1", MANIFEST_V2, roles_to=["targets/qa"])
        await repo.publish()
        d = await stack.engine(policy(2)).check(image)
        assert not d.allowed and "another digest" in d.reasons[0]
        # qa signs the same digest: 2 of 2
        repo.add_target("v1", MANIFEST_V1, roles_to=["targets/qa"])
        await repo.publish()
        both = await stack.engine(policy(2)).check(image)
        assert both.allowed and both.digest == _digest(MANIFEST_V1), both.reasons
        with pytest.raises(PolicyError, match="threshold 3 exceeds"):
            load_policies(policy(3))

    asyncio.run(go())


def test_per_policy_trust_server_ca(tmp_path: Path) -> None:
    """vouch's ``trustServerCA``: the trust server's TLS certificate must chain
    to the policy's CA (a real TLS server on a socket, the production remote)."""
    import threading

    import uvicorn

    from vouch.server.devtls import ensure_dev_tls

    async def publish(stack: Stack) -> None:
        await _publish(stack, f"{REGISTRY}/tls/app")

    stack = Stack(tmp_path)
    asyncio.run(publish(stack))
    tls = ensure_dev_tls(tmp_path / "tls")
    other = ensure_dev_tls(tmp_path / "other-ca")
    config = uvicorn.Config(
        stack.transport.app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(tls.server_cert),
        ssl_keyfile=str(tls.server_key),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.02)
        assert server.started, "the TLS trust server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]

        def policy(ca: Path | None) -> str:
            trust: dict[str, object] = {"enabled": True, "trustServer": f"https://127.0.0.1:{port}"}
            if ca is not None:
                trust["trustServerCA"] = ca.read_text()
            rule = {"name": f"{REGISTRY}/tls/*", "policy": {"trust": trust}}
            return yaml.safe_dump(
                {
                    "apiVersion": "policy.vouch.dev/v1",
                    "kind": "ClusterImagePolicy",
                    "metadata": {"name": "tls"},
                    "spec": {"repositories": [rule]},
                }
            )

        async def decide(ca: Path | None, name: str) -> tuple[bool, list[str]]:
            engine = Engine(load_policies(policy(ca)), cache_dir=tmp_path / name)
            try:
                d = await engine.check(f"{REGISTRY}/tls/app:v1")
            finally:
                await engine.aclose()
            return d.allowed, d.reasons

        ok, why = asyncio.run(decide(tls.ca_cert, "right"))
        assert ok, why
        wrong, why = asyncio.run(decide(other.ca_cert, "wrong"))
        assert not wrong and "unavailable" in why[0], why
        system, why = asyncio.run(decide(None, "system"))  # the system CAs do not know it
        assert not system, why
    finally:
        server.should_exit = True
        thread.join(10)


def test_digest_only_reference_with_required_signer(tmp_path: Path) -> None:
    """``name@sha256:…`` is allowed only if that digest is signed by the required
    signer, under any tag; a tag only top-level targets signed does not count."""

    async def go() -> None:
        stack = Stack(tmp_path)
        signer = PrivateKey.generate("ecdsa")
        repo = await _publish(stack, f"{REGISTRY}/dig/app", signer=signer)
        # "a-old" sorts before "v1": the same digest under a tag the signer never signed
        repo.add_target("a-old", MANIFEST_V1)
        repo.add_target("b-unsigned", MANIFEST_V2)
        await repo.publish()
        trust = {
            "enabled": True,
            "trustServer": "http://vouch.test",
            "signers": [{"name": "releases", "publicKey": _pem(signer)}],
        }
        policy = yaml.safe_dump(
            {
                "apiVersion": "policy.vouch.dev/v1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": "dig"},
                "spec": {
                    "repositories": [{"name": f"{REGISTRY}/dig/*", "policy": {"trust": trust}}]
                },
            }
        )
        engine = stack.engine(policy)
        ok = await engine.check(f"{REGISTRY}/dig/app@{_digest(MANIFEST_V1)}")
        assert ok.allowed and ok.digest == _digest(MANIFEST_V1), ok.reasons
        # signed by top-level targets only, never by the required signer
        bad = await engine.check(f"{REGISTRY}/dig/app@{_digest(MANIFEST_V2)}")
        assert not bad.allowed and "required signers" in bad.reasons[0], bad.reasons
        never = await engine.check(f"{REGISTRY}/dig/app@sha256:{'0' * 64}")
        assert not never.allowed and "is not signed" in never.reasons[0]

    asyncio.run(go())


def test_a_cancelled_request_does_not_cancel_the_fetch_others_share(tmp_path: Path) -> None:
    """Two requests for one repository share one fetch; the first hits its
    deadline (is cancelled) while it runs, and the second still gets its answer."""

    async def go() -> None:
        stack = Stack(tmp_path)
        await _publish(stack, f"{REGISTRY}/shared/app")
        engine = stack.engine(POLICIES)
        image = f"{REGISTRY}/shared/app:v1"
        first = asyncio.ensure_future(engine.check(image, "default"))
        await asyncio.sleep(0)  # the first starts the fetch
        second = asyncio.ensure_future(engine.check(image, "default"))
        await asyncio.sleep(0)  # the second waits for it
        assert engine.cache_misses == 1 and engine.cache_hits == 1
        first.cancel()
        decision = await second
        assert decision.allowed, decision.reasons
        with pytest.raises(asyncio.CancelledError):
            await first
        await engine.aclose()

    asyncio.run(go())


def test_pinned_root_key_id_admits_and_mutate_image_false_does_not_patch(tmp_path: Path) -> None:
    """The positive side of rootKeyIDs (the repository's real root key ID is
    pinned), and ``mutateImage: false`` admitting without pinning."""

    async def go() -> None:
        stack = Stack(tmp_path)
        repo = await _publish(stack, f"{REGISTRY}/pin/app")
        root = (await repo.refresh()).trusted.root
        assert root is not None
        (root_id,) = root.signed.roles["root"].keyids
        policy = textwrap.dedent(
            f"""
            apiVersion: policy.vouch.dev/v1
            kind: ClusterImagePolicy
            metadata: {{name: pinned}}
            spec:
              repositories:
                - name: "{REGISTRY}/pin/*"
                  policy:
                    mutateImage: false
                    trust:
                      enabled: true
                      trustServer: "http://vouch.test"
                      rootKeyIDs: ["{root_id}"]
            """
        )
        d = await stack.engine(policy).check(f"{REGISTRY}/pin/app:v1")
        assert d.allowed and d.digest == _digest(MANIFEST_V1), d.reasons
        assert d.pinned is None  # mutateImage: false

    asyncio.run(go())


def test_pinned_root_ca(tmp_path: Path) -> None:
    """vouch's ``rootCA``: the repository's root certificate must chain to the
    policy's CA; a root certified by another CA (or self-signed) is refused."""
    from test_pinning import _ca, _leaf
    from vouch.tuf.keys import certificate_key

    async def go() -> None:
        stack = Stack(tmp_path)
        ca_key, ca = _ca()
        _, other_ca = _ca()
        gun = f"{REGISTRY}/ca/app"
        repo = stack.repo(gun)
        priv, leaf = _leaf(ca_key, ca, gun, None)
        repo.keys.save(priv, "root")
        await repo.initialize(root_key_id=priv.keyid, root_cert=certificate_key([leaf, ca]))
        await repo.publish()
        repo.add_target("v1", MANIFEST_V1)
        await repo.publish()
        await _publish(stack, f"{REGISTRY}/ca/self-signed")

        def policy(pem: bytes) -> str:
            trust = {"enabled": True, "trustServer": "http://vouch.test", "rootCA": pem.decode()}
            rule = {"name": f"{REGISTRY}/ca/*", "policy": {"trust": trust}}
            return yaml.safe_dump(
                {
                    "apiVersion": "policy.vouch.dev/v1",
                    "kind": "ClusterImagePolicy",
                    "metadata": {"name": "ca"},
                    "spec": {"repositories": [rule]},
                }
            )

        pem = ca.public_bytes(serialization.Encoding.PEM)
        ok = await stack.engine(policy(pem)).check(f"{gun}:v1")
        assert ok.allowed and ok.digest == _digest(MANIFEST_V1), ok.reasons
        other = other_ca.public_bytes(serialization.Encoding.PEM)
        wrong = await stack.engine(policy(other)).check(f"{gun}:v1")
        assert not wrong.allowed, wrong.reasons
        self_signed = await stack.engine(policy(pem)).check(f"{REGISTRY}/ca/self-signed:v1")
        assert not self_signed.allowed, self_signed.reasons

    asyncio.run(go())


def test_cached_trust_data_is_never_used_past_its_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long cache TTL does not outlive the trust data: once the wall clock is
    past the earliest expiry in the cached set (here the 14-day timestamp), the
    next decision refetches and verifies. (The in-process server shares the
    moved clock and re-signs its timestamp, so the refetched data is valid;
    test_admission_registry covers the denial with a separate server.)"""
    import datetime as dt

    from vouch.tuf import timefmt

    async def go() -> None:
        stack = Stack(tmp_path)
        await _publish(stack, f"{REGISTRY}/exp/app")
        engine = stack.engine(POLICIES, cache_ttl=10**9)
        image = f"{REGISTRY}/exp/app:v1"
        assert (await engine.check(image)).allowed
        assert (await engine.check(image)).allowed and engine.cache_hits == 1
        real_now = timefmt.now
        monkeypatch.setattr(timefmt, "now", lambda: real_now() + dt.timedelta(days=15))
        late = await engine.check(image)
        assert engine.cache_misses == 2, "served from the cache past its expiry"
        assert late.allowed, late.reasons
        await engine.aclose()

    asyncio.run(go())
