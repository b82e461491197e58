"""AdmissionReview handling: what to check in a workload, and the answer.

Kubernetes sends an AdmissionReview (v1) for each create or update of a Pod
or a workload; every container image in it (containers, initContainers,
ephemeralContainers) goes through the engine, in parallel and deduplicated,
under a deadline below the webhook's timeout. Allowed images are pinned to
their signed digest with a JSON patch (``name:tag@sha256:…``, the original
references kept in an annotation); any denial denies the request and names
every failing image. Fail closed: an internal error or a timeout denies.

Known Portieris bypasses are closed here: objects with zero replicas are
checked like any other; an owner reference is only honoured if the owner
exists with that UID, is not being deleted, and carries every image of the
object; updates of objects being deleted are never blocked (they cannot
start containers, and such an owner vouches for no child).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vouch.admission.engine import Engine, ImageDecision
from vouch.admission.kube import docker_credentials
from vouch.admission.policy import SecretDocument
from vouch.client.auth import Credentials

log = logging.getLogger("vouch.admission")

ORIGINAL_ANNOTATION = "vouch.dev/original-images"
NOT_READY = "image policies are not loaded from the Kubernetes API yet; denied (fail closed)"
CONTAINER_TYPES = ("initContainers", "containers", "ephemeralContainers")
# Where the pod spec lives in each kind the webhook handles.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


class SecretSource(Protocol):
    """Reads pull secrets and service accounts (the webhook's Kubernetes client)."""

    async def secret(self, namespace: str, name: str) -> SecretDocument | None: ...

    async def service_account_pull_secrets(self, namespace: str, name: str) -> list[str]: ...


class OwnerLookup(Protocol):
    """Reads an owner object from the Kubernetes API (None if it does not exist)."""

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class ContainerImage:
    path: str  # JSON pointer to the image field
    image: str


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def pod_spec(obj: dict[str, Any], kind: str) -> tuple[dict[str, Any] | None, str]:
    path = POD_SPEC_PATHS.get(kind)
    if path is None:
        return None, ""
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), "/" + "/".join(path)


def images_of(obj: dict[str, Any], kind: str) -> list[ContainerImage]:
    spec, base = pod_spec(obj, kind)
    if spec is None:
        return []
    out = []
    for ctype in CONTAINER_TYPES:
        for i, container in enumerate(spec.get(ctype) or []):
            image = container.get("image") if isinstance(container, dict) else None
            if isinstance(image, str) and image.strip():
                out.append(ContainerImage(f"{base}/{ctype}/{i}/image", image))
    return out


@dataclass
class ReviewResult:
    uid: str
    allowed: bool
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    patch: list[dict[str, Any]] = field(default_factory=list)
    reason: str = "allowed"

    def response(self) -> dict[str, Any]:
        body: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if not self.allowed:
            body["status"] = {
                "code": 403,
                "reason": "Forbidden",
                "message": "\n" + "\n".join(self.messages),
            }
        if self.warnings:
            body["warnings"] = self.warnings
        if self.patch and self.allowed:
            body["patchType"] = "JSONPatch"
            body["patch"] = base64.b64encode(json.dumps(self.patch).encode()).decode()
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": body}


class Reviewer:
    def __init__(
        self,
        engine: Engine,
        *,
        owners: OwnerLookup | None = None,
        secrets: SecretSource | None = None,
        deadline: float = 8.0,
        observe: Callable[[bool, str, float], None] | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.engine = engine
        # Set once the policies are loaded (in a cluster: the first complete
        # list); until then a review waits for it within the deadline.
        self.ready = ready
        self.owners = owners
        self.secrets = secrets
        self.deadline = deadline
        self.observe = observe

    async def review(self, review: dict[str, Any]) -> ReviewResult:
        start = time.monotonic()
        request = review.get("request") if isinstance(review, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
            raise ValueError("not an AdmissionReview request")
        result = await self._review(request)
        if self.observe is not None:
            self.observe(result.allowed, result.reason, time.monotonic() - start)
        return result

    async def _review(self, request: dict[str, Any]) -> ReviewResult:
        uid = request["uid"]
        operation = request.get("operation")
        obj = request.get("object") or {}
        kind = (request.get("kind") or {}).get("kind") or obj.get("kind", "")
        namespace = request.get("namespace") or (obj.get("metadata") or {}).get("namespace")
        if operation == "DELETE" or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return ReviewResult(uid, True, reason="deleting")
        if kind not in POD_SPEC_PATHS:
            return ReviewResult(uid, True, reason="unsupported-kind")
        images = images_of(obj, kind)
        old = request.get("oldObject")
        if operation == "UPDATE" and kind == "Pod" and isinstance(old, dict):
            # A running pod's containers cannot be restarted with another image
            # except by changing it: only images new in this update are checked
            # (and pinned). Re-checking the others would deny `kubectl debug`
            # (the ephemeralcontainers subresource may change nothing else) or
            # a label change on pods started before a tag was re-signed, and
            # pinning them would restart containers that predate the webhook.
            before = {(c.path, c.image) for c in images_of(old, kind)}
            images = [c for c in images if (c.path, c.image) not in before]
        if not images:
            return ReviewResult(uid, True, reason="no-images")
        started = time.monotonic()
        if self.ready is not None and not self.ready.is_set():
            try:
                await asyncio.wait_for(self.ready.wait(), timeout=self.deadline)
            except TimeoutError:
                return ReviewResult(
                    uid,
                    False,
                    [NOT_READY],
                    reason="not-ready",
                )
        if await self._owned_by_verified_parent(obj, namespace, images):
            return ReviewResult(uid, True, reason="owner")
        remaining = max(0.0, self.deadline - (time.monotonic() - started))
        decisions, late = await self._decide(
            {c.image for c in images}, namespace, obj, kind, remaining
        )
        if late:
            # Fail closed, naming what could not be verified in time (and
            # anything already denied).
            messages = [
                f"verification of {image!r} timed out after {self.deadline:.1f}s; "
                "denied (fail closed)"
                for image in late
            ]
            for d in decisions.values():
                if not d.allowed:
                    messages.extend(d.reasons)
            return ReviewResult(uid, False, messages, reason="timeout")
        result = ReviewResult(uid, True)
        originals: dict[str, str] = {}
        for container in images:
            d = decisions[container.image]
            result.warnings.extend(d.warnings)
            if not d.allowed:
                result.allowed = False
                result.messages.extend(m for m in d.reasons if m not in result.messages)
            elif d.pinned and d.pinned != container.image:
                result.patch.append({"op": "replace", "path": container.path, "value": d.pinned})
                originals[container.path] = container.image
        if not result.allowed:
            # the first failing image's category: no-policy, not-trusted, ...
            result.reason = (
                next(
                    (decisions[c.image].category for c in images if not decisions[c.image].allowed),
                    "denied",
                )
                or "denied"
            )
            result.patch = []
            return result
        if originals:
            result.patch.append(_annotation_op(obj, json.dumps(originals, sort_keys=True)))
            result.reason = "mutated"
        return result

    async def _decide(
        self,
        images: set[str],
        namespace: str | None,
        obj: dict[str, Any],
        kind: str,
        timeout: float,
    ) -> tuple[dict[str, ImageDecision], list[str]]:
        """The decisions made within ``timeout``, and the images left undecided."""
        ordered = sorted(images)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            creds = await asyncio.wait_for(self._credentials(obj, kind, namespace), timeout)
        except TimeoutError:
            return {}, ordered
        tasks = {i: loop.create_task(self.engine.check(i, namespace, creds)) for i in ordered}
        _, pending = await asyncio.wait(tasks.values(), timeout=max(0.0, end - loop.time()))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        late = [i for i in ordered if tasks[i] in pending]
        return {i: tasks[i].result() for i in ordered if tasks[i] not in pending}, late

    async def _credentials(
        self, obj: dict[str, Any], kind: str, namespace: str | None
    ) -> dict[str, Credentials]:
        """Registry logins from the pod's imagePullSecrets, else its service
        account's, as the kubelet would use them; anonymous when there are none."""
        if self.secrets is None or namespace is None:
            return {}
        spec, _ = pod_spec(obj, kind)
        spec = spec or {}
        names = [s.get("name") for s in spec.get("imagePullSecrets") or [] if isinstance(s, dict)]
        if not names:
            account = spec.get("serviceAccountName") or "default"
            try:
                names = list(await self.secrets.service_account_pull_secrets(namespace, account))
            except Exception as exc:  # no service account: anonymous
                log.info("cannot read service account %s/%s: %s", namespace, account, exc)
                names = []
        out: dict[str, Credentials] = {}
        for name in names:
            if not isinstance(name, str):
                continue
            try:
                secret = await self.secrets.secret(namespace, name)
            except Exception as exc:  # a missing pull secret is the kubelet's problem too
                log.info("cannot read pull secret %s/%s: %s", namespace, name, exc)
                continue
            if secret is not None:
                for host, login in docker_credentials(secret).items():
                    out.setdefault(host, login)
        return out

    async def _owned_by_verified_parent(
        self, obj: dict[str, Any], namespace: str | None, images: list[ContainerImage]
    ) -> bool:
        """True only if an owner exists with the referenced UID and holds every
        image of this object (so they were verified when the owner was admitted)."""
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if self.owners is None or not owners:
            return False
        for ref in owners:
            kind = ref.get("kind")
            if kind not in POD_SPEC_PATHS:
                continue
            try:
                owner = await self.owners.get(
                    ref.get("apiVersion", ""), kind, namespace, ref.get("name", "")
                )
            except Exception as exc:  # an unreadable owner proves nothing
                log.warning("cannot read owner %s/%s: %s", kind, ref.get("name"), exc)
                continue
            meta = (owner or {}).get("metadata") or {}
            if owner is None or meta.get("uid") != ref.get("uid"):
                continue
            if meta.get("deletionTimestamp"):
                # Updates of objects being deleted are admitted unchecked, so
                # an owner being deleted may carry images nobody verified.
                continue
            owner_images = {c.image for c in images_of(owner, kind)}
            if {c.image for c in images} <= owner_images:
                return True
        return False


def _annotation_op(obj: dict[str, Any], value: str) -> dict[str, Any]:
    annotations = (obj.get("metadata") or {}).get("annotations")
    if annotations is None:
        return {"op": "add", "path": "/metadata/annotations", "value": {ORIGINAL_ANNOTATION: value}}
    return {
        "op": "add",
        "path": f"/metadata/annotations/{_escape(ORIGINAL_ANNOTATION)}",
        "value": value,
    }


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
