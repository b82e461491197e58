"""Validation of root certificates, the trust anchors of a Notary repository.

Root keys must be X.509 certificates whose leaf names the GUN (``CN=<gun>``,
or ``CN=<prefix>*`` covering it). Only keys whose leaf passes these checks
count towards a root threshold, exactly as notary-server and the notary CLI
decide; keys that fail are dropped, not fatal by themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vouch.tuf.errors import CertificateError, FormatError
from vouch.tuf.keys import MIN_RSA_BITS, Key

# Notary tolerates clocks up to a day apart on NotBefore.
NOT_BEFORE_SLACK = timedelta(days=1)
_SHA1_OIDS = frozenset(
    {
        x509.SignatureAlgorithmOID.RSA_WITH_SHA1,
        x509.SignatureAlgorithmOID.ECDSA_WITH_SHA1,
        x509.SignatureAlgorithmOID.DSA_WITH_SHA1,
    }
)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cn_matches(cn: str, gun: str) -> bool:
    """A CN names the GUN exactly, or is a ``prefix*`` wildcard covering it."""
    if cn == gun:
        return True
    return cn.endswith("*") and gun.startswith(cn[:-1])


def check_cert(cert: x509.Certificate, now: datetime, *, check_expiry: bool) -> None:
    """Refuse a certificate Notary would not trust as a leaf or intermediate."""
    if cert.signature_algorithm_oid in _SHA1_OIDS:
        raise CertificateError("certificate is signed with SHA-1")
    pub = cert.public_key()
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < MIN_RSA_BITS:
        raise CertificateError(f"RSA certificate key is {pub.key_size} bits, below 2048")
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if not_after < not_before:
        raise CertificateError("certificate validity window is inverted")
    if not_before > now + NOT_BEFORE_SLACK:
        raise CertificateError(f"certificate is not valid before {not_before.isoformat()}")
    if check_expiry and not_after < now:
        raise CertificateError(f"certificate expired at {not_after.isoformat()}")


def check_root_key(key: Key, gun: str, now: datetime, *, check_expiry: bool = True) -> None:
    """Raise :class:`CertificateError` unless ``key`` is a valid root key for ``gun``.

    Certificates are attacker-supplied bytes: any parsing failure inside
    ``cryptography`` (unknown curve, bad version, duplicate extension...) is a
    refusal, never a crash.
    """
    try:
        _check_root_key(key, gun, now, check_expiry=check_expiry)
    except CertificateError:
        raise
    except Exception as exc:
        raise CertificateError(f"root key {key.keyid}: unusable certificate: {exc}") from exc


def _check_root_key(key: Key, gun: str, now: datetime, *, check_expiry: bool) -> None:
    if not key.is_x509:
        raise CertificateError(
            f"root key {key.keyid} is a bare {key.keytype} key, not a certificate"
        )
    try:
        certs = key.certificates()
    except FormatError as exc:
        raise CertificateError(str(exc)) from exc
    leaf, rest = certs[0], certs[1:]
    if _is_ca(leaf):
        raise CertificateError(f"root key {key.keyid}: first certificate is a CA, not a leaf")
    if any(not _is_ca(c) for c in rest):
        raise CertificateError(f"root key {key.keyid}: bundle holds more than one leaf")
    cn = common_name(leaf)
    if not cn_matches(cn, gun):
        raise CertificateError(f"root certificate CN {cn!r} does not name {gun!r}")
    check_cert(leaf, now, check_expiry=check_expiry)


def valid_root_keys(
    keys: Iterable[Key], gun: str, now: datetime, *, check_expiry: bool = True
) -> dict[str, Key]:
    """The subset of ``keys`` that can anchor trust for ``gun``, by key ID."""
    valid: dict[str, Key] = {}
    for key in keys:
        try:
            check_root_key(key, gun, now, check_expiry=check_expiry)
        except CertificateError:
            continue
        valid[key.keyid] = key
    return valid
