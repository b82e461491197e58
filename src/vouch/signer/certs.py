"""A private CA plus signer and client certificates for the server ↔ signer link.

The trust server and the signer authenticate each other with mutual TLS on a
link nothing else should use, so a CA of their own (not a public one, not the
one that serves clients) is the right trust anchor: a certificate from it is
the only way to ask the signer for a signature. :func:`issue_mtls_bundle`
writes everything both sides need, so a fresh machine can run them with mTLS
in two commands (docs/signer.md). Keys are P-256, certificates SHA-256, and
the EKUs are split (serverAuth for the signer, clientAuth for the client)
because both Go's and BoringSSL's verifiers enforce them when present.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vouch.crypto.x509build import cert_builder, key_usage

CA_VALIDITY: Final = timedelta(days=3650)
LEAF_VALIDITY: Final = timedelta(days=825)
DEFAULT_SIGNER_NAMES: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class MTLSBundle:
    """Where :func:`issue_mtls_bundle` wrote the files."""

    ca_cert: Path
    ca_key: Path
    signer_cert: Path
    signer_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class CA:
    """A certificate authority in memory, able to issue leaves."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "vouch signer CA", *, now: datetime | None = None) -> CA:
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vouch"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {secrets.token_hex(4)}"),
            ]
        )
        cert = (
            cert_builder(subject, subject, key.public_key(), now, CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        *,
        server_names: Sequence[str] = (),
        client: bool = False,
        now: datetime | None = None,
        validity: timedelta = LEAF_VALIDITY,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf for a TLS server (``server_names`` as SANs) and/or a client."""
        if not server_names and not client:
            raise ValueError("a certificate must be for a server, a client, or both")
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = []
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            cert_builder(subject, self.cert.subject, key.public_key(), now, validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if server_names:
            builder = builder.add_extension(_sans(server_names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def issue_mtls_bundle(
    directory: str | os.PathLike[str],
    *,
    signer_names: Iterable[str] = (),
    client_name: str = "vouch-server",
    ca: CA | None = None,
) -> MTLSBundle:
    """Write ``ca.crt/.key``, ``signer.crt/.key`` and ``client.crt/.key`` into ``directory``.

    The signer certificate covers localhost and loopback plus ``signer_names``
    (the ``hostname`` clients dial: Go checks it against the SANs only).
    Existing files are never overwritten: replacing a CA would silently cut
    every already configured client off.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = ["ca", "signer", "client"]
    existing = [p for n in names for p in (root / f"{n}.crt", root / f"{n}.key") if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {', '.join(map(str, existing))}")
    ca = ca or CA.create()
    wanted = list(DEFAULT_SIGNER_NAMES)
    wanted += [n for n in signer_names if n and n not in wanted]
    signer_cert, signer_key = ca.issue(wanted[-1], server_names=wanted)
    client_cert, client_key = ca.issue(client_name, client=True)
    bundle = MTLSBundle(
        ca_cert=root / "ca.crt",
        ca_key=root / "ca.key",
        signer_cert=root / "signer.crt",
        signer_key=root / "signer.key",
        client_cert=root / "client.crt",
        client_key=root / "client.key",
    )
    write_pair(bundle.ca_cert, bundle.ca_key, ca.cert, ca.key)
    write_pair(bundle.signer_cert, bundle.signer_key, signer_cert, signer_key)
    write_pair(bundle.client_cert, bundle.client_key, client_cert, client_key)
    return bundle


def write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Certificate world-readable, key readable by its owner only (created 0600, never
    briefly wider)."""
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _sans(names: Iterable[str]) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(out)


__all__ = ["CA", "MTLSBundle", "issue_mtls_bundle", "write_pair"]
