"""One storage test suite, run against every backend: memory, SQLite, PostgreSQL, MariaDB,
CouchDB.

PostgreSQL and MariaDB are the machine's real servers, CouchDB is PouchDB Server
(CouchDB's HTTP API; tests/couchdb_harness.py) on 127.0.0.1:5984 (.ci/run starts
them all). Each pytest worker creates its own uniquely named database on each SQL
server and drops it at the end; every test starts from empty tables. On CouchDB
every test gets a new database of its own. A server that cannot be reached FAILS
its tests: a skipped storage suite would look like a green one.

The concurrency tests are the point of this file: publishers on several store
instances (separate engines and pools, and separate OS processes) must produce a
history without gaps or forks, with every accepted update stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import multiprocessing
import os
import random
import secrets
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import couchdb_harness
from vouch.storage import (
    MetadataStore,
    NewFile,
    RepoState,
    StorageError,
    VersionConflictError,
)
from vouch.storage.memory import MemoryStore
from vouch.storage.sql import SQLStore, migrate, open_store
from vouch.storage.urls import go_duration, mysql_ssl, pg_ssl, translate

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
BACKENDS = ["memory", "sqlite", "postgresql", "mariadb", "couchdb"]
SQL_BACKENDS = ["sqlite", "postgresql", "mariadb"]
#: Backends several processes can share.
SHARED_BACKENDS = [*SQL_BACKENDS, "couchdb"]
TABLES = ("tuf_current", "tuf_files", "changefeed", "repositories")
ROLES = ("targets", "snapshot", "timestamp")

Body = Callable[[MetadataStore], Awaitable[None]]


# -- databases ------------------------------------------------------------------------


def _db_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"vouch_test_{worker}_{secrets.token_hex(4)}"


async def _pg_exec(*sql: str, database: str = "postgres") -> None:
    conn = await asyncpg.connect(database=database, timeout=10, **PG)
    try:
        for stmt in sql:
            await conn.execute(stmt)
    finally:
        await conn.close()


def _my_exec(*sql: str, database: str | None = None) -> None:
    conn = pymysql.connect(database=database, connect_timeout=10, **MY)
    try:
        with conn.cursor() as cur:
            for stmt in sql:
                cur.execute(stmt)
        conn.commit()
    finally:
        conn.close()


def _pg_url(name: str) -> str:
    return f"postgres://postgres@{PG['host']}:{PG['port']}/{name}?sslmode=disable"


def _my_url(name: str) -> str:
    return f"root@tcp({MY['host']}:{MY['port']})/{name}?parseTime=true"


def _unreachable(server: str, e: BaseException) -> None:
    pytest.fail(
        f"{server} is not reachable ({type(e).__name__}: {e}). The storage tests need it "
        "running on 127.0.0.1 (.ci/run starts it); they fail rather than skip.",
        pytrace=False,
    )


def _pg_create(name: str) -> None:
    try:
        asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as e:
        _unreachable("PostgreSQL", e)


def _pg_drop(name: str) -> None:
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _my_create(name: str) -> None:
    try:
        _my_exec(f"CREATE DATABASE `{name}`")
    except pymysql.MySQLError as e:
        _unreachable("MariaDB", e)


def _my_drop(name: str) -> None:
    _my_exec(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = _db_name()
    _pg_create(name)
    try:
        migrate(_pg_url(name))
        yield name
    finally:
        _pg_drop(name)


@pytest.fixture(scope="session")
def my_database() -> Iterator[str]:
    name = _db_name()
    _my_create(name)
    try:
        migrate(_my_url(name))
        yield name
    finally:
        _my_drop(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL whose database is empty (schema in place for the SQL servers)."""
    return _fresh_url(request, tmp_path, request.param)


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _fresh_url(request, tmp_path, request.param)


@pytest.fixture(params=SHARED_BACKENDS)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _fresh_url(request, tmp_path, request.param)


def _couch_url(request: pytest.FixtureRequest) -> str:
    """A new database on the CouchDB-protocol server, dropped after the test."""
    couchdb_harness.require_couch()
    name = couchdb_harness.new_db_name()
    request.addfinalizer(lambda: couchdb_harness.drop_db(name))
    return couchdb_harness.store_url(name)


def _fresh_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> str:
    if backend == "memory":
        return "memory"
    if backend == "couchdb":
        return _couch_url(request)
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/vouch.db"
    wipe = [f"DELETE FROM {t}" for t in TABLES]
    if backend == "postgresql":
        name = request.getfixturevalue("pg_database")
        asyncio.run(_pg_exec(*wipe, database=name))
        return _pg_url(name)
    name = request.getfixturevalue("my_database")
    _my_exec(*wipe, database=name)
    return _my_url(name)


@pytest.fixture
def run(db_url: str) -> Callable[[Body], None]:
    """Run an async test body against a freshly opened store of the backend."""

    def runner(body: Body) -> None:
        async def main() -> None:
            store = await open_store(db_url)
            try:
                await body(store)
            finally:
                await store.close()

        asyncio.run(main())

    return runner


async def _open_many(url: str, n: int) -> list[MetadataStore]:
    """n store instances on one database (one shared instance for memory)."""
    if url == "memory":
        return [MemoryStore()] * n
    return [await open_store(url) for _ in range(n)]


# -- helpers --------------------------------------------------------------------------


def _files(version: int, tag: str = "", roles: tuple[str, ...] = ROLES) -> list[NewFile]:
    return [NewFile(r, version, f"{r}:{version}:{tag}".encode()) for r in roles]


def _fixed(files: list[NewFile]) -> Callable[[RepoState], Awaitable[list[NewFile]]]:
    async def fn(_state: RepoState) -> list[NewFile]:
        return files

    return fn


def _bump(tag: str = "") -> Callable[[RepoState], Awaitable[list[NewFile]]]:
    """Read the current timestamp version inside the lock and publish version + 1 of all roles."""

    async def fn(state: RepoState) -> list[NewFile]:
        ts = state.current.get("timestamp")
        await asyncio.sleep(0)  # let other publishers run while "signing"
        return _files((ts.version if ts else 0) + 1, tag)

    return fn


async def _publish(store: MetadataStore, gun: str, version: int, tag: str = "") -> None:
    await store.update(gun, _fixed(_files(version, tag)))


async def _assert_history(store: MetadataStore, gun: str, final: int) -> None:
    """Versions 1..final of every role exist exactly once, nothing above, changefeed matches."""
    for role in ROLES:
        current = await store.get_current(gun, role)
        assert current is not None
        assert current.version == final
        for v in range(1, final + 1):
            assert await store.get_version(gun, role, v) is not None, (role, v)
        assert await store.get_version(gun, role, final + 1) is None
    changes = await store.changes(gun, 0, 10_000)
    assert [c.version for c in changes] == list(range(1, final + 1))
    for c in changes:
        ts = await store.get_version(gun, "timestamp", c.version)
        assert ts is not None
        assert c.sha256 == ts.sha256
        assert c.category == "update"


# -- basic gets -----------------------------------------------------------------------


def test_empty_store(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        assert await s.get_current("a/b", "root") is None
        assert await s.get_version("a/b", "root", 1) is None
        assert await s.get_checksum("a/b", "root", "0" * 64) is None
        assert (await s.get_state("a/b")).current == {}
        assert await s.changes(None, 0, 100) == []
        assert await s.changes(None, -1, 100) == []
        assert await s.delete("a/b") is False
        await s.check_health()

    run(body)


def test_current_version_and_checksum_gets(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        stored = await s.update("ex/app", _fixed([*_files(1), NewFile("root", 1, b"root1")]))
        assert [f.role for f in stored] == [*ROLES, "root"]
        await s.update("ex/app", _fixed([NewFile("targets", 2, b"targets2")]))

        cur = await s.get_current("ex/app", "targets")
        assert cur is not None
        assert (cur.version, cur.data, cur.gun, cur.role) == (2, b"targets2", "ex/app", "targets")
        assert cur.sha256 == hashlib.sha256(b"targets2").hexdigest()

        old = await s.get_version("ex/app", "targets", 1)
        assert old is not None
        assert old.data == b"targets:1:"
        assert await s.get_version("ex/app", "targets", 3) is None
        assert await s.get_version("ex/app", "targets", 0) is None
        assert await s.get_version("ex/app", "other", 1) is None

        by_hash = await s.get_checksum("ex/app", "targets", old.sha256)
        assert by_hash == old
        assert await s.get_checksum("ex/app", "targets", old.sha256.upper()) is None
        assert await s.get_checksum("ex/app", "snapshot", old.sha256) is None  # role matters
        assert await s.get_checksum("ex/other", "targets", old.sha256) is None

        state = await s.get_state("ex/app")
        assert state.gun == "ex/app"
        assert {r: f.version for r, f in state.current.items()} == {
            "root": 1,
            "targets": 2,
            "snapshot": 1,
            "timestamp": 1,
        }
        assert state.current["targets"] == cur

    run(body)


def test_delegation_roles_and_unicode_names(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        for gun in ("ex/ünï", "ex/uni", "ex/UNI", "ex/uni "):
            await s.update(gun, _fixed([NewFile("targets/rel", 1, gun.encode())]))
        for gun in ("ex/ünï", "ex/uni", "ex/UNI", "ex/uni "):
            got = await s.get_current(gun, "targets/rel")
            assert got is not None
            assert got.data == gun.encode()
        assert await s.get_current("ex/uni", "targets/REL") is None

    run(body)


def test_name_limits(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        long_gun, long_role = "g" * 255, "targets/" + "r" * 247
        await s.update(long_gun, _fixed([NewFile(long_role, 1, b"x")]))
        assert await s.get_current(long_gun, long_role) is not None
        with pytest.raises(StorageError):
            await s.update("g" * 256, _fixed([NewFile("targets", 1, b"x")]))
        with pytest.raises(StorageError):
            await s.update("ok", _fixed([NewFile("t" * 256, 1, b"x")]))
        assert await s.get_current("g" * 256, "targets") is None
        assert await s.get_current("ok", "t" * 256) is None

    run(body)


# -- the version rule and atomicity -----------------------------------------------------


def test_version_rule(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        await _publish(s, "g", 2)
        for files in (
            [NewFile("targets", 2, b"again")],  # re-upload of the same version
            [NewFile("targets", 1, b"older")],  # older than stored
            [NewFile("targets", 3, b"a"), NewFile("targets", 4, b"b")],  # one role twice
            [NewFile("snapshot", 0, b"zero")],
            [NewFile("snapshot", -5, b"negative")],
            [NewFile("snapshot", 2**63, b"too big")],
        ):
            with pytest.raises(VersionConflictError):
                await s.update("g", _fixed(files))
        # Versions may skip numbers; new roles start anywhere.
        await s.update("g", _fixed([NewFile("targets", 7, b"seven"), NewFile("root", 3, b"r")]))
        cur = await s.get_current("g", "targets")
        assert cur is not None
        assert cur.version == 7
        with pytest.raises(VersionConflictError):
            await s.update("g", _fixed([NewFile("targets", 5, b"between")]))
        assert [c.version for c in await s.changes("g", 0, 100)] == [2]

    run(body)


def test_callback_error_stores_nothing(run: Callable[[Body], None]) -> None:
    class SigningFailedError(Exception):
        pass

    async def body(s: MetadataStore) -> None:
        await _publish(s, "g", 1)

        async def boom(_state: RepoState) -> list[NewFile]:
            raise SigningFailedError

        with pytest.raises(SigningFailedError):  # the callback's own error, untranslated
            await s.update("g", boom)
        with pytest.raises(SigningFailedError):
            await s.update("new/gun", boom)
        await _assert_history(s, "g", 1)
        assert (await s.get_state("new/gun")).current == {}
        # The lock was released: the next publish goes through.
        await s.update("g", _bump())
        await _assert_history(s, "g", 2)

    run(body)


def test_one_bad_file_stores_nothing(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        await _publish(s, "g", 3)
        batch = [
            NewFile("targets", 4, b"t4"),
            NewFile("root", 1, b"r"),
            NewFile("snapshot", 3, b""),
        ]
        with pytest.raises(VersionConflictError):
            await s.update("g", _fixed([*batch, NewFile("timestamp", 4, b"ts4")]))
        assert await s.get_version("g", "targets", 4) is None
        assert await s.get_current("g", "root") is None
        assert await s.get_version("g", "timestamp", 4) is None
        assert [c.version for c in await s.changes(None, 0, 100)] == [3]

    run(body)


def test_empty_update_and_no_timestamp_no_change(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        assert await s.update("g", _fixed([])) == []
        await s.update("g", _fixed([NewFile("targets", 1, b"t"), NewFile("root", 1, b"r")]))
        assert await s.changes(None, 0, 100) == []

    run(body)


def test_sixty_four_bit_versions(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        await _publish(s, "g", 2**31)  # past notary's 32-bit column
        await _publish(s, "g", 2**62)
        cur = await s.get_current("g", "timestamp")
        assert cur is not None
        assert cur.version == 2**62
        assert (await s.changes("g", 0, 10))[-1].version == 2**62
        await s.update("g", _fixed([NewFile("targets", 2**63 - 1, b"max")]))
        top = await s.get_version("g", "targets", 2**63 - 1)
        assert top is not None
        assert top.data == b"max"
        with pytest.raises(VersionConflictError):
            await s.update("g", _fixed([NewFile("targets", 2**63 - 1, b"max")]))
        assert await s.get_version("g", "targets", 2**64) is None

    run(body)


def test_last_modified_fields(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        first = await s.update("g", _fixed(_files(1)))
        await asyncio.sleep(0.01)
        second = await s.update("g", _fixed(_files(2, roles=("targets",))))
        after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        v1 = await s.get_version("g", "targets", 1)
        cur = await s.get_current("g", "targets")
        ts = await s.get_current("g", "timestamp")
        assert v1 is not None
        assert cur is not None
        assert ts is not None
        for f in (v1, cur, ts):
            assert f.created_at.tzinfo is not None
            assert f.created_at.utcoffset() == dt.timedelta(0)
            assert before <= f.created_at <= after
            assert f.updated_at >= f.created_at
        assert v1.created_at == first[0].created_at  # what update returned is what is stored
        assert cur.updated_at == second[0].updated_at
        assert cur.created_at > v1.created_at
        assert ts.created_at == v1.created_at
        change = (await s.changes("g", 0, 1))[0]
        assert before <= change.created_at <= after
        assert change.created_at.utcoffset() == dt.timedelta(0)

    run(body)


# -- delete -----------------------------------------------------------------------------


def test_delete_removes_exactly_one_gun(run: Callable[[Body], None]) -> None:
    guns = ["a/b", "a/bc", "a/b/c", "a/B", "a/b ", "a"]

    async def body(s: MetadataStore) -> None:
        for gun in guns:
            await _publish(s, gun, 1, gun)
        assert await s.delete("a/b") is True
        assert (await s.get_state("a/b")).current == {}
        assert await s.get_current("a/b", "targets") is None
        assert await s.get_version("a/b", "targets", 1) is None
        for gun in guns[1:]:
            f = await s.get_current(gun, "targets")
            assert f is not None
            assert f.data == f"targets:1:{gun}".encode()
        last = (await s.changes(None, -1, 1))[0]
        assert (last.gun, last.version, last.sha256, last.category) == ("a/b", 0, "", "deletion")
        # Nothing left to delete: no second record.
        assert await s.delete("a/b") is False
        assert await s.delete("never/existed") is False
        assert (await s.changes(None, -1, 1))[0].id == last.id
        # The GUN can be published afresh, from version 1.
        await _publish(s, "a/b", 1, "again")
        await _assert_history(s, "a/bc", 1)
        again = await s.get_current("a/b", "snapshot")
        assert again is not None
        assert again.data == b"snapshot:1:again"

    run(body)


# -- changefeed -------------------------------------------------------------------------


def test_changefeed_paging(run: Callable[[Body], None]) -> None:
    async def body(s: MetadataStore) -> None:
        for v in range(1, 6):
            await _publish(s, "one", v)
            await _publish(s, "two", v)
        await s.delete("two")
        feed = await s.changes(None, 0, 100)
        ids = [c.id for c in feed]
        assert len(feed) == 11
        assert ids == sorted(ids)
        assert len(set(ids)) == 11
        assert [c.gun for c in feed[:4]] == ["one", "two", "one", "two"]
        assert feed[-1].category == "deletion"

        # forwards, exclusive of change_id
        assert [c.id for c in await s.changes(None, 0, 3)] == ids[:3]
        assert [c.id for c in await s.changes(None, ids[2], 3)] == ids[3:6]
        assert await s.changes(None, ids[-1], 10) == []
        # backwards: newest first page, still oldest first
        assert [c.id for c in await s.changes(None, -1, 3)] == ids[-3:]
        assert [c.id for c in await s.changes(None, -1, -3)] == ids[-3:]
        assert [c.id for c in await s.changes(None, 0, -3)] == ids[-3:]
        assert [c.id for c in await s.changes(None, ids[5], -3)] == ids[2:5]
        assert [c.id for c in await s.changes(None, ids[1], -10)] == ids[:1]
        # per GUN
        one = await s.changes("one", 0, 100)
        assert [c.version for c in one] == [1, 2, 3, 4, 5]
        assert all(c.gun == "one" for c in one)
        assert [c.version for c in await s.changes("one", one[1].id, 2)] == [3, 4]
        assert [c.version for c in await s.changes("one", -1, 2)] == [4, 5]
        assert [c.version for c in await s.changes("one", one[2].id, -5)] == [1, 2]
        two = await s.changes("two", 0, 100)
        assert [(c.version, c.category) for c in two][-2:] == [(5, "update"), (0, "deletion")]
        assert await s.changes("nobody", 0, 100) == []
        assert await s.changes(None, 0, 0) == []

    run(body)


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_publishers_one_gun(db_url: str) -> None:
    """20 publishers on 2 store instances: every update accepted, no gaps or forks."""

    async def main() -> None:
        stores = await _open_many(db_url, 2)
        try:
            results = await asyncio.gather(
                *(stores[i % 2].update("hot/gun", _bump(f"task{i}")) for i in range(20))
            )
            seen = sorted(r[0].version for r in results)
            assert seen == list(range(1, 21))  # each version exactly once
            for stored in results:  # every accepted update is what is stored
                for f in stored:
                    got = await stores[1].get_version("hot/gun", f.role, f.version)
                    assert got is not None
                    assert got.data == f.data
            await _assert_history(stores[0], "hot/gun", 20)
        finally:
            for s in {id(s): s for s in stores}.values():
                await s.close()

    asyncio.run(main())


def test_concurrent_stale_clients_lose_cleanly(db_url: str) -> None:
    """Clients that read outside the lock: losers get VERSION, winners make a contiguous history."""

    async def main() -> None:
        stores = await _open_many(db_url, 3)
        wins: list[tuple[int, bytes]] = []
        conflicts = 0

        async def client(i: int) -> None:
            nonlocal conflicts
            store = stores[i % 3]
            for attempt in range(3):
                cur = await store.get_current("race", "timestamp")
                await asyncio.sleep(random.uniform(0, 0.003))
                files = _files((cur.version if cur else 0) + 1, f"c{i}a{attempt}")
                try:
                    stored = await store.update("race", _fixed(files))
                except VersionConflictError:
                    conflicts += 1
                else:
                    wins.append((stored[-1].version, stored[-1].data))

        try:
            await asyncio.gather(*(client(i) for i in range(12)))
            final = await stores[0].get_current("race", "timestamp")
            assert final is not None
            assert len(wins) == final.version  # no lost update
            assert sorted(v for v, _ in wins) == list(range(1, final.version + 1))
            for v, data in wins:
                got = await stores[2].get_version("race", "timestamp", v)
                assert got is not None
                assert got.data == data
            await _assert_history(stores[1], "race", final.version)
            assert conflicts + len(wins) == 36
        finally:
            for s in {id(s): s for s in stores}.values():
                await s.close()

    asyncio.run(main())


def test_concurrent_publish_and_delete(db_url: str) -> None:
    """Deletes racing publishers (the lock row disappears under waiters) never corrupt history."""

    async def main() -> None:
        stores = await _open_many(db_url, 2)

        async def deleter() -> None:
            for _ in range(3):
                await asyncio.sleep(0.005)
                await stores[1].delete("churn")

        try:
            await asyncio.gather(
                *(stores[i % 2].update("churn", _bump(str(i))) for i in range(15)), deleter()
            )
            state = await stores[0].get_state("churn")
            if state.current:
                await _assert_history_since_last_delete(stores[0], "churn")
        finally:
            for s in {id(s): s for s in stores}.values():
                await s.close()

    asyncio.run(main())


async def _assert_history_since_last_delete(store: MetadataStore, gun: str) -> None:
    feed = await store.changes(gun, 0, 1000)
    since = feed
    for i, c in enumerate(feed):
        if c.category == "deletion":
            since = feed[i + 1 :]
    final = await store.get_current(gun, "timestamp")
    assert final is not None
    assert [c.version for c in since] == list(range(1, final.version + 1))


def test_concurrent_publishers_many_guns(db_url: str) -> None:
    async def main() -> None:
        stores = await _open_many(db_url, 2)
        guns = [f"org/repo{i}" for i in range(8)]
        try:
            await asyncio.gather(
                *(
                    stores[(i + j) % 2].update(g, _bump())
                    for i, g in enumerate(guns)
                    for j in range(4)
                )
            )
            for g in guns:
                await _assert_history(stores[0], g, 4)
            feed = await stores[1].changes(None, 0, 1000)
            assert len(feed) == 32
            assert len({c.id for c in feed}) == 32
        finally:
            for s in {id(s): s for s in stores}.values():
                await s.close()

    asyncio.run(main())


def _mp_publisher(job: tuple[str, str, str, int], barrier: Any, out: Any) -> None:
    """Child process: n concurrent read-current → publish-current+1 updates."""
    url, gun, tag, n = job

    async def main() -> list[tuple[int, bytes]]:
        store = await open_store(url, create=False)
        try:
            barrier.wait(timeout=60)
            results = await asyncio.gather(
                *(store.update(gun, _bump(f"{tag}{i}")) for i in range(n))
            )
            return [(r[-1].version, r[-1].data) for r in results]
        finally:
            await store.close()

    try:
        out.put(asyncio.run(main()))
    except BaseException as e:
        out.put(repr(e))
        raise


def test_two_processes_one_gun(shared_url: str) -> None:
    """Two OS processes publishing one GUN on one database: no gaps, no forks, no lost update."""
    sql_url = shared_url
    asyncio.run(_init(sql_url))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_mp_publisher, args=((sql_url, "mp/gun", tag, 10), barrier, out))
        for tag in ("p", "q")
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(isinstance(r, list) for r in results), results
    wins = [w for r in results for w in r]
    assert sorted(v for v, _ in wins) == list(range(1, 21))

    async def check() -> None:
        store = await open_store(sql_url, create=False)
        try:
            await _assert_history(store, "mp/gun", 20)
            for v, data in wins:
                got = await store.get_version("mp/gun", "timestamp", v)
                assert got is not None
                assert got.data == data
        finally:
            await store.close()

    asyncio.run(check())


async def _init(url: str) -> None:
    store = await open_store(url)
    await store.close()


def test_lock_timeout_is_retried(pg_database: str) -> None:
    """A lock wait that times out (PostgreSQL 55P03) is retried; the callback may run again.

    Also checks that unknown libpq parameters (here lock_timeout) reach the server.
    """
    url = _pg_url(pg_database) + "&lock_timeout=100"

    async def main() -> None:
        store = await open_store(url)
        await store.update("locked", _bump())
        holder = await asyncpg.connect(database=pg_database, **PG)
        calls = 0

        async def fn(state: RepoState) -> list[NewFile]:
            nonlocal calls
            calls += 1
            return await _bump()(state)

        try:
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT * FROM repositories WHERE gun = 'locked' FOR UPDATE")
            release = asyncio.get_running_loop().call_later(
                0.15, lambda: asyncio.ensure_future(tx.rollback())
            )
            await store.update("locked", fn)
            release.cancel()
            await _assert_history(store, "locked", 2)
            assert calls == 1  # the lock wait fails before the callback ever runs
            # Held for good: the publish gives up with a StorageError.
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT * FROM repositories WHERE gun = 'locked' FOR UPDATE")
            with pytest.raises(StorageError):
                await store.update("locked", fn)
            await tx.rollback()
        finally:
            await holder.close()
            await store.close()

    asyncio.run(main())


# -- a model check ------------------------------------------------------------------------

_batches = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["root", "targets", "snapshot", "timestamp"]), st.integers(0, 6)),
        max_size=4,
    ),
    min_size=1,
    max_size=6,
)
_example = iter(range(10**9))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=_batches)
def test_matches_model(run: Callable[[Body], None], batches: list[list[tuple[str, int]]]) -> None:
    """Random batches: the store accepts exactly what the version rule allows, all or nothing."""
    gun = f"model/{next(_example)}-{secrets.token_hex(3)}"

    async def body(s: MetadataStore) -> None:
        model: dict[str, int] = {}
        for batch in batches:
            roles = [r for r, _ in batch]
            ok = len(set(roles)) == len(roles) and all(
                v >= 1 and v > model.get(r, 0) for r, v in batch
            )
            files = [NewFile(r, v, f"{r}{v}".encode()) for r, v in batch]
            if ok:
                await s.update(gun, _fixed(files))
                model.update(dict(batch))
            else:
                with pytest.raises(VersionConflictError):
                    await s.update(gun, _fixed(files))
            state = await s.get_state(gun)
            assert {r: f.version for r, f in state.current.items()} == model

    run(body)


# -- opening, migrations, health --------------------------------------------------------


def test_open_without_schema_fails_then_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/dir/v.db"

    async def refused() -> None:
        with pytest.raises(StorageError, match="schema"):
            await open_store(url, create=False)

    async def works() -> None:
        store = await open_store(url, create=False)
        await store.check_health()
        await store.update("g", _bump())
        await store.close()

    (tmp_path / "sub" / "dir").mkdir(parents=True)
    asyncio.run(refused())
    assert migrate(url) == "0001"
    assert migrate(url) == "0001"  # idempotent
    asyncio.run(works())


@pytest.mark.parametrize("backend", SHARED_BACKENDS)
def test_concurrent_first_open_migrates_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Several instances starting at once on an empty database: one migrates, all work."""
    name = _db_name()
    if backend == "couchdb":
        url = _couch_url(request)  # not created yet: the stores create it
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path}/m.db"
    elif backend == "postgresql":
        _pg_create(name)
        url = _pg_url(name)
    else:
        _my_create(name)
        url = _my_url(name)

    async def main() -> None:
        stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
        try:
            await stores[0].update("g", _bump())
            for s in stores:
                await _assert_history(s, "g", 1)
        finally:
            for s in stores:
                await s.close()

    try:
        asyncio.run(main())
    finally:
        if backend == "postgresql":
            _pg_drop(name)
        elif backend == "mariadb":
            _my_drop(name)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://postgres@127.0.0.1:1/nothing?sslmode=disable&connect_timeout=2",
        "root@tcp(127.0.0.1:1)/nothing?timeout=2s",
    ],
)
def test_unreachable_database_is_a_storage_error(url: str) -> None:
    async def main() -> None:
        store = SQLStore(translate(url))
        try:
            with pytest.raises(StorageError):
                await store.check_health()
            with pytest.raises(StorageError):
                await store.get_current("g", "root")
        finally:
            await store.close()

    asyncio.run(main())


def test_tls_required_but_not_offered_is_refused(pg_database: str, my_database: str) -> None:
    """The local servers run without TLS: asking for it must fail, never fall back silently."""

    async def main() -> None:
        for url in (
            f"postgres://postgres@127.0.0.1:5432/{pg_database}?sslmode=require",
            f"root@tcp(127.0.0.1:3306)/{my_database}?tls=skip-verify",
        ):
            with pytest.raises(StorageError):
                await open_store(url, create=False)

    asyncio.run(main())


# -- URL translation ----------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_url_postgres_notary_form() -> None:
    t = translate(
        "postgres://notary:s3cr%40t@db.example:5433/notaryserver?sslmode=disable"
        "&connect_timeout=7&search_path=vouch&application_name=vouch1"
    )
    assert t.dialect == "postgresql"
    assert t.url.drivername == "postgresql+asyncpg"
    assert (t.url.username, t.url.password, t.url.host, t.url.port, t.url.database) == (
        "notary",
        "s3cr@t",
        "db.example",
        5433,
        "notaryserver",
    )
    assert dict(t.url.query) == {}
    assert t.connect_args["ssl"] is False
    assert t.connect_args["timeout"] == 7.0
    assert t.connect_args["server_settings"] == {
        "search_path": "vouch",
        "application_name": "vouch1",
    }
    assert translate("postgresql://u@h/d").connect_args["ssl"] == "prefer"
    assert translate("postgresql+asyncpg://u@h/d").url.drivername == "postgresql+asyncpg"
    assert translate("postgres:///d?host=/var/run/postgresql").url.query == {
        "host": "/var/run/postgresql"
    }


def test_url_postgres_sslmodes(tmp_path: Path) -> None:
    ca, key = _self_signed(tmp_path)
    require = pg_ssl("require")
    assert isinstance(require, ssl.SSLContext)
    assert require.verify_mode == ssl.CERT_NONE
    assert not require.check_hostname
    require_ca = pg_ssl("require", rootcert=ca)
    assert isinstance(require_ca, ssl.SSLContext)
    assert require_ca.verify_mode == ssl.CERT_REQUIRED
    verify_ca = pg_ssl("verify-ca", rootcert=ca)
    assert isinstance(verify_ca, ssl.SSLContext)
    assert verify_ca.verify_mode == ssl.CERT_REQUIRED
    assert not verify_ca.check_hostname
    full = translate(
        f"postgres://u@h/d?sslmode=verify-full&sslrootcert={ca}&sslcert={ca}&sslkey={key}"
    )
    ctx = full.connect_args["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert any(c["subject"] == ((("commonName", "test-ca"),),) for c in ctx.get_ca_certs())
    assert pg_ssl("prefer") == "prefer"
    assert pg_ssl("disable") is False
    with pytest.raises(ValueError, match="sslmode"):
        translate("postgres://u@h/d?sslmode=sometimes")
    with pytest.raises(ValueError, match="SSL parameters"):
        translate("postgres://u@h/d?sslcrl=/x")


def test_url_mysql_go_dsn(tmp_path: Path) -> None:
    t = translate("notary:p@ss:w@tcp(mysql.example:3307)/notaryserver?parseTime=True&timeout=1m30s")
    assert t.dialect == "mysql"
    assert t.url.drivername == "mysql+aiomysql"
    assert (t.url.username, t.url.password, t.url.host, t.url.port, t.url.database) == (
        "notary",
        "p@ss:w",
        "mysql.example",
        3307,
        "notaryserver",
    )
    assert t.url.query == {"charset": "utf8mb4"}
    assert t.connect_args == {"connect_timeout": 90}
    assert not t.require_tls

    default = translate("/db")
    assert (default.url.username, default.url.host, default.url.port) == ("root", "127.0.0.1", 3306)
    v6 = translate("u@tcp([::1]:3308)/db")
    assert (v6.url.host, v6.url.port) == ("::1", 3308)
    sock = translate("u@unix(/run/mysqld/mysqld.sock)/db")
    assert sock.url.query["unix_socket"] == "/run/mysqld/mysqld.sock"

    on = translate("u@tcp(h:3306)/db?tls=true")
    assert on.require_tls
    assert on.connect_args["ssl"].verify_mode == ssl.CERT_REQUIRED
    assert on.connect_args["ssl"].check_hostname
    skip = translate("u@tcp(h:3306)/db?tls=skip-verify").connect_args["ssl"]
    assert skip.verify_mode == ssl.CERT_NONE
    ca, key = _self_signed(tmp_path)
    custom = translate(f"u@tcp(h)/db?tls=custom&tls-ca={ca}&tls-cert={ca}&tls-key={key}")
    assert custom.require_tls
    assert custom.url.port == 3306
    assert custom.connect_args["ssl"].get_ca_certs()
    with pytest.raises(ValueError, match="tls-ca"):
        translate("u@tcp(h)/db?tls=custom")
    with pytest.raises(ValueError, match="preferred"):
        mysql_ssl("preferred")
    with pytest.raises(ValueError, match="unsupported MySQL DSN parameters"):
        translate("u@tcp(h)/db?sql_mode=ANSI")
    with pytest.raises(ValueError, match="network"):
        translate("u@pipe(x)/db")


def test_url_sqlalchemy_and_sqlite_forms() -> None:
    assert translate("sqlite:///var/x.db").url.drivername == "sqlite+aiosqlite"
    assert translate("sqlite+aiosqlite:////abs/x.db").url.database == "/abs/x.db"
    my = translate("mysql://u:pw@h/db")
    assert my.url.drivername == "mysql+aiomysql"
    assert my.url.query == {"charset": "utf8mb4"}
    assert translate("mariadb+aiomysql://u@h/db").dialect == "mysql"
    for bad, match in [
        ("sqlite:///:memory:", "memory"),
        ("sqlite://", "memory"),
        ("mysql+pymysql://u@h/db", "driver"),
        ("postgresql+psycopg2://u@h/db", "driver"),
        ("oracle://u@h/db", "backend"),
        ("memory", "unrecognised"),
        ("/var/lib/vouch/db.sqlite", "unrecognised"),
    ]:
        with pytest.raises(ValueError, match=match):
            translate(bad)


def test_url_errors_do_not_leak_passwords() -> None:
    for bad in ("hunter2user:hunter2@tcp(h)/db?bogus=1", "postgres://u:hunter2@h/d?sslmode=x"):
        with pytest.raises(ValueError) as info:
            translate(bad)
        assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(translate("postgres://u:hunter2@h/d"))


def test_go_duration() -> None:
    assert go_duration("30s") == 30
    assert go_duration("1m30s") == 90
    assert go_duration("500ms") == 0.5
    assert go_duration("1h") == 3600
    for bad in ("", "10", "1x", "s"):
        with pytest.raises(ValueError):
            go_duration(bad)
