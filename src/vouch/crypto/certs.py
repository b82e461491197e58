"""Root certificates as the notary CLI makes them.

Self-signed X.509 v3 with ``CN=<gun>`` as subject and issuer, a 128-bit
random serial, valid from now (whole seconds) for 10 years, critical key
usage digitalSignature + keyEncipherment, extended key usage codeSigning,
critical basic constraints CA:FALSE and no key identifiers. Matching this
keeps vouch-made roots indistinguishable from notary-made ones.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vouch.crypto.privkey import PrivateKey
from vouch.tuf import timefmt
from vouch.tuf.keys import Key, certificate_key

ROOT_CERT_VALIDITY = timedelta(days=3650)


def root_certificate(
    key: PrivateKey,
    gun: str,
    *,
    now: datetime | None = None,
    validity: timedelta = ROOT_CERT_VALIDITY,
) -> x509.Certificate:
    """A self-signed root certificate for ``gun`` over ``key`` (ECDSA or RSA)."""
    obj = key.obj
    if not isinstance(obj, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("root certificates need an ECDSA or RSA key")
    start = (now or timefmt.now()).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gun)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(obj.public_key())
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(obj, hashes.SHA256())


def root_key(key: PrivateKey, gun: str, *, now: datetime | None = None) -> Key:
    """The ``*-x509`` metadata key for a fresh root certificate of ``key``."""
    return certificate_key([root_certificate(key, gun, now=now)])
