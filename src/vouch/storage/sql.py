"""The SQL store: SQLite, PostgreSQL and MariaDB/MySQL through SQLAlchemy Core (async).

Publishing serialises per GUN across processes and server instances:

* PostgreSQL and MariaDB/MySQL lock the GUN's ``repositories`` row
  (``SELECT … FOR UPDATE`` in READ COMMITTED, created by an insert-if-absent
  in its own short transaction when missing) before reading the state;
* SQLite takes the database write lock up front (``BEGIN IMMEDIATE``); SQLite
  has one writer at a time anyway, so nothing finer would help.

Inside one process an :class:`asyncio.Lock` per GUN (one for the whole
database on SQLite) queues publishers first, so waiting publishers do not each
hold a pooled connection. Reads run without a transaction (driver autocommit):
each is one indexed statement, so there is nothing to keep consistent, and it
saves BEGIN/COMMIT round trips. Schema and migrations: :mod:`.migrations`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from vouch.storage import migrations
from vouch.storage.base import (
    Change,
    ChecksumKey,
    CurrentKey,
    FileRef,
    MetadataStore,
    RepoState,
    StorageError,
    StoredFile,
    UpdateFn,
    VersionConflictError,
    VersionKey,
)
from vouch.storage.memory import (
    MAX_NAME,
    KeyedLocks,
    MemoryStore,
    change_for,
    check_name,
    is_sha256_hex,
    prepare_batch,
    utcnow,
)
from vouch.storage.urls import DatabaseTarget, translate

T = TypeVar("T")
_AnyRow = sa.Row[*tuple[Any, ...]]

#: SQLite busy timeout: how long a writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Attempts of a publish that hit a deadlock or serialisation failure (the
#: callback runs again each time, which the interface allows).
_ATTEMPTS = 4
#: Attempts to lock a GUN row that a concurrent delete keeps removing.
_LOCK_ATTEMPTS = 10
_PG_TRANSIENT = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock n/a
_MYSQL_TRANSIENT = frozenset({1205, 1213})  # lock wait timeout, deadlock
# Session settings for MySQL: strict mode so nothing is ever silently truncated.
_MYSQL_INIT = (
    "SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'"
)
_IMMEDIATE = "vouch_begin_immediate"  # execution option read by the SQLite begin hook

# The tables as queries see them; the DDL (collations, indexes) is in migrations.
_md = sa.MetaData()
repositories = sa.Table(
    "repositories", _md, sa.Column("gun", sa.String), sa.Column("created_at", sa.DateTime)
)
tuf_files = sa.Table(
    "tuf_files",
    _md,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("created_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime),
    sa.Column("gun", sa.String),
    sa.Column("role", sa.String),
    sa.Column("version", sa.BigInteger),
    sa.Column("data", sa.LargeBinary),
    sa.Column("sha256", sa.String),
)
tuf_current = sa.Table(
    "tuf_current",
    _md,
    sa.Column("gun", sa.String),
    sa.Column("role", sa.String),
    sa.Column("version", sa.BigInteger),
)
changefeed = sa.Table(
    "changefeed",
    _md,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("created_at", sa.DateTime),
    sa.Column("gun", sa.String),
    sa.Column("version", sa.BigInteger),
    sa.Column("sha256", sa.String),
    sa.Column("category", sa.String),
)

_f, _c = tuf_files.c, tuf_current.c
_FILE_COLS = (_f.role, _f.version, _f.data, _f.sha256, _f.created_at, _f.updated_at)
_GUN: sa.BindParameter[str] = sa.bindparam("gun")
_ROLE: sa.BindParameter[str] = sa.bindparam("role")
_CURRENT_JOIN = tuf_current.join(
    tuf_files, (_f.gun == _c.gun) & (_f.role == _c.role) & (_f.version == _c.version)
)
_Q_STATE = sa.select(*_FILE_COLS).select_from(_CURRENT_JOIN).where(_c.gun == _GUN)
# One look-up of the full unique key (gun, role, version), whatever the planner's
# statistics say: a join let PostgreSQL scan every version of the role when the
# statistics were stale.
_Q_CURRENT = sa.select(*_FILE_COLS).where(
    _f.gun == _GUN,
    _f.role == _ROLE,
    _f.version == sa.select(_c.version).where(_c.gun == _GUN, _c.role == _ROLE).scalar_subquery(),
)
_Q_VERSION = sa.select(*_FILE_COLS).where(
    _f.gun == _GUN, _f.role == _ROLE, _f.version == sa.bindparam("version")
)
_Q_CHECKSUM = (
    sa.select(*_FILE_COLS)
    .where(_f.gun == _GUN, _f.role == _ROLE, _f.sha256 == sa.bindparam("sha256"))
    .order_by(_f.version.desc())
    .limit(1)
)
# Batched index look-ups (no ``data``) for the server's read path (FileIndex).
_REF_COLS = (_f.gun, _f.role, _f.version, _f.sha256, _f.created_at, _f.updated_at)
_KEYS: sa.BindParameter[Any] = sa.bindparam("keys", expanding=True)
_Q_DESCRIBE_CURRENT = (
    sa.select(*_REF_COLS).select_from(_CURRENT_JOIN).where(sa.tuple_(_c.gun, _c.role).in_(_KEYS))
)
_Q_DESCRIBE_VERSIONS = sa.select(*_REF_COLS).where(
    sa.tuple_(_f.gun, _f.role, _f.version).in_(_KEYS)
)
_Q_DESCRIBE_CHECKSUMS = sa.select(*_REF_COLS).where(
    sa.tuple_(_f.gun, _f.role, _f.sha256).in_(_KEYS)
)
_Q_LOCK = sa.select(repositories.c.gun).where(repositories.c.gun == _GUN).with_for_update()


class _TransientError(StorageError):
    """A deadlock or serialisation failure: the whole transaction may be retried."""


class SQLStore:
    """A :class:`MetadataStore` in an SQL database (see the module docstring)."""

    def __init__(
        self,
        target: DatabaseTarget,
        *,
        pool_size: int = 20,
        max_overflow: int = 20,
        pre_ping: bool = True,
    ) -> None:
        self._target = target
        self._dialect = target.dialect
        self._engine = _make_engine(target, pool_size, max_overflow, pre_ping)
        self._gun_locks = KeyedLocks()
        self._db_lock = asyncio.Lock()  # SQLite: one writer per process at a time
        self._writer_lock_fd: int | None = None  # SQLite: writers of all processes, in turn
        self._ensure_repo = _insert_if_absent(target.dialect)

    @property
    def engine(self) -> AsyncEngine:
        """The pool, for components that keep their own tables in the same database."""
        return self._engine

    # -- reads ----------------------------------------------------------------

    async def get_current(self, gun: str, role: str) -> StoredFile | None:
        row = await self._read_one(_Q_CURRENT, {"gun": gun, "role": role})
        return None if row is None else _file(gun, row)

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile | None:
        if not 0 <= version < 2**63:
            return None
        row = await self._read_one(_Q_VERSION, {"gun": gun, "role": role, "version": version})
        return None if row is None else _file(gun, row)

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None:
        if not is_sha256_hex(sha256):
            return None
        row = await self._read_one(_Q_CHECKSUM, {"gun": gun, "role": role, "sha256": sha256})
        return None if row is None else _file(gun, row)

    # -- batched index look-ups (FileIndex) -------------------------------------

    async def describe_current(self, keys: Sequence[CurrentKey]) -> dict[CurrentKey, FileRef]:
        rows = await self._read_all(_Q_DESCRIBE_CURRENT, list(dict.fromkeys(keys)))
        return {(r.gun, r.role): _ref(r) for r in rows}

    async def describe_versions(self, keys: Sequence[VersionKey]) -> dict[VersionKey, FileRef]:
        wanted = [k for k in dict.fromkeys(keys) if 0 <= k[2] < 2**63]
        rows = await self._read_all(_Q_DESCRIBE_VERSIONS, wanted)
        return {(r.gun, r.role, r.version): _ref(r) for r in rows}

    async def describe_checksums(self, keys: Sequence[ChecksumKey]) -> dict[ChecksumKey, FileRef]:
        wanted = [k for k in dict.fromkeys(keys) if is_sha256_hex(k[2])]
        rows = await self._read_all(_Q_DESCRIBE_CHECKSUMS, wanted)
        out: dict[ChecksumKey, FileRef] = {}
        for r in rows:  # the same bytes under two versions cannot happen; keep the newest
            key = (r.gun, r.role, r.sha256)
            if key not in out or out[key].version < r.version:
                out[key] = _ref(r)
        return out

    async def _read_all(self, stmt: sa.Select[Any], keys: list[Any]) -> Sequence[_AnyRow]:
        if not keys:
            return []
        async with self._errors(), self._engine.connect() as conn:
            rows: Sequence[_AnyRow] = (await conn.execute(stmt, {"keys": keys})).all()
        return rows

    async def get_state(self, gun: str) -> RepoState:
        async with self._errors(), self._engine.connect() as conn:
            rows = (await conn.execute(_Q_STATE, {"gun": gun})).all()
        return RepoState(gun, {r.role: _file(gun, r) for r in rows})

    async def changes(self, gun: str | None, change_id: int, records: int) -> list[Change]:
        reverse = change_id < 0 or records < 0
        if records == 0:
            return []
        change_id = min(change_id, 2**63 - 1)  # past any id; keeps the bind in BIGINT range
        cf = changefeed.c
        q = sa.select(cf.id, cf.created_at, cf.gun, cf.version, cf.sha256, cf.category)
        if gun is not None:
            q = q.where(cf.gun == gun)
        if reverse:
            if change_id > 0:
                q = q.where(cf.id < change_id)
            q = q.order_by(cf.id.desc())
        else:
            q = q.where(cf.id > change_id).order_by(cf.id)
        async with self._errors(), self._engine.connect() as conn:
            rows = (await conn.execute(q.limit(abs(records)))).all()
        out = [
            Change(r.id, _aware(r.created_at), r.gun, r.version, r.sha256.rstrip(), r.category)
            for r in rows
        ]
        return out[::-1] if reverse else out

    async def check_health(self) -> None:
        async with self._errors(), self._engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # -- writes ---------------------------------------------------------------

    async def update(self, gun: str, fn: UpdateFn) -> list[StoredFile]:
        check_name("GUN", gun)
        return await self._retrying(lambda: self._update_once(gun, fn))

    async def delete(self, gun: str) -> bool:
        if not gun or len(gun) > MAX_NAME:
            return False
        return await self._retrying(lambda: self._delete_once(gun))

    async def _update_once(self, gun: str, fn: UpdateFn) -> list[StoredFile]:
        async with self._write_tx(gun) as conn:
            async with self._errors():
                rows = (await conn.execute(_Q_STATE, {"gun": gun})).all()
            state = RepoState(gun, {r.role: _file(gun, r) for r in rows})
            stored = prepare_batch(gun, state, await fn(state), utcnow())
            async with self._errors(versions=True):
                await _store(conn, gun, state, stored)
                await conn.commit()
            return stored

    async def _delete_once(self, gun: str) -> bool:
        async with self._write_tx(gun) as conn, self._errors():
            where = {"gun": gun}
            await conn.execute(sa.delete(tuf_current).where(_c.gun == _GUN), where)
            removed = await conn.execute(sa.delete(tuf_files).where(_f.gun == _GUN), where)
            await conn.execute(sa.delete(repositories).where(repositories.c.gun == _GUN), where)
            if removed.rowcount:
                await _add_change(
                    conn, gun, version=0, sha256="", category="deletion", now=_naive(utcnow())
                )
            await conn.commit()
            return bool(removed.rowcount)

    @asynccontextmanager
    async def _write_tx(self, gun: str) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that holds the GUN's write lock; the caller commits.

        Leaving the block without commit (the callback raised, a version was
        refused) closes the connection, which rolls everything back.
        """
        sqlite = self._dialect == "sqlite"
        local = self._db_lock if sqlite else self._gun_locks.hold(gun)
        async with local, self._writer_turn(), self._engine.connect() as conn:
            async with self._errors():
                if sqlite:
                    await conn.execution_options(**{_IMMEDIATE: True})
                    await conn.begin()
                    await conn.execute(self._ensure_repo, _repo_row(gun))
                else:
                    await conn.execution_options(isolation_level="READ COMMITTED")
                    await self._lock_row(conn, gun)
            yield conn

    @asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        """SQLite file databases: wait for other processes' writers on a file lock.

        ``BEGIN IMMEDIATE`` alone makes a second process poll with SQLite's busy
        handler, which sleeps longer and longer between tries (one writer process
        can keep the others waiting for seconds under load). The kernel wakes a
        process waiting on ``flock`` the moment the lock is free. Other backends,
        and SQLite in memory, need nothing here.
        """
        fd = self._lock_fd()
        if fd is None:
            yield
            return
        acquiring = asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The thread still gets the lock later: give it back then.
            acquiring.add_done_callback(partial(_release_if_taken, fd))
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_fd(self) -> int | None:
        if self._dialect != "sqlite":
            return None
        if self._writer_lock_fd is None:
            database = self._target.url.database
            if not database or database == ":memory:" or database.startswith("file:"):
                return None
            path = f"{database}-vouch-writer.lock"
            self._writer_lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._writer_lock_fd

    async def _lock_row(self, conn: AsyncConnection, gun: str) -> None:
        """Begin a transaction holding the GUN row's lock, creating the row if missing.

        The row is created in its own committed transaction, so a publisher that
        fails never leaves other waiters queued on a rolled-back insert (a
        deadlock pattern of InnoDB); a delete that removes the row while we wait
        makes the locking read come back empty, and we try again.
        """
        for _ in range(_LOCK_ATTEMPTS):
            await conn.begin()
            if (await conn.execute(_Q_LOCK, {"gun": gun})).first() is not None:
                return
            await conn.rollback()
            await conn.execute(self._ensure_repo, _repo_row(gun))
            await conn.commit()
        raise StorageError(f"could not lock GUN {gun!r}: it keeps being deleted")

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        for n in range(_ATTEMPTS):
            try:
                return await attempt()
            except _TransientError:
                if n == _ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.005, 0.05) * (n + 1))  # noqa: S311
        raise AssertionError("unreachable")

    # -- plumbing -------------------------------------------------------------

    async def _read_one(self, stmt: sa.Select[Any], params: Mapping[str, Any]) -> _AnyRow | None:
        async with self._errors(), self._engine.connect() as conn:
            row: _AnyRow | None = (await conn.execute(stmt, params)).first()
        return row

    def _errors(self, *, versions: bool = False) -> AbstractAsyncContextManager[None]:
        return _translate_errors(self._dialect, versions=versions)

    async def migrate(self) -> str:
        """Bring the schema to the newest revision; returns it."""
        async with self._errors(), self._engine.connect() as conn:
            await self._begin_ddl(conn)
            await conn.run_sync(migrations.upgrade)
            await conn.commit()
        return migrations.head()

    async def check_schema(self) -> None:
        """Raise :class:`StorageError` unless the schema is at this vouch's revision."""
        async with self._errors(), self._engine.connect() as conn:
            rev = await conn.run_sync(migrations.current)
        if rev != migrations.head():
            raise StorageError(
                f"database schema is at revision {rev}, this vouch needs "
                f"{migrations.head()}: run the database upgrade (migrate) first"
            )

    async def _begin_ddl(self, conn: AsyncConnection) -> None:
        if self._dialect == "sqlite":
            await conn.execution_options(**{_IMMEDIATE: True})
        else:
            await conn.execution_options(isolation_level="READ COMMITTED")
        await conn.begin()

    async def close(self) -> None:
        await self._engine.dispose()
        if self._writer_lock_fd is not None:
            os.close(self._writer_lock_fd)
            self._writer_lock_fd = None


async def open_store(url: str, *, create: bool = True) -> MetadataStore:
    """Open the store a storage URL names, migrating the schema if ``create``.

    Accepts ``memory``, SQLAlchemy URLs (``sqlite:///path``,
    ``postgresql+asyncpg://…``, ``mysql+aiomysql://…``, or without the driver)
    and notary-server's ``storage.db_url`` forms (``postgres://…?sslmode=…``,
    ``user:pass@tcp(host:3306)/db?parseTime=true``). With ``create=False`` the
    schema must already be current (several instances: let one migrate).
    """
    if url.strip() == "memory":
        return MemoryStore()
    from vouch.storage.couchdb import is_couch_url, open_couch_store  # noqa: PLC0415  (httpx)

    if is_couch_url(url):
        return await open_couch_store(url, create=create)
    target = translate(url)
    if create:
        _make_sqlite_dir(target)
    store = SQLStore(target)
    try:
        if create:
            await store.migrate()
        else:
            await store.check_schema()
    except BaseException:
        await store.close()
        raise
    return store


def migrate(url: str) -> str:
    """Migrate the database a storage URL names to the newest schema (blocking; for the CLI)."""

    async def run() -> str:
        target = translate(url)
        _make_sqlite_dir(target)
        store = SQLStore(target, pool_size=1, max_overflow=0)
        try:
            return await store.migrate()
        finally:
            await store.close()

    return asyncio.run(run())


# -- helpers ------------------------------------------------------------------


def _make_sqlite_dir(target: DatabaseTarget) -> None:
    if target.dialect == "sqlite" and target.url.database:
        Path(target.url.database).parent.mkdir(parents=True, exist_ok=True)


async def _store(
    conn: AsyncConnection, gun: str, state: RepoState, stored: Sequence[StoredFile]
) -> None:
    """Insert a checked batch and make each file current for its role."""
    if not stored:
        return
    now = _naive(stored[0].created_at)
    await conn.execute(
        sa.insert(tuf_files),
        [
            {
                "gun": gun,
                "role": f.role,
                "version": f.version,
                "data": f.data,
                "sha256": f.sha256,
                "created_at": now,
                "updated_at": now,
            }
            for f in stored
        ],
    )
    replaced = [f.role for f in stored if f.role in state.current]
    if replaced:
        await conn.execute(sa.delete(tuf_current).where(_c.gun == gun, _c.role.in_(replaced)))
    await conn.execute(
        sa.insert(tuf_current),
        [{"gun": gun, "role": f.role, "version": f.version} for f in stored],
    )
    change = change_for(stored)
    if change is not None:
        version, sha256 = change
        await _add_change(conn, gun, version=version, sha256=sha256, category="update", now=now)


async def _add_change(
    conn: AsyncConnection, gun: str, *, version: int, sha256: str, category: str, now: datetime
) -> None:
    await conn.execute(
        sa.insert(changefeed).values(
            gun=gun, version=version, sha256=sha256, category=category, created_at=now
        )
    )


def _release_if_taken(fd: int, acquiring: asyncio.Future[None]) -> None:
    if not acquiring.cancelled() and acquiring.exception() is None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _ref(row: _AnyRow) -> FileRef:
    return FileRef(
        row.gun,
        row.role,
        row.version,
        row.sha256,
        _aware(row.created_at),
        _aware(row.updated_at),
    )


def _file(gun: str, row: _AnyRow) -> StoredFile:
    return StoredFile(
        gun,
        row.role,
        row.version,
        bytes(row.data),
        row.sha256,
        _aware(row.created_at),
        _aware(row.updated_at),
    )


def _aware(dt: datetime) -> datetime:
    """Columns hold naive UTC (portable across the three dialects); hand out aware UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def _repo_row(gun: str) -> dict[str, Any]:
    return {"gun": gun, "created_at": _naive(utcnow())}


def _insert_if_absent(dialect: str) -> sa.Insert:
    if dialect == "postgresql":
        return pg_dialect.insert(repositories).on_conflict_do_nothing(index_elements=["gun"])
    if dialect == "mysql":
        ins = mysql_dialect.insert(repositories)
        return ins.on_duplicate_key_update(gun=ins.inserted.gun)
    return sqlite_dialect.insert(repositories).on_conflict_do_nothing(index_elements=["gun"])


@asynccontextmanager
async def _translate_errors(dialect: str, *, versions: bool) -> AsyncIterator[None]:
    """Map driver errors to :class:`StorageError` (retryable ones to a private subclass).

    Only database errors are translated: whatever the update callback raises
    reaches the caller unchanged.
    """
    try:
        yield
    except exc.IntegrityError as e:
        if versions:  # the unique (gun, role, version) key: someone stored it first
            raise VersionConflictError("this version of the role is already stored") from e
        raise StorageError(f"{dialect}: integrity error: {_reason(e)}") from e
    except exc.DBAPIError as e:
        if _transient(e):
            raise _TransientError(f"{dialect}: {_reason(e)}") from e
        raise StorageError(f"{dialect}: {_reason(e)}") from e
    except (exc.SQLAlchemyError, OSError) as e:
        raise StorageError(f"{dialect}: {type(e).__name__}: {e}") from e


def _transient(e: exc.DBAPIError) -> bool:
    orig = e.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_TRANSIENT:
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _MYSQL_TRANSIENT


def _reason(e: exc.DBAPIError) -> str:
    return f"{type(e.orig).__name__}: {str(e.orig).splitlines()[0] if str(e.orig) else ''}"


def _make_engine(
    target: DatabaseTarget, pool_size: int, max_overflow: int, pre_ping: bool
) -> AsyncEngine:
    connect_args = dict(target.connect_args)
    if target.dialect == "sqlite":
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        engine = create_async_engine(
            target.url,
            connect_args=connect_args,
            pool_size=min(pool_size, 5),
            max_overflow=max_overflow,
            pool_pre_ping=False,  # a local file has no connection to go stale
        )
        _install_sqlite_hooks(engine)
        return engine
    if target.dialect == "mysql":
        connect_args.setdefault("init_command", _MYSQL_INIT)
    engine = create_async_engine(
        target.url,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,  # below MySQL's wait_timeout and typical proxy idle limits
        pool_timeout=30,
        isolation_level="AUTOCOMMIT",  # reads; writers switch to READ COMMITTED
    )
    if target.require_tls:
        sa.event.listen(engine.sync_engine, "connect", _require_mysql_tls)
    return engine


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    """Take transaction control from sqlite3 so writers can ``BEGIN IMMEDIATE``.

    sqlite3's own BEGIN is deferred, so two writers could both read and then
    fail to upgrade their locks; with SQLAlchemy's recipe we emit BEGIN
    ourselves, IMMEDIATE for writers, and none at all for single-statement reads.
    """

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    def on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get(_IMMEDIATE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    sa.event.listen(engine.sync_engine, "connect", on_connect)
    sa.event.listen(engine.sync_engine, "begin", on_begin)


def _require_mysql_tls(dbapi_conn: Any, _record: Any) -> None:
    """Refuse a plaintext MySQL connection when TLS was asked for (aiomysql would allow it)."""
    cur = dbapi_conn.cursor()
    cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    row = cur.fetchone()
    cur.close()
    if not row or not row[1]:
        raise StorageError("TLS was required but the MySQL server did not negotiate it")
