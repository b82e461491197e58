"""Forks between two CouchDB regions, at the storage level.

Two databases on the CouchDB-protocol test server play two regions; CouchDB's
own replication (``POST /_replicate``, one-shot, so the test decides when the
regions converge) copies documents between them. Both regions accept publishes
of one GUN before they converge; after replication each region must read one
consistent history, resolve the fork to the same winner by the documented rule
(couchfork), tell the losing region's next publisher once, and keep the
changefeed consistent with what is served. The end-to-end version with vouch
servers, continuous replication and the notary CLI is tests/test_multiregion.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import couchdb_harness as ch
from vouch.storage import NewFile, RepoState, StorageError
from vouch.storage.couchdb import CouchStore, open_couch_store
from vouch.storage.couchfork import Node, decide
from vouch.tuf.publish import UpdateError

ROLES = ("targets", "snapshot", "timestamp")
G = "example.com/forked"


def _bump(tag: str) -> Callable[[RepoState], Awaitable[list[NewFile]]]:
    async def fn(state: RepoState) -> list[NewFile]:
        ts = state.current.get("timestamp")
        v = (ts.version if ts else 0) + 1
        return [NewFile(r, v, f"{r}:{v}:{tag}".encode()) for r in ROLES]

    return fn


@pytest.fixture
def regions(request: pytest.FixtureRequest) -> tuple[str, str]:
    ch.require_couch()
    names = (ch.new_db_name("vouch_ra"), ch.new_db_name("vouch_rb"))
    for n in names:
        request.addfinalizer(lambda n=n: ch.drop_db(n))
    return names


async def _open(db: str, region: str) -> CouchStore:
    # A long scan interval: the test triggers resolution itself (by a publish or read).
    url = f"{ch.store_url(db)}?region={region}&regions=a,b&resolve_every=3600"
    return await open_couch_store(url)


def _replicate(src: str, dst: str) -> None:
    resp = ch.couch(
        "POST", "/_replicate", {"source": ch.store_url(src), "target": ch.store_url(dst)}
    )
    assert resp.status_code in (200, 201), resp.text


def _in_two_regions(
    regions: tuple[str, str], body: Callable[[CouchStore, CouchStore], Awaitable[None]]
) -> None:
    """``body(a, b)`` with a store open in each region, both closed afterwards."""

    async def main() -> None:
        a, b = await _open(regions[0], "a"), await _open(regions[1], "b")
        try:
            await body(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def _converge(a: str, b: str) -> None:
    _replicate(a, b)
    _replicate(b, a)


def _conflicts(db: str) -> list[Any]:
    rows: list[Any] = ch.couch("GET", f"/{db}/_design/vouch/_view/conflicts").json()["rows"]
    return rows


async def _tags(store: CouchStore) -> set[str]:
    """The tags of the served state's files: one history means one tag."""
    state = await store.get_state(G)
    return {f.data.decode().split(":", 2)[2] for f in state.current.values()}


def test_the_higher_timestamp_version_wins_and_the_loser_is_told(regions: tuple[str, str]) -> None:
    db_a, db_b = regions

    async def main(a: CouchStore, b: CouchStore) -> None:
        await a.update(G, _bump("base"))
        _converge(db_a, db_b)
        # Partitioned: region a accepts v2, region b accepts v2 and v3.
        await a.update(G, _bump("a"))
        await b.update(G, _bump("b"))
        await b.update(G, _bump("b"))
        _converge(db_a, db_b)
        assert _conflicts(db_a) and _conflicts(db_b)

        # Before anything resolves, each region serves one whole history.
        for store in (a, b):
            assert await _tags(store) == {"b"}
            ts = await store.get_current(G, "timestamp")
            assert ts is not None and ts.version == 3

        # Region a's next publish resolves the fork and is refused, naming the conflict
        # and what was lost; exactly once.
        with pytest.raises(UpdateError, match="conflict") as err:
            await a.update(G, _bump("a2"))
        assert "targets v2" in err.value.msg and "region a" in err.value.msg
        stored = await a.update(G, _bump("a2"))
        assert {f.version for f in stored} == {4}
        _converge(db_a, db_b)
        await b.update(G, _bump("b5"))  # region b won: no notice for it
        _converge(db_a, db_b)

        for store in (a, b):
            # Every version is the winner's: by version, by hash, current.
            for v, tag in ((1, "base"), (2, "b"), (3, "b"), (4, "a2"), (5, "b5")):
                f = await store.get_version(G, "targets", v)
                assert f is not None and f.data == f"targets:{v}:{tag}".encode(), (v, f)
                assert await store.get_checksum(G, "targets", f.sha256) == f
            assert await _tags(store) == {"b5"}
            # The changefeed lists only timestamps of the served history, in order.
            feed = await store.changes(G, 0, 100)
            assert [c.version for c in feed] == sorted(c.version for c in feed)
            assert {c.version for c in feed} == {1, 2, 3, 4, 5}
            for c in feed:
                ts = await store.get_version(G, "timestamp", c.version)
                assert ts is not None and ts.sha256 == c.sha256, c
        # No conflicting revisions are left in either region.
        assert _conflicts(db_a) == _conflicts(db_b) == []

    _in_two_regions(regions, main)


def test_equal_versions_the_publish_accepted_first_wins(regions: tuple[str, str]) -> None:
    db_a, db_b = regions

    async def main(a: CouchStore, b: CouchStore) -> None:
        await b.update(G, _bump("base"))
        _converge(db_a, db_b)
        await b.update(G, _bump("first"))
        await asyncio.sleep(0.01)
        await a.update(G, _bump("second"))
        _converge(db_a, db_b)
        # A read of a head in conflict resolves it (the reader may write).
        assert await _tags(a) == {"first"}
        _converge(db_a, db_b)
        assert await _tags(b) == {"first"}
        await b.update(G, _bump("b3"))  # the winner's region publishes on
        with pytest.raises(UpdateError, match=r"discarded: .*region a"):
            await a.update(G, _bump("a4"))

    _in_two_regions(regions, main)


def test_a_deletion_in_one_region_beats_a_concurrent_publish(regions: tuple[str, str]) -> None:
    db_a, db_b = regions

    async def main(a: CouchStore, b: CouchStore) -> None:
        await a.update(G, _bump("base"))
        _converge(db_a, db_b)
        assert await a.delete(G)
        await b.update(G, _bump("b"))
        _converge(db_a, db_b)
        assert _conflicts(db_a), "no fork: the test would test nothing"
        for store in (a, b):  # each read resolves or sees the resolution
            assert (await store.get_state(G)).current == {}
            assert await store.get_version(G, "targets", 2) is None
            _converge(db_a, db_b)
        with pytest.raises(UpdateError, match="discarded"):
            await b.update(G, _bump("b2"))
        stored = await b.update(G, _bump("again"))  # the GUN starts afresh
        assert {f.version for f in stored} == {1}
        _converge(db_a, db_b)
        assert await _tags(a) == {"again"}
        feed = await a.changes(G, 0, 100)
        assert [(c.category, c.version) for c in feed] == [
            ("update", 1),
            ("deletion", 0),
            ("update", 1),
        ]

    _in_two_regions(regions, main)


def test_only_the_arbiter_resolves_and_other_regions_wait_for_it(
    regions: tuple[str, str],
) -> None:
    """Region b (not first in regions=) never resolves: two regions deciding from
    different partial views could each discard the other's history. Until region a's
    decision arrives, b serves one consistent history and refuses publishes of the
    forked GUN, saying why; then it delivers a's notice."""
    db_a, db_b = regions

    async def main(a: CouchStore, b: CouchStore) -> None:
        await a.update(G, _bump("base"))
        _converge(db_a, db_b)
        assert await a.delete(G)
        await b.update(G, _bump("b"))
        await b.update(G, _bump("b"))  # b:3 exists only in the losing history
        _converge(db_a, db_b)
        assert _conflicts(db_b)
        assert await b._forks.scan() == 0
        assert await _tags(b) == {"b"}  # one whole history meanwhile
        with pytest.raises(UpdateError, match="not reached this region"):
            await b.update(G, _bump("refused"))
        with pytest.raises(StorageError, match="not deleted"):
            await b.delete(G)
        assert await a._forks.scan() == 1
        _converge(db_a, db_b)
        assert _conflicts(db_a) == _conflicts(db_b) == []
        for store in (a, b):
            assert (await store.get_state(G)).current == {}
        with pytest.raises(UpdateError, match="discarded"):
            await b.update(G, _bump("b4"))
        await b.update(G, _bump("again"))
        _converge(db_a, db_b)
        assert await _tags(a) == await _tags(b) == {"again"}

    _in_two_regions(regions, main)


def test_change_ids_are_striped_per_region(regions: tuple[str, str]) -> None:
    async def main(a: CouchStore, b: CouchStore) -> None:
        for i in range(3):
            await a.update(f"{G}/{i}", _bump("a"))
            await b.update(f"{G}/{i}", _bump("b"))
        ids_a = [c.id for c in await a.changes(None, 0, 100)]
        ids_b = [c.id for c in await b.changes(None, 0, 100)]
        assert ids_a and all(n % 2 == 1 for n in ids_a), ids_a
        assert ids_b and all(n % 2 == 0 for n in ids_b), ids_b

    _in_two_regions(regions, main)


def test_background_scan_resolves_without_a_publish(regions: tuple[str, str]) -> None:
    db_a, db_b = regions

    async def main() -> None:
        a, b = await _open(db_a, "a"), await _open(db_b, "b")
        scanning = await open_couch_store(
            f"{ch.store_url(db_a)}?region=a&regions=a,b&resolve_every=0.2"
        )
        try:
            await a.update(G, _bump("base"))
            _converge(db_a, db_b)
            await a.update(G, _bump("a"))
            await b.update(G, _bump("b"))
            _converge(db_a, db_b)
            assert _conflicts(db_a)
            for _ in range(100):  # the arbiter's background scan, no publish or read
                if not _conflicts(db_a):
                    break
                await asyncio.sleep(0.1)
            assert _conflicts(db_a) == []
            _converge(db_a, db_b)
            assert await _tags(a) == await _tags(b) == {"a"}
        finally:
            await scanning.close()
            await a.close()
            await b.close()

    asyncio.run(main())


def _node(seq: int, uid: str, parent: str | None, **kw: object) -> Node:
    doc: dict[str, object] = {
        "seq": seq,
        "_rev": f"1-{uid}",
        "uid": uid,
        "parent": parent,
        "kind": kw.get("kind", "batch"),
        "at": kw.get("at", f"2026-01-01T00:00:0{seq}+00:00"),
        "current": {"timestamp": {"v": str(kw.get("ts", seq))}},
        "files": {} if kw.get("empty") else {"timestamp": {"att": "f0"}},
        "_attachments": {} if kw.get("missing") else {"f0": {}},
    }
    return Node.from_doc(doc)


def test_decide_follows_the_documented_order() -> None:
    base = "root"
    a2 = _node(2, "a2", base, ts=2, at="2026-01-01T00:00:01+00:00")
    b2 = _node(2, "b2", base, ts=2, at="2026-01-01T00:00:02+00:00")
    b3 = _node(3, "b3", "b2", ts=3)
    # Higher timestamp version beats accepted-first.
    d = decide([a2, b2, b3], base)
    assert d is not None and [n.uid for n in d.winner] == ["b2", "b3"]
    assert [n.uid for n in d.losers] == ["a2"]
    # The same result whatever order the documents were read in.
    for perm in itertools.permutations([a2, b2, b3]):
        assert decide(list(perm), base) == d
    # Equal versions: accepted first.
    d = decide([a2, b2], base)
    assert d is not None and d.winner[-1].uid == "a2"
    # A deletion beats a higher version.
    tomb = _node(2, "t2", base, kind="tombstone", ts=0, empty=True)
    d = decide([tomb, b2, b3], base)
    assert d is not None and d.winner[-1].uid == "t2"
    # A batch missing its files, or not linked to the base, is not a valid history.
    broken = _node(3, "x3", "a2", ts=9, missing=True)
    orphan = _node(4, "o4", "gone", ts=9)
    d = decide([a2, b2, broken, orphan], base)
    assert d is not None and d.winner[-1].uid == "a2"
    assert decide([broken, orphan], base) is None
