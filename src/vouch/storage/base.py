"""The storage interface every backend implements.

Publishing is the operation that must never go wrong: a repository's
history may not fork and an accepted update may not be lost, whatever the
number of server instances. So the interface does not offer "insert";
it offers :meth:`MetadataStore.update`, which hands the caller a consistent
view of the GUN's current files and commits what the caller returns only if
nobody else committed in between (a row lock on SQL backends, a revision
check and retry on document stores). Validation and server-side signing
run inside that callback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StorageError(Exception):
    """The backend failed (connection, constraint, corruption)."""


class VersionConflictError(StorageError):
    """A new file's version is not greater than every stored version of its role.

    Maps to notary-server's 400 ``VERSION``.
    """


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One stored metadata file: the exact bytes as uploaded or generated."""

    gun: str
    role: str
    version: int
    data: bytes
    sha256: str  # lowercase hex of data
    created_at: datetime  # when this version was stored (by-version/by-hash Last-Modified)
    updated_at: datetime  # when it last became current (current Last-Modified)


@dataclass(frozen=True, slots=True)
class FileRef:
    """A stored file without its bytes: what a cheap index look-up returns.

    ``sha256`` names the bytes, so a reader that already holds bytes with that
    digest can serve them without reading them again (see :mod:`.readcache`).
    """

    gun: str
    role: str
    version: int
    sha256: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewFile:
    role: str
    version: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Change:
    """A changefeed record: a new timestamp version, or a GUN's deletion."""

    id: int
    created_at: datetime
    gun: str
    version: int  # the timestamp's version; 0 for a deletion
    sha256: str  # hex SHA-256 of the timestamp file; "" for a deletion
    category: str  # "update" or "deletion"


@dataclass(frozen=True, slots=True)
class RepoState:
    """The current (highest-version) file of every role of one GUN."""

    gun: str
    current: dict[str, StoredFile]


UpdateFn = Callable[[RepoState], Awaitable[list[NewFile]]]


class MetadataStore(Protocol):
    """Async storage of TUF metadata per GUN.

    Semantics every backend must honour (the shared storage test suite checks them):

    * **current** of a role is its highest stored version;
    * :meth:`update` is atomic: either every returned file is stored (each one
      becomes current for its role, and a ``timestamp`` among them adds an
      ``update`` change record), or nothing is;
    * a returned file whose version is not greater than every stored version of
      its role, or two files of one role, raise :class:`VersionConflictError`
      and store nothing;
    * concurrent :meth:`update` calls on one GUN are serialised: the callback of
      the second sees the files the first stored (the callback may run more
      than once on backends that retry; it must not have side effects beyond
      its return value and signing);
    * :meth:`delete` removes exactly one GUN (never another GUN it prefixes) and
      adds a ``deletion`` change record if anything was removed.
    """

    async def get_current(self, gun: str, role: str) -> StoredFile | None: ...

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile | None: ...

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None: ...

    async def get_state(self, gun: str) -> RepoState: ...

    async def update(self, gun: str, fn: UpdateFn) -> list[StoredFile]: ...

    async def delete(self, gun: str) -> bool: ...

    async def changes(self, gun: str | None, change_id: int, records: int) -> list[Change]:
        """Change records oldest → newest.

        ``records > 0``: up to ``records`` changes with id > ``change_id``.
        ``records < 0``: up to ``-records`` changes with id < ``change_id``
        (``change_id < 0`` meaning "from the newest"), still returned oldest first.
        ``gun`` None means every GUN.
        """
        ...

    async def check_health(self) -> None:
        """Raise :class:`StorageError` if the backend cannot serve requests."""
        ...

    async def close(self) -> None: ...


#: A look-up a :class:`FileIndex` answers: (gun, role, version) for ``version``,
#: (gun, role, sha256 hex) for ``checksum``, (gun, role) for ``current``.
VersionKey = tuple[str, str, int]
ChecksumKey = tuple[str, str, str]
CurrentKey = tuple[str, str]


class FileIndex(Protocol):
    """Optional capability of a store: many look-ups in one statement, without the bytes.

    A server instance answers each request with one of these (shared with every
    request that arrived meanwhile) and takes the bytes from a content-addressed
    cache, so reads stay exactly as fresh as the database while most of them
    cost a fraction of a query.
    """

    async def describe_current(self, keys: Sequence[CurrentKey]) -> dict[CurrentKey, FileRef]: ...

    async def describe_versions(self, keys: Sequence[VersionKey]) -> dict[VersionKey, FileRef]: ...

    async def describe_checksums(
        self, keys: Sequence[ChecksumKey]
    ) -> dict[ChecksumKey, FileRef]: ...
