"""notary-signer's ``private_keys`` table and what its columns hold.

The table is notary-signer's (migrations 0001 + 0002), column for column, so
vouch and a real notary-signer can share one database in either direction:
``public`` holds the raw public key (DER SPKI for ecdsa, 32 bytes for
ed25519), ``private`` the ASCII JWE (:mod:`vouch.crypto.jwe`) of SEC1
``ECPrivateKey`` DER or of Notary's 96-byte Ed25519 blob.

Two additions, both invisible to notary-signer: an index on (gun, role) for
the per-GUN lookups, and a binary collation on MySQL/MariaDB, whose default
case-insensitive collation would let ``Example/App`` reuse a key created for
``example/app``.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql

from vouch.crypto import jwe
from vouch.crypto.keyfile import KeyFileError, ed25519_blob, ed25519_from_blob
from vouch.crypto.privkey import PrivateKey, public_der
from vouch.keyservice.base import KeyDecryptionError
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key

TABLE: Final = "private_keys"
ENCRYPTION_ALG: Final = jwe.ENC
KEYWRAP_ALG: Final = jwe.ALG


def _name(length: int) -> String:
    """VARCHAR compared byte for byte on every backend."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


metadata = MetaData()

private_keys = Table(
    TABLE,
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=True),
    Column("deleted_at", DateTime, nullable=True),
    Column("key_id", _name(255), nullable=False),
    Column("encryption_alg", String(255), nullable=False),
    Column("keywrap_alg", String(255), nullable=False),
    Column("algorithm", String(50), nullable=False),
    Column("passphrase_alias", String(50), nullable=False),
    Column("public", LargeBinary, nullable=False),
    Column("private", LargeBinary, nullable=False),
    Column("gun", _name(255), nullable=False),
    Column("role", _name(255), nullable=False),
    Column("last_used", DateTime, nullable=True),
    UniqueConstraint("key_id", name="key_id"),
    UniqueConstraint("key_id", "algorithm", name="key_id_2"),
    Index("private_keys_gun_role_idx", "gun", "role"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


def public_key_of(algorithm: str, public: bytes) -> Key:
    """The metadata :class:`Key` for a row's ``algorithm`` and raw ``public`` bytes."""
    return Key(algorithm, tufkeys.b64encode(public))


def private_plaintext(key: PrivateKey) -> bytes:
    """What notary-signer encrypts: SEC1 ``ECPrivateKey`` DER, or the Ed25519 blob."""
    obj = key.obj
    if isinstance(obj, ed25519.Ed25519PrivateKey):
        return ed25519_blob(obj)
    if isinstance(obj, ec.EllipticCurvePrivateKey):
        return obj.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    raise ValueError("the key service stores ecdsa and ed25519 keys only")


def load_private(key_id: str, algorithm: str, public: bytes, plaintext: bytes) -> PrivateKey:
    """Parse a decrypted ``private`` value and prove it is the key the row names.

    A row whose private key does not match its ``public`` and ``key_id`` would
    sign under a key ID it cannot verify against; refuse it outright.
    """
    try:
        if algorithm == tufkeys.ED25519:
            key = PrivateKey(ed25519_from_blob(plaintext))
        elif algorithm == tufkeys.ECDSA:
            obj = serialization.load_der_private_key(plaintext, password=None)
            if not isinstance(obj, ec.EllipticCurvePrivateKey):
                raise ValueError("not an EC key")
            key = PrivateKey(obj)
        else:
            raise KeyDecryptionError(f"key {key_id} has unsupported algorithm {algorithm!r}")
    except (ValueError, TypeError, KeyFileError):
        raise KeyDecryptionError(f"key {key_id}: decrypted data is not a {algorithm} key") from None
    if public_der(key) != public or key.keyid != key_id:
        raise KeyDecryptionError(f"key {key_id}: private key does not match the row's public key")
    return key
