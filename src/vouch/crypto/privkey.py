"""Private keys that sign the way Notary verifies.

ECDSA signatures are raw ``r||s`` over SHA-256 (never DER), RSA uses PSS with
a 32-byte salt, Ed25519 signs the message itself. A :class:`PrivateKey` can
present itself under a different public form (a root certificate) through
:meth:`PrivateKey.signer`, because root signatures carry the certificate's
key ID while key files are named by the bare key's ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature

PrivateKeyObject = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

GENERATABLE: Final = (tufkeys.ECDSA, tufkeys.ED25519, tufkeys.RSA)


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A private key plus its bare public :class:`Key` (whose ID names it)."""

    obj: PrivateKeyObject

    @classmethod
    def generate(cls, keytype: str = tufkeys.ECDSA) -> PrivateKey:
        if keytype == tufkeys.ECDSA:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if keytype == tufkeys.ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        if keytype == tufkeys.RSA:
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        raise ValueError(f"cannot generate a {keytype!r} key; choose one of {GENERATABLE}")

    @property
    def public(self) -> Key:
        return _public_of(self)

    @property
    def keyid(self) -> str:
        """The bare key's ID: what key files and signer rows are named by."""
        return self.public.keyid

    @property
    def keytype(self) -> str:
        return self.public.keytype

    @property
    def method(self) -> str:
        if isinstance(self.obj, ec.EllipticCurvePrivateKey):
            return tufkeys.METHOD_ECDSA
        if isinstance(self.obj, ed25519.Ed25519PrivateKey):
            return tufkeys.METHOD_EDDSA
        return tufkeys.METHOD_RSAPSS

    def sign_bytes(self, message: bytes) -> bytes:
        """The raw signature over ``message`` in Notary's encoding."""
        obj = self.obj
        if isinstance(obj, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(obj.sign(message, ec.ECDSA(hashes.SHA256())))
            size = (obj.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if isinstance(obj, ed25519.Ed25519PrivateKey):
            return obj.sign(message)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=tufkeys.RSA_PSS_SALT)
        return obj.sign(message, pss, hashes.SHA256())

    def signer(self, as_key: Key | None = None) -> KeySigner:
        """A :class:`~vouch.tuf.metadata.Signer` that signs under ``as_key``'s ID
        (for example the root certificate); by default the bare key's."""
        presented = as_key or self.public
        if presented.canonical_keyid() != self.keyid:
            raise ValueError("the presented public key does not belong to this private key")
        return KeySigner(self, presented.keyid)


@dataclass(frozen=True, slots=True)
class KeySigner:
    key: PrivateKey
    keyid: str

    def sign(self, message: bytes) -> Signature:
        raw = self.key.sign_bytes(message)
        return Signature(self.keyid, self.key.method, tufkeys.b64encode(raw))


def _public_of(key: PrivateKey) -> Key:
    return tufkeys.public_key_from_crypto(key.obj.public_key())


def public_der(key: PrivateKey) -> bytes:
    """DER SubjectPublicKeyInfo (or raw 32 bytes for Ed25519), as signers store it."""
    pub = key.obj.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
