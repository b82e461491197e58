"""Two regions publishing one GUN as fast as they can, with continuous replication.

Two PouchDB Server processes of the test's own (so the continuous replication
ends with them), one CouchStore per region (region a is the arbiter), and
``_replicator`` documents both ways. Both regions publish the same GUN
concurrently while readers in both regions check every state they read is one
history. Afterwards the regions must converge: no conflicting revisions left,
the same state in both, and each region's changefeed ordered and naming only
timestamps of that history. Every publish either succeeded or was refused with
the conflict named; no other error. (Before the arbiter rule this scenario
left forks no rule could resolve.)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import couchdb_harness as ch
from couchdb_harness import PouchDBServer
from vouch.storage import NewFile, RepoState, StorageError
from vouch.storage.couchdb import CouchStore, open_couch_store
from vouch.tuf.publish import UpdateError

G = "example.com/soak"
ROUNDS = 25


def _bump(tag: str) -> Callable[[RepoState], Awaitable[list[NewFile]]]:
    async def fn(state: RepoState) -> list[NewFile]:
        ts = state.current.get("timestamp")
        v = (ts.version if ts else 0) + 1
        return [
            NewFile(r, v, f"{r}:{v}:{tag}".encode()) for r in ("targets", "snapshot", "timestamp")
        ]

    return fn


def test_concurrent_publishing_in_two_regions_converges(tmp_path: Path) -> None:
    with PouchDBServer(tmp_path / "a") as sa, PouchDBServer(tmp_path / "b") as sb:
        urls = {"a": f"{sa.url}/soak", "b": f"{sb.url}/soak"}

        async def main() -> None:
            a = await open_couch_store(f"{urls['a']}?region=a&regions=a,b&resolve_every=0.5")
            b = await open_couch_store(f"{urls['b']}?region=b&regions=a,b&resolve_every=0.5")
            for src, dst, base in (("a", "b", sa.url), ("b", "a", sb.url)):
                doc = {"source": urls[src], "target": urls[dst], "continuous": True}
                resp = ch.couch("PUT", f"/_replicator/to-{dst}", doc, base=base)
                assert resp.status_code in (201, 202), resp.text
            refused: list[str] = []
            errors: list[str] = []
            mixed: list[object] = []
            stop = asyncio.Event()

            async def publish(store: CouchStore, name: str) -> None:
                for i in range(ROUNDS):
                    try:
                        await store.update(G, _bump(f"{name}{i}"))
                    except UpdateError as e:
                        assert "conflict" in e.msg, e.msg
                        refused.append(name)
                    except StorageError as e:
                        errors.append(f"{name}: {e}")
                    await asyncio.sleep(random.uniform(0, 0.05))

            async def read(store: CouchStore) -> None:
                while not stop.is_set():
                    try:
                        state = await store.get_state(G)
                    except StorageError as e:
                        errors.append(f"read: {e}")
                    else:
                        tags = {f.data.split(b":", 2)[2] for f in state.current.values()}
                        if len(tags) > 1:
                            mixed.append(tags)
                    await asyncio.sleep(0.01)

            readers = [asyncio.create_task(read(s)) for s in (a, b)]
            try:
                await asyncio.gather(publish(a, "a"), publish(b, "b"))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    await asyncio.sleep(1)
                    await a._forks.scan()
                    sta, stb = await a.get_state(G), await b.get_state(G)
                    same = {r: f.sha256 for r, f in sta.current.items()} == {
                        r: f.sha256 for r, f in stb.current.items()
                    }
                    if same and not _conflicts(sa.url) and not _conflicts(sb.url):
                        break
                else:
                    raise AssertionError("the regions did not converge within 60 s")
            finally:
                stop.set()
                await asyncio.gather(*readers)
            assert errors == [], errors[:5]
            assert mixed == [], mixed[:5]
            for store in (a, b):
                feed = await store.changes(G, 0, 1000)
                versions = [c.version for c in feed]
                assert versions == sorted(versions)
                assert versions[-1] == sta.current["timestamp"].version
                for c in feed:
                    ts = await store.get_version(G, "timestamp", c.version)
                    assert ts is not None and ts.sha256 == c.sha256, c
            # The run did fork (else it tested nothing): resolutions were written.
            docs = ch.couch("GET", "/soak/_all_docs?include_docs=true", base=sa.url).json()
            resolutions = [r for r in docs["rows"] if (r.get("doc") or {}).get("resolves")]
            assert resolutions or refused, "no fork happened"
            print(f"resolutions {len(resolutions)}, refused publishes {len(refused)}")
            await a.close()
            await b.close()

        asyncio.run(main())


def _conflicts(base: str) -> list[object]:
    rows: list[object] = ch.couch("GET", "/soak/_design/vouch/_view/conflicts", base=base).json()[
        "rows"
    ]
    return rows
