"""A real container registry, real images and a man in the middle, for admission tests.

* :class:`Registry` runs Debian's ``docker-registry`` (the distribution/registry:2 binary,
  package ``docker-registry``) on a free localhost port, plain HTTP, filesystem storage.
* :func:`write_oci_image` writes a tiny OCI image layout (``oci-layout``, ``index.json``,
  a config and one gzipped tar layer holding the given files) without Docker.
* :class:`Skopeo` drives the real ``skopeo`` (package ``skopeo``) hermetically: push an
  OCI layout to the registry, read manifests, pull by digest.
* :class:`TrustProxy` sits between a client and a trust server: it forwards every
  request, remembers what the server answered, and can be told to answer a path with
  other bytes instead (replaying an old ``timestamp.json``, say).

Like :mod:`notary_harness`, nothing here imports vouch: these are independent witnesses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from notary_harness import NOTARY_BIN, _parent_death_signal, free_port
from procs import Managed, stop_process

DOCKER_REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
#: What a registry client offers when it asks for a manifest (as containerd does).
MANIFEST_ACCEPT = ", ".join(
    (
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)

#: Local servers are reached directly even if the environment configures an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ToolMissingError(RuntimeError):
    """A program the registry tests need is not installed."""


def require_tools() -> None:
    """Raise :class:`ToolMissingError` naming every missing program and its Debian package.

    The tests must fail, not skip, without them: a skipped suite looks like a green one.
    """
    wanted = {DOCKER_REGISTRY_BIN: "docker-registry", SKOPEO_BIN: "skopeo", NOTARY_BIN: "notary"}
    missing = [f"{b} (package {p})" for b, p in wanted.items() if not os.access(b, os.X_OK)]
    if missing:
        raise ToolMissingError(
            f"missing {', '.join(missing)}: `apt-get install docker-registry skopeo notary` "
            "(.ci/run does this)"
        )


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


class Registry(Managed):
    """``docker-registry serve`` on ``127.0.0.1:<free port>``, no TLS, no auth."""

    def __init__(self, workdir: Path, *, startup_timeout: float = 15.0) -> None:
        self.workdir = workdir
        self.startup_timeout = startup_timeout
        self.config_path = workdir / "registry.yml"
        self.log_path = workdir / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry part of image references (and of GUNs)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def config(self, port: int) -> str:
        # JSON is YAML; the registry reads its config as YAML.
        return json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                    "delete": {"enabled": True},
                },
                "http": {"addr": f"127.0.0.1:{port}", "secret": "vouch-tests"},
            },
            indent=2,
        )

    def start(self) -> None:
        require_tools()
        self.workdir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            self.config_path.write_text(self.config(self.port) + "\n")
            try:
                self._launch_and_wait()
                return
            except RuntimeError as e:
                last = str(e)
                self._kill()
                if "address already in use" not in last:
                    break
        raise RuntimeError(last)

    def _launch_and_wait(self) -> None:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [DOCKER_REGISTRY_BIN, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - only a prctl() call
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"docker-registry exited with status {code}:\n{self.log()}")
            try:
                with _OPENER.open(f"{self.url}/v2/", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry at {self.url} did not answer /v2/:\n{self.log()}")

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str, str]:
        """``GET /v2/<repo>/manifests/<tag or digest>``: (bytes, Docker-Content-Digest, type)."""
        req = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        with _OPENER.open(req, timeout=10) as resp:
            return (
                resp.read(),
                resp.headers.get("Docker-Content-Digest", ""),
                resp.headers.get("Content-Type", ""),
            )

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout=5)

    def stop(self) -> None:
        self._kill()


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OCIImage:
    """An OCI image layout on disk holding one image under ``tag``."""

    layout: Path
    tag: str
    manifest: bytes
    files: Mapping[str, bytes]

    @property
    def digest(self) -> str:
        """The digest of the manifest as written locally (a registry may serve other bytes)."""
        return sha256_digest(self.manifest)


def _tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def write_oci_image(layout: Path, tag: str, files: Mapping[str, bytes]) -> OCIImage:
    """Write an OCI image layout: a config, one gzipped tar layer with ``files``, a
    manifest, ``index.json`` naming it ``tag``, and ``oci-layout``. Deterministic."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes) -> str:
        digest = sha256_digest(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    tar = _tar(files)
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": blob(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": blob(layer), "size": len(layer)}],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": blob(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return OCIImage(layout, tag, manifest, dict(files))


def layer_files(image_dir: Path) -> dict[str, bytes]:
    """The files in the (single) layer of an image pulled to a ``dir:`` destination."""
    manifest = json.loads((image_dir / "manifest.json").read_bytes())
    out: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        data = (image_dir / layer["digest"].removeprefix("sha256:")).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member)
                if handle is not None:
                    out[member.name] = handle.read()
    return out


# --------------------------------------------------------------------------------------------
# skopeo
# --------------------------------------------------------------------------------------------


class SkopeoError(RuntimeError):
    pass


class Skopeo:
    """The real ``skopeo`` with a private HOME (no auth files or policies leak in) and
    plain HTTP to the local registry (``--tls-verify=false`` falls back to http)."""

    def __init__(self, home: Path, *, timeout: float = 60.0) -> None:
        self.home = home
        self.timeout = timeout
        home.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.home),
            "REGISTRY_AUTH_FILE": str(self.home / "auth.json"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        # --insecure-policy: no signature policy (skopeo's own, unrelated to Notary).
        cmd = [SKOPEO_BIN, "--insecure-policy", *args]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.environment(),
            cwd=self.home,
            timeout=self.timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise SkopeoError(
                f"skopeo failed (status {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def push(self, image: OCIImage, destination: str) -> None:
        """``skopeo copy oci:<layout>:<tag> docker://<destination>``."""
        self.run(
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{image.layout}:{image.tag}",
            f"docker://{destination}",
        )

    def raw_manifest(self, reference: str) -> bytes:
        """``skopeo inspect --raw``: the manifest bytes exactly as the registry serves them."""
        return self.run("inspect", "--tls-verify=false", "--raw", f"docker://{reference}").stdout

    def inspect(self, reference: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(
            self.run("inspect", "--tls-verify=false", f"docker://{reference}").stdout
        )
        return out

    def pull(self, reference: str, destination: Path) -> Path:
        """Copy the image to a ``dir:`` layout (what a kubelet would pull)."""
        if destination.exists():
            shutil.rmtree(destination)
        self.run(
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{reference}",
            f"dir:{destination}",
        )
        return destination


# --------------------------------------------------------------------------------------------
# A man in the middle for the trust server
# --------------------------------------------------------------------------------------------


class TrustProxy(Managed):
    """An HTTP proxy in front of a trust server (GET only, which is all a reader needs).

    ``recorded[path]`` holds the last body the server answered for ``path`` (path with
    query); a path in ``overrides`` is answered with those bytes, never forwarded.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.recorded: dict[str, bytes] = {}
        self.overrides: dict[str, bytes] = {}
        self.served_overrides = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, path: str) -> tuple[int, bytes, str]:
        with self._lock:
            override = self.overrides.get(path)
            if override is not None:
                self.served_overrides += 1
                return 200, override, "application/json"
        try:
            with _OPENER.open(self.upstream + path, timeout=10) as resp:
                body = resp.read()
                kind = resp.headers.get("Content-Type", "application/octet-stream")
                with self._lock:
                    self.recorded[path] = body
                return resp.status, body, kind
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "text/plain")

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                code, body, kind = proxy._answer(self.path)
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
