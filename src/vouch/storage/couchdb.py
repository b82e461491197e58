"""The CouchDB store: metadata in CouchDB 3, Cloudant or PouchDB Server.

CouchDB is atomic for one document only, so the model makes every commit a
single document creation:

* A GUN's history is a log of **batch** documents ``b:<gh>:<seq>`` (``gh`` a
  hash of the GUN, ``seq`` 1, 2, 3, … zero-padded). A batch holds the files
  of one update as attachments plus the GUN's whole ``current`` map (role →
  version, hash, and which batch holds that file). The newest batch *is* the
  GUN's state; it is found with one ``_all_docs`` range read.
* **Publishing** creates batch ``seq + 1`` with a PUT without ``_rev``.
  CouchDB creates a document id at most once, so of two publishers that read
  the same state exactly one succeeds; the other gets 409, reads the new
  state and runs its callback again (bounded), and so never overwrites or
  forks the history. Either the whole batch is stored or nothing is, and a
  failed publisher leaves no file behind for readers to skip.
* **Change records** ``c:<n>`` need ids ordered across GUNs, which no
  single GUN's log gives, so they are separate documents: a publisher
  allocates the next ``n`` (create-if-absent again) *before* committing and
  names it in its batch (``change_id``). A record counts only if its batch
  names it: a loser marks its record void, and a record whose batch is
  missing is "pending". Readers stop a forward page at a pending record
  (it may still commit, and ids are allocated in time order, so a consumer
  that pages forward never skips a record that later appears). After
  ``pending_timeout`` a reader "fences" it by creating that batch itself as a
  copy of the previous state, which makes the late publisher's commit fail
  and retry: a stuck record is resolved without trusting any clock for safety.
* **Deletion** commits a *tombstone* batch (empty state; its ``seq`` becomes
  the GUN's generation, and readers ignore anything older), then replaces
  every older batch with a small "dead" stub without attachments. Stubs keep
  the ids occupied: a stale publisher can never re-create an old ``seq``.
* Look-ups of non-current versions and of files by hash use one map/reduce
  view over the batches, keyed by hashes and zero-padded versions (strings:
  JavaScript map functions cannot hold 64-bit integers); the per-GUN
  changefeed uses a second view.

The same code runs on PouchDB Server (CI), Apache CouchDB 3 and Cloudant;
docs/deploy/couchdb.md says what differs (clusters, quorum, size limits).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import httpx

from vouch.storage import couchresolve
from vouch.storage.base import (
    Change,
    RepoState,
    StorageError,
    StoredFile,
    UpdateFn,
)
from vouch.storage.couchhttp import (
    CouchClient,
    CouchConflictError,
    CouchNotFoundError,
    CouchTarget,
    is_couch_url,
    jparams,
    parse_couch_url,
)
from vouch.storage.memory import (
    MAX_NAME,
    MAX_VERSION,
    KeyedLocks,
    change_for,
    check_name,
    is_sha256_hex,
    prepare_batch,
    utcnow,
)
from vouch.storage.readcache import SharedReads
from vouch.tuf.publish import UpdateError

__all__ = ["SCHEMA_VERSION", "CouchStore", "is_couch_url", "open_couch_store"]

log = logging.getLogger("vouch.storage.couchdb")

#: Version of the design document (views) this code needs.
SCHEMA_VERSION = 2
DESIGN_ID = "_design/vouch"
#: Publish attempts (each re-reads the state and re-runs the callback) before giving up.
_ATTEMPTS = 32
#: Change-id allocation attempts (each 409 means another record took that id).
_ALLOC_ATTEMPTS = 64
#: Rows per range read.
_PAGE = 500
#: Largest id number; ids are zero-padded to 19 digits.
_NUM_MAX = 10**19 - 1
#: Largest change id a JavaScript view key can hold exactly.
_CHANGE_MAX = 2**53 - 1
_OCTETS = "application/octet-stream"
#: Bytes of file contents the store keeps in memory (attachments of named revisions).
_CACHE_BYTES = 32 * 1024 * 1024

_FILES_MAP = """function (doc) {
  if (doc.kind !== 'batch' || !doc.files) { return; }
  for (var role in doc.files) {
    var f = doc.files[role];
    var v = {gun: doc.gun, role: role, v: f.v, sha256: f.sha256, seq: doc.seq, att: f.att,
             at: doc.at, rev: doc._rev};
    emit(['v', doc.gh, f.rh, f.v19], v);
    emit(['s', doc.gh, f.rh, f.sha256], v);
  }
}"""
_FEED_MAP = """function (doc) {
  if (doc.kind !== 'change') { return; }
  var v = {gun: doc.gun, gh: doc.gh, seq: doc.seq, v: doc.v, sha256: doc.sha256,
           category: doc.category, at: doc.at, voided: doc.voided === true};
  emit(['all', doc.n], v);
  emit(['g', doc.gh, doc.n], v);
}"""
_CONFLICTS_MAP = """function (doc) {
  if (!doc._conflicts || !doc.gh) { return; }
  if (doc.kind === 'change') { emit([doc.gh, 'c', doc.n], doc.gun); }
  else if (doc.kind !== 'notice') { emit([doc.gh, 'b', doc.seq], doc.gun); }
}"""
DESIGN: dict[str, Any] = {
    "language": "javascript",
    "vouch_schema": SCHEMA_VERSION,
    "views": {
        "files": {"map": _FILES_MAP},
        "feed": {"map": _FEED_MAP},
        "conflicts": {"map": _CONFLICTS_MAP},
    },
}


def _hash(name: str) -> str:
    """Ids and view keys use hashes: any name fits, and no collation can merge two names."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def _bid(gh: str, seq: int) -> str:
    return f"b:{gh}:{seq:019d}"


def _cid(n: int) -> str:
    return f"c:{n:019d}"


def _nid(gh: str, seq: int) -> str:
    return f"n:{gh}:{seq:019d}"


def _lineage(head: _Head | None, region: str) -> dict[str, Any]:
    """Who a new batch is: a fresh ``uid``, the ``uid`` it was built on, its region.

    Fork resolution (couchfork) follows these links; revisions cannot serve, as
    a stub or a "swept" mark replaces them.
    """
    return {
        "uid": secrets.token_hex(16),
        "parent": head.doc.get("uid") if head is not None else None,
        "region": region,
    }


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one stored file lives: its batch and attachment."""

    role: str
    version: int
    sha256: str
    seq: int
    att: str
    at: datetime
    #: The revision of batch ``seq`` that holds the file (None: whatever is current).
    #: Reads name it, so a state stays one consistent history even while a fork
    #: that replication brought in is unresolved.
    rev: str | None = None

    def json(self) -> dict[str, Any]:
        out = {
            "v": str(self.version),
            "sha256": self.sha256,
            "seq": self.seq,
            "att": self.att,
            "at": self.at.isoformat(),
        }
        if self.rev:
            out["rev"] = self.rev
        return out


@dataclass(frozen=True, slots=True)
class _Head:
    """The newest batch of a GUN."""

    seq: int
    gen: int  # seq of the last tombstone: batches at or below it are dead
    kind: str
    current: dict[str, _Entry]
    conflicts: bool
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Rec:
    """A change record as the feed view returns it."""

    n: int
    gun: str
    gh: str
    seq: int
    version: int
    sha256: str
    category: str
    at: datetime
    voided: bool

    def change(self) -> Change:
        return Change(self.n, self.at, self.gun, self.version, self.sha256, self.category)


class _FileCache:
    """A small LRU of immutable attachment bytes, bounded by total size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._items: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: tuple[str, str, str], data: bytes) -> None:
        if len(data) > self._limit // 8 or key in self._items:
            return
        self._items[key] = data
        self._size += len(data)
        while self._size > self._limit:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)


class _Verdict(Enum):
    VALID = "valid"  # its batch names it
    VOID = "void"  # its publisher lost (or a fence won)
    PENDING = "pending"  # no batch yet: the publish may still commit


class _GoneError(Exception):
    """A batch read from the head was replaced by a stub: a delete ran meanwhile."""


class CouchStore:
    """A :class:`MetadataStore` in a CouchDB database (see the module docstring)."""

    def __init__(
        self,
        target: CouchTarget,
        *,
        pending_timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._db = CouchClient(target, transport=transport)
        self._locks = KeyedLocks()
        self._head_reads: SharedReads[str, _Head | None] = SharedReads()
        # Change ids are allocated one at a time per process, starting from the
        # last id this process created: contention (409s) only across processes.
        self._alloc_lock = asyncio.Lock()
        self._last_change = 0
        #: How long a change record without its batch may still commit before
        #: readers fence it. Only liveness depends on it, never safety.
        self.pending_timeout = pending_timeout
        #: Multi-region: change ids are striped, ``n ≡ slot + 1 (mod stride)``, so
        #: regions never create the same record; each fences only its own.
        self.region = target.region
        self._stride = max(len(target.regions), 1)
        self._slot = target.regions.index(target.region) if target.regions else 0
        self._forks = couchresolve.ForkResolver(self)
        self._files = _FileCache(_CACHE_BYTES)

    @property
    def target(self) -> CouchTarget:
        return self._db.target

    # -- reads ----------------------------------------------------------------------

    async def get_current(self, gun: str, role: str) -> StoredFile | None:
        gh = _hash(gun)
        for _ in range(3):
            head = await self._read_head(gun, gh)
            entry = head.current.get(role) if head else None
            if entry is None:
                return None
            try:
                return await self._fetch(gun, gh, entry)
            except _GoneError:
                continue  # deleted meanwhile: the next head is the tombstone
        return None

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile | None:
        if not 1 <= version <= MAX_VERSION:
            return None
        gh = _hash(gun)
        key = ["v", gh, _hash(role), f"{version:019d}"]
        return await self._lookup(gun, gh, role, key, lambda e: e.version == version)

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None:
        if not is_sha256_hex(sha256):
            return None
        gh = _hash(gun)
        key = ["s", gh, _hash(role), sha256]
        return await self._lookup(gun, gh, role, key, lambda e: e.sha256 == sha256)

    async def _lookup(
        self, gun: str, gh: str, role: str, key: list[str], match: Callable[[_Entry], bool]
    ) -> StoredFile | None:
        """A by-version or by-hash read: the head first (clients mostly ask for current
        files, then the view is not needed), else the view of every stored file."""
        head = await self._read_head(gun, gh)
        if head is None:
            return None
        current = head.current.get(role)
        rows = [] if current is not None and match(current) else await self._file_rows(key)
        return await self._pick(gun=gun, gh=gh, role=role, head=head, rows=rows, match=match)

    async def get_state(self, gun: str) -> RepoState:
        gh = _hash(gun)
        for _ in range(3):
            try:
                return await self._state(gun, gh, await self._read_head(gun, gh))
            except _GoneError:
                continue
        raise StorageError(f"couchdb: the state of {gun!r} kept changing under a delete")

    async def changes(self, gun: str | None, change_id: int, records: int) -> list[Change]:
        if records == 0:
            return []
        prefix: list[Any] = ["all"] if gun is None else ["g", _hash(gun)]
        limit = abs(records)
        page = min(limit + 8, _PAGE)
        change_id = min(change_id, _CHANGE_MAX)
        if change_id < 0 or records < 0:
            return await self._changes_back(gun, prefix, change_id, limit, page)
        return await self._changes_forward(gun, prefix, change_id, limit, page)

    async def check_health(self) -> None:
        await self._db.get_json(self._db.db_path, "health check")

    # -- writes ---------------------------------------------------------------------

    async def update(self, gun: str, fn: UpdateFn) -> list[StoredFile]:
        check_name("GUN", gun)
        gh = _hash(gun)
        async with self._locks.hold(gun):  # publishers in this process queue here
            # Settle forks first (one view query when there are none), so a publisher
            # whose earlier publish was discarded is told now, not one publish later.
            await self._forks.settle(gun, gh)
            for attempt in range(_ATTEMPTS):
                head = await self._head(gun, gh, conflicts=True)
                if head is not None and head.conflicts and self._forks.arbiter:
                    await self._forks.settle(gun, gh)
                    continue
                # (Elsewhere a publish builds on CouchDB's pick; if the arbiter later
                # discards that history, this region's next publisher is told.)
                await self._deliver_notices(gun, gh, head)
                try:
                    state = await self._state(gun, gh, head)
                except _GoneError:
                    continue
                stored = prepare_batch(gun, state, await fn(state), utcnow())
                if not stored:
                    return []
                seq = head.seq + 1 if head else 1
                change = change_for(stored)
                change_id = None
                if change is not None:
                    change_id = await self._allocate(
                        gun=gun,
                        gh=gh,
                        seq=seq,
                        version=change[0],
                        sha256=change[1],
                        category="update",
                        at=stored[0].created_at,
                    )
                doc = _batch_doc(
                    gun=gun,
                    gh=gh,
                    seq=seq,
                    head=head,
                    stored=stored,
                    change_id=change_id,
                    region=self.region,
                )
                try:
                    rev = await self._create(_bid(gh, seq), doc, "publish")
                except CouchConflictError:
                    # Another publisher (or a delete, or a fence) took this seq first.
                    if change_id is not None:
                        await self._void(change_id)
                    await asyncio.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))  # noqa: S311
                    continue
                if rev:  # the next publish or GET of these files needs no attachment read
                    for role, f in doc["files"].items():
                        data = next(s.data for s in stored if s.role == role)
                        self._files.put((_bid(gh, seq), rev, f["att"]), data)
                return stored
        raise StorageError(
            f"couchdb: publishing to {gun!r} lost {_ATTEMPTS} races in a row; try again"
        )

    async def delete(self, gun: str) -> bool:
        if not gun or len(gun) > MAX_NAME:
            return False
        gh = _hash(gun)
        async with self._locks.hold(gun):
            try:
                await self._forks.settle(gun, gh)
            except UpdateError as e:  # a fork the arbiter region has not resolved yet
                raise StorageError(f"couchdb: not deleted: {e.msg}") from None
            for attempt in range(_ATTEMPTS):
                head = await self._head(gun, gh, conflicts=True)
                if head is None:
                    return False
                if head.conflicts and self._forks.arbiter:
                    await self._forks.settle(gun, gh)
                    continue
                if not head.current:
                    # Deleted already (or never published anything): finish a sweep
                    # that a crashed delete left undone, and report nothing removed.
                    if head.kind == "tombstone" and not head.doc.get("swept"):
                        await self._sweep(gh, head)
                    return False
                seq, now = head.seq + 1, utcnow()
                change_id = await self._allocate(
                    gun=gun, gh=gh, seq=seq, version=0, sha256="", category="deletion", at=now
                )
                tomb = {
                    "kind": "tombstone",
                    "gun": gun,
                    "gh": gh,
                    "seq": seq,
                    "gen": seq,
                    "at": now.isoformat(),
                    "files": {},
                    "current": {},
                    "change_id": change_id,
                    **_lineage(head, self.region),
                }
                try:
                    rev = await self._create(_bid(gh, seq), tomb, "delete")
                except CouchConflictError:
                    await self._void(change_id)
                    await asyncio.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))  # noqa: S311
                    continue
                await self._sweep(gh, _Head(seq, seq, "tombstone", {}, False, tomb | {"_rev": rev}))
                return True
        raise StorageError(f"couchdb: deleting {gun!r} lost {_ATTEMPTS} races in a row")

    # -- opening --------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Create the database and the design document if missing (needs admin rights)."""
        try:
            await self._db.get_json(self._db.db_path, "open database")
        except CouchNotFoundError:
            # A 412 means a concurrent first start created it.
            with contextlib.suppress(CouchConflictError):
                await self._db.request("PUT", self._db.db_path, "create database")
        for _ in range(5):
            design = await self._design()
            if (
                design is not None
                and design.get("vouch_schema") == SCHEMA_VERSION
                and design.get("views") == DESIGN["views"]
            ):
                return
            if design is not None and int(design.get("vouch_schema", 0)) > SCHEMA_VERSION:
                raise StorageError(_newer_schema(design))
            body = dict(DESIGN)
            if design is not None:
                body["_rev"] = design["_rev"]
            try:
                await self._db.request("PUT", self._design_path(), "install views", body=body)
                return
            except CouchConflictError:
                continue  # a concurrent first start installed it: check again
        raise StorageError("couchdb: could not install the design document")

    async def check_schema(self) -> None:
        """Raise :class:`StorageError` unless the database and this vouch's views are there."""
        try:
            await self._db.get_json(self._db.db_path, "open database")
        except CouchNotFoundError:
            raise StorageError(
                f"couchdb: database {self.target.database!r} does not exist: "
                "start one vouch with create (migrate) first"
            ) from None
        design = await self._design()
        if design is None or design.get("vouch_schema") != SCHEMA_VERSION:
            if design is not None and int(design.get("vouch_schema", 0)) > SCHEMA_VERSION:
                raise StorageError(_newer_schema(design))
            raise StorageError(
                f"couchdb: the database schema (design document) is not at version "
                f"{SCHEMA_VERSION}: start one vouch with create (migrate) first"
            )

    async def close(self) -> None:
        await self._forks.stop()
        await self._db.close()

    # -- plumbing: state --------------------------------------------------------------

    async def _read_head(self, gun: str, gh: str) -> _Head | None:
        """The head for a read; a head in conflict is resolved first (if we may write).

        Forks below the head need no resolution for reads: entries name their
        revisions, so the head's state is one history. Concurrent reads of one
        GUN share the next head read (:class:`SharedReads`: never one that
        started before they arrived).
        """
        return await self._head_reads.read(gun, lambda: self._read_head_now(gun, gh))

    async def _read_head_now(self, gun: str, gh: str) -> _Head | None:
        head = await self._head(gun, gh, conflicts=True)
        if head is None or not head.conflicts or not self._forks.arbiter:
            return head
        try:
            async with self._locks.hold(gun):
                await self._forks.settle(gun, gh)
        except StorageError as e:  # e.g. read-only credentials: serve CouchDB's pick
            log.warning("could not resolve the fork of %r: %s", gun, e)
            return head
        return await self._head(gun, gh)

    async def _head(self, gun: str, gh: str, *, conflicts: bool = False) -> _Head | None:
        """The newest batch of the GUN (one descending range read of the primary index)."""
        body = await self._db.get_json(
            f"{self._db.db_path}/_all_docs",
            "read head",
            params=jparams(
                startkey=_bid(gh, _NUM_MAX),
                endkey=_bid(gh, 0),
                descending=True,
                limit=1,
                include_docs=True,
                conflicts=conflicts or None,
            ),
        )
        rows = body.get("rows") or []
        if not rows or not rows[0].get("doc"):
            return None
        doc: dict[str, Any] = rows[0]["doc"]
        if doc.get("gun") != gun:
            raise StorageError(f"couchdb: document {doc.get('_id')} is not of GUN {gun!r}")
        kind = str(doc.get("kind", ""))
        current = (
            {}
            if kind != "batch"
            else _parse_current(doc.get("current") or {}, int(doc["seq"]), doc.get("_rev"))
        )
        gen = int(doc.get("gen", 0)) if kind != "dead" else int(doc["seq"])
        return _Head(int(doc["seq"]), gen, kind, current, bool(doc.get("_conflicts")), doc)

    async def _deliver_notices(self, gun: str, gh: str, head: _Head | None) -> None:
        """Tell this region's next publisher that a fork resolution discarded its publishes.

        The resolution batch carries a notice per losing region; batches copy
        the notices of other regions forward. The first publish here after it
        claims the notice (creating ``n:<gh>:<seq>``, so exactly one publisher
        is told) and is refused with the notice as a validation error: the
        notary CLI shows it, and the client's next publish starts from the
        winning history.
        """
        if head is None:
            return
        for notice in head.doc.get("notices") or []:
            if notice.get("region", "") != self.region:
                continue
            try:
                await self._create(
                    _nid(gh, int(notice["seq"])),
                    {"kind": "notice", "gun": gun, "gh": gh, "at": utcnow().isoformat()},
                    "claim fork notice",
                )
            except CouchConflictError:
                continue  # told already
            raise UpdateError("ErrValidation", str(notice.get("detail", "")))

    async def _state(self, gun: str, gh: str, head: _Head | None) -> RepoState:
        if head is None or not head.current:
            return RepoState(gun, {})
        files = await asyncio.gather(*(self._fetch(gun, gh, e) for e in head.current.values()))
        return RepoState(gun, {f.role: f for f in files})

    async def _fetch(self, gun: str, gh: str, entry: _Entry) -> StoredFile:
        """A file's bytes (its batch's attachment), checked against the recorded hash.

        An attachment of a named revision never changes, so those are cached: a
        GET of a current file then costs one database request (the head).
        """
        key = (_bid(gh, entry.seq), entry.rev or "", entry.att)
        data = self._files.get(key) if entry.rev else None
        if data is not None and hashlib.sha256(data).hexdigest() == entry.sha256:
            return StoredFile(
                gun, entry.role, entry.version, data, entry.sha256, entry.at, entry.at
            )
        try:
            resp = await self._db.request(
                "GET",
                self._db.doc_path(_bid(gh, entry.seq), entry.att),
                "read file",
                params={"rev": entry.rev} if entry.rev else None,
            )
        except CouchNotFoundError:
            raise _GoneError from None
        data = resp.content
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StorageError(
                f"couchdb: {gun!r} {entry.role} v{entry.version} does not match its SHA-256"
            )
        if entry.rev:
            self._files.put(key, data)
        return StoredFile(gun, entry.role, entry.version, data, entry.sha256, entry.at, entry.at)

    async def _file_rows(self, key: list[str]) -> list[tuple[str, _Entry]]:
        body = await self._db.get_json(
            f"{self._db.db_path}/_design/vouch/_view/files",
            "look up file",
            params=jparams(key=key),
        )
        out: list[tuple[str, _Entry]] = []
        for row in body.get("rows") or []:
            v = row["value"]
            entry = _Entry(
                str(v["role"]),
                int(v["v"]),
                str(v["sha256"]),
                int(v["seq"]),
                str(v["att"]),
                _time(v["at"]),
                v.get("rev"),
            )
            out.append((str(v["gun"]), entry))
        return out

    async def _pick(
        self,
        *,
        gun: str,
        gh: str,
        role: str,
        head: _Head | None,
        rows: list[tuple[str, _Entry]],
        match: Callable[[_Entry], bool],
    ) -> StoredFile | None:
        """The newest matching file of the GUN's current generation (current map first)."""
        if head is None:
            return None
        current = head.current.get(role)
        if current is not None and match(current):
            found: _Entry | None = current
        else:
            live = [e for g, e in rows if g == gun and e.role == role and e.seq > head.gen]
            found = max(live, key=lambda e: (e.version, e.seq), default=None)
        if found is None:
            return None
        try:
            return await self._fetch(gun, gh, found)
        except _GoneError:
            return None

    # -- plumbing: writes ---------------------------------------------------------------

    async def _create(self, doc_id: str, doc: dict[str, Any], what: str) -> str:
        """Create a document that must not exist yet (409 → :class:`CouchConflictError`)."""
        resp = await self._db.request("PUT", self._db.doc_path(doc_id), what, body=doc)
        return str(resp.json().get("rev", ""))

    async def _allocate(
        self,
        *,
        gun: str,
        gh: str,
        seq: int,
        version: int,
        sha256: str,
        category: str,
        at: datetime,
    ) -> int:
        """Create change record ``c:<n>`` with the next free ``n``.

        ``n`` is one more than the highest existing record, and a taken ``n``
        gives 409, so ids are dense and each new one is above every id that
        existed when it was created. The first try is one above the last id this
        process created; if another process has gone further, 409 sends us to
        one above the highest id in the database.
        """
        async with self._alloc_lock:
            # Several regions: other regions' records arrive by replication, so
            # the local cache is not the newest id; the database says which is.
            multi = self._stride > 1
            last = self._last_change
            n = self._next_id(
                max(last, await self._last_change_id()) if multi or not last else last
            )
            for _ in range(_ALLOC_ATTEMPTS):
                if n > _CHANGE_MAX:
                    break
                try:
                    await self._create(
                        _cid(n),
                        _change_doc(
                            n=n,
                            gun=gun,
                            gh=gh,
                            seq=seq,
                            version=version,
                            sha256=sha256,
                            category=category,
                            at=at,
                        ),
                        "add change record",
                    )
                except CouchConflictError:
                    n = self._next_id(max(n, await self._last_change_id()))
                    continue
                self._last_change = n
                return n
        raise StorageError("couchdb: could not allocate a change id")

    def _next_id(self, after: int) -> int:
        """The smallest change id above ``after`` in this region's stripe."""
        n = after + 1
        return n + (self._slot - (n - 1)) % self._stride

    def _own(self, n: int) -> bool:
        return (n - 1) % self._stride == self._slot

    async def _last_change_id(self) -> int:
        body = await self._db.get_json(
            f"{self._db.db_path}/_all_docs",
            "read last change",
            params=jparams(startkey=_cid(_NUM_MAX), endkey=_cid(0), descending=True, limit=1),
        )
        rows = body.get("rows") or []
        return int(rows[0]["id"][2:]) if rows else 0

    async def _void(self, n: int) -> None:
        """Mark a change record whose batch lost (best effort: readers check batches anyway)."""
        try:
            doc = await self._db.get_json(self._db.doc_path(_cid(n)), "read change record")
            doc["voided"] = True
            await self._db.request("PUT", self._db.doc_path(_cid(n)), "void change", body=doc)
        except StorageError as e:
            log.debug("could not void change record %d: %s", n, e)

    async def _sweep(self, gh: str, tomb: _Head) -> None:
        """Replace every batch below a tombstone by a stub without files, then mark it swept.

        Stubs keep ``change_id`` (old change records stay valid) and keep the id
        occupied (a stale publisher's create of an old ``seq`` gets 409).
        CouchDB drops the attachments' bytes at the next compaction.
        """
        start = 0
        while start < tomb.seq:
            body = await self._db.get_json(
                f"{self._db.db_path}/_all_docs",
                "read history",
                params=jparams(
                    startkey=_bid(gh, start),
                    endkey=_bid(gh, tomb.seq - 1),
                    limit=_PAGE,
                    include_docs=True,
                ),
            )
            rows = [r for r in body.get("rows") or [] if r.get("doc")]
            stubs = [
                {
                    "_id": d["_id"],
                    "_rev": d["_rev"],
                    "kind": "dead",
                    "gun": d.get("gun"),
                    "gh": gh,
                    "seq": d["seq"],
                    "change_id": d.get("change_id"),
                    "uid": d.get("uid"),
                }
                for d in (r["doc"] for r in rows)
                if d.get("kind") != "dead"
            ]
            if stubs:
                # Per-document results; a conflict means another sweep got there first.
                await self._db.post_json(
                    f"{self._db.db_path}/_bulk_docs", "remove files", {"docs": stubs}
                )
            if len(rows) < _PAGE:
                break
            start = int(rows[-1]["doc"]["seq"]) + 1
        swept = {k: v for k, v in tomb.doc.items() if k != "_conflicts"} | {"swept": True}
        with contextlib.suppress(CouchConflictError):  # a concurrent sweep marked it
            await self._db.request(
                "PUT", self._db.doc_path(_bid(gh, tomb.seq)), "mark swept", body=swept
            )

    # -- plumbing: changefeed -------------------------------------------------------------

    async def _changes_forward(
        self, gun: str | None, prefix: list[Any], change_id: int, limit: int, page: int
    ) -> list[Change]:
        out: list[Change] = []
        after = max(change_id, 0)
        while True:
            rows = await self._feed(prefix, [*prefix, after + 1], [*prefix, {}], page, False)
            for rec, verdict in await self._judge(rows):
                if verdict is _Verdict.PENDING:
                    return out  # nothing past it until it commits or is fenced
                if verdict is _Verdict.VALID and (gun is None or rec.gun == gun):
                    out.append(rec.change())
                    if len(out) == limit:
                        return out
            if len(rows) < page:
                return out
            after = rows[-1].n

    async def _changes_back(
        self, gun: str | None, prefix: list[Any], change_id: int, limit: int, page: int
    ) -> list[Change]:
        """The newest records below ``change_id``, and below every pending record.

        A consumer pages forward from the newest id it got; returning a record
        above a pending one would make it skip that one when it commits. Ids
        are allocated in time order, so the scan may stop once it holds enough
        records and has reached records too old to be pending.
        """
        kept: list[Change] = []  # newest first
        start: list[Any] = [*prefix, change_id - 1] if change_id > 0 else [*prefix, {}]
        settled_before = utcnow().timestamp() - 2 * self.pending_timeout
        while True:
            rows = await self._feed(prefix, start, [*prefix, 0], page, True)
            for rec, verdict in await self._judge(rows):
                if verdict is _Verdict.PENDING:
                    kept.clear()
                elif verdict is _Verdict.VALID and (gun is None or rec.gun == gun):
                    kept.append(rec.change())
                if len(kept) >= limit and rec.at.timestamp() < settled_before:
                    return kept[:limit][::-1]
            if len(rows) < page or rows[-1].n <= 1:
                return kept[:limit][::-1]
            start = [*prefix, rows[-1].n - 1]

    async def _feed(
        self, prefix: list[Any], start: list[Any], end: list[Any], page: int, descending: bool
    ) -> list[_Rec]:
        body = await self._db.get_json(
            f"{self._db.db_path}/_design/vouch/_view/feed",
            "read changefeed",
            params=jparams(startkey=start, endkey=end, limit=page, descending=descending or None),
        )
        out: list[_Rec] = []
        for row in body.get("rows") or []:
            v = row["value"]
            out.append(
                _Rec(
                    int(row["key"][-1]),
                    str(v["gun"]),
                    str(v["gh"]),
                    int(v["seq"]),
                    int(v["v"]),
                    str(v["sha256"]),
                    str(v["category"]),
                    _time(v["at"]),
                    bool(v.get("voided")),
                )
            )
        return out

    async def _judge(self, recs: list[_Rec]) -> list[tuple[_Rec, _Verdict]]:
        """Decide for each record whether its batch committed it (one bulk read)."""
        ids = {_bid(r.gh, r.seq) for r in recs if not r.voided}
        docs = await self._docs(ids)
        now = utcnow().timestamp()
        out: list[tuple[_Rec, _Verdict]] = []
        for r in recs:
            doc = docs.get(_bid(r.gh, r.seq))
            if r.voided:
                verdict = _Verdict.VOID
            elif doc is not None:
                verdict = _Verdict.VALID if doc.get("change_id") == r.n else _Verdict.VOID
            elif now - r.at.timestamp() < self.pending_timeout or not self._own(r.n):
                # Another region's record waits for its batch to replicate; that
                # region fences its own stuck records and the fence replicates.
                verdict = _Verdict.PENDING
            else:
                verdict = await self._fence(r)
            out.append((r, verdict))
        return out

    async def _fence(self, rec: _Rec) -> _Verdict:
        """Resolve a stuck record: create its batch as an unchanged copy of the previous one.

        If the fence is created, the record's publisher can no longer commit
        (its create gets 409 and it retries with a new record). If the
        publisher won after all, its batch decides.
        """
        prev = (await self._docs({_bid(rec.gh, rec.seq - 1)})).get(_bid(rec.gh, rec.seq - 1))
        current: dict[str, Any] = {}
        gen = 0 if rec.seq == 1 else rec.seq
        parent = None
        if prev is not None and prev.get("kind") in ("batch", "tombstone"):
            raw = _parse_current(prev.get("current") or {}, int(prev["seq"]), prev.get("_rev"))
            current = {role: e.json() for role, e in raw.items()}
            gen, parent = int(prev.get("gen", 0)), prev.get("uid")
        fence = {
            "kind": "batch",
            "gun": rec.gun,
            "gh": rec.gh,
            "seq": rec.seq,
            "gen": gen,
            "at": utcnow().isoformat(),
            "files": {},
            "current": current,
            "change_id": None,
            "fenced": rec.n,
            "uid": secrets.token_hex(16),
            "parent": parent,
            "region": self.region,
            "notices": (prev or {}).get("notices") or [],
        }
        try:
            await self._create(_bid(rec.gh, rec.seq), fence, "fence stuck change")
        except CouchConflictError:
            doc = (await self._docs({_bid(rec.gh, rec.seq)})).get(_bid(rec.gh, rec.seq))
            return _Verdict.VALID if doc and doc.get("change_id") == rec.n else _Verdict.VOID
        except StorageError as e:  # e.g. read-only credentials: leave it pending
            log.warning("could not fence stuck change record %d: %s", rec.n, e)
            return _Verdict.PENDING
        log.warning("fenced change record %d of %r: its publisher never committed", rec.n, rec.gun)
        await self._void(rec.n)
        return _Verdict.VOID

    async def _docs(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = sorted(set(ids))
        if not keys:
            return {}
        body = await self._db.post_json(
            f"{self._db.db_path}/_all_docs",
            "read batches",
            {"keys": keys},
            params=jparams(include_docs=True),
        )
        return {r["id"]: r["doc"] for r in body.get("rows") or [] if r.get("doc")}

    async def _design(self) -> dict[str, Any] | None:
        try:
            design: dict[str, Any] = await self._db.get_json(self._design_path(), "read views")
        except CouchNotFoundError:
            return None
        return design

    def _design_path(self) -> str:
        return f"{self._db.db_path}/{DESIGN_ID}"


async def open_couch_store(
    url: str,
    *,
    create: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CouchStore:
    """Open the CouchDB store a URL names (see :func:`.couchhttp.parse_couch_url`).

    With ``create`` the database and its views are created if missing (admin
    rights needed); without, they must exist (several instances: let one create).
    """
    store = CouchStore(parse_couch_url(url), transport=transport)
    try:
        if create:
            await store.bootstrap()
        else:
            await store.check_schema()
        if store.target.regions and store._forks.arbiter:
            store._forks.start(store.target.resolve_every)
    except BaseException:
        await store.close()
        raise
    return store


# -- documents ------------------------------------------------------------------------


def _batch_doc(
    *,
    gun: str,
    gh: str,
    seq: int,
    head: _Head | None,
    stored: list[StoredFile],
    change_id: int | None,
    region: str,
) -> dict[str, Any]:
    """The batch that commits ``stored`` on top of ``head``: files, new current map, link.

    Notices of a fork resolution addressed to other regions are carried forward
    (this region's were delivered before the callback ran).
    """
    at = stored[0].created_at
    current = {role: e.json() for role, e in (head.current if head else {}).items()}
    files: dict[str, Any] = {}
    attachments: dict[str, Any] = {}
    for i, f in enumerate(stored):
        att = f"f{i}"
        files[f.role] = {
            "v": str(f.version),
            "v19": f"{f.version:019d}",
            "rh": _hash(f.role),
            "sha256": f.sha256,
            "att": att,
        }
        attachments[att] = {"content_type": _OCTETS, "data": base64.b64encode(f.data).decode()}
        current[f.role] = _Entry(f.role, f.version, f.sha256, seq, att, at).json()
    return {
        "kind": "batch",
        "gun": gun,
        "gh": gh,
        "seq": seq,
        "gen": head.gen if head else 0,
        "at": at.isoformat(),
        "files": files,
        "current": current,
        "change_id": change_id,
        "_attachments": attachments,
        "notices": [
            n for n in (head.doc.get("notices") or [] if head else []) if n.get("region") != region
        ],
        **_lineage(head, region),
    }


def _change_doc(
    *,
    n: int,
    gun: str,
    gh: str,
    seq: int,
    version: int,
    sha256: str,
    category: str,
    at: datetime,
) -> dict[str, Any]:
    """Change record ``n``: valid once batch ``seq`` of the GUN names it (``change_id``)."""
    return {
        "kind": "change",
        "n": n,
        "gun": gun,
        "gh": gh,
        "seq": seq,
        "v": str(version),
        "sha256": sha256,
        "category": category,
        "at": at.isoformat(),
    }


def _parse_current(
    raw: dict[str, Any], seq: int | None = None, rev: str | None = None
) -> dict[str, _Entry]:
    """A batch's current map; its own files (no ``rev`` recorded yet) get its revision."""
    return {
        role: _Entry(
            role,
            int(e["v"]),
            str(e["sha256"]),
            int(e["seq"]),
            str(e["att"]),
            _time(e["at"]),
            e.get("rev") or (rev if int(e["seq"]) == seq else None),
        )
        for role, e in raw.items()
    }


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _newer_schema(design: dict[str, Any]) -> str:
    return (
        f"couchdb: the database was set up by a newer vouch (schema "
        f"{design.get('vouch_schema')}, this one knows {SCHEMA_VERSION})"
    )
