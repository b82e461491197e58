"""Storage of trust metadata behind one interface (:class:`MetadataStore`).

Backends: SQL through SQLAlchemy (SQLite, the embedded default; PostgreSQL;
MariaDB/MySQL) and an in-memory store for tests and dev. The interface is
shaped so a document store (CouchDB) can implement it with optimistic
concurrency instead of row locks.
"""

from vouch.storage.base import (
    Change,
    MetadataStore,
    NewFile,
    RepoState,
    StorageError,
    StoredFile,
    VersionConflictError,
)

__all__ = [
    "Change",
    "MetadataStore",
    "NewFile",
    "RepoState",
    "StorageError",
    "StoredFile",
    "VersionConflictError",
]
