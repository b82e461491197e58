"""notary-signer's at-rest encryption of private keys: a JWE compact string.

notary-signer (through the Go library jose2go) stores each private key as a
JWE with ``alg`` PBES2-HS256+A128KW and ``enc`` A256GCM (RFC 7516/7518).
Reading and writing exactly that format is what lets vouch share a
``private_keys`` table with a real notary-signer, in both directions, so the
format is fixed here rather than negotiated: any other ``alg``/``enc``, a
``zip`` or ``crit`` member, or a PBKDF2 count outside sane bounds is refused
before any work is done, because a row is data and must not be able to make
the service burn CPU (a p2c of 2**31) or downgrade the cipher.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

ALG: Final = "PBES2-HS256+A128KW"
ENC: Final = "A256GCM"
DEFAULT_P2C: Final = 8192  # what notary-signer writes
MIN_P2C: Final = 1000  # RFC 7518 §4.8.1.2 recommends at least 1000
MAX_P2C: Final = 1_000_000  # about a second of PBKDF2: the most a row may cost
SALT_SIZE: Final = 12  # notary-signer's p2s length
MIN_SALT: Final = 8  # RFC 7518 §4.8.1.1
MAX_SALT: Final = 64
KEK_SIZE: Final = 16  # A128KW
CEK_SIZE: Final = 32  # A256GCM
IV_SIZE: Final = 12
TAG_SIZE: Final = 16
MAX_TOKEN: Final = 64 * 1024  # private keys are ~100 bytes; refuse anything absurd

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class JWEError(ValueError):
    """The string is not a JWE this module accepts, or it does not decrypt."""


class WrongPassphraseError(JWEError):
    """The passphrase does not unwrap the content key (the JWE itself may be fine)."""


@dataclass(frozen=True, slots=True)
class Header:
    """The protected header members that decryption depends on."""

    alg: str
    enc: str
    p2c: int
    p2s: bytes


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """Unpadded base64url only, as JWS/JWE compact serialisation requires."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JWEError(f"JWE {what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JWEError(f"JWE {what} is not unpadded base64url") from None


def derive_kek(passphrase: str, salt: bytes, p2c: int) -> bytes:
    """PBES2 key derivation: PBKDF2-HMAC-SHA256 over ``UTF8(alg) || 0x00 || p2s``."""
    salt_input = ALG.encode("ascii") + b"\x00" + salt
    kdf = PBKDF2HMAC(hashes.SHA256(), KEK_SIZE, salt_input, p2c)
    return kdf.derive(passphrase.encode("utf-8"))


def encode_header(p2c: int, salt: bytes) -> str:
    """The protected header as Go's ``json.Marshal`` of a map writes it (sorted keys)."""
    members = {"alg": ALG, "enc": ENC, "p2c": p2c, "p2s": b64url_encode(salt)}
    return b64url_encode(json.dumps(members, sort_keys=True, separators=(",", ":")).encode())


def encrypt(
    plaintext: bytes,
    passphrase: str,
    *,
    p2c: int = DEFAULT_P2C,
    salt: bytes | None = None,
    cek: bytes | None = None,
    iv: bytes | None = None,
) -> str:
    """The JWE compact serialisation of ``plaintext`` as notary-signer writes it.

    ``salt``, ``cek`` and ``iv`` are random unless given; fixing them exists
    only for known-answer tests and must never be done for real keys.
    """
    if not MIN_P2C <= p2c <= MAX_P2C:
        raise ValueError(f"p2c must be between {MIN_P2C} and {MAX_P2C}")
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    cek = os.urandom(CEK_SIZE) if cek is None else cek
    iv = os.urandom(IV_SIZE) if iv is None else iv
    if not MIN_SALT <= len(salt) <= MAX_SALT or len(cek) != CEK_SIZE or len(iv) != IV_SIZE:
        raise ValueError("salt, CEK or IV has the wrong size")
    protected = encode_header(p2c, salt)
    wrapped = aes_key_wrap(derive_kek(passphrase, salt, p2c), cek)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    parts = (protected, *(b64url_encode(p) for p in (wrapped, iv, ciphertext, tag)))
    return ".".join(parts)


def parse_header(protected: str, *, max_p2c: int = MAX_P2C) -> Header:
    """Decode and check the protected header; refuses everything but notary's profile."""
    try:
        members: Any = json.loads(b64url_decode(protected, "header"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JWEError("JWE header is not JSON") from None
    if not isinstance(members, dict):
        raise JWEError("JWE header is not a JSON object")
    alg, enc, p2c, p2s = (members.get(k) for k in ("alg", "enc", "p2c", "p2s"))
    if alg != ALG:
        raise JWEError(f"unsupported JWE alg {alg!r}; only {ALG} is accepted")
    if enc != ENC:
        raise JWEError(f"unsupported JWE enc {enc!r}; only {ENC} is accepted")
    if "zip" in members or "crit" in members:
        raise JWEError("JWE header has zip or crit, which notary-signer never writes")
    if type(p2c) is not int or not MIN_P2C <= p2c <= max_p2c:
        raise JWEError(f"JWE p2c must be an integer between {MIN_P2C} and {max_p2c}")
    if not isinstance(p2s, str):
        raise JWEError("JWE header has no p2s salt")
    salt = b64url_decode(p2s, "p2s")
    if not MIN_SALT <= len(salt) <= MAX_SALT:
        raise JWEError(f"JWE p2s must be {MIN_SALT} to {MAX_SALT} bytes")
    return Header(alg, enc, p2c, salt)


def decrypt(token: str | bytes, passphrase: str, *, max_p2c: int = MAX_P2C) -> bytes:
    """The plaintext of a notary-signer JWE.

    Raises :class:`WrongPassphraseError` when the key unwrap fails (RFC 3394's
    integrity check: with overwhelming likelihood a wrong passphrase) and
    :class:`JWEError` for anything malformed or tampered with. Messages never
    include the plaintext or derived keys.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise JWEError("JWE is not ASCII") from None
    if len(token) > MAX_TOKEN:
        raise JWEError("JWE is too long")
    parts = token.split(".")
    if len(parts) != 5:
        raise JWEError("JWE compact serialisation must have 5 parts")
    protected = parts[0]
    header = parse_header(protected, max_p2c=max_p2c)
    wrapped = b64url_decode(parts[1], "encrypted key")
    iv = b64url_decode(parts[2], "IV")
    ciphertext = b64url_decode(parts[3], "ciphertext")
    tag = b64url_decode(parts[4], "tag")
    if len(wrapped) != CEK_SIZE + 8:
        raise JWEError(f"JWE encrypted key must be {CEK_SIZE + 8} bytes")
    if len(iv) != IV_SIZE or len(tag) != TAG_SIZE:
        raise JWEError("JWE IV or tag has the wrong size")
    try:
        cek = aes_key_unwrap(derive_kek(passphrase, header.p2s, header.p2c), wrapped)
    except InvalidUnwrap:
        raise WrongPassphraseError("wrong passphrase: the content key does not unwrap") from None
    try:
        return AESGCM(cek).decrypt(iv, ciphertext + tag, protected.encode("ascii"))
    except InvalidTag:
        raise JWEError("JWE ciphertext or header was tampered with (GCM tag mismatch)") from None
