"""Building blocks for the X.509 certificates vouch issues for TLS.

The development CA (``vouch server``), the signer's mTLS bundle and the test
CAs all issue certificates the same way: backdated a little for clients whose
clock is behind, random serials, and the same key usages.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

BACKDATE: Final = timedelta(minutes=5)  # tolerate clients whose clock is a little behind


def cert_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    validity: timedelta,
) -> x509.CertificateBuilder:
    """Subject, issuer, key, a random serial and a validity window from now."""
    start = now.replace(microsecond=0) - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + validity)
    )


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """digitalSignature for leaves; plus keyCertSign and cRLSign for CAs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
