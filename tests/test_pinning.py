"""Trust pinning on first contact: certificate IDs, CAs, and disabled TOFU."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulator import RepoSim, Signing
from vouch.crypto.privkey import PrivateKey
from vouch.tuf.errors import PinningError
from vouch.tuf.keys import certificate_key
from vouch.tuf.pinning import TrustPinning
from vouch.tuf.trusted import TrustedSet

NOW = datetime.now(UTC)


def _root_id(sim: RepoSim) -> str:
    return sim.root.roles["root"].keyids[0]


def test_tofu_by_default_and_refused_when_disabled() -> None:
    sim = RepoSim()
    TrustedSet(sim.gun, sim.files["root"], bootstrap=True)
    with pytest.raises(PinningError, match="TOFU disabled"):
        TrustedSet(
            sim.gun, sim.files["root"], bootstrap=True, pinning=TrustPinning(disable_tofu=True)
        )
    # A cached root is the anchor already: pinning does not apply to it.
    TrustedSet(sim.gun, sim.files["root"], pinning=TrustPinning(disable_tofu=True))


def test_pinned_certificate_id_exact_and_wildcard() -> None:
    sim = RepoSim()
    good = TrustPinning(certs={sim.gun: [_root_id(sim)]})
    TrustedSet(sim.gun, sim.files["root"], bootstrap=True, pinning=good)
    wildcard = TrustPinning(
        certs={"example.com/sim/*": [_root_id(sim)], "example.com/*": ["0" * 64]}
    )
    TrustedSet(sim.gun, sim.files["root"], bootstrap=True, pinning=wildcard)
    wrong = TrustPinning(certs={sim.gun: ["0" * 64]})
    with pytest.raises(PinningError, match="unable to match"):
        TrustedSet(sim.gun, sim.files["root"], bootstrap=True, pinning=wrong)
    # The longest wildcard wins over a shorter one that would have matched.
    longest = TrustPinning(
        certs={"example.com/*": [_root_id(sim)], "example.com/sim/*": ["0" * 64]}
    )
    with pytest.raises(PinningError):
        TrustedSet(sim.gun, sim.files["root"], bootstrap=True, pinning=longest)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    gun: str,
    eku: list[x509.ObjectIdentifier] | None,
) -> tuple[PrivateKey, x509.Certificate]:
    priv = PrivateKey.generate("ecdsa")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gun)]))
        .issuer_name(ca.subject)
        .public_key(priv.obj.public_key())  # type: ignore[arg-type]
        .serial_number(2)
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return priv, builder.sign(ca_key, hashes.SHA256())


def _sim_with_ca_root(eku: list[x509.ObjectIdentifier] | None) -> tuple[RepoSim, bytes]:
    sim = RepoSim()
    ca_key, ca = _ca()
    priv, leaf = _leaf(ca_key, ca, sim.gun, eku)
    signing = Signing(priv, certificate_key([leaf, ca]))
    sim.root.roles["root"].keyids = []
    sim.root.add_key("root", signing.public)
    sim.root_signers = [signing]
    sim.sign_root()
    return sim, ca.public_bytes(serialization.Encoding.PEM)


def test_ca_pinning_accepts_chain_to_pinned_ca() -> None:
    sim, ca_pem = _sim_with_ca_root(eku=None)
    pin = TrustPinning(ca={"example.com/": ca_pem})
    TrustedSet(sim.gun, sim.files["root"], bootstrap=True, pinning=pin)


def test_ca_pinning_refuses_other_ca_and_code_signing_only_leaf() -> None:
    sim, _ = _sim_with_ca_root(eku=None)
    _, other_ca = _ca()
    pin = TrustPinning(ca={"example.com/": other_ca.public_bytes(serialization.Encoding.PEM)})
    with pytest.raises(PinningError):
        TrustedSet(sim.gun, sim.files["root"], bootstrap=True, pinning=pin)
    # Go's chain verification needs serverAuth (or no EKU): codeSigning alone fails.
    sim2, ca_pem = _sim_with_ca_root(eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    with pytest.raises(PinningError):
        TrustedSet(
            sim2.gun,
            sim2.files["root"],
            bootstrap=True,
            pinning=TrustPinning(ca={"example.com/": ca_pem}),
        )
    # A self-signed notary-style root never chains to a CA.
    sim3 = RepoSim()
    with pytest.raises(PinningError):
        TrustedSet(
            sim3.gun,
            sim3.files["root"],
            bootstrap=True,
            pinning=TrustPinning(ca={"example.com/": ca_pem}),
        )
