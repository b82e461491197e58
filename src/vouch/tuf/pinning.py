"""Trust pinning: which root a client accepts on first contact with a GUN.

Precedence per GUN, as in the notary client: pinned certificate IDs
(exact GUN, else the longest ``prefix*`` wildcard), else a CA bundle for the
longest matching GUN prefix, else trust on first use unless TOFU is disabled.
Pinning only decides the *first* root; after that, rotations are governed by
the root chain rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from vouch.tuf.certs import check_cert
from vouch.tuf.errors import CertificateError, PinningError
from vouch.tuf.keys import Key

_MAX_CHAIN = 8


@dataclass(slots=True)
class TrustPinning:
    certs: dict[str, list[str]] = field(default_factory=dict)
    ca: dict[str, bytes] = field(default_factory=dict)
    disable_tofu: bool = False

    def pinned_ids(self, gun: str) -> list[str] | None:
        if gun in self.certs:
            return self.certs[gun]
        best: str | None = None
        for pattern in self.certs:
            wildcard = pattern.endswith("*") and gun.startswith(pattern[:-1])
            if wildcard and (best is None or len(pattern) > len(best)):
                best = pattern
        return self.certs[best] if best is not None else None

    def ca_bundle(self, gun: str) -> bytes | None:
        best = max((p for p in self.ca if gun.startswith(p)), key=len, default=None)
        return self.ca[best] if best is not None else None

    def select(self, gun: str, valid_root_keys: dict[str, Key], now: datetime) -> dict[str, Key]:
        """The root keys this pinning lets anchor trust; raises if none."""
        ids = self.pinned_ids(gun)
        if ids is not None:
            chosen = {kid: k for kid, k in valid_root_keys.items() if kid in ids}
            if not chosen:
                raise PinningError(
                    "could not validate the path to a trusted root: "
                    "unable to match any certificates to trust_pinning config"
                )
            return chosen
        bundle = self.ca_bundle(gun)
        if bundle is not None:
            cas = [c for c in x509.load_pem_x509_certificates(bundle) if _usable(c, now)]
            chosen = {kid: k for kid, k in valid_root_keys.items() if _chains_to(k, cas, now)}
            if not chosen:
                raise PinningError(
                    f"could not validate the path to a trusted root: no root certificate "
                    f"of {gun} chains to the pinned CA"
                )
            return chosen
        if self.disable_tofu:
            raise PinningError(
                f"invalid trust pinning specified: TOFU disabled and no pin for {gun}"
            )
        return dict(valid_root_keys)


def _usable(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _eku_allows_server(cert: x509.Certificate) -> bool:
    # Go's default chain verification wants serverAuth (or no EKU at all).
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return (
        ExtendedKeyUsageOID.SERVER_AUTH in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku
    )


def _chains_to(key: Key, cas: list[x509.Certificate], now: datetime) -> bool:
    certs = key.certificates()
    leaf, intermediates = certs[0], [c for c in certs[1:] if _usable(c, now)]
    if not _eku_allows_server(leaf):
        return False
    current = leaf
    for _ in range(_MAX_CHAIN):
        for ca in cas:
            if _issued_by(current, ca):
                return True
        parent = next((c for c in intermediates if _issued_by(current, c)), None)
        if parent is None:
            return False
        try:
            check_cert(parent, now, check_expiry=True)
        except CertificateError:
            return False
        intermediates.remove(parent)
        current = parent
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):
        return False
    return True
