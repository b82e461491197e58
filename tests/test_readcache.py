"""The server's batched, content-addressed read path, on every SQL database.

Two stores opened on one database stand for two server instances behind a load
balancer: what one publishes or deletes, the other's cached reader must show on
the very next read, although it holds the old bytes in its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from test_storage import my_database, pg_database, sql_url  # noqa: F401  (fixtures)
from vouch.storage.base import NewFile, RepoState, StorageError
from vouch.storage.readcache import ByteCache, CachedReader, SharedReads, cached_reader
from vouch.storage.sql import open_store

Body = Callable[[CachedReader, object, object], Awaitable[None]]


def _file(role: str, version: int, tag: str = "") -> bytes:
    return f'{{"role":"{role}","version":{version},"tag":"{tag}"}}'.encode()


async def _publish(store: object, gun: str, *files: NewFile) -> None:
    async def fn(_state: RepoState) -> list[NewFile]:
        return list(files)

    await store.update(gun, fn)  # type: ignore[attr-defined]


def _run(url: str, body: Body) -> None:
    async def main() -> None:
        writer = await open_store(url)
        other = await open_store(url, create=False)
        try:
            reader = cached_reader(other)
            assert reader is not None, "SQL stores answer batched look-ups"
            await body(reader, writer, other)
        finally:
            await writer.close()
            await other.close()

    asyncio.run(main())


def test_a_publish_by_another_instance_is_seen_at_once(sql_url: str) -> None:  # noqa: F811
    async def body(reader: CachedReader, writer: object, _other: object) -> None:
        await _publish(writer, "example.com/app", NewFile("targets", 1, _file("targets", 1)))
        first = await reader.get_current("example.com/app", "targets")
        assert first is not None and first.data == _file("targets", 1)
        assert len(reader.cache) == 1
        await _publish(writer, "example.com/app", NewFile("targets", 2, _file("targets", 2)))
        second = await reader.get_current("example.com/app", "targets")
        assert second is not None
        assert (second.version, second.data) == (2, _file("targets", 2))
        # The old version stays reachable by version and by checksum (from the cache).
        v1 = await reader.get_version("example.com/app", "targets", 1)
        by_sum = await reader.get_checksum("example.com/app", "targets", first.sha256)
        assert v1 is not None and by_sum is not None
        assert v1.data == by_sum.data == _file("targets", 1)

    _run(sql_url, body)


def test_a_delete_by_another_instance_hides_cached_bytes(sql_url: str) -> None:  # noqa: F811
    async def body(reader: CachedReader, writer: object, _other: object) -> None:
        gun = "example.com/gone"
        await _publish(writer, gun, NewFile("targets", 1, _file("targets", 1, gun)))
        got = await reader.get_current(gun, "targets")
        assert got is not None
        assert reader.cache.get(got.sha256) is not None
        assert await writer.delete(gun)  # type: ignore[attr-defined]
        assert await reader.get_current(gun, "targets") is None
        assert await reader.get_version(gun, "targets", 1) is None
        assert await reader.get_checksum(gun, "targets", got.sha256) is None
        # Recreated with other bytes under the same version: the new bytes, not the cached.
        await _publish(writer, gun, NewFile("targets", 1, _file("targets", 1, "new")))
        again = await reader.get_version(gun, "targets", 1)
        assert again is not None and again.data == _file("targets", 1, "new")

    _run(sql_url, body)


def test_concurrent_reads_share_queries_and_each_gets_its_own_answer(
    sql_url: str,  # noqa: F811
) -> None:
    async def body(reader: CachedReader, writer: object, _other: object) -> None:
        guns = [f"example.com/r{i}" for i in range(8)]
        for gun in guns:
            await _publish(
                writer,
                gun,
                NewFile("targets", 1, _file("targets", 1, gun)),
                NewFile("snapshot", 1, _file("snapshot", 1, gun)),
            )
        before = reader.queries
        asks = [(gun, role) for gun in guns for role in ("targets", "snapshot", "root")] * 5
        got = await asyncio.gather(*(reader.get_current(g, r) for g, r in asks))
        for (gun, role), found in zip(asks, got, strict=True):
            if role == "root":
                assert found is None  # never published: no answer borrowed from another key
            else:
                assert found is not None and found.data == _file(role, 1, gun)
                assert (found.gun, found.role) == (gun, role)
        assert reader.queries - before < len(asks) / 10, "reads arriving together share queries"
        sums = {hashlib.sha256(_file("targets", 1, g)).hexdigest(): g for g in guns}
        by_sum = await asyncio.gather(
            *(reader.get_checksum(g, "targets", s) for s, g in sums.items()),
            reader.get_checksum(guns[0], "targets", next(iter(sums))[:-1] + "0"),
            reader.get_checksum(guns[1], "targets", next(iter(sums))),  # another GUN's file
            reader.get_version(guns[0], "targets", 2**63 + 5),
        )
        assert [f.gun for f in by_sum[: len(sums)] if f] == list(sums.values())
        assert by_sum[len(sums) :] == [None, None, None]

    _run(sql_url, body)


def test_a_failing_database_fails_every_waiting_read(tmp_path: object) -> None:
    async def main() -> None:
        store = await open_store(f"sqlite:///{tmp_path}/vouch.db")
        reader = cached_reader(store)
        assert reader is not None
        async with store.engine.connect() as conn:  # type: ignore[attr-defined]
            await conn.execute(sa.text("DROP TABLE tuf_current"))
            await conn.commit()
        results = await asyncio.gather(
            *(reader.get_current("example.com/x", "targets") for _ in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StorageError) for r in results), results
        await store.close()

    asyncio.run(main())


def test_byte_cache_keys_by_the_digest_it_computes_and_evicts_by_size() -> None:
    cache = ByteCache(max_bytes=100)
    a, b, c = b"a" * 40, b"b" * 40, b"c" * 40
    ka = cache.put(a)
    assert ka == hashlib.sha256(a).hexdigest()
    assert cache.get(ka) == a
    kb = cache.put(b)
    cache.get(ka)  # a is now the most recently used
    kc = cache.put(c)
    assert cache.get(kb) is None  # evicted: 120 bytes > 100
    assert cache.get(ka) == a and cache.get(kc) == c
    assert cache.put(b"x" * 101) and len(cache) == 2  # too big to cache at all
    assert cache.hits == 4 and cache.misses == 1


def test_checksum_reads_within_the_window_skip_the_index_and_a_delete_ends_it(
    sql_url: str,  # noqa: F811
) -> None:
    async def body(reader: CachedReader, writer: object, _other: object) -> None:
        gun = "example.com/by-sum"
        reader.checksum_window = 0.3
        await _publish(writer, gun, NewFile("targets", 1, _file("targets", 1, gun)))
        digest = hashlib.sha256(_file("targets", 1, gun)).hexdigest()
        first = await reader.get_checksum(gun, "targets", digest)
        assert first is not None
        before = reader.queries
        for _ in range(5):
            again = await reader.get_checksum(gun, "targets", digest)
            assert again is not None and again.data == first.data
        assert reader.queries == before, "a file found by checksum is served from memory"
        # A publish changes nothing about that answer: the file is still stored.
        await _publish(writer, gun, NewFile("targets", 2, _file("targets", 2, gun)))
        assert await reader.get_checksum(gun, "targets", digest) is not None
        # Deleted through another instance: gone once the window has passed.
        assert await writer.delete(gun)  # type: ignore[attr-defined]
        await asyncio.sleep(0.35)
        assert await reader.get_checksum(gun, "targets", digest) is None
        assert reader.queries > before
        # This instance's own delete forgets at once.
        await _publish(writer, gun, NewFile("targets", 1, _file("targets", 1, gun)))
        assert await reader.get_checksum(gun, "targets", digest) is not None
        reader.forget(gun)
        assert await writer.delete(gun)  # type: ignore[attr-defined]
        assert await reader.get_checksum(gun, "targets", digest) is None
        # Another GUN's file with the same bytes is not borrowed.
        assert await reader.get_checksum("example.com/other", "targets", digest) is None

    _run(sql_url, body)


def test_shared_reads_never_answer_with_a_read_that_started_earlier() -> None:
    async def main() -> None:
        shared: SharedReads[str, int] = SharedReads()
        started: list[asyncio.Event] = []
        release: list[asyncio.Event] = []

        async def fn() -> int:
            started.append(asyncio.Event())
            release.append(asyncio.Event())
            number = len(started)
            started[-1].set()
            await release[-1].wait()
            return number

        a = asyncio.ensure_future(shared.read("gun", fn))
        await asyncio.sleep(0)
        while not started:
            await asyncio.sleep(0)
        # Read 1 is in flight: later requests must not get its answer.
        b = asyncio.ensure_future(shared.read("gun", fn))
        c = asyncio.ensure_future(shared.read("gun", fn))
        other = asyncio.ensure_future(shared.read("other-gun", fn))
        await asyncio.sleep(0.01)
        assert len(started) == 2, "one read per key in flight; another key reads at once"
        release[0].set()
        assert await a == 1
        while len(started) < 3:
            await asyncio.sleep(0)
        release[1].set()
        release[2].set()
        assert {await b, await c} == {3}, "both share the read that started after them"
        assert await other == 2
        assert shared.reads == 3

        async def failing() -> int:
            raise StorageError("couchdb: down")

        results = await asyncio.gather(
            *(shared.read("gun", failing) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, StorageError) for r in results)

    asyncio.run(main())
