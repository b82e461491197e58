"""The webhook's policies in a cluster: watched through the Kubernetes API.

Four policy collections are listed and watched (``ImagePolicy`` and
``ClusterImagePolicy`` of Portieris' group and of vouch's), and one watch
per Secret the policies name (``signerSecrets``, ``credentialsSecret``),
with a ``metadata.name`` field selector so the webhook never receives the
cluster's other Secrets. An ImagePolicy's Secrets are in its namespace; a
ClusterImagePolicy's are looked up in the namespace of the workload, so they
are watched in every namespace by name.

Every event rebuilds the :class:`PolicySet` the engine decides with, before
the next event is read: a deleted policy or a rotated signer key applies to
the very next admission request. The Secret watches follow the policies:
started when a policy starts naming a Secret, stopped when none does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from vouch.admission.kube import KubeClient
from vouch.admission.policy import (
    PORTIERIS_API,
    VOUCH_API,
    PolicyDocument,
    PolicyError,
    PolicySet,
    SecretDocument,
    parse_policy,
    parse_secret,
)
from vouch.admission.watch import Collection, Key, Reflector

log = logging.getLogger("vouch.admission")

POLICY_COLLECTIONS = tuple(
    (api, kind, f"/apis/{api}/{plural}")
    for api in (PORTIERIS_API, VOUCH_API)
    for kind, plural in (
        ("ImagePolicy", "imagepolicies"),
        ("ClusterImagePolicy", "clusterimagepolicies"),
    )
)


def policy_document(item: dict[str, Any], api: str, kind: str) -> PolicyDocument:
    """A listed or watched policy object; an invalid one becomes deny-all.

    A broken policy must not widen access: it is kept as an empty rule set
    (a namespace's only ImagePolicy still makes the cluster policies not
    apply there, and matches nothing).
    """
    item = {"apiVersion": api, "kind": kind, **item}
    try:
        return parse_policy(item)
    except PolicyError as exc:
        log.error("invalid %s kept as deny-all: %s", kind, exc)
        meta = item.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if kind == "ImagePolicy" else None
        return PolicyDocument(api, kind, meta.get("name", "?"), namespace, ())


def referenced_secrets(documents: list[PolicyDocument]) -> set[Key]:
    """(namespace, name) of every Secret the policies name; namespace "" for
    a ClusterImagePolicy's (any namespace)."""
    wanted: set[Key] = set()
    for doc in documents:
        for rule in doc.repositories:
            trust = rule.policy.trust if rule.policy else None
            if trust is None:
                continue
            names = [s.secret for s in trust.signers if s.secret]
            if trust.credentials_secret:
                names.append(trust.credentials_secret)
            for name in names:
                assert name is not None
                wanted.add((doc.namespace or "", name))
    return wanted


def secret_collection(namespace: str, name: str) -> Collection:
    path = f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"
    return Collection(path, field_selector=f"metadata.name={name}")


class PolicyWatcher:
    """Keeps ``apply(PolicySet)`` fed with the cluster's current policies.

    ``ready`` is set once every policy collection and every Secret the
    policies name have been listed completely (a missing CRD counts as
    listed, empty); it stays set afterwards, when the last known state is
    served while the watches reconnect.
    """

    def __init__(
        self, kube: KubeClient, apply: Callable[[PolicySet], None], **options: Any
    ) -> None:
        self.kube = kube
        self.apply = apply
        self.options = options
        self.ready = asyncio.Event()
        self.policies = [
            (api, kind, Reflector(kube, Collection(path), self._changed, **options))
            for api, kind, path in POLICY_COLLECTIONS
        ]
        self.secrets: dict[Key, Reflector] = {}
        self._tasks: dict[Reflector, asyncio.Task[None]] = {}
        self._parsed: dict[tuple[str, Key], tuple[str | None, PolicyDocument]] = {}
        self.current = PolicySet()

    def start(self) -> None:
        for _, _, reflector in self.policies:
            self._start(reflector)

    def _start(self, reflector: Reflector) -> None:
        self._tasks[reflector] = asyncio.get_running_loop().create_task(reflector.run())

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # -- every change ----------------------------------------------------------

    def _changed(self) -> None:
        documents = self._documents()
        self._follow_secrets(referenced_secrets(documents))
        secrets: dict[Key, SecretDocument] = {}
        for reflector in self.secrets.values():
            for key, item in reflector.items.items():
                try:
                    secrets[key] = parse_secret(item)
                except PolicyError as exc:
                    log.error("%s", exc)
        self.current = PolicySet(documents, list(secrets.values()))
        self.apply(self.current)
        if not self.ready.is_set() and all(
            r.synced.is_set() for r in [*(r for _, _, r in self.policies), *self.secrets.values()]
        ):
            log.info("policies listed: %d documents, %d secrets", len(documents), len(secrets))
            self.ready.set()

    def _documents(self) -> list[PolicyDocument]:
        out, seen = [], set()
        for api, kind, reflector in self.policies:
            for key, item in reflector.items.items():
                meta = item.get("metadata") or {}
                cache_key = (reflector.collection.path, key)
                seen.add(cache_key)
                rv = meta.get("resourceVersion")
                hit = self._parsed.get(cache_key)
                if hit is None or hit[0] != rv or rv is None:
                    hit = (rv, policy_document(item, api, kind))
                    self._parsed[cache_key] = hit
                out.append(hit[1])
        for stale in set(self._parsed) - seen:
            del self._parsed[stale]
        out.sort(key=lambda d: (d.api_version, d.kind, d.namespace or "", d.name))
        return out

    def _follow_secrets(self, wanted: set[Key]) -> None:
        for key in sorted(wanted - self.secrets.keys()):
            reflector = Reflector(self.kube, secret_collection(*key), self._changed, **self.options)
            self.secrets[key] = reflector
            self._start(reflector)
        for key in self.secrets.keys() - wanted:
            reflector = self.secrets.pop(key)
            task = self._tasks.pop(reflector, None)
            if task is not None:
                task.cancel()
