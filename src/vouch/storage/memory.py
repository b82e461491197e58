"""The in-memory store, and the rules every backend shares.

:class:`MemoryStore` is the reference implementation of :class:`MetadataStore`
semantics (for tests and dev servers; nothing survives a restart). The batch
checks (:func:`prepare_batch`) and the per-key lock (:class:`KeyedLocks`) live
here too so that the SQL store applies exactly the same rules.

Unlike notary's memory store, delete removes exactly one GUN (notary also
removed every GUN the name prefixes: pitfall 28) and checksum look-ups honour
the role, as notary's SQL stores do.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from vouch.storage.base import (
    Change,
    NewFile,
    RepoState,
    StorageError,
    StoredFile,
    UpdateFn,
    VersionConflictError,
)

#: Longest GUN and role name, in characters (the SQL columns are VARCHAR(255)).
MAX_NAME = 255
#: Versions are stored as signed 64-bit integers.
MAX_VERSION = 2**63 - 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def utcnow() -> datetime:
    """Now, in UTC, at the microsecond precision every SQL backend keeps."""
    return datetime.now(UTC)


def is_sha256_hex(value: str) -> bool:
    """Only lowercase SHA-256 hex is ever indexed (an uppercase hex is a 404 in notary)."""
    return _SHA256_HEX.fullmatch(value) is not None


def check_name(kind: str, value: str) -> None:
    """Refuse names the SQL schema cannot hold, on every backend alike."""
    if not value or len(value) > MAX_NAME:
        raise StorageError(f"{kind} must be 1 to {MAX_NAME} characters long")


def prepare_batch(
    gun: str, state: RepoState, files: list[NewFile], now: datetime
) -> list[StoredFile]:
    """Check a batch against the storage version rule and turn it into rows to store.

    Every file's version must be greater than every stored version of its role
    (the current one is the highest) and a role may appear only once
    (notary-server's 400 ``VERSION``, spec §6.1 step 8). One bad file rejects
    the whole batch.
    """
    seen: set[str] = set()
    out: list[StoredFile] = []
    for f in files:
        check_name("role", f.role)
        if f.role in seen:
            raise VersionConflictError(f"{f.role} appears twice in one update")
        seen.add(f.role)
        if not 1 <= f.version <= MAX_VERSION:
            raise VersionConflictError(f"{f.role} version {f.version} is out of range")
        current = state.current.get(f.role)
        if current is not None and f.version <= current.version:
            raise VersionConflictError(
                f"{f.role} version {f.version} is not newer than stored {current.version}"
            )
        digest = hashlib.sha256(f.data).hexdigest()
        out.append(StoredFile(gun, f.role, f.version, bytes(f.data), digest, now, now))
    return out


def change_for(stored: Sequence[StoredFile]) -> tuple[int, str] | None:
    """The (version, sha256) of the changefeed record a batch adds, if it has a timestamp."""
    for f in stored:
        if f.role == "timestamp":
            return f.version, f.sha256
    return None


class KeyedLocks:
    """One :class:`asyncio.Lock` per key, dropped when nobody holds or waits for it.

    Serialises publishers of one GUN inside a process, so that waiting
    publishers queue here rather than each tying up a database connection.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


class MemoryStore:
    """A :class:`MetadataStore` in process memory."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, dict[int, StoredFile]]] = {}
        self._current: dict[str, dict[str, StoredFile]] = {}
        self._by_hash: dict[tuple[str, str, str], StoredFile] = {}
        self._changes: list[Change] = []
        self._locks = KeyedLocks()

    async def get_current(self, gun: str, role: str) -> StoredFile | None:
        return self._current.get(gun, {}).get(role)

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile | None:
        return self._versions.get(gun, {}).get(role, {}).get(version)

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None:
        return self._by_hash.get((gun, role, sha256))

    async def get_state(self, gun: str) -> RepoState:
        return RepoState(gun, dict(self._current.get(gun, {})))

    async def update(self, gun: str, fn: UpdateFn) -> list[StoredFile]:
        check_name("GUN", gun)
        async with self._locks.hold(gun):
            state = await self.get_state(gun)
            stored = prepare_batch(gun, state, await fn(state), utcnow())
            # No await from here on: the batch becomes visible all at once.
            versions = self._versions.setdefault(gun, {})
            current = self._current.setdefault(gun, {})
            for f in stored:
                versions.setdefault(f.role, {})[f.version] = f
                current[f.role] = f
                self._by_hash.setdefault((gun, f.role, f.sha256), f)
            change = change_for(stored)
            if change is not None:
                self._add_change(gun, *change, "update")
            return stored

    async def delete(self, gun: str) -> bool:
        async with self._locks.hold(gun):
            self._current.pop(gun, None)
            removed = self._versions.pop(gun, None)
            if not removed:
                return False
            for role, files in removed.items():
                for f in files.values():
                    self._by_hash.pop((gun, role, f.sha256), None)
            self._add_change(gun, 0, "", "deletion")
            return True

    async def changes(self, gun: str | None, change_id: int, records: int) -> list[Change]:
        reverse = change_id < 0 or records < 0
        limit = abs(records)
        if limit == 0:
            return []
        if reverse:
            picked: list[Change] = []
            for c in reversed(self._changes):
                if (change_id <= 0 or c.id < change_id) and (gun is None or c.gun == gun):
                    picked.append(c)
                    if len(picked) == limit:
                        break
            return picked[::-1]
        out: list[Change] = []
        for c in self._changes:
            if c.id > change_id and (gun is None or c.gun == gun):
                out.append(c)
                if len(out) == limit:
                    break
        return out

    async def check_health(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _add_change(self, gun: str, version: int, sha256: str, category: str) -> None:
        next_id = self._changes[-1].id + 1 if self._changes else 1
        self._changes.append(Change(next_id, utcnow(), gun, version, sha256, category))
