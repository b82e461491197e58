"""The few Kubernetes API calls the webhook needs, over httpx.

In a cluster the webhook reads its policies (both policy groups), the
Secrets they name, the pods' service accounts and pull secrets, and the
owners of objects it is asked about, with its service account's token. No
client library: the API surface used is small and stable, and this keeps
the webhook's dependencies to the ones the server already has.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx

from vouch.admission.policy import (
    PORTIERIS_API,
    VOUCH_API,
    PolicyDocument,
    PolicyError,
    PolicySet,
    SecretDocument,
    parse_policy,
)
from vouch.client.auth import Credentials

log = logging.getLogger("vouch.admission")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# kind → (API path prefix, plural) for the owner kinds the webhook resolves.
RESOURCES = {
    "Pod": ("api", "pods"),
    "ReplicationController": ("api", "replicationcontrollers"),
    "Deployment": ("apis", "deployments"),
    "ReplicaSet": ("apis", "replicasets"),
    "StatefulSet": ("apis", "statefulsets"),
    "DaemonSet": ("apis", "daemonsets"),
    "Job": ("apis", "jobs"),
    "CronJob": ("apis", "cronjobs"),
}
DOCKER_HUB_ALIASES = (
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
)


class KubeClient:
    """An authenticated client for the API server (in-cluster by default)."""

    def __init__(self, base_url: str, token: str | None, *, verify: str | bool = True) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=headers, verify=verify, timeout=5.0
        )

    @classmethod
    def in_cluster(cls) -> KubeClient:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not running in a cluster (KUBERNETES_SERVICE_HOST is not set)")
        token = (SA_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token, verify=str(SA_DIR / "ca.crt"))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str) -> dict[str, Any] | None:
        resp = await self.http.get(path)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        body = resp.json()
        return body if isinstance(body, dict) else None

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """An owner object, for the webhook's owner check."""
        prefix, plural = RESOURCES.get(kind, ("", ""))
        if not plural or not name or "/" in name:
            return None
        ns = f"/namespaces/{namespace}" if namespace else ""
        return await self._get(f"/{prefix}/{api_version}{ns}/{plural}/{name}")

    async def secret(self, namespace: str, name: str) -> SecretDocument | None:
        body = await self._get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if body is None:
            return None
        data = {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
        return SecretDocument(name, namespace, data)

    async def service_account_pull_secrets(self, namespace: str, name: str) -> list[str]:
        body = await self._get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        return [s["name"] for s in (body or {}).get("imagePullSecrets") or [] if s.get("name")]

    async def policies(self) -> PolicySet:
        """Every ImagePolicy and ClusterImagePolicy of both groups, and the
        Secrets their signerSecrets and credentialsSecret name."""
        out = PolicySet()
        for api in (PORTIERIS_API, VOUCH_API):
            for plural in ("imagepolicies", "clusterimagepolicies"):
                body = await self._get(f"/apis/{api}/{plural}")
                for item in (body or {}).get("items") or []:
                    kind = "ImagePolicy" if plural == "imagepolicies" else "ClusterImagePolicy"
                    item.setdefault("apiVersion", api)
                    item.setdefault("kind", kind)
                    try:
                        out.documents.append(parse_policy(item))
                    except PolicyError as exc:
                        # A broken policy must not widen access: keep it as an
                        # empty rule set (a namespace's only ImagePolicy still
                        # makes the cluster policies not apply, and matches nothing).
                        log.error("invalid %s kept as deny-all: %s", kind, exc)
                        meta = item.get("metadata") or {}
                        namespace = meta.get("namespace") if kind == "ImagePolicy" else None
                        out.documents.append(
                            PolicyDocument(api, kind, meta.get("name", "?"), namespace, ())
                        )
        wanted: set[tuple[str, str]] = set()
        for doc in out.documents:
            for rule in doc.repositories:
                trust = rule.policy.trust if rule.policy else None
                if trust is None:
                    continue
                for signer in trust.signers:
                    if signer.secret:
                        wanted.add((doc.namespace or "", signer.secret))
                if trust.credentials_secret:
                    wanted.add((doc.namespace or "", trust.credentials_secret))
        for namespace, name in sorted(wanted):
            if namespace:
                secret = await self.secret(namespace, name)
                if secret is not None:
                    out.secrets.append(secret)
        return out


def docker_credentials(secret: SecretDocument) -> dict[str, Credentials]:
    """Registry host → credentials from a ``kubernetes.io/dockerconfigjson`` (or
    legacy ``.dockercfg``) Secret; Docker Hub's aliases all map to docker.io."""
    raw = secret.data.get(".dockerconfigjson") or secret.data.get(".dockercfg")
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    auths = doc.get("auths", doc) if isinstance(doc, dict) else {}
    out: dict[str, Credentials] = {}
    for server, entry in (auths or {}).items():
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username", ""), entry.get("password", "")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                continue
        host = server.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if server in DOCKER_HUB_ALIASES or host in DOCKER_HUB_ALIASES:
            host = "docker.io"
        out[host] = Credentials(user, password, entry.get("identitytoken"), f"secret {secret.name}")
    return out


class PolicyWatcher:
    """Keeps the engine's policies current by re-reading them from the API.

    Re-reading every ``interval`` seconds bounds how long a policy change takes
    to apply; a failed read keeps the last good policies (never none).
    """

    def __init__(self, client: KubeClient, apply: Any, interval: float = 5.0) -> None:
        self.client = client
        self.apply = apply
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        self.apply(await self.client.policies())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as exc:  # keep the last good policies
                log.warning("cannot refresh policies: %s", exc)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
