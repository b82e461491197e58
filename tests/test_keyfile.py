"""notary CLI private key files and the trust-dir key store.

Unit tests pin the file format (checked against files the real notary 0.7.0
wrote, embedded below); the ``interop`` tests run /usr/bin/notary on files
vouch wrote and the other way round, and fail (never skip) without it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from asn1crypto import keys as asn1keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from notary_harness import (
    NotaryCLI,
    NotaryServer,
    NotaryUnavailableError,
    fetch,
    metadata_url,
    require_notary_binaries,
)
from vouch.crypto import keyfile as kf
from vouch.crypto.keystore import (
    EnvPassphraseRetriever,
    KeyNotFoundError,
    KeyStore,
    PassphraseUnavailableError,
)
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key

KEY_TYPES = ("ecdsa", "rsa", "ed25519")

# Written by /usr/bin/notary 0.7.0: `notary key generate ecdsa` (root, passphrase
# "pw1") and `notary key import` of an unencrypted Ed25519 key (passphrase "pw3").
GO_ECDSA_ROOT_ID = "7b2fa6fb760fda1b84aee195c94b5a49644b104164a1616a54a25c72e4a1633c"
GO_ECDSA_ROOT = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
role: root

MIHuMEkGCSqGSIb3DQEFDTA8MBsGCSqGSIb3DQEFDDAOBAj+LfqNeOqZFAICCAAw
HQYJYIZIAWUDBAEqBBAo/bq4O+ow0k/7rrp9rA1oBIGgCF9IGezDOSsN1fNiWdqG
Jn4RuCvIb46NSAWG0ik28yhGLOmlaet3ZKkEuTJd0HfFnaVocJUJIYdEio6e/x3G
VVsjyRw6DVQqvfVV7MeAMvZ5+qN2UuIx3rM4hI8JA3VD1pLO1XQaKpkATdede5ER
M8zQNQWZZ8oSrbV3TdH+StZRwni2uInwkQ+aLWxKbzb1CHBVBnt4kRpR1jLNlPd8
Zw==
-----END ENCRYPTED PRIVATE KEY-----
"""
GO_ED25519_ID = "c029a19ecd6098964bba8ffb7b5543c663615e58924755c2aab8f39ef44354d4"
GO_ED25519 = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
role: targets/foo

MIHOMEkGCSqGSIb3DQEFDTA8MBsGCSqGSIb3DQEFDDAOBAg5b/6DkxB4JwICCAAw
HQYJYIZIAWUDBAEqBBBJWpHCM25pq5iDI6uD2JsfBIGAC0iOKDt6HxaMA85M084I
n9AJNiFuE/lCo61jt7sdwuzv9YcuYSw9c/Mf/eTYgPZVYdri8tew9uVN9ytceHVe
ic6PtlNQ/dyuytV+SlYElPa4nUJHY9n5EJAonY4yYqcL7ovddao4DzSzUUeU2J0L
tUgPqi/wisaVZ/8Y3dQ2AOY=
-----END ENCRYPTED PRIVATE KEY-----
"""

OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")
OID_PBKDF2 = bytes.fromhex("06092a864886f70d01050c")
OID_AES256_CBC = bytes.fromhex("060960864801650304012a")


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    """One key per type (RSA generation is slow, so share them)."""
    return {t: PrivateKey.generate(t) for t in KEY_TYPES}


def _ed(key: PrivateKey) -> ed25519.Ed25519PrivateKey:
    assert isinstance(key.obj, ed25519.Ed25519PrivateKey)
    return key.obj


def pem_body(data: bytes) -> bytes:
    return kf.decode_pem(data).body


def salt_iv(data: bytes) -> tuple[bytes, bytes]:
    """The random salt and IV of an encrypted key file, to reproduce it exactly."""
    info = asn1keys.EncryptedPrivateKeyInfo.load(pem_body(data))
    params = info["encryption_algorithm"]["parameters"]
    salt = params["key_derivation_func"]["parameters"]["salt"].native
    iv = params["encryption_scheme"]["parameters"].native
    return salt, iv


def reencode_like(data: bytes, passphrase: str) -> bytes:
    """Decode a key file and encode it again with its own salt and IV."""
    decoded = kf.decode_key_file(data, passphrase)
    salt, iv = salt_iv(data)
    return kf.encode_key_file(
        decoded.key,
        passphrase,
        role=decoded.role,
        gun=decoded.gun,
        path=decoded.path,
        salt=salt,
        iv=iv,
    )


def same_key(a: PrivateKey, b: PrivateKey) -> bool:
    raw = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    return a.obj.private_bytes(*raw, none) == b.obj.private_bytes(*raw, none)


def secret_fragments(key: PrivateKey) -> list[str]:
    """Encodings of the key's secret that must never appear in an error message."""
    obj = key.obj
    if isinstance(obj, ec.EllipticCurvePrivateKey):
        secret = obj.private_numbers().private_value.to_bytes(32, "big")
    elif isinstance(obj, ed25519.Ed25519PrivateKey):
        secret = obj.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    else:
        assert isinstance(obj, rsa.RSAPrivateKey)
        d = obj.private_numbers().d
        secret = d.to_bytes((d.bit_length() + 7) // 8, "big")
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)]


# --------------------------------------------------------------------------------------
# The format, against files the real notary wrote
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "passphrase", "keyid", "keytype", "role"),
    [
        (GO_ECDSA_ROOT, "pw1", GO_ECDSA_ROOT_ID, "ecdsa", "root"),
        (GO_ED25519, "pw3", GO_ED25519_ID, "ed25519", "targets/foo"),
    ],
)
def test_reads_and_reproduces_notary_files(
    data: bytes, passphrase: str, keyid: str, keytype: str, role: str
) -> None:
    decoded = kf.decode_key_file(data, passphrase)
    assert decoded.key.keyid == keyid
    assert decoded.key.keytype == keytype
    assert (decoded.role, decoded.gun, decoded.encrypted) == (role, "", True)
    # Same key, salt and IV -> the very bytes notary wrote.
    assert reencode_like(data, passphrase) == data


def test_notary_ed25519_blob_is_pub_seed_pub() -> None:
    plain = kf.decrypt_pkcs8(pem_body(GO_ED25519), "pw3")
    # version 0, SEQUENCE{1.3.6.1.4.1.11591.15.1}, OCTET STRING(96)
    assert plain[:2] == b"\x30\x72"
    assert plain[2:5] == b"\x02\x01\x00"
    assert plain[5:18] == bytes.fromhex("300b06092b06010401da470f01")
    assert plain[18:20] == b"\x04\x60"
    blob = plain[20:116]
    assert blob[:32] == blob[64:]
    assert len(plain) == 116


@pytest.mark.parametrize("keytype", KEY_TYPES)
@pytest.mark.parametrize("passphrase", ["", "correct horse", "p\u00e4ss\u20ac"])
def test_round_trip(keys: dict[str, PrivateKey], keytype: str, passphrase: str) -> None:
    key = keys[keytype]
    data = kf.encode_key_file(key, passphrase, role="targets", gun="example.com/app")
    decoded = kf.decode_key_file(data, passphrase or None)
    assert same_key(decoded.key, key)
    assert decoded.key.keyid == key.keyid
    assert decoded.role == "targets"
    assert decoded.gun == "example.com/app"
    assert decoded.encrypted == bool(passphrase)
    assert decoded.pem_type == ("ENCRYPTED PRIVATE KEY" if passphrase else "PRIVATE KEY")
    # The decoded key signs for the same public key.
    signature = decoded.key.sign_bytes(b"message")
    assert tufkeys.verify(key.public, key.method, signature, b"message")


def test_inner_pkcs8_per_key_type(keys: dict[str, PrivateKey]) -> None:
    # ECDSA: version 1, SEQUENCE{id-ecPublicKey, prime256v1}, SEC1 with [0] and [1].
    der = kf.notary_pkcs8(keys["ecdsa"])
    assert der[:3] == b"\x30\x81\x93"
    assert der[3:6] == b"\x02\x01\x01"
    assert der[6:27] == bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")
    sec1 = asn1keys.ECPrivateKey.load(core.OctetString.load(der[27:]).native)
    assert sec1["parameters"].chosen.dotted == "1.2.840.10045.3.1.7"
    assert len(sec1["public_key"].native) == 65
    # RSA: version 0, SEQUENCE{rsaEncryption} with no NULL, PKCS#1 inside.
    der = kf.notary_pkcs8(keys["rsa"])
    body_start = 4  # 30 82 LL LL
    assert der[body_start : body_start + 3] == b"\x02\x01\x00"
    assert der[body_start + 3 : body_start + 16] == bytes.fromhex("300b06092a864886f70d010101")
    assert der[body_start + 16] == 0x04  # straight to the OCTET STRING: no NULL
    # Ed25519: the private OID and the bare 96-byte blob.
    der = kf.notary_pkcs8(keys["ed25519"])
    assert der[5:18] == bytes.fromhex("300b06092b06010401da470f01")
    assert der[18:20] == b"\x04\x60"


def test_encrypted_outer_structure(keys: dict[str, PrivateKey]) -> None:
    data = kf.encode_key_file(keys["ecdsa"], "pw", role="root")
    der = pem_body(data)
    salt, iv = salt_iv(data)
    assert len(salt) == 8
    assert len(iv) == 16
    # PBES2{PBKDF2{salt, 2048} (no PRF, no keyLength), aes256-CBC{iv}}
    kdf_params = b"\x30\x0e\x04\x08" + salt + b"\x02\x02\x08\x00"
    kdf = b"\x30\x1b" + OID_PBKDF2 + kdf_params
    scheme = b"\x30\x1d" + OID_AES256_CBC + b"\x04\x10" + iv
    algorithm = b"\x30\x49" + OID_PBES2 + b"\x30\x3c" + kdf + scheme
    assert algorithm in der
    inner = kf.notary_pkcs8(keys["ecdsa"])
    ciphertext = asn1keys.EncryptedPrivateKeyInfo.load(der)["encrypted_data"].native
    pad = 16 - len(inner) % 16
    assert len(ciphertext) == len(inner) + pad
    # Two encryptions of one key never share salt or IV.
    assert salt_iv(kf.encode_key_file(keys["ecdsa"], "pw", role="root")) != (salt, iv)


def test_padding_is_a_full_block_when_aligned(keys: dict[str, PrivateKey]) -> None:
    inner = kf.notary_pkcs8(keys["ed25519"])
    aligned = inner + b"\x00" * (-len(inner) % 16)
    der = kf.encrypt_pkcs8(aligned, "pw", salt=b"s" * 8, iv=b"i" * 16)
    ciphertext = asn1keys.EncryptedPrivateKeyInfo.load(der)["encrypted_data"].native
    assert len(ciphertext) == len(aligned) + 16


def test_pem_layout(keys: dict[str, PrivateKey]) -> None:
    data = kf.encode_key_file(keys["rsa"], "pw", role="snapshot", gun="example.com/app", path="x")
    lines = data.decode().splitlines()
    assert lines[:5] == [
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        "gun: example.com/app",
        "path: x",
        "role: snapshot",
        "",
    ]
    body = lines[5:-1]
    assert all(len(line) == 64 for line in body[:-1])
    assert 0 < len(body[-1]) <= 64
    assert lines[-1] == "-----END ENCRYPTED PRIVATE KEY-----"
    assert data.endswith(b"-----\n")


@pytest.mark.parametrize(
    ("role", "has_gun"),
    [
        ("targets", True),
        ("snapshot", True),
        ("timestamp", True),
        ("root", False),
        ("targets/releases", False),
    ],
)
def test_gun_header_only_for_repository_roles(
    keys: dict[str, PrivateKey], role: str, has_gun: bool
) -> None:
    data = kf.encode_key_file(keys["ecdsa"], "", role=role, gun="example.com/app")
    info = kf.peek_key_file(data)
    assert info.role == role
    assert info.gun == ("example.com/app" if has_gun else "")
    assert (b"gun: " in data) == has_gun


def test_peek_does_not_decrypt(keys: dict[str, PrivateKey]) -> None:
    data = kf.encode_key_file(keys["ecdsa"], "pw", role="targets", gun="g")
    info = kf.peek_key_file(data)
    assert (info.pem_type, info.role, info.gun, info.encrypted) == (
        "ENCRYPTED PRIVATE KEY",
        "targets",
        "g",
        True,
    )


# --------------------------------------------------------------------------------------
# Passphrases and damaged files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keytype", KEY_TYPES)
def test_wrong_passphrase(keys: dict[str, PrivateKey], keytype: str) -> None:
    key = keys[keytype]
    data = kf.encode_key_file(key, "right passphrase", role="root")
    with pytest.raises(kf.WrongPassphraseError) as err:
        kf.decode_key_file(data, "wrong passphrase")
    message = str(err.value)
    assert "wrong passphrase" in message
    assert "right passphrase" not in message
    for fragment in secret_fragments(key):
        assert fragment not in message
    assert err.value.__cause__ is None
    assert err.value.__suppress_context__


def test_encrypted_file_needs_a_passphrase(keys: dict[str, PrivateKey]) -> None:
    data = kf.encode_key_file(keys["ecdsa"], "pw", role="root")
    with pytest.raises(kf.PassphraseRequiredError):
        kf.decode_key_file(data)
    with pytest.raises(kf.WrongPassphraseError):
        kf.decode_key_file(data, "")


def test_unencrypted_file_ignores_passphrase(keys: dict[str, PrivateKey]) -> None:
    data = kf.encode_key_file(keys["ecdsa"], "", role="root")
    assert kf.decode_key_file(data, "anything").key.keyid == keys["ecdsa"].keyid


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _b64_damage(data: bytes, index: int) -> bytes:
    block = kf.decode_pem(data)
    return kf.encode_pem(block.type, _flip(block.body, len(block.body) + index), block.headers)


def _der_replace(data: bytes, old: bytes, new: bytes) -> bytes:
    block = kf.decode_pem(data)
    assert old in block.body
    return kf.encode_pem(block.type, block.body.replace(old, new), block.headers)


def _truncate_ciphertext(data: bytes) -> bytes:
    block = kf.decode_pem(data)
    info = asn1keys.EncryptedPrivateKeyInfo.load(block.body)
    info["encrypted_data"] = info["encrypted_data"].native[:-1]
    return kf.encode_pem(block.type, info.dump(force=True), block.headers)


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda d: b"", kf.KeyFileError),
        (lambda d: b"not a key file at all\n", kf.KeyFileError),
        (lambda d: d.replace(b"-----END ENCRYPTED", b"-----END OTHER"), kf.KeyFileError),
        (lambda d: d.replace(b"ENCRYPTED PRIVATE KEY", b"CERTIFICATE"), kf.KeyFileError),
        (lambda d: d[: len(d) // 2] + b"\n-----END ENCRYPTED PRIVATE KEY-----\n", kf.KeyFileError),
        (lambda d: d.replace(b"\n\n", b"\n\n!!!!\n"), kf.KeyFileError),
        # The last ciphertext block: decrypts to garbage, which reads as a wrong passphrase.
        (lambda d: _b64_damage(d, -20), kf.WrongPassphraseError),
        # Cipher OID aes256-CBC -> aes128-CBC (2.16.840.1.101.3.4.1.2): still decrypts to garbage.
        (lambda d: _der_replace(d, OID_AES256_CBC, OID_AES256_CBC[:-1] + b"\x02"), kf.KeyFileError),
        # PBES2 -> an unknown OID.
        (lambda d: _der_replace(d, OID_PBES2, OID_PBES2[:-1] + b"\x0e"), kf.UnsupportedKeyError),
        # Ciphertext no longer a whole number of blocks.
        (_truncate_ciphertext, kf.KeyFileError),
    ],
)
def test_damaged_files(
    keys: dict[str, PrivateKey], damage: Callable[[bytes], bytes], error: type[Exception]
) -> None:
    data = kf.encode_key_file(keys["ecdsa"], "pw", role="root")
    with pytest.raises(error) as err:
        kf.decode_key_file(damage(data), "pw")
    for fragment in secret_fragments(keys["ecdsa"]):
        assert fragment not in str(err.value)


def test_ed25519_blob_must_match_its_seed(keys: dict[str, PrivateKey]) -> None:
    blob = kf.ed25519_blob(_ed(keys["ed25519"]))
    other = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    for bad in (other + blob[32:], blob[:64] + other, blob[:95]):
        with pytest.raises(kf.KeyFileError):
            kf.ed25519_from_blob(bad)
        legacy = kf.encode_pem("ED25519 PRIVATE KEY", bad)
        with pytest.raises(kf.KeyFileError):
            kf.decode_key_file(legacy)


def test_ec_embedded_public_key_must_match(keys: dict[str, PrivateKey]) -> None:
    mine = keys["ecdsa"].obj
    other = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(mine, ec.EllipticCurvePrivateKey)
    sec1 = asn1keys.ECPrivateKey.load(
        mine.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    sec1["public_key"] = other.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    with pytest.raises(kf.KeyFileError, match="does not match"):
        kf.decode_key_file(kf.encode_pem("EC PRIVATE KEY", sec1.dump(force=True)))


# --------------------------------------------------------------------------------------
# Other formats notary (or OpenSSL) wrote
# --------------------------------------------------------------------------------------


def _crypto_pem(
    key: PrivateKey, fmt: serialization.PrivateFormat, passphrase: bytes | None
) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.obj.private_bytes(serialization.Encoding.PEM, fmt, enc)


@pytest.mark.parametrize("keytype", KEY_TYPES)
@pytest.mark.parametrize("passphrase", [None, b"openssl-pass"])
def test_reads_standard_pkcs8(
    keys: dict[str, PrivateKey], keytype: str, passphrase: bytes | None
) -> None:
    """Standard PKCS#8 (RFC 8410 Ed25519, PBES2 with HMAC-SHA256) from OpenSSL."""
    key = keys[keytype]
    data = _crypto_pem(key, serialization.PrivateFormat.PKCS8, passphrase)
    decoded = kf.decode_key_file(data, passphrase.decode() if passphrase else None)
    assert same_key(decoded.key, key)
    assert decoded.role == ""


@pytest.mark.parametrize("keytype", ["ecdsa", "rsa"])
@pytest.mark.parametrize("passphrase", [None, b"openssl-pass"])
def test_reads_legacy_openssl_pem(
    keys: dict[str, PrivateKey], keytype: str, passphrase: bytes | None
) -> None:
    """``EC/RSA PRIVATE KEY``, RFC 1423-encrypted by OpenSSL (Proc-Type/DEK-Info)."""
    key = keys[keytype]
    data = _crypto_pem(key, serialization.PrivateFormat.TraditionalOpenSSL, passphrase)
    if passphrase:
        assert b"Proc-Type: 4,ENCRYPTED" in data
        assert b"DEK-Info: AES-256-CBC," in data
    decoded = kf.decode_key_file(data, passphrase.decode() if passphrase else None)
    assert same_key(decoded.key, key)
    assert decoded.encrypted == bool(passphrase)
    if passphrase:
        with pytest.raises(kf.PassphraseRequiredError):
            kf.decode_key_file(data)
        with pytest.raises(kf.WrongPassphraseError):
            kf.decode_key_file(data, "not it")


def test_evp_bytes_to_key_matches_openssl() -> None:
    # `openssl enc -aes-256-cbc -md md5 -P -S 0102030405060708 -pass pass:secret12`
    # (OpenSSL 3.0.19): key=7795737A...442F iv=636D52EC...2D8E
    derived = kf.evp_bytes_to_key(b"secret12", bytes.fromhex("0102030405060708"), 48)
    assert derived[:32].hex().upper() == (
        "7795737A168370E2A88931E840F292226D4FC35B62318641838D2DA76208442F"
    )
    assert derived[32:].hex().upper() == "636D52EC13CA53D5BF92449BF1E22D8E"


def _legacy_ed25519(key: PrivateKey, passphrase: str, role: str = "") -> bytes:
    """An ``ED25519 PRIVATE KEY`` as notary 0.3 wrote it (x509.EncryptPEMBlock)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    blob = kf.ed25519_blob(_ed(key))
    headers = {"role": role} if role else {}
    if not passphrase:
        return kf.encode_pem("ED25519 PRIVATE KEY", blob, headers)
    iv = os.urandom(16)
    aes_key = kf.evp_bytes_to_key(passphrase.encode(), iv[:8], 32)
    pad = 16 - len(blob) % 16
    enc = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    body = enc.update(blob + bytes([pad]) * pad) + enc.finalize()
    headers |= {"Proc-Type": "4,ENCRYPTED", "DEK-Info": f"AES-256-CBC,{iv.hex().upper()}"}
    return kf.encode_pem("ED25519 PRIVATE KEY", body, headers)


@pytest.mark.parametrize("passphrase", ["", "legacy-pass"])
def test_reads_legacy_ed25519(keys: dict[str, PrivateKey], passphrase: str) -> None:
    data = _legacy_ed25519(keys["ed25519"], passphrase, role="targets")
    if passphrase:
        assert data.splitlines()[1] == b"Proc-Type: 4,ENCRYPTED"  # Go writes it first
    decoded = kf.decode_key_file(data, passphrase or None)
    assert same_key(decoded.key, keys["ed25519"])
    assert decoded.role == "targets"
    if passphrase:
        with pytest.raises(kf.WrongPassphraseError):
            kf.decode_key_file(data, "wrong")


def test_legacy_des_is_refused_clearly(keys: dict[str, PrivateKey]) -> None:
    body = kf.decode_pem(_legacy_ed25519(keys["ed25519"], "pw")).body
    data = kf.encode_pem(
        "ED25519 PRIVATE KEY",
        body,
        {"Proc-Type": "4,ENCRYPTED", "DEK-Info": "DES-EDE3-CBC,0102030405060708"},
    )
    with pytest.raises(kf.UnsupportedKeyError, match="DES-EDE3-CBC"):
        kf.decode_key_file(data, "pw")


@pytest.mark.parametrize("passphrase", [None, b"pw"])
def test_unsupported_key_types_are_named(passphrase: bytes | None) -> None:
    from cryptography.hazmat.primitives.asymmetric import dsa, ed448

    for obj in (dsa.generate_private_key(2048), ed448.Ed448PrivateKey.generate()):
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        data = obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
        with pytest.raises(kf.UnsupportedKeyError, match="unsupported key algorithm"):
            kf.decode_key_file(data, passphrase.decode() if passphrase else None)


def test_ec_pkcs8_without_inner_curve(keys: dict[str, PrivateKey]) -> None:
    """A SEC1 blob without ``[0]`` takes its curve from the AlgorithmIdentifier."""
    obj = keys["ecdsa"].obj
    assert isinstance(obj, ec.EllipticCurvePrivateKey)
    sec1 = asn1keys.ECPrivateKey(
        {"version": "ecPrivkeyVer1", "private_key": obj.private_numbers().private_value}
    )
    sec1.set_key_size(32)
    der = asn1keys.PrivateKeyInfo(
        {
            "version": 0,
            "private_key_algorithm": {
                "algorithm": "ec",
                "parameters": asn1keys.ECDomainParameters(name="named", value="secp256r1"),
            },
            "private_key": sec1,
        }
    ).dump()
    assert kf.parse_pkcs8(der).keyid == keys["ecdsa"].keyid


# --------------------------------------------------------------------------------------
# The key store
# --------------------------------------------------------------------------------------


def _never(*args: object) -> str:
    raise AssertionError(f"the passphrase retriever must not be called: {args}")


def _constant(passphrase: str) -> Callable[[str, str, bool, int], str]:
    return lambda *_: passphrase


def test_store_save_names_modes_and_atomicity(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    trust = tmp_path / "trust"
    store = KeyStore(trust, _constant("pw"))
    for keytype, key in keys.items():
        role = "root" if keytype == "ecdsa" else "targets"
        info = store.save(key, role, "example.com/app")
        assert info.path == trust / "private" / f"{key.keyid}.key"
        assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(trust.stat().st_mode) == 0o700
    assert stat.S_IMODE((trust / "private").stat().st_mode) == 0o700
    # Nothing but the key files: no temp files left behind.
    assert sorted(p.name for p in (trust / "private").iterdir()) == sorted(
        f"{k.keyid}.key" for k in keys.values()
    )
    # Root keys carry no GUN even when one is passed.
    root_file = (trust / "private" / f"{keys['ecdsa'].keyid}.key").read_bytes()
    assert kf.peek_key_file(root_file).gun == ""


def test_store_write_failure_keeps_old_file(
    tmp_path: Path, keys: dict[str, PrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(tmp_path, _constant("pw"))
    path = store.save(keys["ecdsa"], "root").path
    before = path.read_bytes()

    def broken_replace(self: Path, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save(keys["ecdsa"], "root", passphrase="other")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_store_list_and_load(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    writer = KeyStore(tmp_path, _constant("pw"))
    writer.save(keys["ecdsa"], "root")
    writer.save(keys["rsa"], "targets", "example.com/app")
    writer.save(keys["ed25519"], "targets/releases", passphrase="")

    reader = KeyStore(tmp_path, _never)
    listed = {(i.keyid, i.role, i.gun, i.encrypted) for i in reader.list_keys()}
    assert listed == {
        (keys["ecdsa"].keyid, "root", "", True),
        (keys["rsa"].keyid, "targets", "example.com/app", True),
        (keys["ed25519"].keyid, "targets/releases", "", False),
    }
    assert [i.keyid for i in reader.list_keys(role="root")] == [keys["ecdsa"].keyid]
    assert [i.keyid for i in reader.list_keys(gun="example.com/app")] == [keys["rsa"].keyid]
    # Unencrypted keys load without a passphrase.
    assert same_key(reader.load(keys["ed25519"].keyid), keys["ed25519"])

    calls: list[tuple[str, str, bool, int]] = []

    def retriever(key_id: str, alias: str, creating: bool, attempt: int) -> str:
        calls.append((key_id, alias, creating, attempt))
        return "pw"

    reader = KeyStore(tmp_path, retriever)
    assert same_key(reader.load(keys["rsa"].keyid), keys["rsa"])
    assert same_key(reader.load(keys["rsa"].keyid), keys["rsa"])  # cached
    assert calls == [(keys["rsa"].keyid, "targets", False, 0)]
    assert keys["rsa"].keyid in reader
    with pytest.raises(KeyNotFoundError):
        reader.load("0" * 64)
    with pytest.raises(KeyNotFoundError):
        reader.load("../../etc/passwd")


def test_store_retries_wrong_passphrases(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    KeyStore(tmp_path, _constant("right")).save(keys["ecdsa"], "root")
    attempts: list[int] = []

    def retriever(key_id: str, alias: str, creating: bool, attempt: int) -> str:
        attempts.append(attempt)
        return "right" if attempt == 2 else "wrong"

    assert same_key(KeyStore(tmp_path, retriever).load(keys["ecdsa"].keyid), keys["ecdsa"])
    assert attempts == [0, 1, 2]

    attempts.clear()

    def always_wrong(key_id: str, alias: str, creating: bool, attempt: int) -> str:
        attempts.append(attempt)
        return "wrong"

    store = KeyStore(tmp_path, always_wrong, max_attempts=4)
    with pytest.raises(kf.WrongPassphraseError, match="after 4 attempts") as err:
        store.load(keys["ecdsa"].keyid)
    assert attempts == [0, 1, 2, 3]
    assert "wrong" not in str(err.value).replace("wrong passphrase", "")


def test_env_retriever(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "NOTARY_ROOT_PASSPHRASE",
        "NOTARY_TARGETS_PASSPHRASE",
        "NOTARY_SNAPSHOT_PASSPHRASE",
        "NOTARY_DELEGATION_PASSPHRASE",
    ):
        monkeypatch.delenv(name, raising=False)
    prompted: list[tuple[str, str, bool, int]] = []

    def prompt(key_id: str, alias: str, creating: bool, attempt: int) -> str:
        prompted.append((key_id, alias, creating, attempt))
        return "typed"

    retriever = EnvPassphraseRetriever(fallback=prompt)
    monkeypatch.setenv("NOTARY_ROOT_PASSPHRASE", "r")
    monkeypatch.setenv("NOTARY_TARGETS_PASSPHRASE", "t")
    monkeypatch.setenv("NOTARY_SNAPSHOT_PASSPHRASE", "")  # empty counts as unset
    monkeypatch.setenv("NOTARY_DELEGATION_PASSPHRASE", "d")
    assert retriever("id", "root", False, 0) == "r"
    assert retriever("id", "targets", True, 0) == "t"
    assert retriever("id", "targets/releases", False, 0) == "d"
    assert retriever("id", "", False, 0) == "d"  # no role: not a base role either
    assert retriever("id", "snapshot", False, 0) == "typed"
    assert retriever("id", "timestamp", False, 0) == "typed"  # base role, no variable
    assert prompted == [("id", "snapshot", False, 0), ("id", "timestamp", False, 0)]
    # A wrong value from the environment is not offered twice.
    with pytest.raises(PassphraseUnavailableError, match="NOTARY_ROOT_PASSPHRASE"):
        retriever("id", "root", False, 1)

    bare = EnvPassphraseRetriever(environ={})
    with pytest.raises(PassphraseUnavailableError, match="NOTARY_TARGETS_PASSPHRASE"):
        bare("0123456789", "targets", False, 0)
    with pytest.raises(PassphraseUnavailableError, match="NOTARY_DELEGATION_PASSPHRASE"):
        bare("0123456789", "targets/x", True, 0)


def test_store_with_env_retriever(
    tmp_path: Path, keys: dict[str, PrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTARY_DELEGATION_PASSPHRASE", "deleg-pass")
    monkeypatch.setenv("NOTARY_ROOT_PASSPHRASE", "not-this-one")
    store = KeyStore(tmp_path)  # defaults to the environment
    info = store.save(keys["ecdsa"], "targets/releases")
    assert kf.decode_key_file(info.path.read_bytes(), "deleg-pass").role == "targets/releases"
    assert same_key(KeyStore(tmp_path).load(keys["ecdsa"].keyid), keys["ecdsa"])
    # Root keys use the root variable: a wrong one fails fast, without prompting.
    store.save(keys["rsa"], "root", passphrase="root-pass")
    with pytest.raises(kf.WrongPassphraseError, match="NOTARY_ROOT_PASSPHRASE"):
        KeyStore(tmp_path).load(keys["rsa"].keyid)
    monkeypatch.delenv("NOTARY_ROOT_PASSPHRASE")
    with pytest.raises(PassphraseUnavailableError):
        KeyStore(tmp_path).load(keys["rsa"].keyid)


def test_store_legacy_layouts(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    private = tmp_path / "private"
    root_dir = private / "root_keys"
    gun_dir = private / "tuf_keys" / "docker.com" / "notary"
    root_dir.mkdir(parents=True)
    gun_dir.mkdir(parents=True)
    ec_key, rsa_key, ed_key = keys["ecdsa"], keys["rsa"], keys["ed25519"]
    (root_dir / f"{ec_key.keyid}_root.key").write_bytes(
        _crypto_pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL, b"legacy")
    )
    (gun_dir / f"{rsa_key.keyid}_targets.key").write_bytes(
        _crypto_pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL, None)
    )
    (gun_dir / f"{ed_key.keyid}_snapshot.key").write_bytes(_legacy_ed25519(ed_key, "legacy"))
    (private / "garbage.key").write_bytes(b"nothing to see")

    store = KeyStore(tmp_path, _constant("legacy"))
    listed = {(i.keyid, i.role, i.gun, i.encrypted, i.legacy) for i in store.list_keys()}
    assert listed == {
        (ec_key.keyid, "root", "", True, True),
        (rsa_key.keyid, "targets", "docker.com/notary", False, True),
        (ed_key.keyid, "snapshot", "docker.com/notary", True, True),
    }
    for key in keys.values():
        assert same_key(store.load(key.keyid), key)
    store.remove(ec_key.keyid)
    assert not (root_dir / f"{ec_key.keyid}_root.key").exists()
    assert ec_key.keyid not in store
    with pytest.raises(KeyNotFoundError):
        store.remove(ec_key.keyid)


def test_store_refuses_misnamed_key(tmp_path: Path, keys: dict[str, PrivateKey]) -> None:
    store = KeyStore(tmp_path, _constant(""))
    info = store.save(keys["ecdsa"], "root")
    info.path.rename(info.path.with_name("f" * 64 + ".key"))
    with pytest.raises(kf.KeyFileError, match="holds key"):
        KeyStore(tmp_path, _constant("")).load("f" * 64)


# --------------------------------------------------------------------------------------
# Interop with the real notary CLI
# --------------------------------------------------------------------------------------

NOTARY_PASSPHRASE = "interop-passphrase"
_KEY_LINE = re.compile(r"^(\S+)\s+(?:(\S+)\s+)?([0-9a-f]{64})\s+(\S.*)$")


@pytest.fixture
def notary_offline(tmp_path: Path) -> NotaryCLI:
    """A notary CLI for commands that never contact a server (key management)."""
    try:
        require_notary_binaries()
    except NotaryUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    return NotaryCLI("http://127.0.0.1:9", tmp_path / "trust", passphrase=NOTARY_PASSPHRASE)


def notary_key_list(cli: NotaryCLI) -> dict[str, tuple[str, str]]:
    """``notary key list`` as ``{key id: (role, gun)}``."""
    keys: dict[str, tuple[str, str]] = {}
    for line in cli.run("key", "list").stdout.splitlines():
        m = _KEY_LINE.match(line.strip())
        if m:
            keys[m.group(3)] = (m.group(1), m.group(2) or "")
    return keys


def vouch_key_list(trust_dir: Path) -> dict[str, tuple[str, str]]:
    return {i.keyid: (i.role, i.gun) for i in KeyStore(trust_dir, _never).list_keys()}


def unique_gun() -> str:
    """Short enough (<= 25 chars) that ``notary key list`` does not elide it."""
    return f"vouch.test/kf/{uuid.uuid4().hex[:8]}"


def server_json(server: NotaryServer, gun: str, role: str) -> Any:
    """The current ``role.json`` of ``gun`` as the server serves it, parsed."""
    return json.loads(fetch(metadata_url(server.url, gun, f"{role}.json")))


@pytest.mark.interop
def test_notary_generated_keys_read_by_vouch(notary_offline: NotaryCLI) -> None:
    cli = notary_offline
    generated = {}
    for role in ("root", "targets", "targets/releases"):
        out = cli.run("key", "generate", "ecdsa", "--role", role).stdout
        m = re.search(r"Generated new ecdsa \S+ key with keyID: ([0-9a-f]{64})", out)
        assert m, out
        generated[m.group(1)] = role
    assert notary_key_list(cli) == {k: (r, "") for k, r in generated.items()}
    assert vouch_key_list(cli.trust_dir) == notary_key_list(cli)

    store = KeyStore(cli.trust_dir, _constant(NOTARY_PASSPHRASE))
    for key_id, role in generated.items():
        key = store.load(key_id)
        assert key.keyid == key_id  # the public key vouch derives has notary's ID
        path = cli.trust_dir / "private" / f"{key_id}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = path.read_bytes()
        assert kf.peek_key_file(data).role == role
        assert reencode_like(data, NOTARY_PASSPHRASE) == data  # byte for byte
        with pytest.raises(kf.WrongPassphraseError):
            KeyStore(cli.trust_dir, _constant("wrong"), max_attempts=2).load(key_id)


@pytest.mark.interop
def test_notary_imports_vouch_keys_of_every_type(
    notary_offline: NotaryCLI, tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    """notary parses vouch's unencrypted PKCS#8 of each type, files it under the
    ID vouch computes, and re-encrypts it into exactly what vouch would write."""
    cli = notary_offline
    for keytype, key in keys.items():
        plain = tmp_path / f"{keytype}.pem"
        plain.write_bytes(kf.encode_key_file(key, "", role=f"targets/{keytype}"))
        cli.run("key", "import", plain)
    assert notary_key_list(cli) == {k.keyid: (f"targets/{t}", "") for t, k in keys.items()}
    assert vouch_key_list(cli.trust_dir) == notary_key_list(cli)
    for key in keys.values():
        data = (cli.trust_dir / "private" / f"{key.keyid}.key").read_bytes()
        assert kf.peek_key_file(data).pem_type == "ENCRYPTED PRIVATE KEY"
        assert same_key(kf.decode_key_file(data, NOTARY_PASSPHRASE).key, key)
        assert reencode_like(data, NOTARY_PASSPHRASE) == data


@pytest.mark.interop
def test_notary_imports_vouch_encrypted_key_with_path(
    notary_offline: NotaryCLI, tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    """An encrypted file is copied as is, placed by its ``path`` header."""
    cli = notary_offline
    key = keys["ed25519"]
    exported = tmp_path / "export.pem"
    data = kf.encode_key_file(key, NOTARY_PASSPHRASE, role="targets/ed", path=key.keyid)
    exported.write_bytes(data)
    cli.run("key", "import", exported)
    assert notary_key_list(cli) == {key.keyid: ("targets/ed", "")}
    stored = (cli.trust_dir / "private" / f"{key.keyid}.key").read_bytes()
    assert stored == data.replace(f"path: {key.keyid}\n".encode(), b"")


@pytest.mark.interop
def test_notary_migrates_and_lists_legacy_layout_like_vouch(
    notary_offline: NotaryCLI, keys: dict[str, PrivateKey]
) -> None:
    cli = notary_offline
    root_dir = cli.trust_dir / "private" / "root_keys"
    gun_dir = cli.trust_dir / "private" / "tuf_keys" / "docker.com" / "notary"
    root_dir.mkdir(parents=True)
    gun_dir.mkdir(parents=True)
    pem = serialization.PrivateFormat.TraditionalOpenSSL
    (root_dir / f"{keys['ecdsa'].keyid}_root.key").write_bytes(
        _crypto_pem(keys["ecdsa"], pem, NOTARY_PASSPHRASE.encode())
    )
    (gun_dir / f"{keys['rsa'].keyid}_targets.key").write_bytes(_crypto_pem(keys["rsa"], pem, None))
    before = vouch_key_list(cli.trust_dir)
    assert before == notary_key_list(cli)  # notary migrates in place while listing
    assert not root_dir.exists()
    assert vouch_key_list(cli.trust_dir) == before
    store = KeyStore(cli.trust_dir, _constant(NOTARY_PASSPHRASE))
    assert same_key(store.load(keys["ecdsa"].keyid), keys["ecdsa"])
    assert same_key(store.load(keys["rsa"].keyid), keys["rsa"])


def _root_cert_key(root: Any) -> Key:
    signed = root["signed"]
    (key_id,) = signed["roles"]["root"]["keyids"]
    return Key.from_dict(signed["keys"][key_id])


@pytest.mark.interop
def test_notary_init_reuses_vouch_root_key(
    notary_server: NotaryServer, tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    trust = tmp_path / "trust"
    root = keys["ecdsa"]
    KeyStore(trust, _never).save(root, "root", passphrase=NOTARY_PASSPHRASE)
    cli = NotaryCLI(notary_server.url, trust, passphrase=NOTARY_PASSPHRASE)
    assert notary_key_list(cli) == {root.keyid: ("root", "")}

    gun = unique_gun()
    out = cli.run("init", gun).stdout
    assert f"Root key found, using: {root.keyid}" in out
    cli.run("publish", gun)

    root_json = server_json(notary_server, gun, "root")
    cert_key = _root_cert_key(root_json)
    assert cert_key.keytype == "ecdsa-x509"
    assert cert_key.canonical_keyid() == root.keyid
    assert cert_key.keyid != root.keyid  # the per-GUN certificate ID
    # notary signed root.json with the key vouch wrote.
    signature = next(s for s in root_json["signatures"] if s["keyid"] == cert_key.keyid)
    message = _canonical_signed(root_json)
    assert tufkeys.verify(
        cert_key, signature["method"], base64.b64decode(signature["sig"]), message
    )

    # The targets and snapshot keys notary made: vouch lists them with their GUN,
    # decrypts them, and they are the keys root.json names.
    listed = vouch_key_list(trust)
    assert listed == notary_key_list(cli)
    signed = root_json["signed"]
    store = KeyStore(trust, _constant(NOTARY_PASSPHRASE))
    for role in ("targets", "snapshot"):
        (key_id,) = signed["roles"][role]["keyids"]
        assert listed[key_id] == (role, gun)
        assert store.load(key_id).public == Key.from_dict(signed["keys"][key_id])
        data = (trust / "private" / f"{key_id}.key").read_bytes()
        assert data.startswith(
            f"-----BEGIN ENCRYPTED PRIVATE KEY-----\ngun: {gun}\nrole: {role}\n\n".encode()
        )


def _canonical_signed(envelope: Any) -> bytes:
    from vouch.tuf import canonical

    return canonical.encode(envelope["signed"])


@pytest.mark.interop
def test_notary_init_with_vouch_rsa_root_key(
    notary_server: NotaryServer, tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    """``init --rootkey`` only takes encrypted keys: vouch's RSA file qualifies."""
    root = keys["rsa"]
    key_file = tmp_path / "rsa-root.key"
    key_file.write_bytes(kf.encode_key_file(root, NOTARY_PASSPHRASE, role="root"))
    cli = NotaryCLI(notary_server.url, tmp_path / "trust", passphrase=NOTARY_PASSPHRASE)
    gun = unique_gun()
    cli.run("init", gun, "--rootkey", key_file)
    cli.run("publish", gun)
    cert_key = _root_cert_key(server_json(notary_server, gun, "root"))
    assert cert_key.keytype == "rsa-x509"
    assert cert_key.canonical_keyid() == root.keyid
    # notary re-stored it under the same ID, in a file vouch reproduces exactly.
    assert notary_key_list(cli)[root.keyid] == ("root", "")
    data = (cli.trust_dir / "private" / f"{root.keyid}.key").read_bytes()
    assert reencode_like(data, NOTARY_PASSPHRASE) == data


@pytest.mark.interop
def test_notary_signs_targets_with_vouch_ed25519_key(
    notary_server: NotaryServer, tmp_path: Path, keys: dict[str, PrivateKey]
) -> None:
    key = keys["ed25519"]
    cli = NotaryCLI(notary_server.url, tmp_path / "trust", passphrase=NOTARY_PASSPHRASE)
    gun = unique_gun()
    cli.run("init", gun)
    cli.run("publish", gun)
    key_file = tmp_path / "ed25519.key"
    key_file.write_bytes(kf.encode_key_file(key, NOTARY_PASSPHRASE, role="targets", gun=gun))
    cli.run("key", "rotate", gun, "targets", "--key", key_file)
    target = tmp_path / "payload.txt"
    target.write_bytes(b"signed with a vouch-written ed25519 key\n")
    cli.run("add", gun, "payload", target)
    cli.run("publish", gun)

    root_json = server_json(notary_server, gun, "root")
    signed = root_json["signed"]
    assert signed["roles"]["targets"]["keyids"] == [key.keyid]
    targets_json = server_json(notary_server, gun, "targets")
    (signature,) = targets_json["signatures"]
    assert signature["keyid"] == key.keyid
    assert signature["method"] == "eddsa"
    message = _canonical_signed(targets_json)
    assert tufkeys.verify(key.public, "eddsa", base64.b64decode(signature["sig"]), message)
    # notary's own copy of the key, byte-reproducible by vouch.
    data = (cli.trust_dir / "private" / f"{key.keyid}.key").read_bytes()
    assert kf.peek_key_file(data).gun == gun
    assert reencode_like(data, NOTARY_PASSPHRASE) == data
