"""The interface the trust server uses to get and use its server-managed keys.

notary-server never holds timestamp/snapshot private keys itself: it asks
notary-signer (gRPC) to create keys and to sign bytes. :class:`KeyService`
is that contract in Python, so the server's code is the same whether the
keys live in-process (:mod:`vouch.keyservice.local`, encrypted at rest in
SQL), in memory (:mod:`vouch.keyservice.memory`) or, later, behind a remote
signer. Signing is async because a real signer is a network call; the sync
:class:`~vouch.tuf.metadata.Signer` protocol is bridged by
:func:`sign_metadata`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from vouch.crypto.privkey import PrivateKey
from vouch.tuf import canonical
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Metadata, Signature

DEFAULT_ALGORITHM: Final = tufkeys.ECDSA
#: What notary-signer's CreateKey accepts; RSA is refused there too.
ALGORITHMS: Final = (tufkeys.ECDSA, tufkeys.ED25519)
#: Column sizes of notary-signer's ``private_keys`` table.
MAX_NAME: Final = 255


class KeyServiceError(Exception):
    """Base class of key service failures; messages never carry key material."""


class KeyNotFoundError(KeyServiceError):
    """No usable (existing, not deleted) key has this ID (gRPC NOT_FOUND)."""


class KeyServiceUnavailableError(KeyServiceError):
    """The backing store cannot be reached or used right now."""


class KeyDecryptionError(KeyServiceError):
    """A stored key cannot be decrypted: passphrase alias unset or wrong, or a bad row.

    A configuration fault, not a client error: the server should answer 500.
    """


class UnsupportedAlgorithmError(KeyServiceError, ValueError):
    """CreateKey with an algorithm other than ecdsa or ed25519."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What GetKeyInfo tells about a key, plus the bookkeeping the server may show."""

    key: Key
    gun: str
    role: str
    created_at: datetime | None  # aware, UTC
    last_used: datetime | None  # None: never signed, so create_key may hand it out

    @property
    def key_id(self) -> str:
        return self.key.keyid

    @property
    def algorithm(self) -> str:
        return self.key.keytype


class KeyService(Protocol):
    """Server-managed keys per (GUN, role); every key handed out stays usable.

    * :meth:`create_key` returns an existing key of the same GUN, role and
      algorithm that has not signed anything yet, if there is one (notary's SQL
      signer semantics: repeated ``GET timestamp.key`` before the first publish
      return one key); otherwise it generates and stores a new key.
    * :meth:`rotate_key` always generates a new key.
    * :meth:`sign` marks the key used, after which :meth:`create_key` no longer
      hands it out.
    * :meth:`delete_key` is a soft delete and succeeds for unknown IDs.
    """

    async def create_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key: ...

    async def rotate_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key: ...

    async def get_key(self, gun: str, role: str) -> Key | None:
        """The newest usable key of ``gun``/``role`` of any algorithm, or None."""
        ...

    async def public_key(self, key_id: str) -> Key | None: ...

    async def key_info(self, key_id: str) -> KeyInfo | None: ...

    async def sign(self, key_id: str, message: bytes) -> Signature:
        """Sign ``message`` (the full canonical bytes, never a hash) with the key.

        Raises :class:`KeyNotFoundError` for unknown or deleted keys.
        """
        ...

    def signer(self, key_id: str) -> ServiceSigner: ...

    async def delete_key(self, key_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise :class:`KeyServiceUnavailableError` unless keys can be served."""
        ...

    async def close(self) -> None: ...


class AsyncSigner(Protocol):
    """The async twin of :class:`~vouch.tuf.metadata.Signer`."""

    @property
    def keyid(self) -> str: ...

    async def sign(self, message: bytes) -> Signature: ...


@dataclass(frozen=True, slots=True)
class ServiceSigner:
    """One key of a :class:`KeyService`, presented as an :class:`AsyncSigner`."""

    service: KeyService
    keyid: str

    async def sign(self, message: bytes) -> Signature:
        return await self.service.sign(self.keyid, message)


@dataclass(frozen=True, slots=True)
class _Presigned:
    """A sync Signer that hands back a signature made beforehand over ``message``."""

    keyid: str
    message: bytes
    signature: Signature

    def sign(self, message: bytes) -> Signature:
        if message != self.message:  # the model changed between signing and attaching
            raise RuntimeError("metadata changed while it was being signed")
        return self.signature


async def sign_metadata(
    metadata: Metadata[Any], signers: Sequence[AsyncSigner], *, replace: bool = True
) -> None:
    """:meth:`Metadata.sign` with async signers (key services, remote signers).

    Signs the canonical form of the current model, then attaches the
    signatures through :meth:`Metadata.sign` so its rules (refresh
    ``signed_raw``, keep or drop old signatures) apply unchanged.
    """
    message = canonical.encode(metadata.signed.to_dict())
    presigned = [_Presigned(s.keyid, message, await s.sign(message)) for s in signers]
    metadata.sign(*presigned, replace=replace)


def check_names(gun: str, role: str) -> None:
    """Refuse names the ``private_keys`` columns cannot hold, identically on every backend."""
    for what, value in (("gun", gun), ("role", role)):
        if not value or len(value) > MAX_NAME:
            raise ValueError(f"{what} must be 1 to {MAX_NAME} characters")


def check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise UnsupportedAlgorithmError(
            f"algorithm {algorithm} not supported for create key (use ecdsa or ed25519)"
        )
    return algorithm


def generate(algorithm: str) -> PrivateKey:
    """A fresh key of a supported algorithm (P-256 for ecdsa, as Notary generates)."""
    return PrivateKey.generate(check_algorithm(algorithm))


def make_signature(key: PrivateKey, message: bytes, keyid: str | None = None) -> Signature:
    """Sign with Notary's method and encoding, under the bare key's TUF key ID.

    ``keyid`` is that ID when the caller already knows it (a stored key's row):
    deriving it costs a DER export and a hash per signature.
    """
    raw = key.sign_bytes(message)
    return Signature(keyid or key.keyid, key.method, tufkeys.b64encode(raw))
