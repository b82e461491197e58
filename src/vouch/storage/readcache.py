"""The server's read path over a :class:`FileIndex`: batched look-ups, cached bytes.

A GET on a database backend used to cost one full query per request. Here a
request costs a share of one *index* query (no file bytes), and the bytes come
from a cache keyed by their SHA-256:

* **Never stale.** Every request waits for an index query that started after
  the request arrived, so it sees every publish (or delete) committed before
  it, by any server instance on the same database. Nothing about *which* file
  is current is ever cached.
* **Content-addressed bytes.** The cache maps a SHA-256 to bytes that hash to
  it (checked when filled), so a hit can only ever return the bytes the index
  row names, whichever GUN, role or version they belong to.
* **Batched.** Requests that arrive while a query is in flight share the next
  one; up to ``max_inflight`` queries run at once (each needs a pooled
  connection), so under load the database sees a handful of statements where
  there were hundreds of requests, and at low load a request's query starts
  at once.

Misses (bytes not cached yet) are read with the store's own single-file
look-up, whose answer is just as fresh, and then cached.

One exception to "a query per request", and only for GETs by checksum: a
file found by its checksum is served again for ``checksum_window`` seconds
(1 s) without asking the index. Such a file never changes, and no publish
ever removes it (history is kept), so no publish can make that answer stale;
only deleting the whole GUN can, and then other instances may serve its old
files by checksum for up to that second (the deleting instance forgets them
at once; notary-server serves them from memory forever). Current metadata and
GETs by version are never served without a query: a deleted and recreated
GUN may hold other bytes under the same version.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar, cast

from vouch.storage.base import (
    ChecksumKey,
    CurrentKey,
    FileIndex,
    FileRef,
    MetadataStore,
    StoredFile,
    VersionKey,
)

K = TypeVar("K", bound=Hashable)

#: Default bound on the cached bytes of one server process.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: Default number of index queries in flight at once (pooled connections they hold).
DEFAULT_MAX_INFLIGHT = 4
#: Seconds a file found by checksum is served again without a look-up (see below).
CHECKSUM_WINDOW = 1.0
#: Most (GUN, role, checksum) answers remembered for that.
MAX_SEEN = 65536
#: Most look-ups in one statement (bind-parameter limits: SQLite allows 32,766).
MAX_BATCH = 500


class ByteCache:
    """Bytes by their SHA-256, least recently used evicted past ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self.hits = 0
        self.misses = 0

    def get(self, sha256: str) -> bytes | None:
        data = self._items.get(sha256)
        if data is None:
            self.misses += 1
            return None
        self._items.move_to_end(sha256)
        self.hits += 1
        return data

    def put(self, data: bytes) -> str:
        """Cache ``data`` under the digest computed here (never one a caller claims)."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > self.max_bytes or digest in self._items:
            return digest
        self._items[digest] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)
        return digest

    def __len__(self) -> int:
        return len(self._items)


class _Batcher(Generic[K]):
    """Coalesces look-ups into calls of ``query`` with many keys (see the module docstring)."""

    def __init__(
        self, query: Callable[[Sequence[K]], Awaitable[dict[K, FileRef]]], max_inflight: int
    ) -> None:
        self._query = query
        self._max_inflight = max_inflight
        self._pending: list[tuple[K, asyncio.Future[FileRef | None]]] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.queries = 0

    async def lookup(self, key: K) -> FileRef | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[FileRef | None] = loop.create_future()
        self._pending.append((key, fut))
        if not self._scheduled:
            # Let the rest of this loop iteration's requests join before dispatching.
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await fut

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)  # a task nobody references may be collected mid-query
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[FileRef | None]]]) -> None:
        try:
            self.queries += 1
            found = await self._query([key for key, _ in batch])
        except BaseException as exc:  # every waiter gets the failure, nobody hangs
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for key, fut in batch:
                if not fut.done():
                    fut.set_result(found.get(key))
        finally:
            self._inflight -= 1
            if self._pending and not self._scheduled:
                self._dispatch()


V = TypeVar("V")


class SharedReads(Generic[K, V]):
    """Concurrent reads of one key share one read that started after each arrived.

    For stores whose look-ups cannot be batched across keys (a CouchDB head is
    a range read per GUN): at most one read per key is in flight; requests that
    arrive meanwhile wait for the *next* one, which starts when it ends, so
    every answer is still as fresh as a read made after the request arrived.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}
        self._next: dict[K, asyncio.Future[V]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self.reads = 0

    async def read(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        fut = self._next.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)
            self._next[key] = fut
            task = asyncio.ensure_future(self._start(key, fut, self._running.get(key), fn))
            self._tasks.add(task)  # a task nobody references may be collected mid-read
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(fut)

    async def _start(
        self,
        key: K,
        fut: asyncio.Future[V],
        previous: asyncio.Future[V] | None,
        fn: Callable[[], Awaitable[V]],
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        # From here on, newcomers must wait for a later read.
        if self._next.get(key) is fut:
            del self._next[key]
        self._running[key] = fut
        try:
            self.reads += 1
            result = await fn()
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not fut.done():
                fut.set_result(result)
        finally:
            if self._running.get(key) is fut:
                del self._running[key]


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a shared read's failure as seen, even if every waiter went away."""
    if not fut.cancelled():
        fut.exception()


class CachedReader:
    """``get_current`` / ``get_version`` / ``get_checksum`` as a :class:`MetadataStore`
    answers them, through batched index look-ups and a :class:`ByteCache`."""

    def __init__(
        self,
        store: MetadataStore,
        index: FileIndex,
        *,
        cache: ByteCache | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        checksum_window: float = CHECKSUM_WINDOW,
    ) -> None:
        self._store = store
        self.cache = cache or ByteCache()
        self._current: _Batcher[CurrentKey] = _Batcher(index.describe_current, max_inflight)
        self._versions: _Batcher[VersionKey] = _Batcher(index.describe_versions, max_inflight)
        self._checksums: _Batcher[ChecksumKey] = _Batcher(index.describe_checksums, max_inflight)
        #: Seconds a file found by checksum is served without asking the index again.
        self.checksum_window = checksum_window
        self._seen: dict[ChecksumKey, tuple[FileRef, float]] = {}

    @property
    def queries(self) -> int:
        """Index statements sent so far (for tests and metrics)."""
        return self._current.queries + self._versions.queries + self._checksums.queries

    async def get_current(self, gun: str, role: str) -> StoredFile | None:
        ref = await self._current.lookup((gun, role))
        return None if ref is None else await self._file(ref)

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile | None:
        ref = await self._versions.lookup((gun, role, version))
        return None if ref is None else await self._file(ref)

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None:
        key = (gun, role, sha256)
        seen = self._seen.get(key)
        if seen is not None and seen[1] > time.monotonic():
            data = self.cache.get(sha256)
            if data is not None:
                return _stored(seen[0], data)
        ref = await self._checksums.lookup(key)
        if ref is None:
            self._seen.pop(key, None)
            return None
        found = await self._file(ref)
        if found is not None and self.checksum_window > 0:
            self._see(key, ref)
        return found

    def forget(self, gun: str) -> None:
        """Drop what this process remembers of ``gun``'s files (it deleted the GUN)."""
        self._seen = {k: v for k, v in self._seen.items() if k[0] != gun}

    def _see(self, key: ChecksumKey, ref: FileRef) -> None:
        now = time.monotonic()
        if len(self._seen) >= MAX_SEEN:
            self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
            if len(self._seen) >= MAX_SEEN:
                self._seen.clear()
        self._seen[key] = (ref, now + self.checksum_window)

    def remember(self, files: Sequence[StoredFile]) -> None:
        """Cache the bytes of files this process just stored (their first GETs then hit)."""
        for f in files:
            self.cache.put(f.data)

    async def _file(self, ref: FileRef) -> StoredFile | None:
        data = self.cache.get(ref.sha256)
        if data is not None:
            return _stored(ref, data)
        # Not cached yet: read this very version. It may be gone by now (a delete
        # committed since the index query): then it is gone for this request too.
        found = await self._store.get_version(ref.gun, ref.role, ref.version)
        if found is None:
            return None
        self.cache.put(found.data)
        return found


def _stored(ref: FileRef, data: bytes) -> StoredFile:
    return StoredFile(
        ref.gun, ref.role, ref.version, data, ref.sha256, ref.created_at, ref.updated_at
    )


def cached_reader(
    store: MetadataStore,
    *,
    cache: ByteCache | None = None,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> CachedReader | None:
    """A :class:`CachedReader` over ``store`` if it can answer batched look-ups."""
    if not all(
        callable(getattr(store, name, None))
        for name in ("describe_current", "describe_versions", "describe_checksums")
    ):
        return None
    return CachedReader(store, cast(FileIndex, store), cache=cache, max_inflight=max_inflight)


__all__ = ["ByteCache", "CachedReader", "SharedReads", "cached_reader"]
