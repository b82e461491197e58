"""Policy documents: Portieris' CRDs as they are, and vouch's own.

Portieris (``portieris.cloud.ibm.com/v1``, kinds ``ImagePolicy`` and
``ClusterImagePolicy``) is read unchanged so existing users migrate by
installing vouch. vouch's group (``policy.vouch.dev/v1``, same kinds) adds
what Portieris lacks: pinned trust roots, k-of-n signers, audit mode,
per-policy credentials and trust-server CA. Kubernetes ``Secret`` documents
in the same YAML stream feed ``signerSecrets`` and credentials outside a
cluster.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from vouch.tuf.keys import Key, public_key_from_crypto

PORTIERIS_API = "portieris.cloud.ibm.com/v1"
VOUCH_API = "policy.vouch.dev/v1"
POLICY_KINDS = ("ImagePolicy", "ClusterImagePolicy")
Mode = Literal["enforce", "audit"]


class PolicyError(ValueError):
    """A policy document that cannot be used (refused loudly, never ignored)."""


@dataclass(frozen=True, slots=True)
class Signer:
    """A required signer: delegation role ``targets/<name>`` with one of these keys."""

    name: str
    keys: tuple[Key, ...] = ()
    secret: str | None = None  # a Portieris signerSecret still to be resolved

    @property
    def role(self) -> str:
        return self.name if self.name.startswith("targets/") else f"targets/{self.name}"


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    enabled: bool = False
    trust_server: str | None = None
    signers: tuple[Signer, ...] = ()
    threshold: int | None = None  # how many of ``signers`` must have signed; None = all
    root_key_ids: tuple[str, ...] = ()  # pinned root certificate key IDs (no TOFU)
    root_ca: bytes | None = None  # pinned CA for root certificates (no TOFU)
    server_ca: bytes | None = None  # CA bundle for the trust server's TLS
    credentials_secret: str | None = None  # a dockerconfigjson Secret


@dataclass(frozen=True, slots=True)
class RulePolicy:
    trust: TrustPolicy | None = None
    mutate_image: bool = True
    mode: Mode = "enforce"
    unsupported: tuple[str, ...] = ()  # Portieris features vouch refuses to fake


@dataclass(frozen=True, slots=True)
class RepositoryRule:
    name: str
    policy: RulePolicy | None  # None: allowed without checks (Portieris' empty policy)


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    api_version: str
    kind: str
    name: str
    namespace: str | None
    repositories: tuple[RepositoryRule, ...]

    @property
    def namespaced(self) -> bool:
        return self.kind == "ImagePolicy"

    @property
    def label(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True, slots=True)
class SecretDocument:
    name: str
    namespace: str | None
    data: dict[str, bytes] = field(default_factory=dict)


def _b(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PolicyError(f"{what} must be true or false")
    return value


def _s(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a string")
    return value


def public_key_from_pem(pem: str | bytes, what: str = "publicKey") -> Key:
    """A bare TUF key for a PEM public key or certificate (compared by key material)."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        if b"CERTIFICATE" in data:
            obj: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            obj = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise PolicyError(f"{what} is not a PEM public key or certificate") from exc
    if not isinstance(obj, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise PolicyError(f"{what}: unsupported key type")
    return public_key_from_crypto(obj)


def _pem_certificates(value: Any, what: str) -> bytes | None:
    """A PEM bundle of one or more certificates, refused when the policy is
    loaded rather than when the first image needs it."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a PEM string")
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError as exc:
        raise PolicyError(f"{what} is not a PEM certificate bundle") from exc
    return value.encode()


def _signers(raw: Any, where: str) -> tuple[Signer, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError(f"{where}: signers must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise PolicyError(f"{where}: signers[{i}] needs a name")
        keys = []
        if item.get("publicKey"):
            keys.append(public_key_from_pem(item["publicKey"], f"{where}: signers[{i}].publicKey"))
        for pem in item.get("publicKeys") or []:
            keys.append(public_key_from_pem(pem, f"{where}: signers[{i}].publicKeys"))
        if not keys:
            raise PolicyError(f"{where}: signers[{i}] needs publicKey")
        out.append(Signer(item["name"], tuple(keys)))
    return tuple(out)


def _trust(raw: Any, where: str, vouch: bool) -> TrustPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: trust must be an object")
    signers: tuple[Signer, ...] = ()
    for i, s in enumerate(raw.get("signerSecrets") or []):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise PolicyError(f"{where}: signerSecrets[{i}] needs a name")
        signers += (Signer(name="", secret=s["name"]),)
    threshold = raw.get("threshold") if vouch else None
    if threshold is not None and (not isinstance(threshold, int) or threshold < 1):
        raise PolicyError(f"{where}: threshold must be a positive integer")
    if vouch:
        signers += _signers(raw.get("signers"), where)
        if threshold is not None and threshold > len(signers):
            raise PolicyError(f"{where}: threshold {threshold} exceeds the {len(signers)} signers")
    root_ids = raw.get("rootKeyIDs") or [] if vouch else []
    if not isinstance(root_ids, list) or not all(isinstance(x, str) for x in root_ids):
        raise PolicyError(f"{where}: rootKeyIDs must be a list of key IDs")
    return TrustPolicy(
        enabled=_b(raw.get("enabled"), f"{where}: trust.enabled"),
        trust_server=_s(raw.get("trustServer"), f"{where}: trust.trustServer"),
        signers=signers,
        threshold=threshold,
        root_key_ids=tuple(root_ids),
        root_ca=_pem_certificates(raw.get("rootCA"), f"{where}: rootCA") if vouch else None,
        server_ca=_pem_certificates(raw.get("trustServerCA"), f"{where}: trustServerCA")
        if vouch
        else None,
        credentials_secret=_s(raw.get("credentialsSecret"), f"{where}: credentialsSecret")
        if vouch
        else None,
    )


def _rule_policy(raw: Any, where: str, vouch: bool) -> RulePolicy | None:
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: policy must be an object")
    unsupported = []
    if raw.get("simple") and (raw["simple"].get("requirements") or raw["simple"].get("storeURL")):
        unsupported.append("simple signing (Red Hat signatures)")
    vuln = raw.get("vulnerability") or raw.get("va")
    if isinstance(vuln, dict) and any(
        (isinstance(v, dict) and v.get("enabled")) or v is True for v in vuln.values()
    ):
        unsupported.append("vulnerability advisor")
    raw_mode = raw.get("mode", "enforce") if vouch else "enforce"
    if raw_mode not in ("enforce", "audit"):
        raise PolicyError(f"{where}: mode must be enforce or audit")
    mode: Mode = "audit" if raw_mode == "audit" else "enforce"
    mutate = raw.get("mutateImage", True)
    if not isinstance(mutate, bool):
        raise PolicyError(f"{where}: mutateImage must be true or false")
    return RulePolicy(
        trust=_trust(raw.get("trust"), where, vouch),
        mutate_image=mutate,
        mode=mode,
        unsupported=tuple(unsupported),
    )


def parse_policy(doc: dict[str, Any]) -> PolicyDocument:
    api = doc.get("apiVersion")
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    name = meta.get("name") or "(unnamed)"
    if api not in (PORTIERIS_API, VOUCH_API) or kind not in POLICY_KINDS:
        raise PolicyError(f"not an image policy: {api}/{kind}")
    vouch = api == VOUCH_API
    where = f"{kind} {name}"
    spec = doc.get("spec") or {}
    repos = spec.get("repositories")
    if repos is None:
        repos = []
    if not isinstance(repos, list):
        raise PolicyError(f"{where}: spec.repositories must be a list")
    rules = []
    for i, r in enumerate(repos):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not r["name"]:
            raise PolicyError(f"{where}: repositories[{i}] needs a name")
        rules.append(
            RepositoryRule(r["name"], _rule_policy(r.get("policy"), f"{where} {r['name']}", vouch))
        )
    namespace = meta.get("namespace") if kind == "ImagePolicy" else None
    if kind == "ImagePolicy" and not namespace:
        namespace = "default"
    return PolicyDocument(api, kind, name, namespace, tuple(rules))


def parse_secret(doc: dict[str, Any]) -> SecretDocument:
    meta = doc.get("metadata") or {}
    data: dict[str, bytes] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(str(value), validate=True)
        except ValueError as exc:
            raise PolicyError(f"Secret {meta.get('name')}: data.{key} is not base64") from exc
    for key, value in (doc.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return SecretDocument(meta.get("name", ""), meta.get("namespace"), data)


@dataclass
class PolicySet:
    documents: list[PolicyDocument] = field(default_factory=list)
    secrets: list[SecretDocument] = field(default_factory=list)

    def secret(self, name: str, namespace: str | None) -> SecretDocument | None:
        for s in self.secrets:
            if s.name == name and (s.namespace in (namespace, None) or namespace is None):
                return s
        return None


def load_policies(text: str) -> PolicySet:
    """Every policy and Secret in a YAML stream (other kinds are ignored)."""
    out = PolicySet()
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise PolicyError(f"invalid YAML: {exc}") from exc
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise PolicyError("every YAML document must be an object")
        items = doc.get("items") if doc.get("kind", "").endswith("List") else [doc]
        for item in items or []:
            kind = item.get("kind")
            if kind in POLICY_KINDS:
                out.documents.append(parse_policy(item))
            elif kind == "Secret":
                out.secrets.append(parse_secret(item))
    return out


def resolve_signers(
    trust: TrustPolicy, policies: PolicySet, namespace: str | None
) -> tuple[Signer, ...]:
    """Portieris ``signerSecrets`` → signers (``name`` and ``publicKey`` fields)."""
    out = []
    for signer in trust.signers:
        if signer.secret is None:
            out.append(signer)
            continue
        secret = policies.secret(signer.secret, namespace)
        if secret is None:
            raise PolicyError(f"signer secret {signer.secret} not found in namespace {namespace}")
        name = secret.data.get("name", b"").decode().strip()
        pem = secret.data.get("publicKey", b"")
        if not name or not pem:
            raise PolicyError(f"signer secret {signer.secret} needs 'name' and 'publicKey'")
        out.append(Signer(name, (public_key_from_pem(pem, f"secret {signer.secret}"),)))
    return tuple(out)
