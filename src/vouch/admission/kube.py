"""The few Kubernetes API calls the webhook needs, over httpx.

In a cluster the webhook watches its policies (both policy groups) and the
Secrets they name (:mod:`vouch.admission.cluster`), and reads the pods'
service accounts and pull secrets and the owners of objects it is asked
about, with its service account's token. No
client library: the API surface used is small and stable, and this keeps
the webhook's dependencies to the ones the server already has.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx

from vouch.admission.policy import SecretDocument
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


class TokenFile(httpx.Auth):
    """A bearer token read from a file and re-read when it is rotated.

    The kubelet replaces a projected service-account token well before it
    expires (an atomic symlink swap); the file is re-read when its mtime
    changes, at least every ``max_age`` seconds, and once more on a 401.
    """

    def __init__(self, path: Path, max_age: float = 60.0) -> None:
        self.path = path
        self.max_age = max_age
        self._token = ""
        self._stamp: tuple[int, float] = (-1, 0.0)  # (mtime_ns, when read)

    def token(self, *, force: bool = False) -> str:
        mtime = self.path.stat().st_mtime_ns
        now = time.monotonic()
        if force or mtime != self._stamp[0] or now - self._stamp[1] > self.max_age:
            self._token = self.path.read_text().strip()
            self._stamp = (mtime, now)
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        used = self.token()
        request.headers["Authorization"] = f"Bearer {used}"
        response = yield request
        if response.status_code == 401 and self.token(force=True) != used:
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


class KubeClient:
    """An authenticated client for the API server (in-cluster by default)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
        auth: httpx.Auth | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            auth=auth,
            verify=verify,
            timeout=5.0,
            # one long-lived connection per watch, plus the reads
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )

    @classmethod
    def from_files(cls, base_url: str, token_file: Path, ca_file: Path) -> KubeClient:
        """A client authenticated by a (rotating) token file, trusting one CA file."""
        if not token_file.is_file():
            raise RuntimeError(f"no service-account token at {token_file}")
        context = ssl.create_default_context(cafile=str(ca_file))
        return cls(base_url, verify=context, auth=TokenFile(token_file))

    @classmethod
    def in_cluster(cls) -> KubeClient:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not running in a cluster (KUBERNETES_SERVICE_HOST is not set)")
        if ":" in host:
            host = f"[{host}]"
        return cls.from_files(f"https://{host}:{port}", SA_DIR / "token", SA_DIR / "ca.crt")

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
