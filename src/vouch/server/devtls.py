"""TLS that works on first start, and certificate rotation without a restart.

notary-server without certificates either refuses to start or (in 2015) fell
back to plain HTTP; notary users then copy sample certificates that expire a
year later. Instead, ``ensure_dev_tls`` makes a local development CA and a
server certificate in the data directory, reuses them, and renews the server
certificate well before it expires (keeping the CA, so clients that trust it
keep working). ``ReloadingSSLContext`` serves whatever certificate files are on
disk now: new handshakes pick up rotated files, open connections are untouched.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vouch.crypto.x509build import cert_builder, key_usage

log = logging.getLogger(__name__)

CA_VALIDITY: Final = timedelta(days=3650)
SERVER_VALIDITY: Final = timedelta(days=365)
RENEW_WITHIN: Final = timedelta(days=30)
DEFAULT_URL: Final = "https://localhost:4443"
_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_DNS_NAME: Final = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


class DevTLSError(Exception):
    """The data directory holds TLS files we must not silently replace."""


@dataclass(frozen=True)
class DevTLSPaths:
    """Where the development CA and server certificate are, and how to trust them."""

    data_dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    names: tuple[str, ...]  # the names the server certificate covers (at least)
    server_not_after: datetime
    ca_created: bool  # a new CA: clients must (re-)trust ca.crt
    server_issued: bool  # the server certificate was (re)issued by this call
    hint: str


def ensure_dev_tls(
    data_dir: str | os.PathLike[str],
    *,
    extra_names: Iterable[str] = (),
    server_url: str = DEFAULT_URL,
    hostname: str | None = None,
    now: datetime | None = None,
    renew_within: timedelta = RENEW_WITHIN,
) -> DevTLSPaths:
    """Create, reuse or renew the dev CA and server certificate in ``data_dir``.

    The server certificate is reissued when it is missing, does not match its
    key or the CA, misses one of the wanted names, or expires within
    ``renew_within``. The CA is only replaced when it is missing or about to
    expire; damaged CA files raise :class:`DevTLSError` rather than being
    overwritten, since clients may trust that CA.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    root = Path(data_dir).absolute()  # the hint's commands must work from any directory
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = server_names(extra_names, hostname=hostname)
    ca_crt, ca_key_path = root / "ca.crt", root / "ca.key"
    srv_crt, srv_key = root / "server.crt", root / "server.key"
    with _locked(root):
        loaded = _load_ca(ca_crt, ca_key_path, now, renew_within)
        ca_created = loaded is None
        if loaded is None:
            loaded = _new_ca(now, hostname or socket.gethostname())
            _write(ca_key_path, _key_pem(loaded[1]), 0o600)
            _write(ca_crt, loaded[0].public_bytes(serialization.Encoding.PEM), 0o644)
        ca_cert, ca_key = loaded
        current = None if ca_created else _usable_server(srv_crt, srv_key, ca_cert, names)
        if (
            current is None
            or current.not_valid_after_utc - renew_within <= now
            or current.not_valid_before_utc > now  # the clock went back: not valid yet
        ):
            server_cert, server_key = _new_server(ca_cert, ca_key, names, now)
            _write(srv_key, _key_pem(server_key), 0o600)
            _write(srv_crt, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
            current, issued = server_cert, True
        else:
            issued = False
    return DevTLSPaths(
        data_dir=root,
        ca_cert=ca_crt,
        ca_key=ca_key_path,
        server_cert=srv_crt,
        server_key=srv_key,
        names=tuple(names),
        server_not_after=current.not_valid_after_utc,
        ca_created=ca_created,
        server_issued=issued,
        hint=trust_hint(ca_crt, server_url, new_ca=ca_created),
    )


def server_names(extra_names: Iterable[str] = (), *, hostname: str | None = None) -> list[str]:
    """localhost, loopback addresses, this machine's name, then ``extra_names``."""
    names = ["localhost", "127.0.0.1", "::1"]
    host = hostname or socket.gethostname()
    try:
        wanted = [_normalise_name(host)]
    except ValueError:  # an odd machine name must not stop the server from starting
        log.warning("host name %r is not a valid DNS name; not in the certificate", host)
        wanted = []
    wanted += [_normalise_name(n) for n in extra_names]
    for name in wanted:
        if name and name not in names:
            names.append(name)
    return names


def _normalise_name(name: str) -> str | None:
    name = name.strip().rstrip(".").lower()
    if not name:
        return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name.isascii() or not _DNS_NAME.fullmatch(name):
        raise ValueError(f"not a DNS name or IP address: {name!r}")
    return name


def trust_hint(ca_cert: Path, server_url: str = DEFAULT_URL, *, new_ca: bool = False) -> str:
    """How to make clients trust the dev CA, per client (not system-wide: its key is on
    this disk)."""
    ca = shlex.quote(str(ca_cert))
    url = server_url.rstrip("/")
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    docker_dir = shlex.quote(f"{Path.home()}/.docker/tls/{hostport}")
    lines = [
        f"TLS: serving a certificate from the local development CA {ca}.",
        "  A NEW CA was created: clients must trust it (again)." if new_ca else "",
        "  Trust it per client, not system-wide:",
        f"    notary:  notary -s {url} --tlscacert {ca} list <gun>",
        f'             (or "remote_server": {{"url": {json.dumps(url)}, "root_ca": '
        f"{json.dumps(str(ca_cert))}}} in ~/.notary/config.json)",
        f"    curl:    curl --cacert {ca} {url}/_notary_server/health",
        f"    docker:  mkdir -p {docker_dir} && cp {ca} {docker_dir}/ca.crt",
        f"             then DOCKER_CONTENT_TRUST=1 DOCKER_CONTENT_TRUST_SERVER={url} docker ...",
        f"    python:  httpx.Client(verify={str(ca_cert)!r}) or SSL_CERT_FILE={ca}",
        "  Use real certificates in production: server.tls_cert_file / tls_key_file.",
    ]
    return "\n".join(line for line in lines if line)


# -- files --------------------------------------------------------------------


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise concurrent starts, which could otherwise pair one CA's cert with
    another's key."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic replace, so a reloading server never reads half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # exact mode, whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # private keys are for the server's user only
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _load_ca(
    crt: Path, key_path: Path, now: datetime, renew_within: timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The existing CA, or None when there is none (or it is about to expire)."""
    if not crt.exists() or not key_path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = _load_key(key_path)
    except (OSError, ValueError) as exc:
        raise DevTLSError(f"cannot read the dev CA in {crt.parent} ({exc}); delete it") from exc
    if not _same_key(cert, key):
        raise DevTLSError(f"{crt} and {key_path} do not belong together; delete both")
    if cert.not_valid_after_utc - renew_within <= now:
        log.warning(
            "development CA %s expires %s: creating a new one", crt, cert.not_valid_after_utc
        )
        return None
    return cert, key


def _usable_server(
    crt: Path, key_path: Path, ca: x509.Certificate, names: list[str]
) -> x509.Certificate | None:
    """The current server certificate if it matches its key, the CA and the names."""
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = _load_key(key_path)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return None
    have = {str(n) for n in sans.get_values_for_type(x509.IPAddress)}
    have |= {n.lower() for n in sans.get_values_for_type(x509.DNSName)}
    if not _same_key(cert, key) or not set(names) <= have:
        return None
    return cert


# -- certificates -------------------------------------------------------------


def _new_ca(now: datetime, host: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vouch development"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"vouch dev CA {host} {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        cert_builder(name, name, key.public_key(), now, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str], now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        cert_builder(subject, ca.subject, key.public_key(), now, SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# -- serving ------------------------------------------------------------------


def server_ssl_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    *,
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server context like notary-server's: TLS >= 1.2, and with ``client_ca``
    every client must present a certificate from it (mTLS). Errors raise: never
    fall back to plain HTTP."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


class ReloadingSSLContext:
    """Serves the certificate files as they are now, without restarting the listener.

    Give :attr:`context` to the server. At most every ``check_interval`` seconds,
    a handshake looks at the files' stat data; when they changed, a fresh
    context is built from them and that handshake, and every later one, is
    switched to it from the SNI callback (which OpenSSL calls for every
    ClientHello, with or without SNI). Open connections keep their session. A
    half-written rotation (cert and key not matching yet) is logged and retried
    later while the previous certificate stays in service. The server may also
    call :meth:`maybe_reload` itself, e.g. from a timer.
    """

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        *,
        client_ca: str | os.PathLike[str] | None = None,
        check_interval: float = 1.0,
    ) -> None:
        self._cert, self._key = Path(cert_file), Path(key_file)
        self._client_ca = None if client_ca is None else Path(client_ca)
        self._interval = check_interval
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self.context = self._build()  # startup errors propagate: no TLS, no server
        self._current = self.context
        self._next_check = time.monotonic() + check_interval
        self.reloads = 0
        self.last_error: Exception | None = None

    @property
    def current(self) -> ssl.SSLContext:
        """The context new handshakes use (``context`` until the first reload)."""
        return self._current

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Rebuild the context if the files changed (or ``force``); True if it did.
        Never raises: a bad rotation must not take the server down."""
        if not self._lock.acquire(blocking=False):
            return False  # another thread is reloading right now
        try:
            now = time.monotonic()
            if not force and now < self._next_check:
                return False
            self._next_check = now + self._interval
            stamp = self._stamps()
            if not force and stamp == self._stamp:
                return False
            try:
                fresh = self._build()
            except (OSError, ssl.SSLError, ValueError) as exc:
                if repr(exc) != repr(self.last_error):
                    log.warning("TLS files changed but cannot be loaded yet: %s", exc)
                self.last_error = exc
                return False
            self._stamp, self._current, self.last_error = stamp, fresh, None
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self._cert)
            return True
        finally:
            self._lock.release()

    def _build(self) -> ssl.SSLContext:
        ctx = server_ssl_context(self._cert, self._key, client_ca=self._client_ca)
        ctx.sni_callback = self._on_client_hello
        return ctx

    def _on_client_hello(
        self, conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        try:
            self.maybe_reload()
            current = self._current
            if conn.context is not current:
                conn.context = current
        except Exception:  # an exception here would abort the handshake
            log.exception("TLS reload check failed")

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        files = [self._cert, self._key] + ([self._client_ca] if self._client_ca else [])
        out: list[tuple[int, int, int] | None] = []
        for path in files:
            try:
                st = path.stat()
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)


__all__ = [
    "CA_VALIDITY",
    "RENEW_WITHIN",
    "SERVER_VALIDITY",
    "DevTLSError",
    "DevTLSPaths",
    "ReloadingSSLContext",
    "ensure_dev_tls",
    "server_names",
    "server_ssl_context",
    "trust_hint",
]
