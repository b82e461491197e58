"""Keys, key IDs and signature methods in Notary's encodings."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vouch.crypto.certs import root_certificate, root_key
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import keys
from vouch.tuf.errors import FormatError
from vouch.tuf.keys import Key

MSG = b'{"_type":"Targets","version":1}'


def test_key_id_is_sha256_of_canonical_key() -> None:
    key = Key("ecdsa", "MFkwEwYH")
    expected = hashlib.sha256(
        b'{"keytype":"ecdsa","keyval":{"private":null,"public":"MFkwEwYH"}}'
    ).hexdigest()
    assert key.keyid == expected


@pytest.mark.parametrize("keytype", ["ecdsa", "ed25519", "rsa"])
def test_sign_and_verify_each_type(keytype: str) -> None:
    priv = PrivateKey.generate(keytype)
    sig = priv.signer().sign(MSG)
    assert sig.keyid == priv.keyid
    assert sig.method == {"ecdsa": "ecdsa", "ed25519": "eddsa", "rsa": "rsapss"}[keytype]
    assert keys.verify(priv.public, sig.method, sig.signature_bytes, MSG)
    assert not keys.verify(priv.public, sig.method, sig.signature_bytes, MSG + b"x")
    other = PrivateKey.generate(keytype)
    assert not keys.verify(other.public, sig.method, sig.signature_bytes, MSG)


def test_ecdsa_signature_is_raw_r_s_and_der_refused() -> None:
    priv = PrivateKey.generate("ecdsa")
    raw = priv.sign_bytes(MSG)
    assert len(raw) == 64
    assert isinstance(priv.obj, ec.EllipticCurvePrivateKey)
    der = priv.obj.sign(MSG, ec.ECDSA(hashes.SHA256()))
    assert not keys.verify(priv.public, "ecdsa", der, MSG)
    assert not keys.verify(priv.public, "ecdsa", raw[:63], MSG)


def test_rsa_pss_uses_salt_32_and_pkcs1_verifies() -> None:
    priv = PrivateKey.generate("rsa")
    assert isinstance(priv.obj, rsa.RSAPrivateKey)
    max_salt = priv.obj.sign(
        MSG,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    assert not keys.verify(priv.public, "rsapss", max_salt, MSG)
    assert keys.verify(priv.public, "rsapss", priv.sign_bytes(MSG), MSG)
    pkcs1 = priv.obj.sign(MSG, padding.PKCS1v15(), hashes.SHA256())
    assert keys.verify(priv.public, "rsapkcs1v15", pkcs1, MSG)


def test_small_rsa_keys_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    priv = PrivateKey(small)
    sig = priv.sign_bytes(MSG)
    assert not keys.verify(priv.public, "rsapss", sig, MSG)


def test_certificate_key_ids_differ_from_canonical_ids() -> None:
    priv = PrivateKey.generate("ecdsa")
    cert_key = root_key(priv, "example.com/a/b")
    assert cert_key.keytype == "ecdsa-x509"
    assert cert_key.keyid != priv.keyid
    assert cert_key.canonical_keyid() == priv.keyid
    # Signing as the certificate gives the certificate's ID; it verifies.
    sig = priv.signer(cert_key).sign(MSG)
    assert sig.keyid == cert_key.keyid
    assert keys.verify(cert_key, "ecdsa", sig.signature_bytes, MSG)
    with pytest.raises(ValueError, match="does not belong"):
        PrivateKey.generate("ecdsa").signer(cert_key)


def test_root_certificate_looks_like_notarys() -> None:
    from cryptography import x509

    priv = PrivateKey.generate("ecdsa")
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    cert = root_certificate(priv, "example.com/x/y", now=now)
    assert cert.subject == cert.issuer
    assert cert.not_valid_before_utc == now.replace(microsecond=0)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]


@pytest.mark.parametrize(
    ("keytype", "public"),
    [
        ("ecdsa", "not base64!"),
        ("ed25519", "AAAA"),
        ("ecdsa", "AAAA"),
        ("ecdsa-x509", "AAAA"),
    ],
)
def test_unloadable_keys_are_format_errors(keytype: str, public: str) -> None:
    with pytest.raises(FormatError):
        Key(keytype, public).crypto_key()


def test_key_type_must_match_material() -> None:
    rsa_key = PrivateKey.generate("rsa").public
    with pytest.raises(FormatError, match="does not match"):
        Key("ecdsa", rsa_key.public).crypto_key()


def test_private_material_in_metadata_refused() -> None:
    with pytest.raises(FormatError, match="private"):
        Key.from_dict({"keytype": "ecdsa", "keyval": {"public": "AA==", "private": "AA=="}})


def test_unknown_key_members_round_trip() -> None:
    data = {"keytype": "ecdsa", "keyval": {"private": None, "public": "AA==", "x": 1}, "y": [2]}
    assert Key.from_dict(data).to_dict() == data


@pytest.mark.parametrize("bad", ["AAA", "AA=A", "A A=", "AA==\n", "-_==", "AAAA=", "é", "AA=="[:1]])
def test_base64_is_strict_standard_with_padding(bad: str) -> None:
    with pytest.raises(FormatError):
        keys.b64decode(bad, "x")


def test_base64_decodes_standard_alphabet() -> None:
    assert keys.b64decode("+/8=", "x") == b"\xfb\xff"
    assert keys.b64decode("", "x") == b""
