"""The Kubernetes manifests in deploy/: rendered, schema-checked, and held to
their promises.

Every kustomize overlay is rendered with the real ``kubectl kustomize`` (the
test fails, never skips, without kubectl: ``.ci/run`` installs Debian's
``kubernetes-client``) and every object is validated against the Kubernetes
API schemas of the oldest supported and of the latest Kubernetes version
(``kubernetes-validate``, strict: unknown fields are errors), cert-manager
objects against the part of cert-manager's API they use. Then the
invariants: the webhook never sees its own namespace, fails closed, times out
after the webhook's internal deadline, the base is unarmed; the admission
Deployment is highly available; RBAC is read-only and has no wildcards. The
policy CRDs must accept the examples in docs/admission.md (which vouch's
policy parser must load too), and the Helm chart, rendered here with a tiny
Go-template subset, must produce the same objects as the kustomize overlays.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vouch.admission.policy import (
    POLICY_KINDS,
    PORTIERIS_API,
    VOUCH_API,
    load_policies,
    resolve_signers,
)
from vouch.cli.policy_cmd import policy as policy_group

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
CHART = DEPLOY / "helm" / "vouch"
DOCS = ROOT / "docs" / "admission.md"
OVERLAYS = ("cert-manager", "cert-manager-armed", "generated-certs", "generated-certs-armed")
UNARMED = ("base", "cert-manager", "generated-certs")
ARMED = ("cert-manager-armed", "generated-certs-armed")
NAMESPACE = "vouch-system"
#: The oldest Kubernetes the manifests support (the chart's kubeVersion) and the
#: newest one kubernetes-validate knows.
K8S_VERSIONS = ("1.25", kubernetes_validate.latest_version())
WORKLOAD_RESOURCES = {
    "pods",
    "deployments",
    "replicasets",
    "replicationcontrollers",
    "statefulsets",
    "daemonsets",
    "jobs",
    "cronjobs",
}
#: Secrets the operator creates (credentials); every other Secret a pod uses
#: must come from the overlay (cert-manager Certificates or generated files).
OPERATOR_SECRETS = {"vouch-server-storage", "vouch-signer-storage"}
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
}

Obj = dict[str, Any]
Key = tuple[str, str, str | None, str]


def key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


def by_key(objs: list[Obj]) -> dict[Key, Obj]:
    out: dict[Key, Obj] = {}
    for obj in objs:
        assert key(obj) not in out, f"duplicate object {key(obj)}"
        out[key(obj)] = obj
    return out


def only(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def webhook(objs: list[Obj]) -> Obj:
    config = only(objs, "MutatingWebhookConfiguration", "vouch-admission")
    assert len(config["webhooks"]) == 1
    return config["webhooks"][0]


def normalise(obj: Obj) -> Obj:
    """kustomize v5 wraps base64 at 76 columns, v2 does not; the API server
    ignores the line breaks, so does the comparison."""
    obj = copy.deepcopy(obj)
    if obj["kind"] == "Secret":
        obj["data"] = {k: re.sub(r"\s", "", v) for k, v in (obj.get("data") or {}).items()}
    if obj["kind"] == "MutatingWebhookConfiguration":
        for hook in obj["webhooks"]:
            cc = hook["clientConfig"]
            if "caBundle" in cc:
                cc["caBundle"] = re.sub(r"\s", "", cc["caBundle"])
    return obj


# -- rendering ------------------------------------------------------------------


def _kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl is required to render deploy/kustomize (apt-get install "
            "kubernetes-client; .ci/run does)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def kustomize_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kustomize with certificates from gencerts.sh (which the
    generated-certs overlays need; real ones are never committed)."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is required by gencerts.sh (apt-get install openssl)", pytrace=False)
    tree = tmp_path_factory.mktemp("deploy") / "kustomize"
    shutil.copytree(KUSTOMIZE, tree, ignore=shutil.ignore_patterns("certs"))
    script = tree / "overlays" / "generated-certs" / "gencerts.sh"
    subprocess.run(["sh", str(script)], check=True, capture_output=True, text=True)
    return tree


@pytest.fixture(scope="module")
def render(kustomize_tree: Path) -> Callable[[str], list[Obj]]:
    kubectl = _kubectl()
    cache: dict[str, list[Obj]] = {}

    def go(name: str) -> list[Obj]:
        if name not in cache:
            path = kustomize_tree / ("base" if name == "base" else f"overlays/{name}")
            done = subprocess.run(
                [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False
            )
            assert done.returncode == 0, f"kubectl kustomize {name} failed:\n{done.stderr}"
            cache[name] = [normalise(o) for o in yaml.safe_load_all(done.stdout) if o]
        return copy.deepcopy(cache[name])

    return go


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_every_overlay_renders_without_duplicates(
    render: Callable[[str], list[Obj]], name: str
) -> None:
    objs = render(name)
    by_key(objs)
    for obj in objs:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == NAMESPACE, key(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vouch", key(obj)


# -- schemas ---------------------------------------------------------------------

# The part of cert-manager.io/v1 these manifests use, from cert-manager's API
# reference (its CRDs are not available offline). Unknown fields are errors.
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"const": "cert-manager.io"},
    },
}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"}
_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
CERT_MANAGER_SCHEMAS: dict[str, Obj] = {
    "Issuer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {"type": "object", "additionalProperties": False},
                    "ca": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["secretName"],
                        "properties": {"secretName": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secretName", "issuerRef"],
                "anyOf": [{"required": ["commonName"]}, {"required": ["dnsNames"]}],
                "properties": {
                    "secretName": {"type": "string"},
                    "issuerRef": _ISSUER_REF,
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "items": {"type": "string"}},
                    "isCA": {"type": "boolean"},
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "usages": {"type": "array", "items": {"enum": _USAGES}},
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                },
            },
        },
    },
}


def validate_object(obj: Obj, version: str) -> None:
    if obj["apiVersion"].startswith("cert-manager.io/"):
        jsonschema.validate(obj, CERT_MANAGER_SCHEMAS[obj["kind"]])
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_objects_match_the_kubernetes_schemas(
    render: Callable[[str], list[Obj]], name: str, version: str
) -> None:
    failures = []
    for obj in render(name):
        try:
            validate_object(obj, version)
        except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{key(obj)}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


def test_validation_is_strict(render: Callable[[str], list[Obj]]) -> None:
    """The checks above are worth something: a typo'd field fails them."""
    objs = render("cert-manager-armed")
    deployment = only(objs, "Deployment", "vouch-admission")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 5}
    with pytest.raises(jsonschema.ValidationError):
        validate_object(deployment, K8S_VERSIONS[-1])
    hook = only(objs, "MutatingWebhookConfiguration")
    hook["webhooks"][0]["sideEffects"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_object(hook, K8S_VERSIONS[-1])
    cert = only(objs, "Certificate", "vouch-admission")
    cert["spec"]["dnsName"] = ["typo"]
    with pytest.raises(jsonschema.ValidationError):
        validate_object(cert, K8S_VERSIONS[-1])


# -- the webhook ------------------------------------------------------------------


def _admission_args(objs: list[Obj]) -> list[str]:
    container = only(objs, "Deployment", "vouch-admission")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return [*container["command"], *container["args"]]


def _flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_webhook_is_fail_closed_and_never_sees_its_own_namespace(
    render: Callable[[str], list[Obj]], name: str
) -> None:
    objs = render(name)
    hook = webhook(objs)
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 10
    # the internal deadline leaves the webhook time to answer with its own denial
    deadline = float(_flag(_admission_args(objs), "--deadline"))
    assert 0 < deadline <= hook["timeoutSeconds"] - 1
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name"
    assert expr["operator"] == "NotIn"
    assert expr["values"][0] == NAMESPACE
    assert "kube-system" in expr["values"]
    assert "objectSelector" not in hook
    service = hook["clientConfig"]["service"]
    assert (service["namespace"], service["name"], service["path"]) == (
        NAMESPACE,
        "vouch-admission",
        "/admit",
    )
    svc = only(objs, "Service", service["name"])
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == service["port"]]
    container = only(objs, "Deployment", "vouch-admission")["spec"]["template"]["spec"][
        "containers"
    ][0]
    (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert _flag(_admission_args(objs), "--listen").endswith(f":{target['containerPort']}")
    assert (
        svc["spec"]["selector"].items()
        <= (
            only(objs, "Deployment", "vouch-admission")["spec"]["template"]["metadata"]["labels"]
        ).items()
    )


@pytest.mark.parametrize("name", UNARMED)
def test_unarmed_webhook_has_no_rules(render: Callable[[str], list[Obj]], name: str) -> None:
    assert webhook(render(name))["rules"] == []


@pytest.mark.parametrize("name", ARMED)
def test_armed_webhook_covers_every_workload_kind(
    render: Callable[[str], list[Obj]], name: str
) -> None:
    rules = webhook(render(name))["rules"]
    covered: dict[str, set[str]] = {}
    for rule in rules:
        assert "DELETE" not in rule["operations"] and "*" not in rule["operations"]
        assert rule["apiVersions"] == ["*"]
        assert "*" not in rule["apiGroups"] and "*" not in rule["resources"]
        for resource in rule["resources"]:
            covered.setdefault(resource, set()).update(rule["operations"])
        if "deployments" in rule["resources"]:
            assert {"apps", "extensions"} <= set(rule["apiGroups"])
    for resource in WORKLOAD_RESOURCES:
        assert covered.get(resource) == {"CREATE", "UPDATE"}, resource
    assert covered["pods/ephemeralcontainers"] == {"UPDATE"}


@pytest.mark.parametrize("unarmed", ["cert-manager", "generated-certs"])
def test_arming_changes_only_the_rules(render: Callable[[str], list[Obj]], unarmed: str) -> None:
    u, a = by_key(render(unarmed)), by_key(render(f"{unarmed}-armed"))
    assert u.keys() == a.keys()
    for k, obj in u.items():
        if obj["kind"] == "MutatingWebhookConfiguration":
            assert a[k]["webhooks"][0].pop("rules")
            assert obj["webhooks"][0].pop("rules") == []
        assert a[k] == obj, k
    assert (KUSTOMIZE / "overlays/cert-manager-armed/arm.yaml").read_text() == (
        KUSTOMIZE / "overlays/generated-certs-armed/arm.yaml"
    ).read_text()


# -- the Deployments ----------------------------------------------------------------


def test_admission_webhook_is_highly_available(render: Callable[[str], list[Obj]]) -> None:
    objs = render("cert-manager-armed")
    deployment = only(objs, "Deployment", "vouch-admission")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert pod["priorityClassName"] == "system-cluster-critical"
    pdbs = [
        p
        for p in objs
        if p["kind"] == "PodDisruptionBudget"
        and p["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert [p["spec"] for p in pdbs] == [
        {"minAvailable": 1, "selector": {"matchLabels": spec["selector"]["matchLabels"]}}
    ]
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    topologies = {t["podAffinityTerm"]["topologyKey"] for t in terms}
    assert topologies == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for term in terms:
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    container = pod["containers"][0]
    # ready once the policies are listed; alive as long as it answers
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["scheme"]) == (path, "HTTPS")
    # a critical-priority quota, so the pods are admitted where critical
    # priorities are limited to kube-system
    quota = only(objs, "ResourceQuota")
    (expr,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    assert expr["scopeName"] == "PriorityClass"
    assert "system-cluster-critical" in expr["values"]
    # the webhook is started as documented
    args = _admission_args(objs)
    assert args[:2] == ["vouch", "admission"]
    assert "--kubernetes" in args
    assert _flag(args, "--tls-cert") == "/etc/vouch/tls/tls.crt"
    assert _flag(args, "--tls-key") == "/etc/vouch/tls/tls.key"


def _pods(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for obj in objs:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_is_non_root_read_only_and_bounded(
    render: Callable[[str], list[Obj]], name: str
) -> None:
    objs = render(name)
    pods = dict(_pods(objs))
    assert set(pods) == {"vouch-admission", "vouch-server", "vouch-signer"}
    for pod_name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, pod_name
        assert pod["securityContext"]["runAsUser"] != 0, pod_name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["serviceAccountName"] == pod_name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, pod_name
            assert sc["allowPrivilegeEscalation"] is False, pod_name
            assert sc["capabilities"]["drop"] == ["ALL"], pod_name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), pod_name
            assert "readinessProbe" in container and "livenessProbe" in container
            assert container["image"] == "vouch:latest"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, pod_name
    # only the webhook talks to the API server
    assert "automountServiceAccountToken" not in pods["vouch-admission"]
    assert pods["vouch-server"]["automountServiceAccountToken"] is False
    assert pods["vouch-signer"]["automountServiceAccountToken"] is False


def _secret_names(pod: Obj) -> set[str]:
    names = set()
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    for container in pod["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_secret_a_pod_needs_is_provided(
    render: Callable[[str], list[Obj]], name: str
) -> None:
    objs = render(name)
    needed = set().union(*(_secret_names(pod) for _, pod in _pods(objs)))
    provided = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    provided |= {o["spec"]["secretName"] for o in objs if o["kind"] == "Certificate"}
    assert needed - provided == OPERATOR_SECRETS
    configmaps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    for _, pod in _pods(objs):
        for volume in pod["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    assert source["configMap"]["name"] in configmaps


def test_cert_manager_issues_what_the_webhook_serves(render: Callable[[str], list[Obj]]) -> None:
    objs = render("cert-manager-armed")
    config = only(objs, "MutatingWebhookConfiguration")
    ns, cert_name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    cert = only(objs, "Certificate", cert_name)
    assert cert["metadata"]["namespace"] == ns
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    pod = only(objs, "Deployment", "vouch-admission")["spec"]["template"]["spec"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == cert["spec"]["secretName"]
    service = config["webhooks"][0]["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in cert["spec"]["dnsNames"]
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    for c in (o for o in objs if o["kind"] == "Certificate"):
        assert c["spec"]["issuerRef"]["name"] in issuers
        if not c["spec"].get("isCA"):
            assert c["spec"]["issuerRef"]["name"] == "vouch-ca"
            ca_secret = issuers["vouch-ca"]["spec"]["ca"]["secretName"]
            assert only(objs, "Certificate", "vouch-ca")["spec"]["secretName"] == ca_secret


def _pem(secret: Obj, field: str) -> bytes:
    return base64.b64decode(secret["data"][field])


def test_generated_certificates_match_the_ca_bundle(
    render: Callable[[str], list[Obj]], kustomize_tree: Path
) -> None:
    objs = render("generated-certs-armed")
    config = only(objs, "MutatingWebhookConfiguration")
    assert "annotations" not in config["metadata"]
    secret = only(objs, "Secret", "vouch-admission-tls")
    bundle = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"])
    assert bundle == _pem(secret, "ca.crt")
    ca = x509.load_pem_x509_certificate(bundle)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    expected = {
        "vouch-admission-tls": ("vouch-admission.vouch-system.svc", "serverAuth"),
        "vouch-server-tls": ("vouch-server.vouch-system.svc", "serverAuth"),
        "vouch-signer-tls": ("vouch-signer.vouch-system.svc", "serverAuth"),
        "vouch-signer-client-tls": (None, "clientAuth"),
    }
    for name, (dns, usage) in expected.items():
        s = only(objs, "Secret", name)
        assert s["type"] == "kubernetes.io/tls"
        assert _pem(s, "ca.crt") == bundle
        cert = x509.load_pem_x509_certificate(_pem(s, "tls.crt"))
        cert.verify_directly_issued_by(ca)
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert [u._name for u in usages] == [usage]
        if dns:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert dns in sans.get_values_for_type(x509.DNSName)
        assert b"PRIVATE KEY" in _pem(s, "tls.key")
    # the CA's private key stays out of the cluster
    ca_key = (kustomize_tree / "overlays/generated-certs/certs/ca.key").read_bytes()
    assert base64.b64encode(ca_key).decode() not in json.dumps(objs)
    assert ca_key.decode() not in json.dumps(objs)


# -- RBAC -----------------------------------------------------------------------------


def test_rbac_is_least_privilege(render: Callable[[str], list[Obj]]) -> None:
    objs = render("cert-manager-armed")
    roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")]
    bindings = [o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert [r["metadata"]["name"] for r in roles] == ["vouch-admission"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in roles[0]["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "/" not in resource, "no subresources"
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    expected = {
        (group, plural): {"get", "list", "watch"}
        for group in ("portieris.cloud.ibm.com", "policy.vouch.dev")
        for plural in ("imagepolicies", "clusterimagepolicies")
    }
    # Secrets: the ones policies name are listed and watched (by name)
    expected |= {("", "secrets"): {"get", "list", "watch"}, ("", "serviceaccounts"): {"get"}}
    expected |= {("", r): {"get"} for r in ("pods", "replicationcontrollers")}
    expected |= {
        ("apps", r): {"get"} for r in ("deployments", "replicasets", "statefulsets", "daemonsets")
    }
    expected |= {("batch", r): {"get"} for r in ("jobs", "cronjobs")}
    assert granted == expected
    assert [b["subjects"] for b in bindings] == [
        [{"kind": "ServiceAccount", "name": "vouch-admission", "namespace": NAMESPACE}]
    ]
    assert bindings[0]["roleRef"]["name"] == "vouch-admission"


# -- service configuration -----------------------------------------------------------


def test_server_and_signer_configs_load(
    render: Callable[[str], list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vouch.server.settings import load_settings
    from vouch.signer.config import config_from_dict

    objs = render("cert-manager-armed")
    server_json = only(objs, "ConfigMap", "vouch-server-config")["data"]["server.json"]
    (tmp_path / "server.json").write_text(server_json)
    monkeypatch.setenv("VOUCH_STORAGE__URL", "postgres://vouch@db.example.com:5432/vouch")
    settings = load_settings(tmp_path / "server.json")
    assert settings.listen == "0.0.0.0:4443"
    assert settings.plain_http is False
    assert str(settings.tls.cert_file) == "/etc/vouch/tls/tls.crt"
    assert settings.keys.type == "remote"
    assert (settings.keys.hostname, settings.keys.port) == ("vouch-signer.vouch-system.svc", 7899)
    assert settings.storage.url.startswith("postgres://")
    signer = only(objs, "Service", "vouch-signer")
    assert signer["spec"]["ports"][0]["port"] == settings.keys.port

    signer_json = json.loads(only(objs, "ConfigMap", "vouch-signer-config")["data"]["signer.json"])
    config = config_from_dict(
        signer_json,
        tmp_path,
        {"NOTARY_SIGNER_STORAGE_DB_URL": "postgres://signer@db/signer", "NOTARY_SIGNER_VOUCH": "x"},
    )
    assert config.listen_address == "[::]:7899"
    assert config.client_ca_file is not None, "the signer must require client certificates"
    assert config.backend == "postgres" and config.default_alias == "vouch"
    assert config.passphrases["vouch"] == "x"
    # the files the configs name are the files the pods mount
    for deployment, paths in (
        ("vouch-server", [settings.tls.cert_file, settings.keys.tls_client_cert]),
        ("vouch-signer", [config.tls_cert_file, config.client_ca_file]),
    ):
        pod = only(objs, "Deployment", deployment)["spec"]["template"]["spec"]
        mount = pod["containers"][0]["volumeMounts"][0]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        files = {
            f"{mount['mountPath']}/{item['path']}"
            for source in volume["projected"]["sources"]
            for item in next(iter(source.values()))["items"]
        }
        for path in paths:
            assert str(path) in files, (deployment, path)
        assert _flag(pod["containers"][0]["args"], "--config") in files


def test_container_commands_parse(render: Callable[[str], list[Obj]], tmp_path: Path) -> None:
    """Each Deployment's command line is accepted by the vouch command it runs."""
    from vouch.cli.admission_cmd import admission
    from vouch.cli.server import server_cmd
    from vouch.cli.signer_cmd import signer

    commands = {"admission": admission, "server": server_cmd, "signer": signer}
    existing = tmp_path / "config.json"
    existing.write_text("{}")
    for name, pod in _pods(render("cert-manager-armed")):
        (container,) = pod["containers"]
        assert container["command"] == ["vouch"], name
        sub, *args = container["args"]
        # --config must exist to be parsed; its content is checked above
        args = [
            str(existing) if a.startswith("/etc/vouch/") and "--config" in args else a for a in args
        ]
        ctx = commands[sub].make_context(sub, args)
        if sub == "admission":
            assert ctx.params["kubernetes"] is True
            assert ctx.params["deadline"] == 8.0
            assert ctx.params["listen"] == "0.0.0.0:8443"


# -- the policy CRDs -----------------------------------------------------------------


def crds() -> dict[tuple[str, str], Obj]:
    out = {}
    for path in ("crds-portieris.yaml", "crds-vouch.yaml"):
        for crd in yaml.safe_load_all((KUSTOMIZE / "base" / path).read_text()):
            spec = crd["spec"]
            (version,) = spec["versions"]
            out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = crd
    return out


def crd_schema(api_version: str, kind: str) -> Obj:
    crd = crds()[(api_version, kind)]
    schema: Obj = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _structural(schema: Obj, path: str = "") -> Iterator[str]:
    """Violations of Kubernetes' structural-schema rules (what the API server checks)."""
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not preserve and not schema.get("x-kubernetes-int-or-string"):
        yield f"{path or '/'}: no type"
    if schema.get("type") == "array" and "items" not in schema:
        yield f"{path}: array without items"
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" in schema
    ):
        yield f"{path}: properties and additionalProperties"
    for word in ("anyOf", "allOf", "oneOf"):
        for sub in schema.get(word, []):
            banned = {"type", "nullable", "default", "description", "additionalProperties"}
            if banned & sub.keys():
                yield f"{path}/{word}: {sorted(banned & sub.keys())} inside {word}"
            for field in sub.get("required", []):
                if field not in schema.get("properties", {}):
                    yield f"{path}/{word}: requires {field}, which is not a property"
    for name, sub in schema.get("properties", {}).items():
        yield from _structural(sub, f"{path}/{name}")
    if "items" in schema:
        yield from _structural(schema["items"], f"{path}[]")


def test_crds_are_structural_and_complete() -> None:
    found = crds()
    assert set(found) == {(g, k) for g in (PORTIERIS_API, VOUCH_API) for k in POLICY_KINDS}
    for (api, kind), crd in found.items():
        spec = crd["spec"]
        assert spec["scope"] == ("Namespaced" if kind == "ImagePolicy" else "Cluster")
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        (version,) = spec["versions"]
        assert version["served"] and version["storage"]
        assert list(_structural(version["schema"]["openAPIV3Schema"])) == [], (api, kind)
        policy = crd_schema(api, kind)["properties"]["spec"]["properties"]["repositories"]["items"]
        assert policy["properties"]["policy"].get("nullable", False) == (kind == "ImagePolicy")


def _paths(schema: Obj, path: str = "") -> set[str]:
    out = {path}
    for name, sub in schema.get("properties", {}).items():
        out |= _paths(sub, f"{path}.{name}")
    if "items" in schema:
        out |= _paths(schema["items"], f"{path}[]")
    return out


def _without(schema: Any, words: set[str]) -> Any:
    if isinstance(schema, dict):
        return {k: _without(v, words) for k, v in schema.items() if k not in words}
    if isinstance(schema, list):
        return [_without(v, words) for v in schema]
    return schema


def test_crd_kinds_agree_and_vouch_extends_portieris() -> None:
    for api in (PORTIERIS_API, VOUCH_API):
        namespaced = _without(crd_schema(api, "ImagePolicy"), {"description", "nullable"})
        cluster = _without(crd_schema(api, "ClusterImagePolicy"), {"description", "nullable"})
        assert namespaced == cluster, api
    portieris = _paths(crd_schema(PORTIERIS_API, "ImagePolicy"))
    vouch = _paths(crd_schema(VOUCH_API, "ImagePolicy"))
    # vouch keeps simple/vulnerability opaque (preserved, so they deny)
    assert {
        p for p in portieris - vouch if ".simple." not in p and ".vulnerability." not in p
    } == set()
    policy = ".spec.repositories[].policy"
    vouch_only = {
        f"{policy}.mode",
        f"{policy}.trust.threshold",
        f"{policy}.trust.signers[].name",
        f"{policy}.trust.signers[].publicKey",
        f"{policy}.trust.signers[].publicKeys[]",
        f"{policy}.trust.rootKeyIDs[]",
        f"{policy}.trust.rootCA",
        f"{policy}.trust.trustServerCA",
        f"{policy}.trust.credentialsSecret",
    }
    assert vouch_only <= vouch
    assert not vouch_only & portieris
    for field in (
        "mutateImage",
        "trust.enabled",
        "trust.trustServer",
        "trust.signerSecrets[].name",
    ):
        assert f"{policy}.{field}" in portieris & vouch


def to_jsonschema(schema: Obj) -> Obj:
    """An OpenAPI v3 CRD schema as JSON Schema, with kubectl's strict field
    validation (unknown fields are errors unless preserved)."""
    out: Obj = {}
    for word, value in schema.items():
        if word == "properties":
            out[word] = {k: to_jsonschema(v) for k, v in value.items()}
        elif word == "items":
            out[word] = to_jsonschema(value)
        elif word in ("anyOf", "allOf", "oneOf"):
            out[word] = [to_jsonschema(v) for v in value]
        elif word.startswith("x-kubernetes-") or word in ("nullable", "description"):
            continue
        else:
            out[word] = value
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def prune_nulls(value: Any, schema: Obj) -> Any:
    """The API server drops ``null`` where the schema does not say nullable."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {
            k: prune_nulls(v, props.get(k, {}))
            for k, v in value.items()
            if v is not None or props.get(k, {}).get("nullable")
        }
    if isinstance(value, list):
        return [prune_nulls(v, schema.get("items", {})) for v in value]
    return value


def validate_policy(doc: Obj) -> None:
    schema = crd_schema(doc["apiVersion"], doc["kind"])
    jsonschema.validate(prune_nulls(doc, schema), to_jsonschema(schema))


def doc_yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", DOCS.read_text(), re.DOTALL | re.MULTILINE)


def doc_policy_blocks() -> list[str]:
    out = []
    for block in doc_yaml_blocks():
        docs = [d for d in yaml.safe_load_all(block) if d is not None]
        if any(isinstance(d, dict) and d.get("kind") in POLICY_KINDS for d in docs):
            out.append(block)
    return out


def test_docs_policy_examples_are_accepted_by_the_crds_and_by_vouch() -> None:
    blocks = doc_policy_blocks()
    seen: dict[str, int] = {}
    for block in blocks:
        policies = load_policies(block)
        for doc in yaml.safe_load_all(block):
            if doc and doc.get("kind") in POLICY_KINDS:
                validate_policy(doc)
                seen[doc["apiVersion"]] = seen.get(doc["apiVersion"], 0) + 1
        # signer Secrets shown next to a policy are complete
        for document in policies.documents:
            for rule in document.repositories:
                trust = rule.policy.trust if rule.policy else None
                if trust and any(policies.secret(s.secret or "", None) for s in trust.signers):
                    assert resolve_signers(trust, policies, document.namespace)
    assert seen.get(PORTIERIS_API, 0) >= 3
    assert seen.get(VOUCH_API, 0) >= 3
    # the promised vouch examples: pinned root, k-of-n, audit
    text = "\n".join(blocks)
    loaded = load_policies("\n---\n".join(b for b in blocks if VOUCH_API in b))
    trusts = [
        r.policy
        for d in loaded.documents
        for r in d.repositories
        if d.api_version == VOUCH_API and r.policy
    ]
    assert any(p.trust and p.trust.root_key_ids for p in trusts)
    assert any(p.trust and p.trust.root_ca for p in trusts)
    assert any(
        p.trust and p.trust.threshold and p.trust.threshold < len(p.trust.signers) for p in trusts
    )
    assert any(p.mode == "audit" for p in trusts)
    # and the Portieris features vouch refuses are shown, and refused
    portieris = load_policies("\n---\n".join(b for b in blocks if "simple:" in b))
    assert any(
        r.policy and r.policy.unsupported for d in portieris.documents for r in d.repositories
    )
    assert "signerSecrets" in text


@pytest.mark.parametrize(
    ("api", "kind", "policy", "ok"),
    [
        (PORTIERIS_API, "ImagePolicy", None, True),
        (PORTIERIS_API, "ClusterImagePolicy", None, True),  # pruned, as by the API server
        (PORTIERIS_API, "ImagePolicy", {"trust": {"enabled": "yes"}}, False),
        (PORTIERIS_API, "ImagePolicy", {"va": {"enabled": True}}, False),
        (PORTIERIS_API, "ImagePolicy", {"simple": {"requirements": [{"type": "x"}]}}, False),
        (VOUCH_API, "ImagePolicy", {"mode": "warn"}, False),
        (VOUCH_API, "ImagePolicy", {"mode": "audit"}, True),
        (VOUCH_API, "ClusterImagePolicy", {"trust": {"threshold": 0}}, False),
        (VOUCH_API, "ClusterImagePolicy", {"trust": {"signers": [{"name": "a"}]}}, False),
        (VOUCH_API, "ClusterImagePolicy", {"trust": {"signers": [{"publicKey": "k"}]}}, False),
        (VOUCH_API, "ClusterImagePolicy", {"trust": {"rootKeyIDs": ["abc"]}}, False),
        (VOUCH_API, "ClusterImagePolicy", {"trust": {"rootKeyIDs": ["ab" * 32]}}, True),
        (VOUCH_API, "ClusterImagePolicy", {"simple": {"anything": [1]}}, True),
    ],
)
def test_crd_schemas_reject_what_they_should(
    api: str, kind: str, policy: Obj | None, ok: bool
) -> None:
    meta = {"name": "p", "namespace": "ns"} if kind == "ImagePolicy" else {"name": "p"}
    doc = {"apiVersion": api, "kind": kind, "metadata": meta}
    doc["spec"] = {"repositories": [{"name": "registry.example.com/*", "policy": policy}]}
    if ok:
        validate_policy(doc)
    else:
        with pytest.raises(jsonschema.ValidationError):
            validate_policy(doc)


def test_docs_pipeline_command_works_on_the_docs_policies(tmp_path: Path) -> None:
    """The CI snippets' `vouch policy check` invocation parses, and decides
    offline on the documented policies (a no-check rule, and no match)."""
    commands = re.findall(r"vouch policy check [^|\n`]*", DOCS.read_text())
    pipeline = [c for c in commands if "--json" in c]
    assert len(pipeline) >= 2, "GitHub Actions and GitLab examples"
    policies = tmp_path / "policies.yaml"
    policies.write_text("\n---\n".join(doc_policy_blocks()))
    check = policy_group.commands["check"]
    for command in pipeline:
        args = shlex.split(command.replace('"$IMAGE"', "registry.k8s.io/pause:3.10"))[3:]
        args = [str(policies) if a == "policies.yaml" else a for a in args]
        check.make_context("check", list(args))  # raises on unknown flags
    runner = CliRunner()
    allowed = runner.invoke(
        policy_group, ["check", "registry.k8s.io/pause:3.10", "--policy", str(policies), "--json"]
    )
    assert allowed.exit_code == 0, allowed.output
    (decision,) = json.loads(allowed.output)["decisions"]
    assert decision["allowed"] and "ClusterImagePolicy cluster-default" in decision["policy"]
    denied = runner.invoke(
        policy_group, ["check", "evil.example.net/x:1", "--policy", str(policies), "--json"]
    )
    assert denied.exit_code == 1
    assert json.loads(denied.output)["decisions"][0]["allowed"] is False


def test_docs_name_what_exists() -> None:
    text = DOCS.read_text()
    for overlay in re.findall(r"deploy/kustomize/overlays/([a-z-]+)", text):
        assert (KUSTOMIZE / "overlays" / overlay / "kustomization.yaml").exists(), overlay
    assert "--deadline" in text
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for row in re.findall(r"^\| `([a-zA-Z.]+)`", text, re.MULTILINE):
        if row.split(".")[0] in values:
            node: Any = values
            for part in row.split("."):
                node = node[part]


# -- the Helm chart -------------------------------------------------------------------
#
# Helm cannot be installed here, so the chart keeps to a small Go-template
# subset that this renderer implements: {{ .Values.x }}, .Release.Namespace,
# pipelines (quote, toYaml, nindent, int, float64), eq/ne/ge/gt/le/lt/and/or/
# not, if/else/end, range/end over lists, fail, comments, and {{- -}} trimming.

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\()|(\))|(\|)|([^\s()|]+))')


class TemplateFailError(Exception):
    """A template called ``fail``."""


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _fail(message: str) -> None:
    raise TemplateFailError(message)


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "ge": lambda a, b: a >= b,
    "gt": lambda a, b: a > b,
    "le": lambda a, b: a <= b,
    "lt": lambda a, b: a < b,
    "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
    "not": lambda a: not _truthy(a),
    "int": lambda a: int(float(a)),
    "float64": float,
    "quote": lambda a: json.dumps(_as_text(a)),
    "toYaml": _to_yaml,
    "nindent": lambda n, s: "\n" + "\n".join(" " * n + line for line in s.split("\n")),
    "indent": lambda n, s: "\n".join(" " * n + line for line in s.split("\n")),
    "fail": _fail,
}


def _tokenize(expr: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(expr.rstrip()):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot parse {expr!r}"
        tokens.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return tokens


def _evaluate(tokens: list[str], ctx: Obj, dot: Any) -> Any:
    """A pipeline: commands separated by |, each a function call or a value."""
    value: Any = _NO_INPUT
    while tokens:
        operands: list[Any] = []
        while tokens and tokens[0] not in ("|", ")"):
            tok = tokens.pop(0)
            if tok == "(":
                operands.append(_evaluate(tokens, ctx, dot))
                assert tokens.pop(0) == ")"
            elif tok.startswith('"'):
                operands.append(json.loads(tok))
            elif re.fullmatch(r"-?\d+(\.\d+)?", tok):
                operands.append(float(tok) if "." in tok else int(tok))
            elif tok in ("true", "false"):
                operands.append(tok == "true")
            elif tok.startswith("."):
                node = dot  # fields are looked up on dot, as in Go
                for part in tok.split(".")[1:] if tok != "." else []:
                    node = node.get(part) if isinstance(node, dict) else None
                operands.append(node)
            else:
                operands.append(_FUNCS[tok])
        if value is not _NO_INPUT:
            operands.append(value)
        head, *args = operands
        assert callable(head) or not args, f"{head!r} is not a function"
        value = head(*args) if callable(head) else head
        if tokens and tokens[0] == "|":
            tokens.pop(0)
        else:
            break
    return value


_NO_INPUT = object()


def _parse_template(tokens: list[tuple[str, str]], pos: int) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while pos < len(tokens):
        kind, text = tokens[pos]
        word = text.split(None, 1)[0] if kind == "action" and text else ""
        if kind == "text":
            nodes.append(("text", text))
        elif text.startswith("/*"):
            pass
        elif word in ("end", "else"):
            return nodes, pos
        elif word in ("if", "range"):
            body, pos = _parse_template(tokens, pos + 1)
            other: list[Any] = []
            if tokens[pos][1] == "else":
                other, pos = _parse_template(tokens, pos + 1)
            assert tokens[pos][1] == "end", f"unterminated {word}"
            nodes.append((word, text[len(word) :].strip(), body, other))
        else:
            nodes.append(("expr", text))
        pos += 1
    return nodes, pos


def _execute(nodes: list[Any], ctx: Obj, dot: Any) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(_as_text(_evaluate(_tokenize(node[1]), ctx, dot)))
        elif node[0] == "if":
            taken = _truthy(_evaluate(_tokenize(node[1]), ctx, dot))
            out.append(_execute(node[2] if taken else node[3], ctx, dot))
        else:  # range
            items = _evaluate(_tokenize(node[1]), ctx, dot) or []
            out.extend(_execute(node[2], ctx, item) for item in items)
            if not items:
                out.append(_execute(node[3], ctx, dot))
    return "".join(out)


def render_template(text: str, values: Obj, namespace: str = NAMESPACE) -> str:
    tokens: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        tokens += [("text", chunk), ("action", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    tail = text[pos:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    nodes, end = _parse_template(tokens, 0)
    assert end == len(tokens), "unbalanced end"
    ctx = {"Values": values, "Release": {"Namespace": namespace, "Name": "vouch"}}
    return _execute(nodes, ctx, ctx)


def _merge(base: Obj, override: Obj) -> Obj:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_chart(overrides: Obj | None = None, namespace: str = NAMESPACE) -> list[Obj]:
    values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), overrides or {})
    objs: list[Obj] = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        objs += [o for o in yaml.safe_load_all(path.read_text()) if o]
    for path in sorted((CHART / "templates").iterdir()):
        text = render_template(path.read_text(), values, namespace)
        if path.suffix == ".yaml" and not path.name.startswith("_"):
            objs += [normalise(o) for o in yaml.safe_load_all(text) if o]
    return objs


def _split_hooks(objs: list[Obj]) -> tuple[list[Obj], list[Obj]]:
    release, hooks = [], []
    for obj in objs:
        annotations = obj["metadata"].get("annotations") or {}
        if "helm.sh/hook" in annotations:
            hook = copy.deepcopy(obj)
            kept = {k: v for k, v in annotations.items() if not k.startswith("helm.sh/")}
            hook["metadata"]["annotations"] = kept
            if not kept:
                del hook["metadata"]["annotations"]
            hooks.append(hook)
        else:
            release.append(obj)
    return release, hooks


def _assert_same(chart: list[Obj], kustomize: list[Obj]) -> None:
    c, k = by_key(chart), by_key(kustomize)
    assert sorted(c) == sorted(k)
    for name in c:
        assert c[name] == k[name], name


def test_helm_chart_defaults_equal_the_cert_manager_overlays(
    render: Callable[[str], list[Obj]],
) -> None:
    release, hooks = _split_hooks(render_chart())
    unarmed = [o for o in render("cert-manager") if o["kind"] != "Namespace"]
    _assert_same(release, unarmed)
    armed = only(render("cert-manager-armed"), "MutatingWebhookConfiguration")
    assert hooks == [armed]


def test_helm_chart_with_own_secrets_equals_the_generated_certs_overlays(
    render: Callable[[str], list[Obj]],
) -> None:
    unarmed = [o for o in render("generated-certs") if o["kind"] not in ("Namespace", "Secret")]
    bundle = webhook(unarmed)["clientConfig"]["caBundle"]
    release, hooks = _split_hooks(render_chart({"certs": {"mode": "secrets", "caBundle": bundle}}))
    _assert_same(release, unarmed)
    armed = only(render("generated-certs-armed"), "MutatingWebhookConfiguration")
    assert hooks == [armed]


def test_helm_chart_declares_the_tested_kubernetes_versions() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={K8S_VERSIONS[0]}.0-0"


def test_helm_chart_crds_are_the_kustomize_crds() -> None:
    chart = sorted(
        (o for p in (CHART / "crds").glob("*.yaml") for o in yaml.safe_load_all(p.read_text())),
        key=lambda o: o["metadata"]["name"],
    )
    assert chart == sorted(crds().values(), key=lambda o: o["metadata"]["name"])


def test_helm_values_reach_the_objects() -> None:
    objs, hooks = _split_hooks(
        render_chart(
            {
                "image": {"repository": "registry.example.com/vouch", "tag": "0.1.0"},
                "admission": {"replicas": 5, "deadlineSeconds": 20},
                "webhook": {
                    "timeoutSeconds": 25,
                    "exemptNamespaces": [],
                    "failurePolicy": "Ignore",
                },
            }
        )
    )
    deployment = only(objs, "Deployment", "vouch-admission")
    assert deployment["spec"]["replicas"] == 5
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/vouch:0.1.0"
    assert _flag(container["args"], "--deadline") == "20"
    for config in (only(objs, "MutatingWebhookConfiguration"), *hooks):
        hook = config["webhooks"][0]
        assert (hook["timeoutSeconds"], hook["failurePolicy"]) == (25, "Ignore")
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [NAMESPACE]
    unarmed, hooks = _split_hooks(render_chart({"webhook": {"armed": False}}))
    assert hooks == []
    assert webhook(unarmed)["rules"] == []


@pytest.mark.parametrize(
    ("overrides", "namespace", "message"),
    [
        ({}, "default", "vouch-system"),
        ({"admission": {"deadlineSeconds": 10}}, NAMESPACE, "deadlineSeconds"),
        ({"webhook": {"failurePolicy": "Allow"}}, NAMESPACE, "failurePolicy"),
        ({"certs": {"mode": "manual"}}, NAMESPACE, "certs.mode"),
        ({"certs": {"mode": "secrets"}}, NAMESPACE, "caBundle"),
    ],
)
def test_helm_chart_refuses_unsafe_values(overrides: Obj, namespace: str, message: str) -> None:
    with pytest.raises(TemplateFailError, match=message):
        render_chart(overrides, namespace)


def test_template_renderer_follows_go_trimming() -> None:
    text = "a:\n  {{- if .Values.x }}\n  b: {{ .Values.x | quote }}\n  {{- end }}\nc: 1\n"
    assert render_template(text, {"x": 8}) == 'a:\n  b: "8"\nc: 1\n'
    assert render_template(text, {"x": ""}) == "a:\nc: 1\n"
    listing = "v:\n- a\n{{- range .Values.l }}\n- {{ . }}\n{{- end }}\n"
    assert yaml.safe_load(render_template(listing, {"l": ["b", "c"]})) == {"v": ["a", "b", "c"]}
    assert render_template("{{ toYaml .Values.m | nindent 2 }}", {"m": {"k": 1}}) == "\n  k: 1"
