"""A :class:`~vouch.keyservice.base.KeyService` whose keys live on a PKCS#11 token.

Keys are generated inside the token and sign there (:mod:`vouch.crypto.pkcs11token`);
nothing secret ever enters this process. The bookkeeping notary-signer keeps
in its ``private_keys`` row (GUN, role, algorithm, created, last used) is kept
on the token too, as one private ``CKO_DATA`` object per key (application
``vouch-signer``, label = key ID, value = JSON), so the token alone is the
whole state: a restarted signer, or a second signer on the same token,
finds every key and knows which ones it may hand out again.

Only ECDSA P-256 (notary's default and what notary-server asks for unless
configured otherwise); CreateKey for ed25519 is refused with a clear error.

DeleteKey destroys the key pair and its data object: the key ID can never
come back, because nobody can recreate the private key.

Every token call runs on one dedicated thread, so the event loop never
blocks on the token and the token sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, TypeVar

from vouch.crypto.pkcs11token import Token, TokenConfig, TokenError, TokenKeyNotFoundError
from vouch.keyservice.base import (
    DEFAULT_ALGORITHM,
    KeyInfo,
    KeyNotFoundError,
    KeyServiceUnavailableError,
    ServiceSigner,
    UnsupportedAlgorithmError,
    check_names,
)
from vouch.tuf import keys as tufkeys
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature

APPLICATION: Final = "vouch-signer"
#: Seconds between rescans of the token for keys this process does not know.
RELOAD_INTERVAL: Final = 1.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Record:
    key: Key
    gun: str
    role: str
    created_at: datetime
    last_used: datetime | None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "gun": self.gun,
                "role": self.role,
                "algorithm": self.key.keytype,
                "created_at": self.created_at.isoformat(),
                "last_used": self.last_used.isoformat() if self.last_used else None,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, key: Key, raw: bytes) -> _Record:
        doc = json.loads(raw)
        last = doc.get("last_used")
        return cls(
            key,
            str(doc["gun"]),
            str(doc["role"]),
            datetime.fromisoformat(doc["created_at"]),
            datetime.fromisoformat(last) if last else None,
        )

    def info(self) -> KeyInfo:
        return KeyInfo(self.key, self.gun, self.role, self.created_at, self.last_used)


def _check_algorithm(algorithm: str) -> None:
    if algorithm != tufkeys.ECDSA:
        raise UnsupportedAlgorithmError(
            f"algorithm {algorithm} not supported for create key on a PKCS#11 token (use ecdsa)"
        )


class Pkcs11KeyService:
    """Keys on one token; the index of records is loaded at open and kept in step."""

    def __init__(self, token: Token) -> None:
        self._token = token
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pkcs11")
        self._records: dict[str, _Record] = {}  # creation order
        self._lock = asyncio.Lock()
        self._reloaded = 0.0

    @classmethod
    async def open(cls, config: TokenConfig) -> Pkcs11KeyService:
        """Log in to the token and load its records. Raises :class:`TokenError` (with the
        reason: module, token or PIN) when the token cannot be used."""
        token = await asyncio.to_thread(Token, config)
        service = cls(token)
        try:
            await service._reload()
        except BaseException:
            await service.close()
            raise
        return service

    async def _run(self, fn: Callable[[], _T]) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except TokenKeyNotFoundError:
            raise
        except TokenError as exc:
            raise KeyServiceUnavailableError(str(exc)) from None

    async def _reload(self) -> None:
        """Read every record (and its public key) from the token."""

        def scan() -> dict[str, _Record]:
            keys = {key.keyid: key for key, _label in self._token.key_pairs()}
            found: list[_Record] = []
            for label, raw in self._token.data_objects(APPLICATION):
                key = keys.get(label)
                if key is None:
                    continue  # a record whose key pair is gone: not usable
                try:
                    found.append(_Record.from_json(key, raw))
                except (ValueError, KeyError, TypeError):
                    continue
            found.sort(key=lambda r: r.created_at)
            return {r.key.keyid: r for r in found}

        self._records = await self._run(scan)

    async def _record(self, key_id: str) -> _Record | None:
        record = self._records.get(key_id)
        now = time.monotonic()
        if record is None and len(key_id) == 64 and now - self._reloaded >= RELOAD_INTERVAL:
            # Maybe made by another signer on the same token. At most one rescan per
            # interval, so requests for unknown IDs cannot keep the token busy.
            self._reloaded = now
            await self._reload()
            record = self._records.get(key_id)
        return record

    # -- KeyService ---------------------------------------------------------------------

    async def create_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        check_names(gun, role)
        _check_algorithm(algorithm)
        async with self._lock:
            for record in reversed(self._records.values()):
                if record.last_used is None and (record.gun, record.role) == (gun, role):
                    return record.key
            return await self._generate(gun, role)

    async def rotate_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        check_names(gun, role)
        _check_algorithm(algorithm)
        async with self._lock:
            return await self._generate(gun, role)

    async def _generate(self, gun: str, role: str) -> Key:
        label = f"vouch {role} {gun}"[:255]

        def generate() -> _Record:
            key = self._token.generate_ecdsa(label)
            record = _Record(key, gun, role, datetime.now(UTC), None)
            try:
                self._token.put_data(APPLICATION, key.keyid, record.to_json())
            except BaseException:
                self._token.destroy(key.keyid)
                raise
            return record

        record = await self._run(generate)
        self._records[record.key.keyid] = record
        return record.key

    async def get_key(self, gun: str, role: str) -> Key | None:
        for record in reversed(self._records.values()):
            if (record.gun, record.role) == (gun, role):
                return record.key
        return None

    async def public_key(self, key_id: str) -> Key | None:
        record = await self._record(key_id)
        return record.key if record is not None else None

    async def key_info(self, key_id: str) -> KeyInfo | None:
        record = await self._record(key_id)
        return record.info() if record is not None else None

    async def sign(self, key_id: str, message: bytes) -> Signature:
        record = await self._record(key_id)
        if record is None:
            raise KeyNotFoundError(f"signing key not found: {key_id}")
        try:
            raw = await self._run(lambda: self._token.sign(key_id, message))
        except TokenKeyNotFoundError:
            self._records.pop(key_id, None)  # deleted through another signer
            raise KeyNotFoundError(f"signing key not found: {key_id}") from None
        if record.last_used is None:
            used = replace(record, last_used=datetime.now(UTC))
            self._records[key_id] = used
            await self._run(lambda: self._token.put_data(APPLICATION, key_id, used.to_json()))
        return Signature(key_id, tufkeys.METHOD_ECDSA, tufkeys.b64encode(raw))

    def signer(self, key_id: str) -> ServiceSigner:
        return ServiceSigner(self, key_id)

    async def delete_key(self, key_id: str) -> None:
        self._records.pop(key_id, None)
        if len(key_id) != 64:
            return

        def delete() -> None:
            try:
                self._token.destroy(key_id)
            except TokenKeyNotFoundError:
                return
            self._token.delete_data(APPLICATION, key_id)

        await self._run(delete)

    async def check_health(self) -> None:
        await self._run(self._token.check)

    async def close(self) -> None:
        def close() -> None:
            self._token.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


__all__ = ["APPLICATION", "Pkcs11KeyService"]
