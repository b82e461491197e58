"""The webhook's Kubernetes reads, against a fake API server (httpx mock transport)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx

from vouch.admission.engine import Engine
from vouch.admission.kube import KubeClient, docker_credentials
from vouch.admission.policy import SecretDocument

CLUSTER_ALLOW = {
    "apiVersion": "portieris.cloud.ibm.com/v1",
    "kind": "ClusterImagePolicy",
    "metadata": {"name": "allow-all"},
    "spec": {"repositories": [{"name": "*"}]},
}
BROKEN_NS = {
    "metadata": {"name": "broken", "namespace": "team"},
    "spec": {"repositories": [{"policy": {"trust": {"enabled": "yes"}}}]},
}


def fake_api(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == "/apis/portieris.cloud.ibm.com/v1/clusterimagepolicies":
        return httpx.Response(200, json={"items": [CLUSTER_ALLOW]})
    if path == "/apis/portieris.cloud.ibm.com/v1/imagepolicies":
        return httpx.Response(200, json={"items": [BROKEN_NS]})
    if path.startswith("/apis/") and path.endswith("policies"):
        return httpx.Response(200, json={"items": []})
    if path == "/api/v1/namespaces/team/serviceaccounts/default":
        return httpx.Response(200, json={"imagePullSecrets": [{"name": "regcred"}]})
    if path == "/api/v1/namespaces/team/secrets/regcred":
        cfg = {
            "auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p").decode()}}
        }
        data = {".dockerconfigjson": base64.b64encode(json.dumps(cfg).encode()).decode()}
        return httpx.Response(200, json={"data": data})
    return httpx.Response(404, json={})


def client() -> KubeClient:
    kube = KubeClient("https://api.test", "token")
    kube.http = httpx.AsyncClient(
        base_url="https://api.test", transport=httpx.MockTransport(fake_api)
    )
    return kube


def test_invalid_namespace_policy_denies_instead_of_widening() -> None:
    async def go() -> None:
        kube = client()
        policies = await kube.policies()
        engine = Engine(policies)
        other = await engine.check("nginx:1", "elsewhere")
        assert other.allowed  # the cluster policy applies outside "team"
        team = await engine.check("nginx:1", "team")
        assert not team.allowed  # the broken ImagePolicy still makes "team" exclusive
        await kube.aclose()

    asyncio.run(go())


def test_pull_secret_credentials_are_normalised() -> None:
    async def go() -> None:
        kube = client()
        names = await kube.service_account_pull_secrets("team", "default")
        secret = await kube.secret("team", names[0])
        assert secret is not None
        creds = docker_credentials(secret)
        assert set(creds) == {"docker.io"} and creds["docker.io"].username == "u"
        assert await kube.get("apps/v1", "Deployment", "team", "missing") is None
        await kube.aclose()

    asyncio.run(go())


def test_legacy_dockercfg_and_garbage() -> None:
    legacy = SecretDocument(
        "s",
        "ns",
        {".dockercfg": json.dumps({"quay.io": {"username": "a", "password": "b"}}).encode()},
    )
    assert docker_credentials(legacy)["quay.io"].password == "b"
    assert docker_credentials(SecretDocument("s", "ns", {".dockerconfigjson": b"{not json"})) == {}
