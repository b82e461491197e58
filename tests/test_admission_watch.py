"""The webhook's policies in a cluster: list + watch against an API server that
speaks the real watch protocol over TLS sockets (tests/kube_apiserver.py).

Every test waits for the client to reach a resourceVersion (never for a
time), then asserts what the engine decides with.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kube_apiserver import KubeAPIServer
from test_admission import REGISTRY, Stack, _pem, _publish
from vouch.admission.app import build_admission_app
from vouch.admission.cluster import PolicyWatcher
from vouch.admission.engine import Engine
from vouch.admission.kube import KubeClient, docker_credentials
from vouch.admission.policy import PolicySet, SecretDocument, load_policies
from vouch.admission.watch import Reflector, json_objects
from vouch.admission.webhook import Reviewer
from vouch.crypto.privkey import PrivateKey

PORTIERIS = "portieris.cloud.ibm.com/v1"
VOUCH = "policy.vouch.dev/v1"
CLUSTER_PATH = f"/apis/{PORTIERIS}/clusterimagepolicies"
NS_PATH = f"/apis/{PORTIERIS}/imagepolicies"


def cluster_policy(name: str, *patterns: str, api: str = PORTIERIS) -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": {"repositories": [{"name": p} for p in patterns]},
    }


def ns_policy(name: str, namespace: str, repositories: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": PORTIERIS,
        "kind": "ImagePolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"repositories": repositories},
    }


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for a condition (a generous bound: a hang fails, no timing is asserted)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


class Cluster:
    """The API server, a client with a token file and the CA file, a watcher, an engine."""

    def __init__(self, tmp: Path, api: KubeAPIServer, engine: Engine | None = None) -> None:
        self.api = api
        self.token_file = tmp / "token"
        self.token_file.write_text(api.token + "\n")
        self.kube = KubeClient.from_files(api.url, self.token_file, api.tls.ca_cert)
        self.engine = engine or Engine(PolicySet(), cache_dir=tmp / "engine")
        self.applied: list[PolicySet] = []
        self.watcher = PolicyWatcher(
            self.kube,
            self.apply,
            watch_timeout=60,
            missing_retry=0.1,
            backoff_max=0.3,
            page_size=3,
        )

    def apply(self, policies: PolicySet) -> None:
        self.engine.policies = policies
        self.applied.append(policies)

    def reflector(self, path: str) -> Reflector:
        return next(r for _, _, r in self.watcher.policies if r.collection.path == path)

    async def caught_up(self, reflector: Reflector, rv: str | int) -> None:
        """The reflector has applied everything up to ``rv`` (an event's or a bookmark's)."""
        await until(
            lambda: (
                reflector.resource_version is not None
                and int(reflector.resource_version) >= int(rv)
            ),
            f"{reflector.collection} at {rv}",
        )

    async def allowed(self, image: str, namespace: str) -> bool:
        return (await self.engine.check(image, namespace)).allowed

    async def close(self) -> None:
        await self.watcher.aclose()
        await self.kube.aclose()


def run(tmp: Path, body: Callable[[KubeAPIServer, Cluster], Any], **server: Any) -> None:
    with KubeAPIServer(tmp, **server) as api:

        async def go() -> None:
            cluster = Cluster(tmp, api)
            try:
                await body(api, cluster)
            finally:
                await cluster.close()

        asyncio.run(go())


# -- list, watch, events ---------------------------------------------------------------


def test_list_pages_then_events_reach_decisions_at_once(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        for i in range(7):  # three pages of 3
            api.put(cluster_policy(f"p{i}", f"quay.io/team{i}/*"))
        api.put(cluster_policy("hub", "docker.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        assert len([d for d in c.engine.policies.documents if d.kind == "ClusterImagePolicy"]) == 8
        pages = [r for r in api.lists if r.path == CLUSTER_PATH]
        assert [p.params.get("continue") is not None for p in pages] == [False, True, True]
        assert await c.allowed("nginx:1", "team")
        assert await c.allowed("quay.io/team6/x:1", "team")

        # ADDED: the namespace gets its own policy, which is exclusive there.
        added = api.put(ns_policy("own", "team", [{"name": "quay.io/team1/*"}]))
        await c.caught_up(c.reflector(NS_PATH), added["metadata"]["resourceVersion"])
        assert not await c.allowed("nginx:1", "team")
        assert await c.allowed("quay.io/team1/app:2", "team")
        assert await c.allowed("nginx:1", "elsewhere")
        # MODIFIED
        changed = api.put(ns_policy("own", "team", [{"name": "docker.io/library/*"}]))
        await c.caught_up(c.reflector(NS_PATH), changed["metadata"]["resourceVersion"])
        assert await c.allowed("nginx:1", "team")
        assert not await c.allowed("quay.io/team1/app:2", "team")
        # DELETED while watching: the cluster policies apply in "team" again.
        api.delete(PORTIERIS, "ImagePolicy", "own", "team")
        await c.caught_up(c.reflector(NS_PATH), api.rv)
        assert await c.allowed("quay.io/team1/app:2", "team")
        api.delete(PORTIERIS, "ClusterImagePolicy", "hub")
        await c.caught_up(c.reflector(CLUSTER_PATH), api.rv)
        assert not await c.allowed("nginx:1", "team")

        # Each watch starts from its list's version, with bookmarks asked for.
        first = next(w for w in api.watches if w.path == CLUSTER_PATH)
        assert first.params["resourceVersion"] == pages[1].params["continue"].split(":")[0]
        assert first.params["allowWatchBookmarks"] == "true"
        assert c.reflector(CLUSTER_PATH).lists == 1

    run(tmp_path, body)


def test_invalid_policy_is_kept_as_deny_all(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("all", "*"))
        broken = ns_policy("broken", "team", [{"policy": {"trust": {"enabled": "yes"}}}])
        api.put(broken)
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        assert await c.allowed("nginx:1", "elsewhere")
        assert not await c.allowed("nginx:1", "team")  # still exclusive, matches nothing

    run(tmp_path, body)


def test_bookmarks_advance_the_version_so_a_reconnect_needs_no_relist(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("all", "docker.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        reflector = c.reflector(CLUSTER_PATH)
        listed = reflector.resource_version
        for _ in range(3):
            api.touch()  # other kinds change; only a bookmark tells this watch
        await c.caught_up(reflector, api.rv)
        bookmarked = reflector.resource_version
        assert bookmarked != listed
        api.compact()  # the listed version is gone from the history now
        api.drop_watches()
        added = api.put(cluster_policy("quay", "quay.io/*"))
        await c.caught_up(reflector, added["metadata"]["resourceVersion"])
        assert await c.allowed("quay.io/x/y:1", "any")
        assert reflector.lists == 1  # resumed from the bookmark, no relist
        resumed = [w for w in api.watches if w.path == CLUSTER_PATH][-1]
        assert resumed.params["resourceVersion"] == bookmarked

    run(tmp_path, body, bookmark_interval=0.05)


def test_dropped_stream_resumes_from_the_last_event(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("all", "docker.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        reflector = c.reflector(CLUSTER_PATH)
        seen = api.put(cluster_policy("quay", "quay.io/*"))["metadata"]["resourceVersion"]
        await c.caught_up(reflector, seen)
        watches = len([w for w in api.watches if w.path == CLUSTER_PATH])
        api.drop_watches()
        api.delete(PORTIERIS, "ClusterImagePolicy", "quay")  # while reconnecting
        await c.caught_up(reflector, api.rv)
        assert not await c.allowed("quay.io/x/y:1", "any")
        later = [w for w in api.watches if w.path == CLUSTER_PATH][watches:]
        assert later and later[0].params["resourceVersion"] == seen
        assert reflector.lists == 1

    # bookmarks off: the resumed version must be the last event's
    run(tmp_path, body, bookmark_interval=3600)


def test_server_timeout_ends_the_stream_and_the_watch_is_reopened(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("all", "docker.io/*"))
        for _, _, r in c.watcher.policies:
            r.watch_timeout = 1  # the server ends each stream after a second
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        reflector = c.reflector(CLUSTER_PATH)
        await until(
            lambda: len([w for w in api.watches if w.path == CLUSTER_PATH]) >= 3,
            "watches re-opened",
        )
        added = api.put(cluster_policy("quay", "quay.io/*"))
        await c.caught_up(reflector, added["metadata"]["resourceVersion"])
        assert await c.allowed("quay.io/x/y:1", "any")
        assert reflector.lists == 1
        assert all(w.params["timeoutSeconds"] == "1" for w in api.watches)

    run(tmp_path, body)


def test_gone_after_an_outage_relists_and_replaces_the_snapshot(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("hub", "docker.io/*"))
        api.put(cluster_policy("quay", "quay.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        reflector = c.reflector(CLUSTER_PATH)
        # The API server is unavailable; meanwhile a policy is deleted, one is
        # added, and the history is compacted past the client's version.
        api.faults.fail_status = 503
        api.drop_watches()
        api.delete(PORTIERIS, "ClusterImagePolicy", "quay")
        api.put(cluster_policy("ghcr", "ghcr.io/*"))
        api.compact()
        failed = len(api.tokens_seen)
        await until(lambda: len(api.tokens_seen) > failed + 4, "retries during the outage")
        api.faults.fail_status = None
        await until(lambda: reflector.lists == 2, "relist after 410")
        await c.caught_up(reflector, api.rv)
        # the deletion was never seen as an event: the relist replaced the snapshot
        assert not await c.allowed("quay.io/x/y:1", "any")
        assert await c.allowed("ghcr.io/x/y:1", "any")
        assert await c.allowed("nginx:1", "any")

    run(tmp_path, body, bookmark_interval=3600)


def test_error_event_relists_and_an_event_during_the_relist_is_not_lost(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("hub", "docker.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        reflector = c.reflector(CLUSTER_PATH)

        def meanwhile() -> None:  # after the list's snapshot, before its answer
            api.put(cluster_policy("hub", "docker.io/library/*"))

        api.faults.during_list[CLUSTER_PATH] = meanwhile
        await until(lambda: any(w.path == CLUSTER_PATH for w in api.watches), "the watch")
        api.expire_watches()  # ERROR event, 410 Expired, on every open watch
        await until(lambda: CLUSTER_PATH not in api.faults.during_list, "a relist")
        await c.caught_up(reflector, api.rv)
        assert reflector.lists >= 2
        # the list did not have the change; the watch from its version did
        assert await c.allowed("nginx:1", "any")
        assert not await c.allowed("docker.io/someone/app:1", "any")

    run(tmp_path, body, bookmark_interval=3600)


def test_missing_crd_is_empty_then_picked_up_once_installed(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.serve(VOUCH, "clusterimagepolicies", served=False)
        api.serve(VOUCH, "imagepolicies", served=False)
        api.put(cluster_policy("hub", "docker.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)  # ready: missing = empty
        vouch = c.reflector(f"/apis/{VOUCH}/clusterimagepolicies")
        assert vouch.missing and not await c.allowed("ghcr.io/a/b:1", "any")
        api.serve(VOUCH, "clusterimagepolicies", served=True)
        api.put(cluster_policy("ghcr", "ghcr.io/*", api=VOUCH))
        await c.caught_up(vouch, api.rv)
        assert not vouch.missing
        assert await c.allowed("ghcr.io/a/b:1", "any")
        # and a CRD removed later empties its policies again
        api.serve(VOUCH, "clusterimagepolicies", served=False)
        api.drop_watches()
        await until(lambda: vouch.missing, "the CRD's removal noticed")
        assert not await c.allowed("ghcr.io/a/b:1", "any")

    run(tmp_path, body)


def test_ready_only_after_the_first_complete_list(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("hub", "docker.io/*"))
        gate = threading.Event()
        api.faults.hold_lists = gate
        reviewer = Reviewer(c.engine, deadline=0.5, ready=c.watcher.ready)
        app = build_admission_app(reviewer)
        c.watcher.start()
        await until(lambda: len(api.lists) >= 1, "a list started")
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "default",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "default"},
                    "spec": {"containers": [{"name": "c", "image": "nginx:1"}]},
                },
            },
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as web:
            assert (await web.get("/readyz")).status_code == 503
            assert (await web.get("/healthz")).status_code == 200
            answer = (await web.post("/admit", json=review)).json()["response"]
            assert not answer["allowed"] and "not loaded" in answer["status"]["message"]
            gate.set()
            await asyncio.wait_for(c.watcher.ready.wait(), 30)
            assert (await web.get("/readyz")).status_code == 200
            answer = (await web.post("/admit", json=review)).json()["response"]
            assert answer["allowed"], answer

    run(tmp_path, body)


def test_rotated_service_account_token_is_re_read(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        api.put(cluster_policy("hub", "docker.io/*"))
        c.watcher.start()
        await asyncio.wait_for(c.watcher.ready.wait(), 30)
        api.token = "token-2"  # the old token is refused from now on
        c.token_file.write_text("token-2\n")
        api.drop_watches()
        added = api.put(cluster_policy("quay", "quay.io/*"))
        await c.caught_up(c.reflector(CLUSTER_PATH), added["metadata"]["resourceVersion"])
        assert await c.allowed("quay.io/a/b:1", "any")
        assert "token-2" in api.tokens_seen

    run(tmp_path, body)


# -- Secrets -----------------------------------------------------------------------------


def releases(key: PrivateKey) -> dict[str, bytes]:
    """A Portieris signer Secret's data: the delegation and its public key."""
    return {"name": b"releases", "publicKey": _pem(key).encode()}


def test_signer_secret_watched_rotated_and_deleted(tmp_path: Path) -> None:
    async def go(api: KubeAPIServer) -> None:
        stack = Stack(tmp_path)
        signer = PrivateKey.generate("ecdsa")
        await _publish(stack, f"{REGISTRY}/team/api", signer=signer)
        c = Cluster(tmp_path, api, engine=stack.engine(""))
        image = f"{REGISTRY}/team/api:v1"
        try:
            trust = {"enabled": True, "trustServer": "http://vouch.test"}
            api.put(
                ns_policy(
                    "signed",
                    "team",
                    [
                        {
                            "name": f"{REGISTRY}/team/*",
                            "policy": {"trust": {**trust, "signerSecrets": [{"name": "rel"}]}},
                        }
                    ],
                )
            )
            api.secret("team", "rel", releases(signer))
            api.secret("team", "unrelated", {"x": b"y"})
            c.watcher.start()
            await asyncio.wait_for(c.watcher.ready.wait(), 30)
            decision = await c.engine.check(image, "team")
            assert decision.allowed, decision.reasons
            (secret_watch,) = c.watcher.secrets.values()
            assert secret_watch.collection.path == "/api/v1/namespaces/team/secrets"
            assert secret_watch.collection.field_selector == "metadata.name=rel"
            assert set(secret_watch.items) == {("team", "rel")}  # never the other Secrets

            # rotated to a key that did not sign: denied from the next decision on
            other = PrivateKey.generate("ecdsa")
            rotated = api.secret("team", "rel", releases(other))
            await c.caught_up(secret_watch, rotated["metadata"]["resourceVersion"])
            decision = await c.engine.check(image, "team")
            assert not decision.allowed and "pinned key" in decision.reasons[0]
            # rotated back, then deleted
            back = api.secret(
                "team", "rel", {"name": b"releases", "publicKey": _pem(signer).encode()}
            )
            await c.caught_up(secret_watch, back["metadata"]["resourceVersion"])
            assert await c.allowed(image, "team")
            api.delete("v1", "Secret", "rel", "team")
            await c.caught_up(secret_watch, api.rv)
            decision = await c.engine.check(image, "team")
            assert not decision.allowed and "not found" in decision.reasons[0]

            # A ClusterImagePolicy's secret is the workload's namespace's: watched
            # in every namespace, by name.
            api.delete(PORTIERIS, "ImagePolicy", "signed", "team")
            cluster = cluster_policy("signed", "x")
            cluster["spec"]["repositories"] = [
                {
                    "name": f"{REGISTRY}/team/*",
                    "policy": {"trust": {**trust, "signerSecrets": [{"name": "rel"}]}},
                }
            ]
            api.put(cluster)
            api.secret("prod", "rel", releases(signer))
            await c.caught_up(c.reflector(CLUSTER_PATH), api.rv)
            await until(lambda: ("", "rel") in c.watcher.secrets, "the cluster-wide secret watch")
            everywhere = c.watcher.secrets[("", "rel")]
            await c.caught_up(everywhere, api.rv)
            assert ("team", "rel") not in c.watcher.secrets  # no policy names it any more
            assert everywhere.collection.path == "/api/v1/secrets"
            assert await c.allowed(image, "prod")
            assert not await c.allowed(image, "team")  # no "rel" Secret in team now
        finally:
            await c.close()
            await c.engine.aclose()

    with KubeAPIServer(tmp_path) as api:
        asyncio.run(go(api))


def test_pull_secrets_and_owner_reads(tmp_path: Path) -> None:
    async def body(api: KubeAPIServer, c: Cluster) -> None:
        cfg = {
            "auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p").decode()}}
        }
        api.secret("team", "regcred", {".dockerconfigjson": json.dumps(cfg).encode()})
        api.put(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": "team"},
                "imagePullSecrets": [{"name": "regcred"}],
            }
        )
        names = await c.kube.service_account_pull_secrets("team", "default")
        secret = await c.kube.secret("team", names[0])
        assert secret is not None
        creds = docker_credentials(secret)
        assert set(creds) == {"docker.io"} and creds["docker.io"].username == "u"
        assert await c.kube.get("apps/v1", "Deployment", "team", "missing") is None
        api.touch()
        (name,) = [k[2] for k in api.objects if k[0].kind == "Deployment"]
        owner = await c.kube.get("apps/v1", "Deployment", "other", name)
        assert owner is not None and owner["metadata"]["uid"]

    run(tmp_path, body)


# -- the stream decoder ----------------------------------------------------------------------


def test_watch_stream_decoding_ignores_chunk_boundaries() -> None:
    events = [
        {"type": "ADDED", "object": {"metadata": {"name": "é✓", "resourceVersion": "1"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "2"}}},
    ]
    data = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)

    async def chunks(size: int) -> Any:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async def go() -> None:
        for size in (1, 2, 3, 7, len(data)):
            got = [e async for e in json_objects(chunks(size))]
            assert got == events, size

        async def cut() -> Any:
            yield data[:-5]

        with pytest.raises(Exception, match="ended inside an event"):
            _ = [e async for e in json_objects(cut())]

        async def garbage() -> Any:
            yield b"<html>"

        with pytest.raises(Exception, match="not a sequence of JSON objects"):
            _ = [e async for e in json_objects(garbage())]

    asyncio.run(go())


def test_legacy_dockercfg_and_garbage() -> None:
    legacy = SecretDocument(
        "s",
        "ns",
        {".dockercfg": json.dumps({"quay.io": {"username": "a", "password": "b"}}).encode()},
    )
    assert docker_credentials(legacy)["quay.io"].password == "b"
    assert docker_credentials(SecretDocument("s", "ns", {".dockerconfigjson": b"{not json"})) == {}


# -- the engine sees policy changes --------------------------------------------------------


def test_trust_cache_is_keyed_by_what_the_policy_says_about_fetching(tmp_path: Path) -> None:
    """A policy that changes the trust server's CA never gets trust data that
    was fetched under the old CA from the cache."""

    from vouch.server.devtls import ensure_dev_tls

    one = ensure_dev_tls(tmp_path / "ca-one").ca_cert.read_text()
    two = ensure_dev_tls(tmp_path / "ca-two").ca_cert.read_text()

    def policy(ca: str) -> PolicySet:
        return load_policies(
            f"""
apiVersion: policy.vouch.dev/v1
kind: ClusterImagePolicy
metadata: {{name: p}}
spec:
  repositories:
  - name: "{REGISTRY}/team/*"
    policy:
      trust: {{enabled: true, trustServer: "http://vouch.test", trustServerCA: {json.dumps(ca)}}}
"""
        )

    async def go() -> None:
        stack = Stack(tmp_path)
        await _publish(stack, f"{REGISTRY}/team/api")
        engine = stack.engine("")
        engine.policies = policy(one)
        image = f"{REGISTRY}/team/api:v1"
        assert (await engine.check(image, "x")).allowed
        assert (await engine.check(image, "x")).allowed
        assert (engine.cache_misses, engine.cache_hits) == (1, 1)
        engine.policies = policy(two)  # as a watch event would
        assert (await engine.check(image, "x")).allowed
        assert engine.cache_misses == 2
        await engine.aclose()

    asyncio.run(go())


def test_a_failing_callback_does_not_stop_the_watch(tmp_path: Path) -> None:
    from vouch.admission.watch import Collection

    async def body(api: KubeAPIServer, c: Cluster) -> None:
        calls: list[int] = []

        def on_change() -> None:
            calls.append(len(calls))
            if len(calls) == 2:  # the first event after the list
                raise RuntimeError("a bug in the consumer")

        reflector = Reflector(c.kube, Collection(CLUSTER_PATH), on_change, backoff_max=0.2)
        task = asyncio.get_running_loop().create_task(reflector.run())
        try:
            await asyncio.wait_for(reflector.synced.wait(), 30)
            api.put(cluster_policy("one", "a.io/*"))
            await until(lambda: reflector.lists == 2, "a relist after the failure")
            api.put(cluster_policy("two", "b.io/*"))
            await c.caught_up(reflector, api.rv)
            assert set(reflector.items) == {("", "one"), ("", "two")}
        finally:
            task.cancel()

    run(tmp_path, body)
