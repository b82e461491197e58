"""`vouch admission` and `vouch policy check` as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

from notary_harness import free_port
from test_admission_webhook import pod_spec, review, workload

VOUCH = str(Path(sys.executable).with_name("vouch"))

ALLOW_ALL = textwrap.dedent(
    """
    apiVersion: portieris.cloud.ibm.com/v1
    kind: ClusterImagePolicy
    metadata: {name: open}
    spec:
      repositories:
        - name: "docker.io/library/*"
        - name: "registry.example.com/*"
          policy: {trust: {enabled: true, trustServer: "http://127.0.0.1:9"}}
    """
)


def test_policy_check_exit_codes_and_json(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(ALLOW_ALL)
    ok = subprocess.run(
        [VOUCH, "policy", "check", "nginx:1.25", "--policy", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ALLOW docker.io/library/nginx") or "ALLOW nginx:1.25" in ok.stdout
    bad = subprocess.run(
        [
            VOUCH,
            "policy",
            "check",
            "nginx:1.25",
            "registry.example.com/app:v1",
            "quay.io/x/y:1",
            "--policy",
            str(policy),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    decisions = {d["image"]: d for d in json.loads(bad.stdout)["decisions"]}
    assert decisions["nginx:1.25"]["allowed"] is True
    assert (
        decisions["registry.example.com/app:v1"]["allowed"] is False
    )  # trust server unreachable: fail closed
    assert "no matching repositories" in decisions["quay.io/x/y:1"]["reasons"][0]


def test_admission_webhook_process_answers_reviews(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(ALLOW_ALL)
    port = free_port()
    proc = subprocess.Popen(
        [
            VOUCH,
            "admission",
            "--plain-http",
            "--listen",
            f"127.0.0.1:{port}",
            "--policy",
            str(policy),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 20
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        body = json.dumps(
            review(workload("Pod", pod_spec(["nginx:1.25", "quay.io/x/y:1"])))
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/admit",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with opener.open(req, timeout=20) as resp:
            answer = json.loads(resp.read())["response"]
        assert answer["allowed"] is False and "quay.io/x/y:1" in answer["status"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_admission_process_watches_the_api_server_over_tls(tmp_path: Path) -> None:
    """`vouch admission --kubernetes` (out of cluster: URL, token file, CA file)
    against the socket API server, serving TLS itself: not ready until the
    policies are listed, then a policy created in the API decides the next review."""
    import ssl
    import threading

    from kube_apiserver import KubeAPIServer
    from vouch.server.devtls import ensure_dev_tls

    with KubeAPIServer(tmp_path) as api:
        token = tmp_path / "token"
        token.write_text(api.token)
        gate = threading.Event()
        api.faults.hold_lists = gate
        tls = ensure_dev_tls(tmp_path / "webhook-tls")
        port = free_port()
        proc = subprocess.Popen(
            [
                VOUCH,
                "admission",
                "--listen",
                f"127.0.0.1:{port}",
                "--tls-cert",
                str(tls.server_cert),
                "--tls-key",
                str(tls.server_key),
                "--kubernetes",
                "--kube-api",
                api.url,
                "--kube-token-file",
                str(token),
                "--kube-ca-file",
                str(api.tls.ca_cert),
                "--deadline",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        base = f"https://127.0.0.1:{port}"

        def status(path: str) -> int:
            try:
                with opener.open(base + path, timeout=2) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        def admit(image: str) -> dict[str, object]:
            body = json.dumps(review(workload("Pod", pod_spec([image])))).encode()
            req = urllib.request.Request(
                base + "/admit", data=body, headers={"Content-Type": "application/json"}
            )
            with opener.open(req, timeout=20) as resp:
                answer: dict[str, object] = json.loads(resp.read())["response"]
            return answer

        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if status("/healthz") == 200:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the webhook did not start"
                time.sleep(0.1)
            assert status("/readyz") == 503  # the lists are held
            gate.set()
            while status("/readyz") != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.05)
            assert admit("nginx:1.25")["allowed"] is False  # no policies at all
            api.put(
                {
                    "apiVersion": "portieris.cloud.ibm.com/v1",
                    "kind": "ClusterImagePolicy",
                    "metadata": {"name": "hub"},
                    "spec": {"repositories": [{"name": "docker.io/library/*"}]},
                }
            )
            while not admit("nginx:1.25")["allowed"]:
                assert time.monotonic() < deadline, "the new policy never applied"
                time.sleep(0.05)
            assert [w for w in api.watches if "clusterimagepolicies" in w.path]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
