"""Public keys, key IDs and signature verification in Notary's dialect.

A key in metadata is ``{"keytype": T, "keyval": {"private": null, "public": P}}``
where ``P`` is base64 of a DER SubjectPublicKeyInfo (``ecdsa``, ``rsa``), of the
raw 32 bytes (``ed25519``) or of PEM certificate text (``*-x509``). Its ID is
the SHA-256 of that object's canonical form, so it depends on the exact ``P``
string: never re-encode a key that came from metadata.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vouch.tuf import canonical
from vouch.tuf.errors import FormatError

ECDSA: Final = "ecdsa"
ED25519: Final = "ed25519"
RSA: Final = "rsa"
ECDSA_X509: Final = "ecdsa-x509"
RSA_X509: Final = "rsa-x509"

KEY_TYPES: Final = frozenset({ECDSA, ED25519, RSA, ECDSA_X509, RSA_X509})
X509_TYPES: Final = frozenset({ECDSA_X509, RSA_X509})

# Signature methods and the key types each may be used with. A signature whose
# method does not fit its key's type is refused, whatever its bytes say.
METHOD_ECDSA: Final = "ecdsa"
METHOD_EDDSA: Final = "eddsa"
METHOD_RSAPSS: Final = "rsapss"
METHOD_RSAPKCS1: Final = "rsapkcs1v15"
METHOD_PYCRYPTO_PSS: Final = "pycrypto-pkcs#1 pss"
METHOD_KEY_TYPES: Final = {
    METHOD_ECDSA: frozenset({ECDSA, ECDSA_X509}),
    METHOD_EDDSA: frozenset({ED25519}),
    METHOD_RSAPSS: frozenset({RSA, RSA_X509}),
    METHOD_RSAPKCS1: frozenset({RSA, RSA_X509}),
    METHOD_PYCRYPTO_PSS: frozenset({RSA}),
}
MIN_RSA_BITS: Final = 2048
RSA_PSS_SALT: Final = 32  # Notary's fixed salt length, not "max"

PublicKeyObject = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (with padding), as Go's encoding/json writes []byte."""
    if len(text) % 4:
        raise FormatError(f"{what} is not valid base64")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise FormatError(f"{what} is not valid base64") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(keytype: str, public: str) -> str:
    """Notary's TUF key ID of a key given its type and verbatim ``public`` string."""
    body = canonical.encode({"keytype": keytype, "keyval": {"private": None, "public": public}})
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Key:
    """A public key as it appears in metadata; immutable, hashable by content."""

    keytype: str
    public: str
    unrecognized: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    keyval_unrecognized: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def keyid(self) -> str:
        return _cached_key_id(self.keytype, self.public)

    @property
    def is_x509(self) -> bool:
        return self.keytype in X509_TYPES

    @classmethod
    def from_dict(cls, data: Any) -> Key:
        if not isinstance(data, dict):
            raise FormatError("key must be an object")
        rest = dict(data)
        keytype = rest.pop("keytype", None)
        keyval = rest.pop("keyval", None)
        if not isinstance(keytype, str) or not isinstance(keyval, dict):
            raise FormatError("key needs a string keytype and an object keyval")
        keyval = dict(keyval)
        public = keyval.pop("public", None)
        private = keyval.pop("private", None)
        if not isinstance(public, str):
            raise FormatError("key's keyval.public must be a string")
        if private is not None:
            raise FormatError("metadata must never carry a private key")
        return cls(keytype, public, rest, keyval)

    def to_dict(self) -> dict[str, Any]:
        keyval: dict[str, Any] = {
            "private": None,
            "public": self.public,
            **self.keyval_unrecognized,
        }
        return {"keytype": self.keytype, "keyval": keyval, **self.unrecognized}

    def public_bytes(self) -> bytes:
        """The decoded ``public`` value: DER SPKI, raw ed25519 bytes, or PEM text."""
        return b64decode(self.public, "key public value")

    def certificates(self) -> list[x509.Certificate]:
        """The PEM bundle of an x509 key, leaf first (empty for bare keys)."""
        if not self.is_x509:
            return []
        return list(_load_certs(self.public))

    def canonical_keyid(self) -> str:
        """The ID of the bare public key: for x509 keys, of the leaf's key.

        Notary names private key files and signer rows by this ID, while
        metadata uses :attr:`keyid` (which for certificates covers the PEM).
        """
        if not self.is_x509:
            return self.keyid
        return bare_key(self).keyid

    def crypto_key(self) -> PublicKeyObject:
        """The ``cryptography`` object for this key (cached per key content)."""
        return _load_public(self.keytype, self.public)


@lru_cache(maxsize=4096)
def _cached_key_id(keytype: str, public: str) -> str:
    return key_id(keytype, public)


@lru_cache(maxsize=1024)
def _load_certs(public: str) -> tuple[x509.Certificate, ...]:
    pem = b64decode(public, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem)
        for cert in certs:
            cert.public_key()  # unsupported or garbled keys fail here, not later
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise FormatError(f"x509 key does not hold usable PEM certificates: {exc}") from exc
    if not certs:
        raise FormatError("x509 key holds no certificate")
    return tuple(certs)


@lru_cache(maxsize=4096)
def _load_public(keytype: str, public: str) -> PublicKeyObject:
    raw = b64decode(public, "key public value")
    loaded: Any
    try:
        if keytype == ED25519:
            if len(raw) != 32:
                raise FormatError(f"ed25519 public key must be 32 bytes, not {len(raw)}")
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        if keytype in X509_TYPES:
            loaded = _load_certs(public)[0].public_key()
        elif raw.startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_public_key(raw)
        else:
            loaded = serialization.load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FormatError(f"cannot load {keytype} public key: {exc}") from exc
    expected: type[Any] = (
        ec.EllipticCurvePublicKey if keytype.startswith("ecdsa") else rsa.RSAPublicKey
    )
    if keytype not in KEY_TYPES or not isinstance(loaded, expected):
        raise FormatError(f"key material does not match key type {keytype}")
    return loaded  # type: ignore[no-any-return]


def bare_key(key: Key) -> Key:
    """The bare (``ecdsa``/``rsa``) form of an x509 key's leaf public key."""
    if not key.is_x509:
        return key
    der = key.crypto_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(ECDSA if key.keytype == ECDSA_X509 else RSA, b64encode(der))


def public_key_from_crypto(obj: PublicKeyObject) -> Key:
    """Wrap a ``cryptography`` public key as a bare metadata key."""
    if isinstance(obj, ed25519.Ed25519PublicKey):
        raw = obj.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return Key(ED25519, b64encode(raw))
    der = obj.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(ECDSA if isinstance(obj, ec.EllipticCurvePublicKey) else RSA, b64encode(der))


def certificate_key(certs: list[x509.Certificate]) -> Key:
    """An ``*-x509`` key for a certificate (bundle), leaf first, as Notary encodes it."""
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    leaf_key = certs[0].public_key()
    keytype = ECDSA_X509 if isinstance(leaf_key, ec.EllipticCurvePublicKey) else RSA_X509
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise FormatError("Notary certificates carry ECDSA or RSA keys only")
    return Key(keytype, b64encode(pem))


def verify(key: Key, method: str, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` over ``message`` verifies with ``key`` by ``method``.

    Never raises for a bad signature; raises :class:`FormatError` only for a
    key that cannot be loaded at all.
    """
    allowed = METHOD_KEY_TYPES.get(method)
    if allowed is None or key.keytype not in allowed:
        return False
    pub = key.crypto_key()
    try:
        if method == METHOD_ECDSA:
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            size = (pub.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            # Notary hashes with SHA-256 whatever the curve.
            pub.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        elif method == METHOD_EDDSA:
            assert isinstance(pub, ed25519.Ed25519PublicKey)
            pub.verify(signature, message)
        else:
            assert isinstance(pub, rsa.RSAPublicKey)
            if pub.key_size < MIN_RSA_BITS:
                return False
            if method == METHOD_RSAPKCS1:
                pub.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=RSA_PSS_SALT)
                pub.verify(signature, message, pss, hashes.SHA256())
    except InvalidSignature:
        return False
    return True
