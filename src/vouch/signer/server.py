"""Run the signer: key store + :class:`~vouch.signer.api.SignerAPI` on grpc.aio over TLS.

TLS is mandatory, as in notary-signer: the only thing between a network
client and a signature by a repository's timestamp key is this handshake.
With ``client_ca_file`` set, a client must present a certificate from that CA
(grpc's ``require_client_auth``: verified, not just requested). gRPC's TLS
stack negotiates TLS 1.2 or 1.3 only, and ALPN ``h2``, which Go clients insist on.
The certificate files are re-read when they change (:class:`CertificateFiles`),
so certificates rotate without a restart.

``SO_REUSEPORT`` is switched off (grpc turns it on by default on Linux): a
second signer started on a busy port must fail, not silently share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vouch.keyservice.base import KeyService
from vouch.signer._grpc import grpc
from vouch.signer.api import SignerAPI
from vouch.signer.config import ConfigError, SignerConfig
from vouch.signer.storage import open_key_service

log = logging.getLogger("vouch.signer")

#: Seconds in-flight RPCs get to finish on shutdown.
SHUTDOWN_GRACE: Final = 5.0
_PR_SET_DUMPABLE: Final = 4
#: notary's (logrus) level names that Python spells differently.
_LOG_LEVELS: Final = {"warn": "WARNING", "fatal": "CRITICAL", "panic": "CRITICAL"}
SERVER_OPTIONS: Final = (
    ("grpc.so_reuseport", 0),
    # Tolerate clients that keep idle connections alive with pings (up to one every
    # 10 s) instead of closing them with GOAWAY(too_many_pings).
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class CertificateFiles:
    """The signer's TLS files as they are on disk now: rotation without a restart.

    grpc asks :meth:`fetch` on every new handshake; when the files changed
    since the last load, a fresh configuration is returned and used from that
    handshake on, while established connections keep their session. A
    half-written rotation (certificate and key not matching yet, a file
    missing) is logged and skipped, and the previous certificate stays in
    service, so replacing the files in any order is safe.
    """

    def __init__(self, config: SignerConfig) -> None:
        self._cert, self._key = config.tls_cert_file, config.tls_key_file
        self._ca = config.client_ca_file
        self._stamp = self._stamps()
        try:
            self.initial = self._load()  # start-up errors stop the signer: no TLS, no signer
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unable to set up TLS: {exc}") from None
        self.reloads = 0

    @property
    def require_client_auth(self) -> bool:
        return self._ca is not None

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if the files changed, else None (keep the current one).

        Never raises: an exception here would fail the client's handshake."""
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            config = self._load()
        except Exception as exc:
            log.warning("TLS files changed but cannot be used yet: %s", exc)
            return None
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self._cert)
        return config

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = self._cert.read_bytes(), self._key.read_bytes()
        ca = self._ca.read_bytes() if self._ca is not None else None
        leaf = x509.load_pem_x509_certificates(cert)[0]
        private = serialization.load_pem_private_key(key, password=None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(serialization.Encoding.DER, spki) != (
            private.public_key().public_bytes(serialization.Encoding.DER, spki)
        ):
            raise ValueError(f"{self._cert} does not belong to {self._key}")
        if ca is not None:
            x509.load_pem_x509_certificates(ca)  # a truncated CA file must not be loaded
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in (self._cert, self._key, self._ca):
            try:
                st = path.stat() if path is not None else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else None)
        return tuple(out)


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """TLS credentials that follow the files; mTLS when ``client_ca_file`` is set."""
    # grpc documents None as "keep the current configuration"; the stubs omit it.
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], files.fetch)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, fetch, require_client_authentication=files.require_client_auth
    )


@dataclass
class RunningSigner:
    """A started signer: its bound port, and how to stop it."""

    server: grpc.aio.Server
    keys: KeyService
    port: int
    address: str
    certificates: CertificateFiles

    async def stop(self, grace: float | None = SHUTDOWN_GRACE) -> None:
        await self.server.stop(grace)
        await self.keys.close()


async def start_signer(config: SignerConfig, keys: KeyService | None = None) -> RunningSigner:
    """Open the key store (unless given), bind and start; port 0 picks a free port."""
    files = CertificateFiles(config)  # before the store: fail fast on bad files
    address = config.listen_address
    store = keys if keys is not None else await open_key_service(config)
    try:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(SignerAPI(store).handlers())
        try:
            port = server.add_secure_port(address, server_credentials(files))
        except RuntimeError as exc:  # grpc raises on bind failure ("Failed to bind")
            raise OSError(f"grpc server failed to listen on {config.grpc_addr}: {exc}") from None
        if port == 0:
            raise OSError(f"grpc server failed to listen on {config.grpc_addr}")
        await server.start()
    except BaseException:
        await store.close()
        raise
    return RunningSigner(server, store, port, address, files)


async def serve(
    config: SignerConfig,
    echo: Callable[[str], Any] = print,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain and close."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    running = await start_signer(config)
    mtls = "client certificates required" if config.client_ca_file else "no client certificates"
    host = running.address.rpartition(":")[0]
    echo(
        f"vouch signer listening on {host}:{running.port} (TLS, {mtls}; "
        f"storage: {config.backend}"
        + (f", default alias {config.default_alias}" if config.default_alias else "")
        + ")"
    )
    try:
        await stop.wait()
    finally:
        log.info("vouch signer shutting down")
        await running.stop()


def harden_process() -> None:
    """No core dumps and no ptrace by other processes of this user, as notary-signer does
    outside ``-debug``: decrypted keys live in this process's memory."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def run(config: SignerConfig, echo: Callable[[str], Any] = print, *, debug: bool = False) -> None:
    """The ``vouch signer`` process: hardening (unless ``debug``), logging, :func:`serve`."""
    if not debug:
        harden_process()
    level = logging.getLevelName(_LOG_LEVELS.get(config.log_level, config.log_level.upper()))
    if not isinstance(level, int):
        raise ConfigError(f"logging.level {config.log_level!r} is not a log level")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # grpc's own debug lines (one per call) would drown the audit log.
    logging.getLogger("grpc").setLevel(max(level, logging.INFO))
    logging.getLogger("asyncio").setLevel(max(level, logging.INFO))
    asyncio.run(serve(config, echo))


__all__ = [
    "CertificateFiles",
    "RunningSigner",
    "harden_process",
    "run",
    "serve",
    "server_credentials",
    "start_signer",
]
