"""Development TLS: first-start generation, reuse, renewal, and live certificate rotation.

The handshake tests use real sockets on 127.0.0.1 and a client that verifies
against the generated ``ca.crt`` with OpenSSL's strict X.509 checks, so the
certificates are proven usable, not just well-formed.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from notary_harness import NOTARY_BIN, NotaryUnavailableError, require_notary_binaries
from vouch.server.devtls import (
    DevTLSError,
    DevTLSPaths,
    ReloadingSSLContext,
    ensure_dev_tls,
    server_ssl_context,
)

HOST = "buildhost"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(p: DevTLSPaths) -> dict[str, bytes]:
    files = (p.ca_cert, p.ca_key, p.server_cert, p.server_key)
    return {f.name: f.read_bytes() for f in files}


@pytest.fixture
def tls(tmp_path: Path) -> DevTLSPaths:
    return ensure_dev_tls(tmp_path / "tls", hostname=HOST)


# -- generation, reuse, renewal -----------------------------------------------


def test_first_start_generates_ca_and_server_certificate(tmp_path: Path) -> None:
    p = ensure_dev_tls(tmp_path / "tls", extra_names=["Notary.Test", "10.1.2.3"], hostname=HOST)
    assert p.ca_created and p.server_issued
    ca, srv = load(p.ca_cert), load(p.server_cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3650, minutes=10)

    srv.verify_directly_issued_by(ca)
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", HOST, "notary.test"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    ]
    assert srv.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    lifetime = srv.not_valid_after_utc - srv.not_valid_before_utc
    assert timedelta(days=365) <= lifetime <= timedelta(days=365, minutes=10)
    assert p.server_not_after == srv.not_valid_after_utc
    assert p.names == ("localhost", "127.0.0.1", "::1", HOST, "notary.test", "10.1.2.3")


def test_file_modes(tls: DevTLSPaths) -> None:
    assert mode(tls.ca_key) == 0o600
    assert mode(tls.server_key) == 0o600
    assert mode(tls.ca_cert) == 0o644
    assert mode(tls.server_cert) == 0o644
    assert mode(tls.data_dir) == 0o700
    assert not list(tls.data_dir.glob("*.tmp")) and not list(tls.data_dir.glob(".*.tmp"))


def test_machine_hostname_is_included_by_default(tmp_path: Path) -> None:
    name = socket.gethostname().lower().rstrip(".")
    p = ensure_dev_tls(tmp_path)
    assert name in p.names


def test_hint_tells_how_to_trust_the_ca(tmp_path: Path) -> None:
    p = ensure_dev_tls(tmp_path, hostname=HOST, server_url="https://localhost:4443")
    ca = str(p.ca_cert)
    assert f"notary -s https://localhost:4443 --tlscacert {ca}" in p.hint
    assert f"curl --cacert {ca} https://localhost:4443/" in p.hint
    assert ".docker/tls/localhost:4443" in p.hint  # where the docker CLI looks for notary CAs
    assert "NEW CA" in p.hint
    assert "NEW CA" not in ensure_dev_tls(tmp_path, hostname=HOST).hint


def test_later_starts_reuse_everything(tls: DevTLSPaths) -> None:
    before = snapshot(tls)
    again = ensure_dev_tls(tls.data_dir, hostname=HOST)
    assert not again.ca_created and not again.server_issued
    assert snapshot(again) == before


@pytest.mark.parametrize("days_later", [340, 400])  # expires within 30 days / has expired
def test_near_expiry_server_certificate_is_renewed_keeping_the_ca(
    tls: DevTLSPaths, days_later: int
) -> None:
    before = snapshot(tls)
    later = datetime.now(UTC) + timedelta(days=days_later)
    renewed = ensure_dev_tls(tls.data_dir, hostname=HOST, now=later)
    assert renewed.server_issued and not renewed.ca_created
    after = snapshot(renewed)
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"]
    assert after["server.crt"] != before["server.crt"]
    assert after["server.key"] != before["server.key"]
    srv = load(renewed.server_cert)
    srv.verify_directly_issued_by(load(renewed.ca_cert))
    assert srv.not_valid_after_utc > later + timedelta(days=364)
    assert mode(renewed.server_key) == 0o600


def test_not_renewed_outside_the_window(tls: DevTLSPaths) -> None:
    later = datetime.now(UTC) + timedelta(days=300)
    assert not ensure_dev_tls(tls.data_dir, hostname=HOST, now=later).server_issued


def test_new_name_reissues_server_certificate(tls: DevTLSPaths) -> None:
    before = snapshot(tls)
    p = ensure_dev_tls(tls.data_dir, hostname=HOST, extra_names=["trust.example.com"])
    assert p.server_issued and not p.ca_created
    assert snapshot(p)["ca.crt"] == before["ca.crt"]
    sans = load(p.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "trust.example.com" in sans.value.get_values_for_type(x509.DNSName)


def test_server_certificate_from_another_ca_is_replaced(tls: DevTLSPaths, tmp_path: Path) -> None:
    other = ensure_dev_tls(tmp_path / "other", hostname=HOST)
    tls.server_cert.write_bytes(other.server_cert.read_bytes())
    tls.server_key.write_bytes(other.server_key.read_bytes())
    p = ensure_dev_tls(tls.data_dir, hostname=HOST)
    assert p.server_issued
    load(p.server_cert).verify_directly_issued_by(load(p.ca_cert))


def test_loose_key_permissions_are_tightened(tls: DevTLSPaths) -> None:
    os.chmod(tls.server_key, 0o644)
    os.chmod(tls.ca_key, 0o640)
    ensure_dev_tls(tls.data_dir, hostname=HOST)
    assert mode(tls.server_key) == 0o600 and mode(tls.ca_key) == 0o600


def test_damaged_ca_is_not_overwritten(tls: DevTLSPaths, tmp_path: Path) -> None:
    tls.ca_key.write_bytes(ensure_dev_tls(tmp_path / "other", hostname=HOST).ca_key.read_bytes())
    with pytest.raises(DevTLSError, match="belong together"):
        ensure_dev_tls(tls.data_dir, hostname=HOST)
    tls.ca_cert.write_bytes(b"garbage")
    with pytest.raises(DevTLSError, match="cannot read"):
        ensure_dev_tls(tls.data_dir, hostname=HOST)


def test_missing_ca_key_means_a_new_ca(tls: DevTLSPaths) -> None:
    old_ca = tls.ca_cert.read_bytes()
    tls.ca_key.unlink()
    p = ensure_dev_tls(tls.data_dir, hostname=HOST)
    assert p.ca_created and p.server_issued
    assert p.ca_cert.read_bytes() != old_ca
    load(p.server_cert).verify_directly_issued_by(load(p.ca_cert))


def test_bad_extra_name_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a DNS name"):
        ensure_dev_tls(tmp_path, hostname=HOST, extra_names=["bad name"])


def test_odd_machine_name_is_skipped(tmp_path: Path) -> None:
    p = ensure_dev_tls(tmp_path, hostname="my host!")
    assert p.names == ("localhost", "127.0.0.1", "::1")


# -- real handshakes ----------------------------------------------------------


class EchoServer:
    """A threaded TLS echo server on 127.0.0.1 that never restarts its listener."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(1024):
                    tls.sendall(data)
        except (ssl.SSLError, OSError):
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def client_context(ca: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def connect(port: int, ctx: ssl.SSLContext, name: str = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls: ssl.SSLSocket | None = None
    try:
        tls = ctx.wrap_socket(raw, server_hostname=name)
        echo(tls)
    except BaseException:
        (tls or raw).close()
        raise
    return tls


def echo(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"ping")
    assert tls.recv(4) == b"ping"


def peer(tls: ssl.SSLSocket) -> bytes:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(path: Path) -> bytes:
    return load(path).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def served(tls: DevTLSPaths) -> Iterator[tuple[DevTLSPaths, ReloadingSSLContext, EchoServer]]:
    reloading = ReloadingSSLContext(tls.server_cert, tls.server_key, check_interval=0)
    server = EchoServer(reloading.context)
    yield tls, reloading, server
    server.close()


def test_handshake_verifies_against_ca(tls: DevTLSPaths) -> None:
    server = EchoServer(server_ssl_context(tls.server_cert, tls.server_key))
    try:
        ctx = client_context(tls.ca_cert)
        for name in ("localhost", "127.0.0.1"):
            with connect(server.port, ctx, name) as conn:
                assert conn.version() in ("TLSv1.2", "TLSv1.3")
                assert peer(conn) == der(tls.server_cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(server.port, ctx, "example.com")
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(server.port, ssl.create_default_context())  # the CA is not trusted blindly
        assert server.ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    finally:
        server.close()


def test_reloading_context_serves_rotated_certificate(
    served: tuple[DevTLSPaths, ReloadingSSLContext, EchoServer],
) -> None:
    tls, reloading, server = served
    ctx = client_context(tls.ca_cert)
    first = connect(server.port, ctx)
    assert peer(first) == der(tls.server_cert)

    rotated = ensure_dev_tls(tls.data_dir, hostname=HOST, renew_within=timedelta(days=400))
    assert rotated.server_issued
    # Same listener, new handshake; an IP address sends no SNI, the callback still runs.
    with connect(server.port, ctx, "127.0.0.1") as second:
        assert peer(second) == der(rotated.server_cert) != peer(first)
    assert reloading.reloads == 1
    echo(first)  # the connection made before the rotation is unaffected
    first.close()
    with connect(server.port, ctx) as third:
        assert peer(third) == der(rotated.server_cert)
    assert reloading.reloads == 1  # unchanged files are not reloaded


def test_half_written_rotation_keeps_old_certificate(
    served: tuple[DevTLSPaths, ReloadingSSLContext, EchoServer], tmp_path: Path
) -> None:
    tls, reloading, server = served
    original = der(tls.server_cert)
    other = ensure_dev_tls(tmp_path / "other", hostname=HOST)
    tls.server_key.write_bytes(other.server_key.read_bytes())  # key first, cert not yet
    ctx = client_context(tls.ca_cert)
    with connect(server.port, ctx) as conn:
        assert peer(conn) == original
    assert reloading.last_error is not None and reloading.reloads == 0
    ensure_dev_tls(tls.data_dir, hostname=HOST)  # notices the mismatch and reissues
    with connect(server.port, ctx) as conn:
        assert peer(conn) == der(tls.server_cert) != original
    assert reloading.last_error is None and reloading.reloads == 1


def test_check_interval_throttles_stat_calls(tls: DevTLSPaths) -> None:
    reloading = ReloadingSSLContext(tls.server_cert, tls.server_key, check_interval=3600)
    ensure_dev_tls(tls.data_dir, hostname=HOST, renew_within=timedelta(days=400))
    assert not reloading.maybe_reload()
    assert reloading.maybe_reload(force=True)
    assert reloading.current is not reloading.context


def _client_cert(p: DevTLSPaths, tmp_path: Path) -> tuple[Path, Path]:
    ca_key = serialization.load_pem_private_key(p.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = load(p.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    crt, kf = tmp_path / "client.crt", tmp_path / "client.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, kf


def test_mutual_tls_requires_client_certificate(tls: DevTLSPaths, tmp_path: Path) -> None:
    reloading = ReloadingSSLContext(tls.server_cert, tls.server_key, client_ca=tls.ca_cert)
    server = EchoServer(reloading.context)
    try:
        with connect(server.port, client_context(tls.ca_cert, _client_cert(tls, tmp_path))):
            pass
        # TLS 1.3 clients learn of the refusal at their first read: an alert or EOF
        with pytest.raises((ssl.SSLError, OSError, AssertionError)):
            connect(server.port, client_context(tls.ca_cert))
    finally:
        server.close()


def test_rotation_under_asyncio_server(tls: DevTLSPaths) -> None:
    """uvicorn's path: asyncio's SSL protocol (SSLObject), not SSLSocket."""
    reloading = ReloadingSSLContext(tls.server_cert, tls.server_key, check_interval=0)
    ctx = client_context(tls.ca_cert)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    def fetch(port: int) -> bytes:
        with connect(port, ctx) as conn:
            return peer(conn)

    async def scenario() -> tuple[bytes, bytes, bytes]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=reloading.context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            before = await asyncio.to_thread(fetch, port)
            p = ensure_dev_tls(tls.data_dir, hostname=HOST, renew_within=timedelta(days=400))
            after = await asyncio.to_thread(fetch, port)
            return before, after, der(p.server_cert)

    before, after, expected = asyncio.run(scenario())
    assert before != after == expected


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Answers like an empty notary-server: the ping works, there is no trust data."""

    def do_GET(self) -> None:
        ping = self.path == "/v2/"
        body = b"{}" if ping else b'{"errors":[{"code":"METADATA_NOT_FOUND","message":"x"}]}\n'
        self.send_response(200 if ping else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.interop
def test_notary_cli_trusts_the_dev_ca(tls: DevTLSPaths, tmp_path: Path) -> None:
    """Go's TLS client (the real notary CLI) accepts the generated server certificate."""
    try:
        require_notary_binaries()
    except NotaryUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    reloading = ReloadingSSLContext(tls.server_cert, tls.server_key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    server.socket = reloading.context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_address[1]}"
    try:
        for ca in ([str(tls.ca_cert)], []):
            flags = ["--tlscacert", *ca] if ca else []
            cmd = [NOTARY_BIN, "-s", url, "-d", str(tmp_path / "trust"), *flags]
            out = subprocess.run(
                [*cmd, "list", "example.com/app"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if ca:  # got through TLS to the (empty) server
                assert "does not have trust data" in out.stdout + out.stderr, out
            else:
                assert "certificate signed by unknown authority" in out.stderr, out
    finally:
        server.shutdown()
        server.server_close()
