"""Drive the real Notary v1 programs (Debian package ``notary`` 0.7.0) from tests.

vouch claims wire and file compatibility with Notary, and the only trustworthy source of
"what Notary really produces" is Notary itself.  This module starts a throw-away
``notary-server`` (memory storage, in-process signer), runs the real ``notary`` CLI against
it in a hermetic trust directory, and collects the exact bytes of every metadata and key
file that a scripted scenario produces.  Compatibility tests then compare vouch against
those bytes instead of against our reading of the spec.

Deliberately no ``vouch`` imports: the harness must stay an independent witness.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

NOTARY_BIN = "/usr/bin/notary"
NOTARY_SERVER_BIN = "/usr/bin/notary-server"

#: Passphrase for every key the CLI creates or imports (root, targets, snapshot, delegations).
#: Tests need it to decrypt the key files in the corpus.
PASSPHRASE = "vouch-corpus-passphrase"

#: The repositories the corpus scenario creates.  The first is the "everything" repository;
#: the second is initialised with ``TZ=Asia/Kolkata`` and an imported RSA root key.
CORPUS_GUN = "example.com/vouch/corpus"
KOLKATA_GUN = "example.com/vouch/kolkata"

#: Top-level roles, in the order a client would fetch them on a cold start (minus timestamp).
BASE_ROLES = ("root", "targets", "snapshot", "timestamp")

_PASSPHRASE_VARS = (
    "NOTARY_ROOT_PASSPHRASE",
    "NOTARY_TARGETS_PASSPHRASE",
    "NOTARY_SNAPSHOT_PASSPHRASE",
    "NOTARY_DELEGATION_PASSPHRASE",
)


class NotaryUnavailableError(RuntimeError):
    """The Debian ``notary`` package is not installed, so interop tests cannot run."""


class NotaryServerError(RuntimeError):
    """notary-server did not start (or died); the message carries its log output."""


class NotaryCommandError(RuntimeError):
    """A ``notary`` CLI call failed or timed out; keeps everything needed to diagnose it."""

    def __init__(
        self, cmd: Sequence[str], returncode: int | None, stdout: str, stderr: str, why: str = ""
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = why or f"exit status {returncode}"
        super().__init__(
            f"notary command failed ({status}): {' '.join(self.cmd)}\n"
            f"--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        )


def require_notary_binaries() -> None:
    """Raise :class:`NotaryUnavailableError` unless the real Notary programs are installed.

    Interop tests must *fail*, not skip, when the binaries are missing: a silently skipped
    compatibility suite looks exactly like a passing one.
    """
    missing = [b for b in (NOTARY_BIN, NOTARY_SERVER_BIN) if not os.access(b, os.X_OK)]
    if missing:
        raise NotaryUnavailableError(
            f"missing {', '.join(missing)}: install the Debian package 'notary' "
            "(`apt-get install notary`; .ci/run does this) to run the interop tests"
        )


def free_port() -> int:
    """Ask the kernel for an unused TCP port on 127.0.0.1.

    There is an unavoidable race between closing this socket and the server binding the
    port (several pytest-xdist workers do this concurrently); :class:`NotaryServer` retries
    with a fresh port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _parent_death_signal() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes a child die with us (Linux ``PR_SET_PDEATHSIG``).

    Context managers clean up on normal exit and on exceptions, but not when CI kills
    pytest with SIGKILL; without this an orphaned notary-server would keep its port.
    The signal fires when the *thread* that forked exits, so it is only used from the main
    thread, whose life is the process's.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


#: Talks to the local server directly even if the environment configures an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, *, timeout: float = 10.0) -> bytes:
    """GET ``url`` and return the body; any non-2xx status raises ``urllib.error.HTTPError``.

    Plain urllib keeps the harness free of third-party HTTP clients and returns the exact
    bytes the server sent, which is what byte-level compatibility tests need.
    """
    with _OPENER.open(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def try_fetch(url: str, *, timeout: float = 10.0) -> bytes | None:
    """Like :func:`fetch` but return ``None`` on 404, which the server uses for "no such
    version/role"; other errors still raise."""
    try:
        return fetch(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def metadata_url(base_url: str, gun: str, name: str) -> str:
    """URL of ``/v2/<gun>/_trust/tuf/<name>``; GUNs and delegation roles keep their slashes."""
    return f"{base_url}/v2/{urllib.parse.quote(gun, safe='/')}/_trust/tuf/{name}"


class NotaryServer:
    """A real ``notary-server`` on a free localhost port, memory storage, local signer.

    Findings from running Debian's 0.7.0 binary: the minimal config below is all it needs
    (no TLS, no ``-logf``; TLS is off when no cert/key is configured).  It logs JSON to
    stderr and prints an ``info`` version line even at level ``error``.  State is in
    memory only, so every instance starts empty.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        startup_timeout: float = 15.0,
        binary: str = NOTARY_SERVER_BIN,
        extra_config: Mapping[str, object] | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="notary-server-")) if workdir is None else workdir
        )
        self.startup_timeout = startup_timeout
        self.binary = binary
        self.extra_config = dict(extra_config or {})
        self.config_path = self.workdir / "notary-server.json"
        self.log_path = self.workdir / "notary-server.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43121`` (no trailing slash)."""
        if not self.port:
            raise NotaryServerError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def config(self, port: int) -> dict[str, object]:
        """The server configuration written to :attr:`config_path` for ``port``."""
        cfg: dict[str, object] = {
            "server": {"http_addr": f"127.0.0.1:{port}"},
            "trust_service": {"type": "local"},
            "storage": {"backend": "memory"},
            "logging": {"level": "error"},
        }
        cfg.update(self.extra_config)
        return cfg

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far (for error messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and block until ``/_notary_server/health`` answers 200.

        Retries a few times on "address already in use" because :func:`free_port` is racy.
        """
        if self._proc is not None:
            raise NotaryServerError("server already started")
        try:
            require_notary_binaries()
        except NotaryUnavailableError:
            self._cleanup_workdir()
            raise
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(5):
            self.port = free_port()
            self.config_path.write_text(json.dumps(self.config(self.port), indent=2) + "\n")
            try:
                self._launch_and_wait()
                return
            except NotaryServerError as e:
                last_error = str(e)
                self._kill()
                if "address already in use" not in last_error:
                    break
        self.port = 0
        self._cleanup_workdir()
        raise NotaryServerError(last_error)

    def _launch_and_wait(self) -> None:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - only a prctl() call
            )
        health = f"{self.url}/_notary_server/health"
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise NotaryServerError(
                    f"notary-server exited with status {code} during startup\n{self._describe()}"
                )
            try:
                with _OPENER.open(health, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200]!r}"
            except (urllib.error.URLError, OSError) as e:
                last = repr(e)
            time.sleep(0.05)
        raise NotaryServerError(
            f"notary-server at {self.url} not healthy after {self.startup_timeout}s "
            f"(last: {last})\n{self._describe()}"
        )

    def _describe(self) -> str:
        """Config and log, inlined because a temporary workdir is deleted on failure."""
        config = self.config_path.read_text(encoding="utf-8", errors="replace")
        return f"--- config {self.config_path} ---\n{config}--- server log ---\n{self.log()}"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _cleanup_workdir(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and drop a temp workdir."""
        self._kill()
        self._cleanup_workdir()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NotaryCLI:
    """The real ``notary`` CLI bound to one server and one trust directory, run hermetically.

    Hermetic means: ``HOME`` is a private directory, an explicit client config is passed
    with ``-c`` (the CLI otherwise reads ``~/.notary/config.json``; ``-c`` to a missing file
    is a fatal error, so we write one), the environment is built from scratch (no
    ``NOTARY_AUTH`` or passphrases leak in from the developer's shell), ``TZ`` defaults to
    UTC so expiries end in ``Z``, and stdin is ``/dev/null`` unless ``input`` is given, so a
    prompt can never hang a test.
    """

    def __init__(
        self,
        server_url: str,
        trust_dir: Path,
        *,
        home: Path | None = None,
        passphrase: str = PASSPHRASE,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        binary: str = NOTARY_BIN,
    ) -> None:
        self.server_url = server_url
        self.trust_dir = Path(trust_dir)
        self.home = Path(home) if home is not None else self.trust_dir.parent / "notary-home"
        self.passphrase = passphrase
        self.extra_env = dict(env or {})
        self.timeout = timeout
        self.binary = binary
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.home / ".notary" / "config.json"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            json.dumps(
                {"trust_dir": str(self.trust_dir), "remote_server": {"url": server_url}},
                indent=2,
            )
            + "\n"
        )

    def with_env(self, **env: str) -> NotaryCLI:
        """A CLI sharing trust dir and HOME but with extra environment (e.g. ``TZ=...``)."""
        return NotaryCLI(
            self.server_url,
            self.trust_dir,
            home=self.home,
            passphrase=self.passphrase,
            env={**self.extra_env, **env},
            timeout=self.timeout,
            binary=self.binary,
        )

    def environment(self) -> dict[str, str]:
        """The complete environment the CLI runs with."""
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
        }
        env.update(dict.fromkeys(_PASSPHRASE_VARS, self.passphrase))
        env.update(self.extra_env)
        return env

    def command(self, *args: str | os.PathLike[str]) -> list[str]:
        """The argv that :meth:`run` executes."""
        return [
            self.binary,
            "-c",
            str(self.config_path),
            "-s",
            self.server_url,
            "-d",
            str(self.trust_dir),
            *(os.fspath(a) for a in args),
        ]

    def run(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``notary <global flags> *args``; raise :class:`NotaryCommandError` with both
        output streams on a non-zero exit (when ``check``) or on timeout.

        Note the CLI exits 0 in some refusal cases (e.g. answering anything but "yes" to
        the root-rotation prompt), so callers must check the output where that matters.
        """
        cmd = self.command(*args)
        try:
            proc = subprocess.run(
                cmd,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=self.environment(),
                cwd=self.home,
                timeout=self.timeout if timeout is None else timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise NotaryCommandError(
                cmd, None, _text(e.stdout), _text(e.stderr), why=f"timed out after {e.timeout}s"
            ) from e
        if check and proc.returncode != 0:
            raise NotaryCommandError(cmd, proc.returncode, proc.stdout, proc.stderr)
        return proc


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


# --------------------------------------------------------------------------------------------
# Delegation key material (the CLI can only generate ECDSA keys, and never x509 certificates
# for delegations, so these are made with `cryptography`).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DelegationKey:
    """A delegation key pair: ``cert_path`` goes to ``delegation add``, ``key_path`` (plain
    PKCS#8 PEM, which ``notary key import`` accepts and re-encrypts) to ``key import``."""

    role: str
    algorithm: str
    cert_path: Path
    key_path: Path


def make_delegation_key(directory: Path, role: str, algorithm: str = "ecdsa") -> DelegationKey:
    """Create a private key (``ecdsa`` P-256 or ``rsa`` 2048) and a self-signed certificate.

    Written as unencrypted PKCS#8: notary 0.7 decrypts PBES2 with a hard-wired
    HMAC-SHA1 PRF, so `cryptography`'s encrypted PKCS#8 (HMAC-SHA256) fails with
    "password invalid".
    """
    directory.mkdir(parents=True, exist_ok=True)
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unsupported delegation key algorithm {algorithm!r}")
    stem = role.replace("/", "_")
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.pkcs8.pem"
    cert_path.write_bytes(
        _self_signed_cert(key, role.rsplit("/", 1)[-1]).public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(_pkcs8_pem(key))
    key_path.chmod(0o600)
    return DelegationKey(role, algorithm, cert_path, key_path)


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _self_signed_cert(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, common_name: str
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Everything the scripted scenario produced, as exact bytes plus what was intended.

    ``metadata`` labels:

    * ``server:<gun>:<n>.<role>.json`` - ``GET /v2/<gun>/_trust/tuf/<n>.<role>.json``;
    * ``server:<gun>:<role>.json`` - the current file from the server;
    * ``cache:<gun>:<path>`` - ``<trust_dir>/tuf/<gun>/metadata/<path>`` at the end;
    * ``cache@<checkpoint>:<gun>:<path>`` - the cache at an earlier point (e.g. right after
      ``init``, when root/targets/snapshot v1 exist only locally).

    Identical blobs are kept once under the first label; ``aliases`` maps every dropped
    label to the kept one, so "the cache equals the server copy" stays checkable.
    """

    trust_dir: Path
    guns: list[str]
    metadata: list[tuple[str, bytes]]
    key_files: list[Path]
    passphrase: str
    #: gun -> target name -> content, for targets that are published at the end.
    targets: dict[str, dict[str, bytes]]
    #: gun -> target name -> role that signs it (``targets`` or ``targets/...``).
    target_roles: dict[str, dict[str, str]]
    #: gun -> target name -> the exact ``--custom`` JSON bytes given to the CLI.
    target_custom: dict[str, dict[str, bytes]]
    #: gun -> names that were added, published, then removed again.
    removed_targets: dict[str, list[str]]
    #: gun -> every role name present at the end, delegations included.
    roles: dict[str, list[str]]
    #: delegation role -> key material made for it (certs and plain PKCS#8 keys).
    delegation_keys: dict[str, DelegationKey]
    #: changelist files captured before publishing (``changelist:<gun>:<file>``).
    changelists: list[tuple[str, bytes]]
    #: ``notary key export`` bundle of all keys (PEM blocks carry ``path:`` headers).
    key_export: Path | None
    #: gun -> stdout of a final ``notary list <gun>``.
    list_output: dict[str, str]
    #: Scenario steps that were carried out, in order.
    steps: list[str]
    #: Optional steps the CLI refused: (step, error message).
    refused: list[tuple[str, str]]
    aliases: dict[str, str] = field(default_factory=dict)
    server_url: str = ""
    #: HOME used for the CLI runs (holds the client config passed with ``-c``).
    cli_home: Path | None = None
    build_seconds: float = 0.0

    def get(self, label: str) -> bytes:
        """Bytes for ``label`` (following ``aliases``); ``KeyError`` if unknown."""
        label = self.aliases.get(label, label)
        for name, data in self.metadata:
            if name == label:
                return data
        raise KeyError(label)

    def labels(self, prefix: str = "") -> list[str]:
        """All labels (kept and aliased) starting with ``prefix``."""
        kept = [name for name, _ in self.metadata]
        return [x for x in [*kept, *self.aliases] if x.startswith(prefix)]

    def cli(self, **env: str) -> NotaryCLI:
        """A CLI on the corpus' trust directory and server (only valid while it runs)."""
        return NotaryCLI(self.server_url, self.trust_dir, home=self.cli_home, env=env)


class _Collector:
    """Accumulates (label, bytes) pairs, deduplicating identical blobs."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.aliases: dict[str, str] = {}
        self._by_digest: dict[str, str] = {}

    def add(self, label: str, data: bytes) -> None:
        if label in self.aliases or any(label == name for name, _ in self.items):
            return
        digest = hashlib.sha256(data).hexdigest()
        first = self._by_digest.get(digest)
        if first is not None:
            self.aliases[label] = first
            return
        self._by_digest[digest] = label
        self.items.append((label, data))


def _delegated_roles(data: bytes) -> list[str]:
    """Names of roles delegated by one targets/delegation file."""
    signed = json.loads(data)["signed"]
    return [r["name"] for r in signed.get("delegations", {}).get("roles", [])]


def collect_server_metadata(
    base_url: str, gun: str, collector: _Collector | None = None
) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Every version of every role of ``gun`` the server holds, plus the current files.

    Roles are discovered by walking delegations from ``targets``.  Versions are fetched
    ``1..current``, tolerating gaps: e.g. targets v1 and snapshot v1 are signed by
    ``init`` but never uploaded (the first publish sends v2), so ``1.targets.json`` is 404.
    Returns (items, role names).
    """
    own = collector if collector is not None else _Collector()
    roles: list[str] = []
    queue = list(BASE_ROLES)
    while queue:
        role = queue.pop(0)
        if role in roles:
            continue
        current = try_fetch(metadata_url(base_url, gun, f"{role}.json"))
        if current is None:
            continue
        roles.append(role)
        version = int(json.loads(current)["signed"]["version"])
        for n in range(1, version + 1):
            data = try_fetch(metadata_url(base_url, gun, f"{n}.{role}.json"))
            if data is not None:
                own.add(f"server:{gun}:{n}.{role}.json", data)
        own.add(f"server:{gun}:{role}.json", current)
        if role == "targets" or role.startswith("targets/"):
            queue.extend(_delegated_roles(current))
    return own.items, roles


def _cache_files(trust_dir: Path, gun: str) -> list[tuple[str, bytes]]:
    base = trust_dir / "tuf" / gun / "metadata"
    if not base.is_dir():
        return []
    return [(p.relative_to(base).as_posix(), p.read_bytes()) for p in sorted(base.rglob("*.json"))]


def _changelist_files(trust_dir: Path, gun: str) -> list[tuple[str, bytes]]:
    base = trust_dir / "tuf" / gun / "changelist"
    if not base.is_dir():
        return []
    return [(p.name, p.read_bytes()) for p in sorted(base.glob("*.change"))]


# Awkward target names.  Each one exercises an escaping rule of the file form:
# HTML-escaped <>&, raw non-ASCII, escaped quote/backslash, astral-plane emoji, and
# U+2028 (escaped in files) next to DEL (kept raw).
NAME_HTML = "a<b>&c/\u00e9\u20ac x"
NAME_QUOTE = 'q"uote\\back\U0001f600'
NAME_SEPARATORS = "ls\u2028sep\x7fdel"
NAME_DEEP = "deep/path/to/the thing"
#: Custom data must already be canonical JSON (sorted keys, no <>&, integers only): notary
#: 0.7 signs the raw bytes but verifies the re-canonicalised form, so anything else makes
#: the server reject the upload ("valid signatures did not meet threshold for targets").
CUSTOM_JSON = b'{"a":[1,2],"nested":{"b":true,"n":null},"s":"\xc3\xa9\xf0\x9f\x98\x80","z":-3}'


class _Scenario:
    """The scripted run; methods are steps, state is what the Corpus reports."""

    def __init__(self, server: NotaryServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.trust_dir = workdir / "trust"
        self.files = workdir / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.cli = NotaryCLI(server.url, self.trust_dir, home=workdir / "notary-home")
        self.collector = _Collector()
        self.targets: dict[str, dict[str, bytes]] = {}
        self.target_roles: dict[str, dict[str, str]] = {}
        self.target_custom: dict[str, dict[str, bytes]] = {}
        self.removed: dict[str, list[str]] = {}
        self.changelists: list[tuple[str, bytes]] = []
        self.delegation_keys: dict[str, DelegationKey] = {}
        self.steps: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self._file_no = 0

    # -- helpers -----------------------------------------------------------------------

    def notary(
        self,
        *args: str | os.PathLike[str],
        cli: NotaryCLI | None = None,
        input: str | None = None,
    ) -> str:
        """Run a mandatory step; its failure aborts the corpus build."""
        out = (cli or self.cli).run(*args, input=input).stdout
        self.steps.append(" ".join(os.fspath(a) for a in args))
        return out

    def optional(self, step: str, action: Callable[[], object], gun: str | None = None) -> bool:
        """Run a step the CLI might refuse; record the refusal instead of failing.

        On refusal the staged changelist of ``gun`` is reset and the bookkeeping of added
        targets restored, so later mandatory steps start from a consistent state.
        """
        saved = copy.deepcopy((self.targets, self.target_roles, self.target_custom))
        try:
            action()
        except NotaryCommandError as e:
            self.refused.append((step, (e.stderr or e.stdout).strip()))
            self.targets, self.target_roles, self.target_custom = saved
            if gun is not None:
                self.cli.run("reset", gun, "--all")
            return False
        self.steps.append(step)
        return True

    def content_file(self, content: bytes) -> Path:
        self._file_no += 1
        path = self.files / f"target-{self._file_no}.bin"
        path.write_bytes(content)
        return path

    def add_target(
        self,
        gun: str,
        name: str,
        content: bytes,
        *,
        role: str = "targets",
        custom: bytes | None = None,
        cli: NotaryCLI | None = None,
    ) -> None:
        args: list[str | os.PathLike[str]] = ["add", gun, name, self.content_file(content)]
        if role != "targets":
            args += ["--roles", role]
        if custom is not None:
            custom_path = self.files / f"custom-{self._file_no}.json"
            custom_path.write_bytes(custom)
            args += ["--custom", custom_path]
            self.target_custom.setdefault(gun, {})[name] = custom
        self.notary(*args, cli=cli)
        self.targets.setdefault(gun, {})[name] = content
        self.target_roles.setdefault(gun, {})[name] = role

    def add_hash_target(self, gun: str, name: str, content: bytes, custom: bytes) -> None:
        """``addhash``: a target known only by size and hashes, with custom data."""
        custom_path = self.files / f"custom-hash-{name.replace('/', '_')}.json"
        custom_path.write_bytes(custom)
        self.notary(
            "addhash",
            gun,
            name,
            str(len(content)),
            "--sha256",
            hashlib.sha256(content).hexdigest(),
            "--sha512",
            hashlib.sha512(content).hexdigest(),
            "--custom",
            custom_path,
        )
        self.targets.setdefault(gun, {})[name] = content
        self.target_roles.setdefault(gun, {})[name] = "targets"
        self.target_custom.setdefault(gun, {})[name] = custom

    def remove_target(self, gun: str, name: str) -> None:
        role = self.target_roles[gun].pop(name)
        args = ["remove", gun, name] + ([] if role == "targets" else ["--roles", role])
        self.notary(*args)
        del self.targets[gun][name]
        self.target_custom.get(gun, {}).pop(name, None)
        self.removed.setdefault(gun, []).append(name)

    def checkpoint(self, name: str, gun: str) -> None:
        """Snapshot the client cache now; locally signed files never reach the server."""
        for rel, data in _cache_files(self.trust_dir, gun):
            self.collector.add(f"cache@{name}:{gun}:{rel}", data)

    def capture_changelist(self, gun: str) -> None:
        for fname, data in _changelist_files(self.trust_dir, gun):
            self.changelists.append((f"changelist:{gun}:{fname}", data))

    def import_key(self, key: DelegationKey) -> None:
        self.notary("key", "import", key.key_path, "--role", key.role)

    def rotate_root(self, gun: str, *extra: str, cli: NotaryCLI | None = None) -> None:
        out = self.notary("key", "rotate", gun, "root", *extra, cli=cli, input="yes\n")
        # The CLI exits 0 even when it aborts at the confirmation prompt.
        if "Successfully rotated root key" not in out:
            raise NotaryCommandError(
                (cli or self.cli).command("key", "rotate", gun, "root", *extra),
                0,
                out,
                "",
                why="root rotation did not report success",
            )

    # -- the scenario ------------------------------------------------------------------

    def run_main_gun(self) -> None:
        g = CORPUS_GUN
        self.notary("init", g)
        self.checkpoint("init", g)
        self.notary("publish", g)

        # Awkward names, custom data, a hash-only target and one that gets removed later.
        self.add_target(g, "v1", b"vouch corpus v1\n")
        self.add_target(g, NAME_HTML, b"html-escaping <>& target\n")
        self.add_target(g, NAME_QUOTE, b"quote and backslash target\n")
        self.add_target(g, NAME_SEPARATORS, b"U+2028 and DEL target\n")
        self.add_target(g, NAME_DEEP, b"a path with slashes and a space\n")
        self.add_target(g, "with-custom", b"target with custom data\n", custom=CUSTOM_JSON)
        self.add_hash_target(g, "hash-only", b"added by hash only\n", CUSTOM_JSON)
        self.add_target(g, "to-be-removed", b"removed again later\n")
        self.notary("status", g)
        self.capture_changelist(g)
        self.notary("publish", g)

        # Delegations: ECDSA with explicit paths, RSA with all paths, then a nested one.
        keydir = self.workdir / "delegation-keys"
        releases = make_delegation_key(keydir, "targets/releases", "ecdsa")
        ops = make_delegation_key(keydir, "targets/ops", "rsa")
        nightly = make_delegation_key(keydir, "targets/releases/nightly", "ecdsa")
        for k in (releases, ops, nightly):
            self.delegation_keys[k.role] = k
        # --paths may be repeated; "v" is a bare prefix (matches "v2", "vouch", ...).
        rel_paths = ["--paths", "rel/", "--paths", "v"]
        self.notary("delegation", "add", g, releases.role, releases.cert_path, *rel_paths)
        self.notary("delegation", "add", g, ops.role, ops.cert_path, "--all-paths")
        self.capture_changelist(g)
        self.notary("publish", g)
        self.import_key(releases)
        self.import_key(ops)
        self.add_target(g, "rel/1.0", b"release 1.0\n", role=releases.role)
        self.add_target(g, "v2", b"release v2 (matches path prefix 'v')\n", role=releases.role)
        self.add_target(g, "ops/a<&>", b"ops target signed with RSA-PSS\n", role=ops.role)
        self.add_target(
            g, "ops/custom", b"delegated target with custom\n", role=ops.role, custom=CUSTOM_JSON
        )
        self.notary("publish", g)

        def nested() -> None:
            self.notary(
                "delegation", "add", g, nightly.role, nightly.cert_path, "--paths", "rel/nightly/"
            )
            self.notary("publish", g)
            self.import_key(nightly)
            self.add_target(g, "rel/nightly/2024-01-01", b"nightly build\n", role=nightly.role)
            self.notary("publish", g)

        self.optional(f"nested delegation {nightly.role}", nested, g)

        # Server-managed snapshot: from now on the server signs snapshots.
        self.notary("key", "rotate", g, "snapshot", "-r")
        self.add_target(g, "after-snapshot-rotation", b"signed after snapshot -> server\n")
        self.notary("publish", g)
        self.notary("key", "rotate", g, "timestamp", "-r")
        self.rotate_root(g)
        self.notary("key", "rotate", g, "targets")
        self.remove_target(g, "to-be-removed")
        self.add_target(g, "after-targets-rotation", b"signed with the rotated targets key\n")
        self.notary("publish", g)

        def witness() -> None:
            self.notary("witness", g, "targets/releases")
            self.notary("publish", g)

        self.optional("witness targets/releases", witness, g)

    def run_kolkata_gun(self) -> None:
        """Second GUN: local time zone +05:30 in expiries, RSA root key, mixed rotation."""
        g = KOLKATA_GUN
        tz = self.cli.with_env(TZ="Asia/Kolkata")
        # `init --rootkey` only accepts *encrypted* keys in notary's own PKCS#8 dialect, so
        # import a plain PKCS#8 RSA key first (the CLI re-encrypts it) and point at that.
        root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        plain = self.workdir / "kolkata-root.pkcs8.pem"
        plain.write_bytes(_pkcs8_pem(root_key))
        private = self.trust_dir / "private"
        before = set(private.glob("*.key"))
        self.notary("key", "import", plain, "--role", "root", cli=tz)
        new = sorted(set(private.glob("*.key")) - before)
        if len(new) != 1:
            raise RuntimeError(f"expected exactly one imported root key file, got {new}")
        self.notary("init", g, "--rootkey", new[0], cli=tz)
        self.checkpoint("init", g)
        self.notary("publish", g, cli=tz)
        self.add_target(g, "tz/target", b"signed in Asia/Kolkata\n", cli=tz)
        self.add_target(g, "tz/custom", b"custom in Kolkata\n", custom=CUSTOM_JSON, cli=tz)
        self.notary("publish", g, cli=tz)
        # RSA root -> ECDSA root, also signing with the previous root version (--legacy).
        self.rotate_root(g, "--legacy", "1", cli=tz)
        self.add_target(g, "tz/after-root-rotation", b"after RSA->ECDSA root rotation\n", cli=tz)
        self.notary("publish", g, cli=tz)


def build_corpus(server: NotaryServer, workdir: Path) -> Corpus:
    """Run the scripted scenario with the real CLI against ``server`` and collect every
    metadata and key file it produced.

    Mandatory steps raise :class:`NotaryCommandError` (with the CLI's output) on failure;
    optional steps (nested delegation, witness) are recorded in ``Corpus.refused``.  The
    trust directory is ``workdir/trust``; each CLI call has a 60 s timeout.
    """
    require_notary_binaries()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    sc = _Scenario(server, workdir)
    sc.run_main_gun()
    sc.run_kolkata_gun()
    guns = [CORPUS_GUN, KOLKATA_GUN]

    # `publish` does not refresh the cache; a read does, so list every GUN first.
    list_output: dict[str, str] = {}
    for g in guns:
        list_output[g] = sc.notary("list", g)
    export_path = workdir / "key-export.pem"
    exported = sc.optional("key export", lambda: sc.notary("key", "export", "-o", export_path))
    key_export = export_path if exported else None

    final = _Collector()
    roles: dict[str, list[str]] = {}
    for g in guns:
        _, roles[g] = collect_server_metadata(server.url, g, final)
    for g in guns:
        for rel, data in _cache_files(sc.trust_dir, g):
            final.add(f"cache:{g}:{rel}", data)
    for label, data in sc.collector.items:
        final.add(label, data)
    final.aliases.update({k: final.aliases.get(v, v) for k, v in sc.collector.aliases.items()})

    return Corpus(
        trust_dir=sc.trust_dir,
        guns=guns,
        metadata=final.items,
        key_files=sorted((sc.trust_dir / "private").rglob("*.key")),
        passphrase=sc.cli.passphrase,
        targets=sc.targets,
        target_roles=sc.target_roles,
        target_custom=sc.target_custom,
        removed_targets=sc.removed,
        roles=roles,
        delegation_keys=sc.delegation_keys,
        changelists=sc.changelists,
        key_export=key_export,
        list_output=list_output,
        steps=sc.steps,
        refused=sc.refused,
        aliases=final.aliases,
        server_url=server.url,
        cli_home=sc.cli.home,
        build_seconds=time.monotonic() - started,
    )


@contextlib.contextmanager
def running_corpus(workdir: Path) -> Iterator[tuple[NotaryServer, Corpus]]:
    """Start a server, build a corpus in ``workdir`` and stop the server afterwards.

    For scripts (e.g. regenerating fixtures by hand) that do not go through pytest.
    """
    with NotaryServer(workdir / "server") as server:
        yield server, build_corpus(server, workdir / "corpus")
