"""An in-memory :class:`~vouch.keyservice.base.KeyService` for tests and dev.

Keys are not encrypted and vanish with the process, like notary-server's
``trust_service: local``. Unlike notary's memory signer (a new key on every
``GET timestamp.key``), it reuses unused keys exactly as the SQL service does,
so code tested against it behaves the same in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from vouch.crypto.privkey import PrivateKey
from vouch.keyservice.base import (
    DEFAULT_ALGORITHM,
    KeyInfo,
    KeyNotFoundError,
    ServiceSigner,
    check_algorithm,
    check_names,
    generate,
    make_signature,
)
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature


@dataclass(slots=True)
class _Entry:
    key: PrivateKey
    gun: str
    role: str
    created_at: datetime
    last_used: datetime | None = None
    deleted: bool = False

    def info(self) -> KeyInfo:
        return KeyInfo(self.key.public, self.gun, self.role, self.created_at, self.last_used)


class MemoryKeyService:
    """Keys in a dict. Every method completes without awaiting, so it is race-free."""

    def __init__(self) -> None:
        self._keys: dict[str, _Entry] = {}  # insertion order = creation order

    def _live(self, key_id: str) -> _Entry | None:
        entry = self._keys.get(key_id)
        return entry if entry is not None and not entry.deleted else None

    async def create_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        check_names(gun, role)
        check_algorithm(algorithm)
        for entry in reversed(self._keys.values()):
            if (
                not entry.deleted
                and entry.last_used is None
                and (entry.gun, entry.role, entry.key.keytype) == (gun, role, algorithm)
            ):
                return entry.key.public
        return await self.rotate_key(gun, role, algorithm)

    async def rotate_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        check_names(gun, role)
        key = generate(algorithm)
        self._keys[key.keyid] = _Entry(key, gun, role, datetime.now(UTC))
        return key.public

    async def get_key(self, gun: str, role: str) -> Key | None:
        for entry in reversed(self._keys.values()):
            if not entry.deleted and (entry.gun, entry.role) == (gun, role):
                return entry.key.public
        return None

    async def public_key(self, key_id: str) -> Key | None:
        entry = self._live(key_id)
        return entry.key.public if entry is not None else None

    async def key_info(self, key_id: str) -> KeyInfo | None:
        entry = self._live(key_id)
        return entry.info() if entry is not None else None

    async def sign(self, key_id: str, message: bytes) -> Signature:
        entry = self._live(key_id)
        if entry is None:
            raise KeyNotFoundError(f"signing key not found: {key_id}")
        signature = make_signature(entry.key, message, key_id)
        entry.last_used = datetime.now(UTC)
        return signature

    def signer(self, key_id: str) -> ServiceSigner:
        return ServiceSigner(self, key_id)

    async def delete_key(self, key_id: str) -> None:
        entry = self._keys.get(key_id)
        if entry is not None:
            entry.deleted = True

    async def check_health(self) -> None:
        return None

    async def close(self) -> None:
        return None
