"""What only the CouchDB store has: its documents, fork and crash handling, URLs, TLS, auth.

The shared suite (tests/test_storage.py) runs the MetadataStore semantics on CouchDB
too; this file checks the ways CouchDB's single-document atomicity is turned into
atomic publishes: one batch document per accepted update and nothing left by losers,
change records that only count once their batch names them (pending ones hold the
feed back, stuck ones are fenced), tombstones whose stubs stop stale publishers, and
resolution of a forked (conflicting) history. Then the connection side:
URL forms, credentials from the environment, session and basic auth against a
PouchDB Server with an admin, TLS with CA verification and client certificates
through a TLS proxy, and Cloudant IAM tokens against a mock.

Every test runs on the real CouchDB-protocol server (tests/couchdb_harness.py);
a server that cannot be reached FAILS them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import itertools
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import couchdb_harness as ch
from couchdb_harness import PouchDBServer
from vouch.server.settings import from_notary_config
from vouch.storage import NewFile, RepoState, StorageError, VersionConflictError
from vouch.storage.couchdb import CouchStore, _bid, _hash, open_couch_store
from vouch.storage.couchhttp import is_couch_url, parse_couch_url
from vouch.storage.memory import utcnow
from vouch.storage.sql import open_store

ROLES = ("targets", "snapshot", "timestamp")


@pytest.fixture
def db_name(request: pytest.FixtureRequest) -> str:
    """A fresh database name on the test server (created by the store), dropped afterwards."""
    ch.require_couch()
    name = ch.new_db_name()
    request.addfinalizer(lambda: ch.drop_db(name))
    return name


def _files(version: int, tag: str = "") -> list[NewFile]:
    return [NewFile(r, version, f"{r}:{version}:{tag}".encode()) for r in ROLES]


def _fixed(files: list[NewFile]) -> Callable[[RepoState], Awaitable[list[NewFile]]]:
    async def fn(_state: RepoState) -> list[NewFile]:
        return files

    return fn


def _bump(tag: str = "", calls: list[int] | None = None) -> Callable[..., Awaitable[list[NewFile]]]:
    async def fn(state: RepoState) -> list[NewFile]:
        if calls is not None:
            calls.append(1)
        ts = state.current.get("timestamp")
        await asyncio.sleep(0)
        return _files((ts.version if ts else 0) + 1, tag)

    return fn


async def _open(name: str, **kwargs: Any) -> CouchStore:
    store = await open_couch_store(ch.store_url(name))
    for k, v in kwargs.items():
        setattr(store, k, v)
    return store


def _no_revs(current: dict[str, Any]) -> dict[str, Any]:
    return {role: {k: v for k, v in e.items() if k != "rev"} for role, e in current.items()}


def _docs(name: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in ch.all_docs(name) if d.get("kind") == kind]


# -- what is stored -----------------------------------------------------------------------


def test_concurrent_publishers_leave_one_batch_per_accepted_update(db_name: str) -> None:
    """Losers of a race store nothing: batches 1..N, each naming its own valid change record."""

    async def main() -> None:
        stores = [await _open(db_name) for _ in range(3)]
        calls: list[int] = []
        try:
            results = await asyncio.gather(
                *(stores[i % 3].update("hot", _bump(f"t{i}", calls)) for i in range(15))
            )
            assert sorted(r[0].version for r in results) == list(range(1, 16))
            feed = await stores[0].changes("hot", 0, 100)
            assert [c.version for c in feed] == list(range(1, 16))
        finally:
            for s in stores:
                await s.close()
        assert len(calls) >= 15  # the callback re-runs after each lost race

        batches = sorted(_docs(db_name, "batch"), key=lambda d: d["seq"])
        assert [b["seq"] for b in batches] == list(range(1, 16))
        assert all("_conflicts" not in b for b in batches)
        changes = {c["n"]: c for c in _docs(db_name, "change")}
        named = {b["change_id"] for b in batches}
        assert named == {c.id for c in feed}
        losers = set(changes) - named
        assert all(changes[n].get("voided") for n in losers)  # marked by their publishers
        assert len(calls) == 15 + len(losers)  # one lost race, one extra callback run
        # Every file is the bytes of the publish that won its version.
        for r in results:
            for f in r:
                batch = batches[f.version - 1]
                assert batch["files"][f.role]["sha256"] == hashlib.sha256(f.data).hexdigest()

    asyncio.run(main())


def test_large_files_round_trip_and_corruption_is_detected(db_name: str) -> None:
    big = bytes(range(256)) * 12_000  # 3 MB, every byte value

    async def main() -> None:
        store = await _open(db_name)
        try:
            await store.update("big", _fixed([NewFile("targets", 1, big)]))
            got = await store.get_current("big", "targets")
            assert got is not None
            assert got.data == big
            # Someone changes the stored bytes behind vouch's back.
            batch = next(d for d in _docs(db_name, "batch") if d["gun"] == "big")
            resp = ch.couch(
                "PUT",
                f"/{db_name}/{batch['_id']}",
                {
                    **{k: v for k, v in batch.items() if k != "_attachments"},
                    "_attachments": {
                        "f0": {
                            "content_type": "application/octet-stream",
                            "data": base64.b64encode(b"evil").decode(),
                        }
                    },
                },
            )
            assert resp.status_code == 201, resp.text
            with pytest.raises(StorageError, match="SHA-256"):
                await store.get_current("big", "targets")
        finally:
            await store.close()

    asyncio.run(main())


# -- forks, crashes and stale publishers ----------------------------------------------------


def test_a_conflicting_copy_without_files_loses_to_the_real_publish(db_name: str) -> None:
    """A conflicting revision (replication, a split cluster) is resolved by TUF rules.

    The injected revision claims the same batch but holds no publish (no files):
    the real publish wins whichever revision CouchDB picked, the copy is deleted,
    and the next publish builds on the real history (tests/test_couchdb_forks.py
    has forks between two regions).
    """

    async def main() -> None:
        store = await _open(db_name)
        try:
            await store.update("forked", _bump("real"))
            head = next(d for d in _docs(db_name, "batch") if d["gun"] == "forked")
            other = {k: v for k, v in head.items() if k not in ("_rev", "_attachments")}
            resp = ch.couch(
                "POST",
                f"/{db_name}/_bulk_docs",
                {"new_edits": False, "docs": [{**other, "_rev": "1-" + "f" * 32, "files": {}}]},
            )
            assert resp.status_code == 201, resp.text
            assert ch.couch("GET", f"/{db_name}/{_bid(_hash('forked'), 1)}?conflicts=true").json()[
                "_conflicts"
            ]
            ts = await store.get_current("forked", "timestamp")
            assert ts is not None and ts.data == b"timestamp:1:real"
            stored = await store.update("forked", _bump("next"))
            assert [f.version for f in stored] == [2, 2, 2]
            docs = ch.couch("GET", f"/{db_name}/{_bid(_hash('forked'), 1)}?conflicts=true").json()
            assert "_conflicts" not in docs and docs["files"], docs
            assert (await store.get_version("forked", "targets", 1)).data == b"targets:1:real"  # type: ignore[union-attr]
            await store.update("other", _bump())  # other GUNs are unaffected
        finally:
            await store.close()

    asyncio.run(main())


def test_pending_change_record_holds_the_feed_then_is_fenced(db_name: str) -> None:
    """A publisher that died between its change record and its batch.

    Consumers must not page past the record while it may still commit; once it is
    older than pending_timeout a reader fences it and the feed moves on.
    """

    async def main() -> None:
        store = await _open(db_name)
        try:
            await store.update("a", _bump())
            dead = await store._allocate(
                gun="b",
                gh=_hash("b"),
                seq=1,
                version=1,
                sha256="0" * 64,
                category="update",
                at=utcnow(),
            )
            await store.update("c", _bump())
            assert [c.gun for c in await store.changes(None, 0, 10)] == ["a"]
            assert [c.gun for c in await store.changes(None, -1, 10)] == ["a"]
            assert [c.gun for c in await store.changes("c", 0, 10)] == ["c"]  # not b's feed
            assert await store.changes("b", 0, 10) == []

            store.pending_timeout = 0.2
            await asyncio.sleep(0.3)
            assert [c.gun for c in await store.changes(None, 0, 10)] == ["a", "c"]
            fence = next(d for d in _docs(db_name, "batch") if d["gun"] == "b")
            assert fence["fenced"] == dead
            assert fence["current"] == {}
            assert (await store.get_state("b")).current == {}
            await store.update("b", _bump())  # b publishes normally after the fence
            feed = await store.changes(None, 0, 10)
            assert [(c.gun, c.version) for c in feed] == [("a", 1), ("c", 1), ("b", 1)]
            assert dead not in [c.id for c in feed]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_stalled_publisher_is_fenced_and_retries(
    db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish stalled between its change record and its commit, past the timeout.

    A reader fences the record; the publisher's commit then fails and it runs its
    callback again on the new state: one accepted update, one valid record.
    """

    async def main() -> None:
        publisher = await _open(db_name)
        reader = await _open(db_name, pending_timeout=0.1)
        stalled = asyncio.Event()
        create = publisher._create

        async def slow_create(doc_id: str, doc: dict[str, Any], what: str) -> str:
            if doc_id.startswith("b:") and not stalled.is_set():
                stalled.set()
                await asyncio.sleep(0.6)
            return await create(doc_id, doc, what)

        monkeypatch.setattr(publisher, "_create", slow_create)
        calls: list[int] = []
        try:
            task = asyncio.create_task(publisher.update("slow", _bump("p", calls)))
            await stalled.wait()
            await asyncio.sleep(0.25)
            assert await reader.changes(None, 0, 10) == []  # fenced: void, feed empty
            stored = await task
            assert calls == [1, 1]
            assert stored[-1].version == 1
            feed = await reader.changes(None, 0, 10)
            assert [(c.gun, c.version) for c in feed] == [("slow", 1)]
            ts = await reader.get_current("slow", "timestamp")
            assert ts is not None
            assert ts.data == stored[-1].data
            assert feed[0].sha256 == ts.sha256
        finally:
            await publisher.close()
            await reader.close()

    asyncio.run(main())


def test_aggressive_fencing_never_loses_or_forks(
    db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers that fence every record at once, racing publishers on three instances.

    Fencing is the one write readers make; with a zero timeout, and publishers that
    take a while between their change record and their commit, it hits live
    publishes all the time. Publishes need more attempts, but every accepted
    update must be stored, versions must stay contiguous, and the feed must list
    exactly the accepted timestamps in order.
    """

    async def main() -> None:
        publishers = [await _open(db_name) for _ in range(3)]
        for p in publishers:
            create = p._create

            async def slow_commit(
                doc_id: str, doc: dict[str, Any], what: str, create: Any = create
            ) -> str:
                if doc_id.startswith("b:"):
                    await asyncio.sleep(random.uniform(0.0, 0.05))
                return str(await create(doc_id, doc, what))

            monkeypatch.setattr(p, "_create", slow_commit)
        readers = [await _open(db_name, pending_timeout=0.0) for _ in range(2)]
        done = asyncio.Event()
        fenced_reads = 0

        async def read_feed(store: CouchStore) -> None:
            nonlocal fenced_reads
            while not done.is_set():
                await store.changes(None, 0, 1000)
                await store.changes("fenced", -1, -5)
                fenced_reads += 1

        results = []
        try:
            reading = [asyncio.create_task(read_feed(r)) for r in readers]
            # Whether a reader fences a live publish is a race: publish in rounds of
            # 12 until one did (almost always in the first round).
            for _ in range(5):
                first = len(results)
                results += await asyncio.gather(
                    *(
                        publishers[i % 3].update("fenced", _bump(f"p{i}"))
                        for i in range(first, first + 12)
                    )
                )
                if len(_docs(db_name, "batch")) > len(results):
                    break
            done.set()
            await asyncio.gather(*reading)
            total = len(results)
            assert fenced_reads > 0
            assert sorted(r[-1].version for r in results) == list(range(1, total + 1))
            for r in results:
                got = await readers[0].get_version("fenced", "timestamp", r[-1].version)
                assert got is not None
                assert got.data == r[-1].data
            feed = await readers[1].changes("fenced", 0, 1000)
            assert [c.version for c in feed] == list(range(1, total + 1))
            by_version = {r[-1].version: r[-1].sha256 for r in results}
            assert all(c.sha256 == by_version[c.version] for c in feed)
        finally:
            for s in (*publishers, *readers):
                await s.close()
        # Fences are batches without files that repeat the state before them.
        batches = sorted(_docs(db_name, "batch"), key=lambda d: d["seq"])
        assert [b["seq"] for b in batches] == list(range(1, len(batches) + 1))
        with_files = [b for b in batches if b["files"]]
        assert len(with_files) == total
        assert len(batches) > total, "no publish was fenced: the test did not test fencing"
        for prev, b in itertools.pairwise(batches):
            if not b["files"]:
                # The same entries; the fence records which revision holds each file.
                assert _no_revs(b["current"]) == _no_revs(prev["current"])

    asyncio.run(main())


def test_stale_publisher_after_a_delete_cannot_reuse_an_old_seq(
    db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted batches become stubs, not CouchDB deletions, so their ids stay taken.

    A publisher that read the GUN before two more publishes and a delete tries to
    create the next batch of that old state; it must get a conflict and publish on
    the deleted (empty) state instead of "succeeding" below the tombstone.
    """

    async def main() -> None:
        store = await _open(db_name)
        try:
            await store.update("g", _bump())
            stale = await store._head("g", _hash("g"))
            stale_state = await store.get_state("g")
            await store.update("g", _bump())
            assert await store.delete("g") is True
            dead = sorted((d["seq"], "_attachments" in d) for d in _docs(db_name, "dead"))
            assert dead == [(1, False), (2, False)]  # files gone, ids kept

            head, state = store._head, store._state
            handed: list[int] = []

            async def stale_head(gun: str, gh: str, *, conflicts: bool = False) -> Any:
                return stale if not handed else await head(gun, gh, conflicts=conflicts)

            async def stale_state_once(gun: str, gh: str, h: Any) -> RepoState:
                if not handed:
                    handed.append(1)
                    return stale_state
                return await state(gun, gh, h)

            monkeypatch.setattr(store, "_head", stale_head)
            monkeypatch.setattr(store, "_state", stale_state_once)
            calls: list[int] = []
            stored = await store.update("g", _bump("late", calls))
            assert len(calls) == 2  # first on the stale state, then on the deleted one
            assert stored[-1].version == 1
            monkeypatch.undo()
            got = await store.get_current("g", "targets")
            assert got is not None
            assert got.data == b"targets:1:late"
            assert [b["seq"] for b in _docs(db_name, "batch")] == [4]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_crashed_delete_hides_old_files_and_the_next_delete_sweeps(
    db_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        store = await _open(db_name)
        try:
            for v in (1, 2):
                await store.update("g", _fixed(_files(v)))
            old = await store.get_version("g", "targets", 1)
            assert old is not None

            async def crash(*_args: Any) -> None:
                return None

            monkeypatch.setattr(store, "_sweep", crash)
            assert await store.delete("g") is True
            assert len(_docs(db_name, "batch")) == 2  # still there, but a dead generation
            assert await store.get_version("g", "targets", 1) is None
            assert await store.get_checksum("g", "targets", old.sha256) is None
            assert await store.get_current("g", "targets") is None
            monkeypatch.undo()
            assert await store.delete("g") is False  # nothing left to remove, no new record
            assert _docs(db_name, "batch") == []
            assert [d["seq"] for d in _docs(db_name, "dead")] == [1, 2]
            assert [c.category for c in await store.changes("g", 0, 10)] == [
                "update",
                "update",
                "deletion",
            ]
            # A fresh start, from version 1, reads only the new generation.
            await store.update("g", _fixed(_files(1, "new")))
            again = await store.get_version("g", "targets", 1)
            assert again is not None
            assert again.data == b"targets:1:new"
        finally:
            await store.close()

    asyncio.run(main())


def test_version_rule_against_concurrent_identical_versions(db_name: str) -> None:
    """Two instances publishing the same fixed version: exactly one wins, the other gets VERSION."""

    async def main() -> None:
        a, b = await _open(db_name), await _open(db_name)
        try:
            outcome = await asyncio.gather(
                a.update("same", _fixed(_files(1, "a"))),
                b.update("same", _fixed(_files(1, "b"))),
                return_exceptions=True,
            )
            assert sum(isinstance(o, VersionConflictError) for o in outcome) == 1
            assert sum(isinstance(o, list) for o in outcome) == 1
            assert [c.version for c in await a.changes("same", 0, 10)] == [1]
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


# -- opening ----------------------------------------------------------------------------


def test_open_without_create_needs_the_database_and_views(db_name: str) -> None:
    url = ch.store_url(db_name)

    async def main() -> None:
        with pytest.raises(StorageError, match="does not exist"):
            await open_store(url, create=False)
        store = await open_store(url)  # creates the database and the design document
        await store.close()
        store = await open_store(url, create=False)
        await store.check_health()
        await store.close()
        # Views edited by hand are put back by the next create; a newer vouch's are refused.
        design = ch.couch("GET", f"/{db_name}/_design/vouch").json()
        design["views"]["files"]["map"] = "function (doc) {}"
        assert ch.couch("PUT", f"/{db_name}/_design/vouch", design).status_code == 201
        await (await open_store(url)).close()
        design = ch.couch("GET", f"/{db_name}/_design/vouch").json()
        assert "emit" in design["views"]["files"]["map"]
        design["vouch_schema"] = 99
        assert ch.couch("PUT", f"/{db_name}/_design/vouch", design).status_code == 201
        for create in (True, False):
            with pytest.raises(StorageError, match="newer vouch"):
                await open_store(url, create=create)

    asyncio.run(main())


def test_unreachable_server_is_a_storage_error() -> None:
    async def main() -> None:
        store = CouchStore(parse_couch_url("couchdb://127.0.0.1:1/nothing?timeout=2"))
        try:
            with pytest.raises(StorageError):
                await store.check_health()
            with pytest.raises(StorageError):
                await store.get_current("g", "root")
        finally:
            await store.close()

    asyncio.run(main())


# -- URLs and settings ------------------------------------------------------------------


def test_url_forms() -> None:
    t = parse_couch_url("couchdb://127.0.0.1/vouchdb", environ={})
    assert (t.server, t.database, t.auth) == ("http://127.0.0.1:5984/", "vouchdb", "none")
    t = parse_couch_url("couchdbs://db.example/meta?cacert=/etc/ca.pem&timeout=5", environ={})
    assert (t.server, t.database, t.cacert, t.timeout) == (
        "https://db.example:6984/",
        "meta",
        "/etc/ca.pem",
        5.0,
    )
    # notary-style: the server only, database "vouch".
    t = parse_couch_url("https://notary:s3cr%40t@couch.example:6984/", environ={})
    assert (t.server, t.database, t.username, t.password, t.auth) == (
        "https://couch.example:6984/",
        "vouch",
        "notary",
        "s3cr@t",
        "session",
    )
    t = parse_couch_url("https://proxy.example/couch/team%2Fvouch", environ={})
    assert (t.server, t.database, t.auth) == ("https://proxy.example/couch/", "team/vouch", "none")
    t = parse_couch_url("couchdb://h/d?region=us&regions=eu,us&resolve_every=0.5", environ={})
    assert (t.region, t.regions, t.resolve_every) == ("us", ("eu", "us"), 0.5)
    t = parse_couch_url("http://[::1]:5984/x", environ={})
    assert t.server == "http://[::1]:5984/"
    assert is_couch_url("couchdb://h/d")
    assert is_couch_url(" HTTPS://h/ ")
    assert not is_couch_url("postgres://u@h/d")
    assert not is_couch_url("memory")
    for bad, match in [
        ("couchdb://h/Upper", "database names"),
        ("couchdb://h/d?sslmode=require", "unsupported CouchDB URL parameters"),
        ("couchdb://h/d?auth=kerberos", "auth must be"),
        ("couchdb://h/d?auth=basic", "needs a user name"),
        ("couchdb://h/d?auth=iam", "API key"),
        ("couchdb://h/d?cacert=/ca.pem", "https"),
        ("couchdbs://h/d?key=/k.pem", "needs cert"),
        ("couchdb://h/d?timeout=soon", "timeout"),
        ("couchdb:///d", "couchdb"),
        ("couchdb://h/d?region=eu", "go together"),
        ("couchdb://h/d?regions=eu,us", "go together"),
        ("couchdb://h/d?region=ap&regions=eu,us", "not in regions"),
        ("couchdb://h/d?region=eu&regions=eu,eu", "twice"),
        ("couchdb://h/d?region=EU&regions=EU,us", "region names"),
        ("couchdb://h/d?region=eu&regions=eu,,us", "region names"),
        ("couchdb://h/d?resolve_every=0", "resolve_every"),
        ("couchdb://h/d?resolve_every=often", "resolve_every"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_couch_url(bad, environ={})


def test_auth_from_the_environment() -> None:
    env = {"VOUCH_COUCHDB_USERNAME": "svc", "VOUCH_COUCHDB_PASSWORD": "pw"}
    t = parse_couch_url("couchdbs://h/d", environ=env)
    assert (t.username, t.password, t.auth) == ("svc", "pw", "session")
    t = parse_couch_url("couchdbs://me@h/d?auth=basic", environ=env)  # user in URL, password env
    assert (t.username, t.password, t.auth) == ("me", "pw", "basic")
    t = parse_couch_url("couchdbs://me:mine@h/d", environ=env)  # the URL wins
    assert (t.username, t.password) == ("me", "mine")
    t = parse_couch_url("https://acct.cloudant.example/d", environ={"CLOUDANT_APIKEY": "k"})
    assert (t.auth, t.apikey) == ("iam", "k")
    t = parse_couch_url("https://h/d", environ={"VOUCH_COUCHDB_APIKEY": "k2", **env})
    assert t.auth == "session"  # a user name given: username/password unless auth=iam
    assert "pw" not in repr(t)
    assert "k2" not in repr(t)


def test_url_errors_and_repr_do_not_leak_secrets() -> None:
    with pytest.raises(ValueError) as info:
        parse_couch_url("couchdb://u:hunter2@h/d?bogus=1", environ={})
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(parse_couch_url("couchdb://u:hunter2@h/d", environ={}))


def test_notary_style_config(tmp_path: Path) -> None:
    doc = {
        "server": {"http_addr": ":4443"},
        "storage": {"backend": "couchdb", "db_url": "https://user:pass@host:6984/"},
    }
    assert from_notary_config(doc, tmp_path)["storage"] == {"url": "https://user:pass@host:6984/"}
    with pytest.raises(ValueError, match="db_url"):
        from_notary_config({"server": {}, "storage": {"backend": "couchdb"}}, tmp_path)


# -- auth against a server with an admin ----------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PouchDBServer]:
    """A PouchDB Server of our own with an admin user (not admin party)."""
    with PouchDBServer(tmp_path_factory.mktemp("pouchdb-auth")) as server:
        server.add_admin("boss", "s3cret!")
        yield server


def test_session_and_basic_auth(secured: PouchDBServer, monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"127.0.0.1:{secured.port}"

    async def main() -> None:
        store = await open_store(f"couchdb://boss:s3cret%21@{host}/vault?auth=basic")
        await store.update("g", _bump())
        await store.close()
        # Members only from now on: anonymous requests get 401.
        members = {"names": ["boss"], "roles": []}
        resp = ch.couch(
            "PUT",
            "/vault/_security",
            {"admins": members, "members": members},
            base=f"http://boss:s3cret!@{host}",
        )
        assert resp.status_code == 200, resp.text
        with pytest.raises(StorageError, match="401"):
            await open_store(f"couchdb://{host}/vault", create=False)

        session = await open_store(f"couchdb://boss:s3cret%21@{host}/vault", create=False)
        assert isinstance(session, CouchStore)
        assert session.target.auth == "session"
        got = await session.get_current("g", "timestamp")
        assert got is not None
        assert session._db._cookie  # logged in once, the cookie carries the requests
        await session.close()

        monkeypatch.setenv("VOUCH_COUCHDB_USERNAME", "boss")
        monkeypatch.setenv("VOUCH_COUCHDB_PASSWORD", "s3cret!")
        from_env = await open_store(f"couchdb://{host}/vault", create=False)
        await from_env.update("g", _bump())
        await from_env.close()
        monkeypatch.delenv("VOUCH_COUCHDB_USERNAME")
        monkeypatch.delenv("VOUCH_COUCHDB_PASSWORD")

        for auth in ("basic", "session"):
            with pytest.raises(StorageError) as info:
                await open_store(f"couchdb://boss:hunter2@{host}/vault?auth={auth}", create=False)
            assert "401" in str(info.value)
            assert "hunter2" not in str(info.value)

    asyncio.run(main())


# -- TLS ----------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    names: tuple[str, ...] = (),
    ca: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> str:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    path.write_bytes(out)
    return str(path)


class _TLSProxy:
    """TLS in front of the plain test server, as a TLS-terminating proxy or CouchDB's
    own ``[ssl]`` listener would be: server certificate, optional client certificates."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _TLSProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = httpx.URL(ch.COUCH_URL)
        try:
            up_reader, up_writer = await asyncio.open_connection(target.host, target.port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_tls_with_ca_verification_and_client_certificates(db_name: str, tmp_path: Path) -> None:
    ca_key, other_key = _key(), _key()
    ca = _cert("vouch test CA", ca_key, ca=True)
    other_ca = _cert("someone else's CA", other_key, ca=True)
    server_key, wrong_name_key, client_key = _key(), _key(), _key()
    server = _cert("couch", server_key, (ca, ca_key), names=("127.0.0.1", "localhost"))
    wrong_name = _cert("couch", wrong_name_key, (ca, ca_key), names=("db.example",))
    client = _cert("vouch", client_key, (ca, ca_key), client=True)
    ca_file = _write(tmp_path / "ca.pem", ca)
    other_ca_file = _write(tmp_path / "other.pem", other_ca)
    client_cert = _write(tmp_path / "client.pem", client)
    client_key_file = _write(tmp_path / "client.key", client_key)

    def context(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(_write(tmp_path / "srv.pem", cert), _write(tmp_path / "srv.key", key))
        return ctx

    creds = httpx.URL(ch.COUCH_URL).userinfo.decode()
    userinfo = f"{creds}@" if creds else ""

    async def main() -> None:
        async with _TLSProxy(context(server, server_key)) as proxy:
            url = f"https://{userinfo}127.0.0.1:{proxy.port}/{db_name}"
            store = await open_store(f"{url}?cacert={ca_file}")
            await store.update("tls", _bump())
            await store.close()
            store = await open_store(
                f"couchdbs://{userinfo}127.0.0.1:{proxy.port}/{db_name}?cacert={ca_file}",
                create=False,
            )
            assert await store.get_current("tls", "timestamp") is not None
            await store.close()
            for bad in (url, f"{url}?cacert={other_ca_file}"):  # system CAs; a wrong CA
                with pytest.raises(StorageError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                    await open_store(bad, create=False)

        async with _TLSProxy(context(wrong_name, wrong_name_key)) as proxy:
            with pytest.raises(StorageError, match="IP address mismatch"):
                await open_store(
                    f"https://{userinfo}127.0.0.1:{proxy.port}/{db_name}?cacert={ca_file}",
                    create=False,
                )

        mutual = context(server, server_key)
        mutual.verify_mode = ssl.CERT_REQUIRED
        mutual.load_verify_locations(ca_file)
        async with _TLSProxy(mutual) as proxy:
            url = f"https://{userinfo}127.0.0.1:{proxy.port}/{db_name}?cacert={ca_file}"
            with_cert = await open_store(
                f"{url}&cert={client_cert}&key={client_key_file}", create=False
            )
            assert await with_cert.get_current("tls", "timestamp") is not None
            await with_cert.close()
            with pytest.raises(StorageError, match="open database"):  # handshake refused
                await open_store(url, create=False)

    asyncio.run(main())


# -- Cloudant IAM and session renewal (mock server) ---------------------------------------


class _MockCouch:
    """Just enough of IBM Cloud IAM and a CouchDB server to watch the auth headers."""

    def __init__(self) -> None:
        self.tokens_issued = 0
        self.valid: set[str] = set()
        self.seen: list[str] = []
        self.logins = 0
        self.lifetime = 3600
        self.iam_status = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "iam.example":
            assert request.method == "POST"
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            assert form == {
                "grant_type": "urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey",
                "apikey": "the-api-key",
            }
            if self.iam_status != 200:
                return httpx.Response(self.iam_status, json={"errorMessage": "the-api-key"})
            self.tokens_issued += 1
            token = f"tok-{self.tokens_issued}"
            self.valid = {token}
            return httpx.Response(200, json={"access_token": token, "expires_in": self.lifetime})
        if request.url.path == "/_session":
            self.logins += 1
            cookie = f"c{self.logins}"
            self.valid = {cookie}
            return httpx.Response(
                200, json={"ok": True}, headers={"Set-Cookie": f"AuthSession={cookie}; Path=/"}
            )
        auth = request.headers.get("authorization", "").removeprefix("Bearer ")
        cookie = request.headers.get("cookie", "").removeprefix("AuthSession=")
        credential = auth or cookie
        self.seen.append(credential)
        if credential not in self.valid:
            return httpx.Response(401, json={"error": "unauthorized", "reason": "expired"})
        return httpx.Response(200, json={"db_name": "vouchdb"})


def test_cloudant_iam_tokens_are_fetched_refreshed_and_renewed() -> None:
    mock = _MockCouch()
    target = parse_couch_url(
        "https://acct.cloudant.example/vouchdb?iam_url=https://iam.example/identity/token",
        environ={"CLOUDANT_APIKEY": "the-api-key"},
    )
    assert target.auth == "iam"

    async def main() -> None:
        store = CouchStore(target, transport=httpx.MockTransport(mock.handler))
        try:
            await store.check_health()
            await store.check_health()
            assert mock.seen == ["tok-1", "tok-1"]  # one token for many requests
            mock.valid = set()  # revoked: the 401 fetches a new token, the request repeats
            await store.check_health()
            assert mock.seen[-2:] == ["tok-1", "tok-2"]
            mock.lifetime = 1  # short-lived: refreshed before it expires, no 401 needed
            mock.valid = set()
            await store.check_health()
            await asyncio.sleep(0.9)
            await store.check_health()
            assert mock.seen[-1] == "tok-4"
            assert mock.tokens_issued == 4
            mock.iam_status, mock.valid = 400, set()
            with pytest.raises(StorageError, match="IAM") as info:
                await store.check_health()
            assert "the-api-key" not in str(info.value)
        finally:
            await store.close()

    asyncio.run(main())


def test_session_cookie_is_renewed_after_a_401() -> None:
    mock = _MockCouch()
    target = parse_couch_url("https://u:p@couch.example/vouchdb", environ={})

    async def main() -> None:
        store = CouchStore(target, transport=httpx.MockTransport(mock.handler))
        try:
            await asyncio.gather(*(store.check_health() for _ in range(5)))
            assert mock.logins == 1  # concurrent requests share one login
            mock.valid = set()  # the server restarted or the cookie expired
            await store.check_health()
            assert mock.logins == 2
            assert mock.seen[-2:] == ["c1", "c2"]
        finally:
            await store.close()

    asyncio.run(main())


def test_rate_limited_requests_are_repeated() -> None:
    """Cloudant answers 429 above a plan's throughput; the request was not carried out."""
    answers = [429, 429, 200, 429, 429, 429, 429, 429]
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(asyncio.get_event_loop().time())
        status = answers.pop(0)
        headers = {"Retry-After": "0.05"} if status == 429 else {}
        return httpx.Response(status, json={"error": "too_many_requests"}, headers=headers)

    async def main() -> None:
        store = CouchStore(
            parse_couch_url("https://acct.cloudant.example/d", environ={}),
            transport=httpx.MockTransport(handler),
        )
        try:
            await store.check_health()  # 429, 429, then 200
            assert len(times) == 3
            assert times[2] - times[0] >= 0.09  # Retry-After was honoured
            with pytest.raises(StorageError, match="429"):  # gives up after a few
                await store.check_health()
            assert answers == []
        finally:
            await store.close()

    asyncio.run(main())


def test_batch_ids_are_fixed_width_and_hash_the_gun() -> None:
    """Ids order by seq in any collation and never depend on how a GUN is spelt."""
    assert _bid(_hash("a/b"), 7) == f"b:{_hash('a/b')}:{7:019d}"
    assert _hash("ex/ünï") != _hash("ex/u\u0308n\u0308i\u0308")  # NFC and NFD stay apart
    assert len(_hash("g" * 255)) == 32
