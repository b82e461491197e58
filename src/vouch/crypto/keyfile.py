"""The notary CLI's private key files, byte-compatible with notary 0.7.0.

Notary stores each private key as one PEM block in ``<trust_dir>/private``:

* ``ENCRYPTED PRIVATE KEY`` - PKCS#8 ``EncryptedPrivateKeyInfo`` with PBES2,
  PBKDF2-HMAC-SHA1 (2048 iterations, 8-byte salt, no PRF or keyLength field)
  and AES-256-CBC with a 16-byte IV; ``PRIVATE KEY`` when the passphrase is
  empty;
* RFC 1421 headers ``gun:`` (targets/snapshot/timestamp keys only), ``role:``
  and, in export bundles, ``path:``, sorted by name as Go writes them.

The inner ``PrivateKeyInfo`` is *not* standard PKCS#8, and it differs by key
type (see :func:`notary_pkcs8`). Python ``cryptography`` refuses the ECDSA
variant, so the structures are taken apart with ``asn1crypto`` here and the
key rebuilt from its numbers, which also lets us check that the embedded
public keys belong to the private ones.

Reading is wider than writing: unencrypted and standard PKCS#8 (RFC 8410
Ed25519, other PBES2 PRFs and AES key sizes) and the legacy ``EC PRIVATE
KEY`` / ``RSA PRIVATE KEY`` / ``ED25519 PRIVATE KEY`` blocks of notary
0.1-0.3, optionally RFC 1423-encrypted (``Proc-Type: 4,ENCRYPTED``).

Error messages name what is wrong with a file but never quote its bytes:
decrypted or unencrypted key material must not end up in logs, so parse
errors are re-raised without their (byte-quoting) cause.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from asn1crypto import algos, core
from asn1crypto import keys as asn1keys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from vouch.crypto.privkey import PrivateKey, PrivateKeyObject

PEM_ENCRYPTED: Final = "ENCRYPTED PRIVATE KEY"
PEM_PLAIN: Final = "PRIVATE KEY"
PEM_LEGACY_EC: Final = "EC PRIVATE KEY"
PEM_LEGACY_RSA: Final = "RSA PRIVATE KEY"
PEM_LEGACY_ED25519: Final = "ED25519 PRIVATE KEY"
LEGACY_TYPES: Final = frozenset({PEM_LEGACY_EC, PEM_LEGACY_RSA, PEM_LEGACY_ED25519})
KEY_PEM_TYPES: Final = frozenset({PEM_ENCRYPTED, PEM_PLAIN, *LEGACY_TYPES})

#: Roles whose key files carry a ``gun`` header; root and delegation keys can
#: serve several repositories, so notary drops the GUN for them.
GUN_ROLES: Final = frozenset({"targets", "snapshot", "timestamp"})

# What notary 0.7.0 writes (and all it can read back).
PBKDF2_ITERATIONS: Final = 2048
SALT_SIZE: Final = 8
IV_SIZE: Final = 16
AES_KEY_SIZE: Final = 32
# Refuse absurd work factors in files we are asked to open.
MAX_PBKDF2_ITERATIONS: Final = 10_000_000

ED25519_BLOB_SIZE: Final = 96  # pub(32) || seed(32) || pub(32)

OID_RSA: Final = "1.2.840.113549.1.1.1"
OID_EC_PUBLIC_KEY: Final = "1.2.840.10045.2.1"
OID_NOTARY_ED25519: Final = "1.3.6.1.4.1.11591.15.1"
OID_RFC8410_ED25519: Final = "1.3.101.112"

_CURVE_OIDS: Final[dict[str, ec.EllipticCurve]] = {
    "1.3.132.0.33": ec.SECP224R1(),
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
    "1.3.132.0.35": ec.SECP521R1(),
}
_OID_BY_CURVE_NAME: Final = {curve.name: oid for oid, curve in _CURVE_OIDS.items()}

_PBKDF2_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_PBES2_CIPHERS: Final = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_RFC1423_CIPHERS: Final = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}

# asn1crypto reports malformed input with a variety of exception types.
_ASN1_ERRORS: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError)


class KeyFileError(ValueError):
    """A key file that cannot be read (not PEM, not a key, inconsistent key)."""


class UnsupportedKeyError(KeyFileError):
    """A well-formed file using an algorithm or cipher notary does not use."""


class PassphraseRequiredError(KeyFileError):
    """The file is encrypted and no passphrase was given."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not decrypt the file (or the ciphertext is damaged).

    The two cannot be told apart: CBC has no integrity check, so notary (and
    we) only notice that the plaintext is not a key.
    """


@dataclass(frozen=True, slots=True)
class PemBlock:
    """One decoded PEM block; ``body`` may be secret, so it stays out of repr."""

    type: str
    headers: dict[str, str]
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyFileInfo:
    """What a key file says about itself without being decrypted."""

    pem_type: str
    role: str
    gun: str
    path: str
    encrypted: bool
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A decoded key file: the key plus its PEM headers."""

    key: PrivateKey
    role: str
    gun: str
    path: str
    encrypted: bool
    pem_type: str
    headers: dict[str, str]


# --------------------------------------------------------------------------------------
# ASN.1 shapes asn1crypto does not ship: notary's PrivateKeyInfo uses an
# AlgorithmIdentifier that is a plain SEQUENCE OF OBJECT IDENTIFIER when written
# (no NULL for RSA), and a private OID asn1crypto's PrivateKeyInfo rejects.
# --------------------------------------------------------------------------------------


class _AlgorithmIdentifier(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 - asn1crypto's schema idiom
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class _PrivateKeyInfo(core.Sequence):  # type: ignore[misc]
    """RFC 5958 OneAsymmetricKey, read leniently (any version, any algorithm)."""

    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("private_key_algorithm", _AlgorithmIdentifier),
        ("private_key", core.OctetString),
        ("attributes", asn1keys.Attributes, {"implicit": 0, "optional": True}),
        ("public_key", core.OctetBitString, {"implicit": 1, "optional": True}),
    ]


class _OidList(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.ObjectIdentifier


class _NotaryPrivateKeyInfo(core.Sequence):  # type: ignore[misc]
    """Go's ``privateKeyInfo{Version int; PrivateKeyAlgorithm []OID; PrivateKey []byte}``."""

    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("private_key_algorithm", _OidList),
        ("private_key", core.OctetString),
    ]


# --------------------------------------------------------------------------------------
# Key <-> notary's PKCS#8
# --------------------------------------------------------------------------------------


def ed25519_blob(key: ed25519.Ed25519PrivateKey) -> bytes:
    """Notary's 96-byte Ed25519 private form: ``pub || seed || pub``."""
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub + seed + pub


def ed25519_from_blob(blob: bytes) -> ed25519.Ed25519PrivateKey:
    """The key in a 96-byte blob, refusing one whose public halves do not match
    the seed (notary would sign with the seed but advertise the wrong key)."""
    if len(blob) != ED25519_BLOB_SIZE:
        raise KeyFileError(f"ed25519 private key must be {ED25519_BLOB_SIZE} bytes")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(blob[32:64])
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if not (hmac.compare_digest(blob[:32], pub) and hmac.compare_digest(blob[64:], pub)):
        raise KeyFileError("ed25519 private key: embedded public key does not match the seed")
    return key


def notary_pkcs8(key: PrivateKey) -> bytes:
    """The inner ``PrivateKeyInfo`` DER exactly as notary writes it.

    * ECDSA: version **1**, ``SEQUENCE{id-ecPublicKey, namedCurve}``, SEC1
      ``ECPrivateKey`` with ``[0]`` curve and ``[1]`` public key;
    * RSA: version 0, ``SEQUENCE{rsaEncryption}`` **without** NULL, PKCS#1;
    * Ed25519: version 0, ``SEQUENCE{1.3.6.1.4.1.11591.15.1}``, the raw 96-byte
      blob (not a nested OCTET STRING).
    """
    obj = key.obj
    if isinstance(obj, ec.EllipticCurvePrivateKey):
        curve_oid = _OID_BY_CURVE_NAME.get(obj.curve.name)
        if curve_oid is None:
            raise UnsupportedKeyError(f"notary cannot store keys on curve {obj.curve.name}")
        version, oids = 1, [OID_EC_PUBLIC_KEY, curve_oid]
        inner = obj.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    elif isinstance(obj, rsa.RSAPrivateKey):
        version, oids = 0, [OID_RSA]
        inner = obj.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    elif isinstance(obj, ed25519.Ed25519PrivateKey):
        version, oids = 0, [OID_NOTARY_ED25519]
        inner = ed25519_blob(obj)
    else:  # pragma: no cover - PrivateKeyObject is a closed union
        raise UnsupportedKeyError(f"cannot store a {type(obj).__name__}")
    info = _NotaryPrivateKeyInfo(
        {"version": version, "private_key_algorithm": oids, "private_key": inner}
    )
    der: bytes = info.dump()
    return der


class _BadKey(Exception):
    """Internal: the DER is not a usable key; callers decide what that means."""


class _UnsupportedKey(_BadKey):
    """Internal: a well-formed key of a kind notary does not use."""


def parse_pkcs8(der: bytes, *, strict: bool = True) -> PrivateKey:
    """A key from a ``PrivateKeyInfo``: notary's variants or standard PKCS#8.

    With ``strict=False`` bytes after the structure are ignored, as Go does
    after decrypting (it never strips the CBC padding).
    """
    try:
        return PrivateKey(_parse_pkcs8(der, strict=strict))
    except _UnsupportedKey as exc:
        raise UnsupportedKeyError(str(exc)) from None
    except _BadKey as exc:
        raise KeyFileError(f"not a usable PKCS#8 private key: {exc}") from None


def _parse_pkcs8(der: bytes, *, strict: bool) -> PrivateKeyObject:
    try:
        info = _PrivateKeyInfo.load(der, strict=strict)
        version = info["version"].native
        algorithm = info["private_key_algorithm"]["algorithm"].dotted
        params = info["private_key_algorithm"]["parameters"]
        inner = info["private_key"].native
        embedded_pub = info["public_key"]
        embedded_pub = None if isinstance(embedded_pub, core.Void) else embedded_pub.native
    except _ASN1_ERRORS:
        raise _BadKey("malformed PrivateKeyInfo") from None
    if not isinstance(version, int) or version not in (0, 1):
        raise _UnsupportedKey("unsupported PrivateKeyInfo version")
    if algorithm == OID_EC_PUBLIC_KEY:
        curve_oid = None
        if not isinstance(params, core.Void):
            try:
                curve_oid = core.ObjectIdentifier.load(params.dump()).dotted
            except _ASN1_ERRORS:
                raise _BadKey("EC parameters are not a named curve") from None
        return _ec_from_sec1(inner, curve_oid)
    if algorithm == OID_RSA:
        if not isinstance(params, core.Void) and params.dump() != b"\x05\x00":
            raise _BadKey("rsaEncryption takes no parameters")
        return _rsa_from_pkcs1(inner)
    if algorithm == OID_NOTARY_ED25519:
        try:
            return ed25519_from_blob(inner)
        except KeyFileError as exc:
            raise _BadKey(str(exc)) from None
    if algorithm == OID_RFC8410_ED25519:
        try:
            seed = core.OctetString.load(inner, strict=True).native
        except _ASN1_ERRORS:
            raise _BadKey("RFC 8410 Ed25519 key is not an OCTET STRING") from None
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise _BadKey("RFC 8410 Ed25519 seed must be 32 bytes")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        if embedded_pub is not None and embedded_pub != key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ):
            raise _BadKey("embedded Ed25519 public key does not match the seed")
        return key
    raise _UnsupportedKey(f"unsupported key algorithm {algorithm}")


def _ec_from_sec1(der: bytes, outer_curve_oid: str | None) -> ec.EllipticCurvePrivateKey:
    """Rebuild an EC key from SEC1 numbers, checking the embedded public point."""
    try:
        sec1 = asn1keys.ECPrivateKey.load(der, strict=True)
        scalar = sec1["private_key"].native
        params = sec1["parameters"]
        inner_curve_oid = None
        if not isinstance(params, core.Void):
            if params.name != "named":
                raise _UnsupportedKey("only named curves are supported")
            inner_curve_oid = params.chosen.dotted
        point = sec1["public_key"]
        point_bytes = None if isinstance(point, core.Void) else point.native
    except _ASN1_ERRORS:
        raise _BadKey("malformed SEC1 ECPrivateKey") from None
    if outer_curve_oid and inner_curve_oid and outer_curve_oid != inner_curve_oid:
        raise _BadKey("EC curve differs between AlgorithmIdentifier and ECPrivateKey")
    curve_oid = inner_curve_oid or outer_curve_oid
    if curve_oid is None:
        raise _BadKey("EC private key names no curve")
    curve = _CURVE_OIDS.get(curve_oid)
    if curve is None:
        raise _UnsupportedKey(f"unsupported EC curve {curve_oid}")
    if not isinstance(scalar, int):
        raise _BadKey("malformed EC private scalar")
    try:
        key = ec.derive_private_key(scalar, curve)
    except ValueError:
        raise _BadKey("EC private scalar out of range") from None
    if point_bytes is not None:
        try:
            embedded = ec.EllipticCurvePublicKey.from_encoded_point(curve, point_bytes)
        except ValueError:
            raise _BadKey("malformed EC public point") from None
        if embedded.public_numbers() != key.public_key().public_numbers():
            raise _BadKey("embedded EC public key does not match the private key")
    return key


def _rsa_from_pkcs1(der: bytes) -> rsa.RSAPrivateKey:
    """Rebuild an RSA key from PKCS#1 numbers (``cryptography`` checks them)."""
    try:
        pk = asn1keys.RSAPrivateKey.load(der, strict=True)
        if not isinstance(pk["other_prime_infos"], core.Void):
            raise _UnsupportedKey("multi-prime RSA keys are not supported")
        n, e, d, p, q, dp, dq, qinv = (
            pk[name].native
            for name in (
                "modulus",
                "public_exponent",
                "private_exponent",
                "prime1",
                "prime2",
                "exponent1",
                "exponent2",
                "coefficient",
            )
        )
    except _ASN1_ERRORS:
        raise _BadKey("malformed PKCS#1 RSAPrivateKey") from None
    try:
        numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qinv, rsa.RSAPublicNumbers(e, n))
        return numbers.private_key()
    except (ValueError, TypeError):
        raise _BadKey("inconsistent RSA private key") from None


# --------------------------------------------------------------------------------------
# PBES2 (PKCS#5 v2.0) as notary uses it
# --------------------------------------------------------------------------------------


def _passphrase_bytes(passphrase: str) -> bytes:
    return passphrase.encode("utf-8")


def encrypt_pkcs8(
    der: bytes, passphrase: str, *, salt: bytes | None = None, iv: bytes | None = None
) -> bytes:
    """``EncryptedPrivateKeyInfo`` DER as notary writes it.

    ``salt`` and ``iv`` are random unless given; fixing them is only for
    reproducing a file byte for byte (never reuse them for real keys).
    """
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    iv = os.urandom(IV_SIZE) if iv is None else iv
    if len(iv) != IV_SIZE:
        raise ValueError(f"AES-CBC needs a {IV_SIZE}-byte IV")
    # notary's format fixes the PRF to HMAC-SHA1; anything else it cannot read.
    kdf = PBKDF2HMAC(hashes.SHA1(), AES_KEY_SIZE, salt, PBKDF2_ITERATIONS)  # noqa: S303
    aes_key = kdf.derive(_passphrase_bytes(passphrase))
    pad = 16 - len(der) % 16  # PKCS#7: a whole block when already aligned
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(der + bytes([pad]) * pad) + encryptor.finalize()
    info = asn1keys.EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": {
                "algorithm": "pbes2",
                "parameters": {
                    "key_derivation_func": {
                        "algorithm": "pbkdf2",
                        # No prf (HMAC-SHA1 is the default) and no keyLength.
                        "parameters": {
                            "salt": algos.Pbkdf2Salt(name="specified", value=salt),
                            "iteration_count": PBKDF2_ITERATIONS,
                        },
                    },
                    "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
                },
            },
            "encrypted_data": ciphertext,
        }
    )
    out: bytes = info.dump()
    return out


@dataclass(frozen=True, slots=True)
class _Pbes2:
    prf: str
    salt: bytes
    iterations: int
    key_size: int
    iv: bytes
    ciphertext: bytes


def _parse_encrypted(der: bytes) -> _Pbes2:
    try:
        info = asn1keys.EncryptedPrivateKeyInfo.load(der, strict=True)
        alg = info["encryption_algorithm"]
        if alg["algorithm"].native != "pbes2":
            raise UnsupportedKeyError(
                f"unsupported key encryption {alg['algorithm'].dotted} (notary uses PBES2)"
            )
        params = alg["parameters"]
        kdf = params["key_derivation_func"]
        if kdf["algorithm"].native != "pbkdf2":
            raise UnsupportedKeyError("unsupported key derivation (notary uses PBKDF2)")
        kdf_params = kdf["parameters"]
        salt_choice = kdf_params["salt"]
        if salt_choice.name != "specified":
            raise UnsupportedKeyError("unsupported PBKDF2 salt source")
        salt = salt_choice.chosen.native
        iterations = kdf_params["iteration_count"].native
        prf = kdf_params["prf"]["algorithm"].native
        key_length = kdf_params["key_length"].native
        scheme = params["encryption_scheme"]
        cipher = scheme["algorithm"].native
        iv = scheme["parameters"].native
        ciphertext = info["encrypted_data"].native
    except UnsupportedKeyError:
        raise
    except _ASN1_ERRORS:
        raise KeyFileError("malformed EncryptedPrivateKeyInfo") from None
    if prf not in _PBKDF2_HASHES:
        raise UnsupportedKeyError(f"unsupported PBKDF2 PRF {prf} (notary uses HMAC-SHA1)")
    key_size = _PBES2_CIPHERS.get(cipher)
    if key_size is None:
        raise UnsupportedKeyError(f"unsupported cipher {cipher} (notary uses AES-256-CBC)")
    if key_length is not None and key_length != key_size:
        raise KeyFileError("PBKDF2 keyLength does not fit the cipher")
    if not isinstance(iterations, int) or not 1 <= iterations <= MAX_PBKDF2_ITERATIONS:
        raise KeyFileError("PBKDF2 iteration count out of range")
    if not isinstance(iv, bytes) or len(iv) != IV_SIZE:
        raise KeyFileError("AES-CBC IV must be 16 bytes")
    if not isinstance(ciphertext, bytes) or not ciphertext or len(ciphertext) % 16:
        raise KeyFileError("encrypted key is not a whole number of AES blocks")
    return _Pbes2(prf, salt, iterations, key_size, iv, ciphertext)


def decrypt_pkcs8(der: bytes, passphrase: str) -> bytes:
    """The plaintext of an ``EncryptedPrivateKeyInfo`` (padding stripped when valid).

    Go does not check the padding, it parses the DER and ignores what follows;
    so invalid padding alone is not an error here either (parsing decides).
    """
    enc = _parse_encrypted(der)
    kdf = PBKDF2HMAC(_PBKDF2_HASHES[enc.prf](), enc.key_size, enc.salt, enc.iterations)
    aes_key = kdf.derive(_passphrase_bytes(passphrase))
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(enc.iv)).decryptor()
    plain = decryptor.update(enc.ciphertext) + decryptor.finalize()
    return _strip_pkcs7(plain)


def _strip_pkcs7(data: bytes) -> bytes:
    pad = data[-1] if data else 0
    if 1 <= pad <= 16 and len(data) >= pad and data[-pad:] == bytes([pad]) * pad:
        return data[:-pad]
    return data


# --------------------------------------------------------------------------------------
# RFC 1423 (OpenSSL "traditional") encryption of legacy PEM blocks
# --------------------------------------------------------------------------------------


def evp_bytes_to_key(passphrase: bytes, salt: bytes, key_size: int) -> bytes:
    """OpenSSL's ``EVP_BytesToKey`` with MD5 and one iteration (RFC 1423 keys)."""
    derived = b""
    block = b""
    while len(derived) < key_size:
        block = hashlib.md5(block + passphrase + salt, usedforsecurity=False).digest()
        derived += block
    return derived[:key_size]


def _decrypt_rfc1423(block: PemBlock, passphrase: str) -> bytes:
    dek = block.headers.get("DEK-Info", "")
    cipher_name, _, iv_hex = dek.partition(",")
    key_size = _RFC1423_CIPHERS.get(cipher_name.strip().upper())
    if key_size is None:
        raise UnsupportedKeyError(
            f"unsupported legacy PEM cipher {cipher_name.strip() or '(none)'}"
            " (only AES-CBC is read)"
        )
    try:
        iv = bytes.fromhex(iv_hex.strip())
    except ValueError:
        raise KeyFileError("DEK-Info IV is not hex") from None
    if len(iv) != IV_SIZE:
        raise KeyFileError("DEK-Info IV must be 16 bytes for AES")
    if not block.body or len(block.body) % 16:
        raise KeyFileError("encrypted key is not a whole number of AES blocks")
    aes_key = evp_bytes_to_key(_passphrase_bytes(passphrase), iv[:8], key_size)
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    plain = decryptor.update(block.body) + decryptor.finalize()
    # Go's x509.DecryptPEMBlock insists on valid padding: that is its
    # wrong-passphrase signal.
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        raise WrongPassphraseError("wrong passphrase for the legacy encrypted key")
    return plain[:-pad]


def _parse_legacy(pem_type: str, der: bytes) -> PrivateKeyObject:
    try:
        if pem_type == PEM_LEGACY_RSA:
            return _rsa_from_pkcs1(der)
        if pem_type == PEM_LEGACY_EC:
            return _ec_from_sec1(der, None)
    except _UnsupportedKey as exc:
        raise UnsupportedKeyError(f"{pem_type}: {exc}") from None
    except _BadKey as exc:
        raise KeyFileError(f"not a usable {pem_type}: {exc}") from None
    return ed25519_from_blob(der)


# --------------------------------------------------------------------------------------
# PEM, the way Go's encoding/pem reads and writes it
# --------------------------------------------------------------------------------------

_PEM_RE: Final = re.compile(
    rb"-----BEGIN ([^\r\n]*?)-----[ \t]*\r?\n(.*?)^-----END \1-----",
    re.DOTALL | re.MULTILINE,
)
_HEADER_KEY_RE: Final = re.compile(r"[!-9;-~]+")  # printable ASCII, no colon or space


def decode_pem(data: bytes) -> PemBlock:
    """The first PEM block in ``data``, with its RFC 1421 headers."""
    match = _PEM_RE.search(data)
    if match is None:
        raise KeyFileError("no PEM block found")
    pem_type = match.group(1).decode("ascii")
    lines = match.group(2).split(b"\n")
    headers: dict[str, str] = {}
    while lines:
        line = lines[0].rstrip(b" \t\r")
        key, colon, value = line.partition(b":")
        if not colon:
            break
        try:
            headers[key.strip().decode("utf-8")] = value.strip().decode("utf-8")
        except UnicodeDecodeError:
            raise KeyFileError("PEM header is not UTF-8") from None
        lines.pop(0)
    body = b"".join(lines)
    body = re.sub(rb"\s+", b"", body)
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise KeyFileError(f"{pem_type} PEM body is not valid base64") from None
    if not der:
        raise KeyFileError(f"{pem_type} PEM block is empty")
    return PemBlock(pem_type, headers, der)


def encode_pem(pem_type: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """A PEM block as Go's ``pem.Encode`` writes it: ``Proc-Type`` first, other
    headers sorted by name, a blank line after headers, 64-character lines."""
    out = [f"-----BEGIN {pem_type}-----\n".encode("ascii")]
    if headers:
        names = sorted(headers)
        if "Proc-Type" in headers:
            names.remove("Proc-Type")
            names.insert(0, "Proc-Type")
        for name in names:
            value = headers[name]
            if not _HEADER_KEY_RE.fullmatch(name):
                raise ValueError(f"invalid PEM header name {name!r}")
            if any(c in value for c in "\r\n") or value != value.strip():
                raise ValueError(f"invalid value for PEM header {name!r}")
            out.append(f"{name}: {value}\n".encode())
        out.append(b"\n")
    text = base64.b64encode(body)
    out.extend(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))
    out.append(f"-----END {pem_type}-----\n".encode("ascii"))
    return b"".join(out)


# --------------------------------------------------------------------------------------
# The key file API
# --------------------------------------------------------------------------------------


def key_file_headers(role: str, gun: str = "", path: str = "") -> dict[str, str]:
    """The headers notary writes: ``gun`` only for targets/snapshot/timestamp."""
    headers: dict[str, str] = {}
    if role:
        headers["role"] = role
    if gun and role in GUN_ROLES:
        headers["gun"] = gun
    if path:
        headers["path"] = path
    return headers


def encode_key_file(
    key: PrivateKey,
    passphrase: str,
    *,
    role: str,
    gun: str = "",
    path: str = "",
    salt: bytes | None = None,
    iv: bytes | None = None,
) -> bytes:
    """A key file as notary 0.7.0 writes it.

    An empty ``passphrase`` gives an unencrypted ``PRIVATE KEY`` block (as
    notary does). ``gun`` is dropped for roles other than targets, snapshot
    and timestamp. ``path`` is the export-bundle header ``notary key import``
    needs to place an encrypted key. ``salt``/``iv``: see :func:`encrypt_pkcs8`.
    """
    inner = notary_pkcs8(key)
    headers = key_file_headers(role, gun, path)
    if not passphrase:
        return encode_pem(PEM_PLAIN, inner, headers)
    return encode_pem(PEM_ENCRYPTED, encrypt_pkcs8(inner, passphrase, salt=salt, iv=iv), headers)


def _info(block: PemBlock) -> KeyFileInfo:
    if block.type not in KEY_PEM_TYPES:
        raise KeyFileError(f"not a private key file (PEM type {block.type!r})")
    encrypted = block.type == PEM_ENCRYPTED or (
        block.type in LEGACY_TYPES and "ENCRYPTED" in block.headers.get("Proc-Type", "").upper()
    )
    return KeyFileInfo(
        pem_type=block.type,
        role=block.headers.get("role", ""),
        gun=block.headers.get("gun", ""),
        path=block.headers.get("path", ""),
        encrypted=encrypted,
        headers=dict(block.headers),
    )


def peek_key_file(data: bytes) -> KeyFileInfo:
    """Type and headers of a key file, without decrypting it (for listings)."""
    return _info(decode_pem(data))


def decode_key_file(data: bytes, passphrase: str | None = None) -> KeyFile:
    """The key in a notary key file (any format notary 0.1-0.7 wrote).

    ``passphrase`` is ignored for unencrypted files. Raises
    :class:`PassphraseRequiredError` if an encrypted file gets none,
    :class:`WrongPassphraseError` if it does not decrypt, and
    :class:`KeyFileError` for anything that is not a usable key.
    """
    block = decode_pem(data)
    info = _info(block)
    if info.encrypted and passphrase is None:
        raise PassphraseRequiredError("the key file is encrypted; a passphrase is needed")
    obj: PrivateKeyObject
    if block.type == PEM_ENCRYPTED:
        assert passphrase is not None
        plain = decrypt_pkcs8(block.body, passphrase)
        try:
            obj = _parse_pkcs8(plain, strict=False)
        except _UnsupportedKey as exc:
            # Garbage from a wrong passphrase does not get this far.
            raise UnsupportedKeyError(str(exc)) from None
        except _BadKey:
            raise WrongPassphraseError(
                "wrong passphrase (or damaged file): the decrypted data is not a private key"
            ) from None
    elif block.type == PEM_PLAIN:
        obj = parse_pkcs8(block.body).obj
    else:
        der = block.body
        if info.encrypted:
            assert passphrase is not None
            der = _decrypt_rfc1423(block, passphrase)
            try:
                obj = _parse_legacy(block.type, der)
            except KeyFileError:
                raise WrongPassphraseError(
                    "wrong passphrase (or damaged file): the decrypted data is not a private key"
                ) from None
        else:
            obj = _parse_legacy(block.type, der)
    return KeyFile(
        key=PrivateKey(obj),
        role=info.role,
        gun=info.gun,
        path=info.path,
        encrypted=info.encrypted,
        pem_type=info.pem_type,
        headers=info.headers,
    )
