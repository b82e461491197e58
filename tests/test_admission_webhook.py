"""The admission webhook: AdmissionReview v1 payloads for every workload kind,
as the API server sends them, answered over HTTP by the real ASGI app."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_admission import MANIFEST_V1, POLICIES, REGISTRY, Stack, _digest, _publish
from vouch.admission.app import build_admission_app
from vouch.admission.webhook import ORIGINAL_ANNOTATION, POD_SPEC_PATHS, OwnerLookup, Reviewer

SIGNED = f"{REGISTRY}/app/web:v1"
UNSIGNED = f"{REGISTRY}/app/web:v9"
PINNED = f"{REGISTRY}/app/web:v1@{_digest(MANIFEST_V1)}"

API = {
    "Pod": "v1",
    "ReplicationController": "v1",
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}


def pod_spec(
    images: list[str], *, init: list[str] = (), ephemeral: list[str] = ()
) -> dict[str, Any]:  # type: ignore[assignment]
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]
    }
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": im} for i, im in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [
            {"name": f"e{i}", "image": im} for i, im in enumerate(ephemeral)
        ]
    return spec


def workload(kind: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": API[kind],
        "kind": kind,
        "metadata": {"name": "w", "namespace": "default", **meta},
    }
    if kind == "Pod":
        obj["spec"] = spec
    elif kind == "CronJob":
        obj["spec"] = {
            "schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": {"spec": spec}}},
        }
    else:
        obj["spec"] = {"replicas": 0 if kind != "Job" else None, "template": {"spec": spec}}
    return obj


def review(obj: dict[str, Any], operation: str = "CREATE", uid: str = "u-1") -> dict[str, Any]:
    group, _, version = obj["apiVersion"].rpartition("/")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": obj["kind"]},
            "resource": {"group": group, "version": version, "resource": obj["kind"].lower() + "s"},
            "namespace": obj["metadata"].get("namespace"),
            "operation": operation,
            "userInfo": {"username": "tester"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def apply_patch(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: Any = out
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = op["value"]
        else:
            node[last] = op["value"]
    return out


class FakeOwners:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        return self.objects.get((kind, name))


async def _client(
    tmp: Path, owners: OwnerLookup | None = None, deadline: float = 8.0
) -> httpx.AsyncClient:
    stack = Stack(tmp)
    await _publish(stack, f"{REGISTRY}/app/web")
    reviewer = Reviewer(stack.engine(POLICIES), owners=owners, deadline=deadline)
    app = build_admission_app(reviewer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://webhook")


async def _admit(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/admit", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == body["request"]["uid"]
    return out["response"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", sorted(POD_SPEC_PATHS))
def test_every_kind_is_checked_and_pinned(tmp_path: Path, kind: str) -> None:
    async def go() -> None:
        client = await _client(tmp_path)
        obj = workload(kind, pod_spec([SIGNED, SIGNED], init=[SIGNED], ephemeral=[SIGNED]))
        resp = await _admit(client, review(obj))
        assert resp["allowed"] is True and resp["patchType"] == "JSONPatch"
        patched = apply_patch(obj, json.loads(base64.b64decode(resp["patch"])))
        from vouch.admission.webhook import images_of

        assert {c.image for c in images_of(patched, kind)} == {PINNED}
        originals = json.loads(patched["metadata"]["annotations"][ORIGINAL_ANNOTATION])
        assert set(originals.values()) == {SIGNED} and len(originals) == 4
        denied = await _admit(client, review(workload(kind, pod_spec([SIGNED], init=[UNSIGNED]))))
        assert denied["allowed"] is False and "patch" not in denied
        assert UNSIGNED in denied["status"]["message"]

    asyncio.run(go())


def test_denial_names_every_failing_image(tmp_path: Path) -> None:
    async def go() -> None:
        client = await _client(tmp_path)
        bad = [UNSIGNED, f"{REGISTRY}/app/other:v1", "not a reference"]
        resp = await _admit(client, review(workload("Pod", pod_spec([SIGNED, *bad]))))
        assert resp["allowed"] is False
        for image in bad:
            assert image in resp["status"]["message"]

    asyncio.run(go())


def test_zero_replicas_are_checked_too(tmp_path: Path) -> None:
    async def go() -> None:
        client = await _client(tmp_path)
        obj = workload("Deployment", pod_spec([UNSIGNED]))
        assert obj["spec"]["replicas"] == 0
        assert (await _admit(client, review(obj)))["allowed"] is False

    asyncio.run(go())


def test_fabricated_owner_reference_is_not_trusted(tmp_path: Path) -> None:
    async def go() -> None:
        parent = workload("ReplicaSet", pod_spec([PINNED]), uid="rs-uid")
        owners = FakeOwners({("ReplicaSet", "rs"): parent})
        client = await _client(tmp_path, owners)
        ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid"}
        # A child carrying exactly its verified owner's images is admitted as is.
        child = workload("Pod", pod_spec([PINNED]), ownerReferences=[ref])
        ok = await _admit(client, review(child))
        assert ok["allowed"] is True and "patch" not in ok
        # A fabricated owner (wrong UID) or an image the owner does not carry is verified.
        fake = dict(ref, uid="forged")
        forged = workload("Pod", pod_spec([UNSIGNED]), ownerReferences=[fake])
        assert (await _admit(client, review(forged)))["allowed"] is False
        sneaky = workload("Pod", pod_spec([PINNED, UNSIGNED]), ownerReferences=[ref])
        assert (await _admit(client, review(sneaky)))["allowed"] is False
        missing = workload("Pod", pod_spec([UNSIGNED]), ownerReferences=[dict(ref, name="gone")])
        assert (await _admit(client, review(missing)))["allowed"] is False

    asyncio.run(go())


def test_updates_of_objects_being_deleted_are_never_blocked(tmp_path: Path) -> None:
    async def go() -> None:
        client = await _client(tmp_path)
        obj = workload("Pod", pod_spec([UNSIGNED]), deletionTimestamp="2026-12-03T00:00:00Z")
        assert (await _admit(client, review(obj, "UPDATE")))["allowed"] is True
        assert (await _admit(client, review(workload("Pod", pod_spec([UNSIGNED])), "DELETE")))[
            "allowed"
        ]

    asyncio.run(go())


def test_internal_deadline_denies_explicitly(tmp_path: Path) -> None:
    async def go() -> None:
        client = await _client(tmp_path, deadline=0.000001)
        fresh = [f"{REGISTRY}/app/fresh:v1", f"{REGISTRY}/app/other:v2"]
        resp = await _admit(client, review(workload("Pod", pod_spec(fresh))))
        message = resp["status"]["message"]
        assert resp["allowed"] is False and "timed out" in message
        assert all(repr(image) in message for image in fresh), message  # each one named

    asyncio.run(go())


def test_bad_reviews_and_metrics(tmp_path: Path) -> None:
    async def go() -> None:
        client = await _client(tmp_path)
        assert (await client.post("/admit", content=b"{not json")).status_code == 400
        assert (await client.post("/admit", json={"request": {}})).status_code == 400
        await _admit(client, review(workload("Pod", pod_spec([SIGNED]))))
        metrics = (await client.get("/metrics")).text
        assert 'vouch_admission_decisions_total{reason="mutated",result="allow"} 1.0' in metrics
        assert (await client.get("/healthz")).status_code == 200

    asyncio.run(go())


def test_owner_being_deleted_vouches_for_nothing(tmp_path: Path) -> None:
    """The attack: hold a Deployment with a finalizer, delete it, swap its
    template for an unsigned image (updates of objects being deleted are not
    blocked), then create a Pod owned by it with that image."""
    from kube_apiserver import KubeAPIServer
    from vouch.admission.kube import KubeClient

    with KubeAPIServer(tmp_path) as api:

        async def go() -> None:
            token = tmp_path / "token"
            token.write_text(api.token)
            kube = KubeClient.from_files(api.url, token, api.tls.ca_cert)
            client = await _client(tmp_path, owners=kube)
            deployment = workload("Deployment", pod_spec([PINNED]), finalizers=["hold"])
            stored = api.put(deployment)
            uid = stored["metadata"]["uid"]
            ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w", "uid": uid}
            child = workload("Pod", pod_spec([PINNED]), ownerReferences=[ref])
            assert (await _admit(client, review(child)))["allowed"] is True
            # being deleted, then its template swapped unchecked
            deleting = workload(
                "Deployment",
                pod_spec([UNSIGNED]),
                finalizers=["hold"],
                deletionTimestamp="2026-12-03T00:00:00Z",
            )
            assert (await _admit(client, review(deleting, "UPDATE")))["allowed"] is True
            api.put(deleting)
            evil = workload("Pod", pod_spec([UNSIGNED]), ownerReferences=[ref])
            answer = await _admit(client, review(evil))
            assert answer["allowed"] is False, answer
            await kube.aclose()

        asyncio.run(go())


def test_metrics_count_decisions_by_result_and_reason(tmp_path: Path) -> None:
    """Decisions by result and reason, latency, cache hits and misses, and
    trust-server errors (a trust server nobody listens on)."""
    from vouch.admission.policy import TrustPolicy
    from vouch.client.auth import TokenAuth
    from vouch.client.remote import Remote

    down = f"""
---
apiVersion: policy.vouch.dev/v1
kind: ImagePolicy
metadata: {{name: down, namespace: down}}
spec:
  repositories:
  - name: "{REGISTRY}/*"
    policy: {{trust: {{enabled: true, trustServer: "http://127.0.0.1:9"}}}}
"""

    async def go() -> None:
        stack = Stack(tmp_path)
        await _publish(stack, f"{REGISTRY}/app/web")

        def remotes(server: str, trust: TrustPolicy, auth: TokenAuth | None) -> Remote:
            return stack.remote() if server == "http://vouch.test" else Remote(server)

        engine = stack.engine(POLICIES + down)
        engine.remote_factory = remotes
        app = build_admission_app(Reviewer(engine))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://w")
        for obj in (
            workload("Pod", pod_spec([SIGNED])),
            workload("Pod", pod_spec([SIGNED])),
            workload("Pod", pod_spec([UNSIGNED])),
            workload("Pod", pod_spec(["quay.io/nobody/x:1"]), namespace="team"),
            workload("Pod", pod_spec([SIGNED]), namespace="down"),
        ):
            await _admit(client, review(obj))
        metrics = (await client.get("/metrics")).text
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line and not line.startswith("#")
        }
        decided = 'vouch_admission_decisions_total{{reason="{}",result="{}"}}'
        assert samples[decided.format("mutated", "allow")] == 2
        assert samples[decided.format("not-trusted", "deny")] == 1
        assert samples[decided.format("no-policy", "deny")] == 1
        assert samples[decided.format("trust-unavailable", "deny")] == 1
        assert samples["vouch_admission_review_duration_seconds_count"] == 5
        assert samples["vouch_admission_trust_cache_hits_total"] >= 1
        assert samples["vouch_admission_trust_cache_misses_total"] >= 2
        assert samples["vouch_admission_trust_server_errors_total"] == 1
        await engine.aclose()

    asyncio.run(go())


def test_pod_updates_check_only_new_images(tmp_path: Path) -> None:
    """A pod that predates the webhook (unsigned, unpinned image) gets a label or
    an ephemeral container (`kubectl debug`): only the new image is checked and
    patched, since the API server refuses any other change in those updates."""

    async def go() -> None:
        client = await _client(tmp_path)
        old = workload("Pod", pod_spec([UNSIGNED]))
        labelled = workload("Pod", pod_spec([UNSIGNED]), labels={"x": "y"})
        body = review(labelled, "UPDATE")
        body["request"]["oldObject"] = old
        answer = await _admit(client, body)
        assert answer["allowed"] is True and "patch" not in answer
        # kubectl debug with a signed image: only the ephemeral container is pinned
        debug = workload("Pod", pod_spec([UNSIGNED], ephemeral=[SIGNED]))
        body = review(debug, "UPDATE")
        body["request"]["oldObject"] = old
        body["request"]["subResource"] = "ephemeralcontainers"
        answer = await _admit(client, body)
        assert answer["allowed"] is True
        patch = json.loads(base64.b64decode(answer["patch"]))
        assert [op["path"] for op in patch if op["path"].endswith("/image")] == [
            "/spec/ephemeralContainers/0/image"
        ]
        # an unsigned debug image, or a container image changed to one, is denied
        evil = workload("Pod", pod_spec([UNSIGNED], ephemeral=[UNSIGNED]))
        body = review(evil, "UPDATE")
        body["request"]["oldObject"] = old
        assert (await _admit(client, body))["allowed"] is False
        swapped = workload("Pod", pod_spec([f"{REGISTRY}/app/web:v8"]))
        body = review(swapped, "UPDATE")
        body["request"]["oldObject"] = workload("Pod", pod_spec([SIGNED]))
        assert (await _admit(client, body))["allowed"] is False

    asyncio.run(go())
