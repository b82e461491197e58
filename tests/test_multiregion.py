"""Two regions end to end: two PouchDB Servers, continuous replication, a vouch on each.

Each region is a PouchDB Server process of the test's own (CouchDB's HTTP and
replication protocol) with a ``vouch server`` process on it
(``?region=a&regions=a,b``); ``_replicator`` documents on both servers run
continuous replication in both directions. The two vouch processes share one
key store (as regions must, or use one signer): a timestamp key created in one
region signs publishes in the other.

* A tag published in region A with the real ``notary`` CLI is served in region
  B and verified there by the notary CLI with A's trust dir (root pinned by A's
  first use), and by a fresh one.
* Both regions accept a publish of the same GUN while partitioned (replication
  starts afterwards). A client (vouch's client, full TUF verification, one trust
  cache across both regions) polls both regions the whole time: every answer
  must verify and be one of the histories a region accepted, never a mix (or be
  a lagging region's older timestamp, which the client refuses as a rollback). The
  regions converge on one winner (equal versions: the publish accepted first),
  the losing region's next ``notary publish`` fails naming the conflict, and the
  publisher re-stages and publishes on top; both regions then serve all of it,
  and each region's changefeed lists exactly the served history's timestamps.

PouchDB Server must be installed (.ci/run does); the notary CLI too. Missing
either FAILS the tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import couchdb_harness as ch
from couchdb_harness import PouchDBServer
from notary_harness import NotaryCLI, NotaryCommandError, fetch, require_notary_binaries
from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.tuf.errors import RollbackError, TrustError
from vouch_harness import VouchServer

GUN = "example.com/multiregion/app"
DB = "trust"


@dataclass
class Region:
    name: str
    couch: PouchDBServer
    vouch: VouchServer

    def db_url(self) -> str:
        return f"{self.couch.url}/{DB}"


@dataclass
class Regions:
    a: Region
    b: Region
    keys: Path | None
    passphrase: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def _start_region(name: str, workdir: Path, keys: Path | None, passphrase: str) -> Region:
    """``keys``: one SQLite key store for both regions; None: each region keeps its
    keys in its own CouchDB, in the key database beside the metadata."""
    couch = PouchDBServer(workdir / f"couch-{name}")
    couch.start()
    storage = f"couchdb://127.0.0.1:{couch.port}/{DB}?region={name}&regions=a,b&resolve_every=1"
    env = {"NOTARY_SIGNER_VOUCH": passphrase}
    if keys is not None:
        env["VOUCH_KEYS__URL"] = f"sqlite:///{keys}"
    vouch = VouchServer(workdir / f"vouch-{name}", storage=storage, env=env)
    try:
        vouch.start()
    except BaseException:
        couch.stop()
        raise
    return Region(name, couch, vouch)


@pytest.fixture(params=["shared-sqlite-keys"])
def regions(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Regions]:
    require_notary_binaries()
    keys = tmp_path / "keys.db" if request.param == "shared-sqlite-keys" else None
    passphrase = secrets.token_urlsafe(24)
    a = _start_region("a", tmp_path, keys, passphrase)
    try:
        b = _start_region("b", tmp_path, keys, passphrase)
    except BaseException:
        a.vouch.stop()
        a.couch.stop()
        raise
    try:
        yield Regions(a, b, keys, passphrase)
    except BaseException:
        for r in (a, b):
            print(f"--- vouch {r.name} ---\n{r.vouch.log()}")
        raise
    finally:
        for r in (a, b):
            r.vouch.stop()
            r.couch.stop()


def _replicate_continuously(rs: Regions, suffix: str = "") -> None:
    """One ``_replicator`` document on each server, pushing to the other
    (``suffix``: of the database ``trust<suffix>``)."""
    for src, dst in ((rs.a, rs.b), (rs.b, rs.a)):
        doc = {
            "source": src.db_url() + suffix,
            "target": dst.db_url() + suffix,
            "continuous": True,
        }
        resp = ch.couch("PUT", f"/_replicator/to-{dst.name}{suffix}", doc, base=src.couch.url)
        assert resp.status_code in (201, 202), resp.text


def _replicate_once(src: Region, dst: Region) -> None:
    body = {"source": src.db_url(), "target": dst.db_url()}
    resp = ch.couch("POST", "/_replicate", body, base=dst.couch.url)
    assert resp.status_code in (200, 201), resp.text


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def _listed(cli: NotaryCLI) -> set[str]:
    """Target names ``notary list`` shows (it verifies the whole repository first)."""
    out = cli.run("list", GUN).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


def _content(tmp: Path, name: str) -> Path:
    p = tmp / f"{name}.bin"
    p.write_bytes(f"content of {name}\n".encode())
    return p


def test_a_tag_published_in_one_region_is_served_verified_in_the_other(
    regions: Regions, tmp_path: Path
) -> None:
    a, b = regions.a, regions.b
    _replicate_continuously(regions)
    cli_a = NotaryCLI(a.vouch.url, tmp_path / "trust-a", home=tmp_path / "home-a")
    cli_a.run("init", GUN)
    cli_a.run("add", GUN, "v1.0", _content(tmp_path, "v1.0"))
    cli_a.run("publish", GUN)

    # The same trust dir (root pinned by its first use in region A) against region B.
    shutil.copytree(tmp_path / "trust-a", tmp_path / "trust-a-in-b")
    cli_ab = NotaryCLI(b.vouch.url, tmp_path / "trust-a-in-b", home=tmp_path / "home-ab")

    def served_in_b() -> bool:
        try:
            return "v1.0" in _listed(cli_ab)
        except NotaryCommandError:
            return False  # not replicated yet

    _wait("the tag to reach region B", served_in_b)
    fresh = NotaryCLI(b.vouch.url, tmp_path / "trust-fresh", home=tmp_path / "home-fresh")
    assert _listed(fresh) == {"v1.0"}
    cli_ab.run("verify", GUN, "v1.0", "-i", _content(tmp_path, "v1.0"), "-q")

    # And back: a tag published in region B (signed with the timestamp key that
    # region A created, from the shared key store) reaches region A.
    cli_ab.run("add", GUN, "v1.1", _content(tmp_path, "v1.1"))
    cli_ab.run("publish", GUN)
    _wait("the second tag to reach region A", lambda: _listed(cli_a) == {"v1.0", "v1.1"})


def _check_feed(url: str) -> None:
    feed = json.loads(fetch(f"{url}/v2/{GUN}/_trust/changefeed?change_id=0&records=1000"))
    versions = [int(r["Version"]) for r in feed["records"]]
    assert versions == sorted(versions), versions
    current = json.loads(fetch(f"{url}/v2/{GUN}/_trust/tuf/timestamp.json"))
    assert versions[-1] == current["signed"]["version"], (versions, url)
    for r in feed["records"]:
        data = fetch(f"{url}/v2/{GUN}/_trust/tuf/{r['Version']}.timestamp.json")
        assert hashlib.sha256(data).hexdigest() == r["SHA256"], (r, url)


class Poller(threading.Thread):
    """One client, one trust cache, alternately asking both regions; verifies every answer."""

    def __init__(self, urls: list[str], trust_dir: Path) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.trust_dir = trust_dir
        self.stop_event = threading.Event()
        self.answers: list[tuple[str, frozenset[str]]] = []
        self.invalid: list[str] = []
        self.stale: list[str] = []
        self.unreachable: list[str] = []

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        remotes = [Remote(u, trust_env=False) for u in self.urls]
        try:
            i = 0
            while not self.stop_event.is_set():
                url, remote = self.urls[i % 2], remotes[i % 2]
                i += 1
                repo = Repository(GUN, remote, self.trust_dir)
                try:
                    names = frozenset(t.name for t in await repo.list_targets())
                except RollbackError as e:
                    # A region behind the other (replication lag) serves an older, valid
                    # state; the client refuses to go back and keeps what it trusts.
                    self.stale.append(f"{url}: {e}")
                except TrustError as e:  # a signature, hash, version or expiry check failed
                    self.invalid.append(f"{url}: {type(e).__name__}: {e}")
                except Exception as e:  # network, 404, 5xx: no answer, not a wrong one
                    self.unreachable.append(f"{url}: {type(e).__name__}: {e}")
                else:
                    self.answers.append((url, names))
                await asyncio.sleep(0.05)
        finally:
            for r in remotes:
                await r.aclose()


def test_concurrent_publishes_in_both_regions_converge_on_one_verified_history(
    regions: Regions, tmp_path: Path
) -> None:
    a, b = regions.a, regions.b
    cli_a = NotaryCLI(a.vouch.url, tmp_path / "trust-a", home=tmp_path / "home-a")
    cli_a.run("init", GUN)
    cli_a.run("add", GUN, "base", _content(tmp_path, "base"))
    cli_a.run("publish", GUN)
    _replicate_once(a, b)
    # The same publisher's keys in region B (e.g. a second CI runner there).
    shutil.copytree(tmp_path / "trust-a", tmp_path / "trust-b")
    cli_b = NotaryCLI(b.vouch.url, tmp_path / "trust-b", home=tmp_path / "home-b")
    assert _listed(cli_b) == {"base"}

    # The client polls both regions from here to the end.
    shutil.copytree(tmp_path / "trust-a", tmp_path / "trust-poller")
    poller = Poller([a.vouch.url, b.vouch.url], tmp_path / "trust-poller")
    poller.start()
    try:
        # Partitioned (no replication yet): both regions accept a publish; A's first.
        cli_a.run("add", GUN, "from-a", _content(tmp_path, "from-a"))
        cli_a.run("publish", GUN)
        time.sleep(0.05)
        cli_b.run("add", GUN, "from-b", _content(tmp_path, "from-b"))
        cli_b.run("publish", GUN)
        assert _listed(cli_a) == {"base", "from-a"}
        assert _listed(cli_b) == {"base", "from-b"}
        time.sleep(1)  # let the poller see both regions before they converge

        _replicate_continuously(regions)
        winner = {"base", "from-a"}  # equal timestamp versions: accepted first wins
        fresh_a = NotaryCLI(a.vouch.url, tmp_path / "fa", home=tmp_path / "home-fa")
        fresh_b = NotaryCLI(b.vouch.url, tmp_path / "fb", home=tmp_path / "home-fb")
        _wait(
            "both regions to serve the winning history",
            lambda: _listed(fresh_a) == winner and _listed(fresh_b) == winner,
        )

        # Region B's publisher is told: while the decision is still arriving there,
        # publishes of the GUN are refused ("has not reached this region yet"); then
        # once with the notice of what was discarded. Nothing refused is published,
        # and the notary CLI keeps its changelist, so a later publish carries it.
        cli_b.run("add", GUN, "from-b-2", _content(tmp_path, "from-b-2"))
        refusals: list[str] = []
        for _ in range(40):
            try:
                cli_b.run("publish", GUN)
                break
            except NotaryCommandError as e:
                text = str(e)
                assert "conflict" in text and "region a" in text, text
                refusals.append(text)
                assert _listed(fresh_b) == winner
                time.sleep(0.5)
        else:
            pytest.fail(f"region B kept refusing publishes: {refusals[-1]}")
        assert any("discarded" in r and "region b" in r for r in refusals), refusals
        assert _listed(cli_b) == winner | {"from-b-2"}
        # It re-stages the discarded tag and publishes on top of the winner.
        cli_b.run("add", GUN, "from-b", _content(tmp_path, "from-b"))
        cli_b.run("publish", GUN)
        final = {"base", "from-a", "from-b", "from-b-2"}
        assert _listed(cli_b) == final
        _wait("region A to serve the re-published tags", lambda: _listed(cli_a) == final)
        # Region A's publisher won: no notice for it.
        cli_a.run("add", GUN, "from-a-2", _content(tmp_path, "from-a-2"))
        cli_a.run("publish", GUN)
        final |= {"from-a-2"}
        _wait("region B to serve everything", lambda: _listed(fresh_b) == final)
        time.sleep(1)
    finally:
        poller.stop_event.set()
        poller.join(timeout=30)

    # Every answer verified and was a history some region accepted; never a mix (e.g.
    # from-a and from-b before B re-published).
    assert poller.invalid == [], poller.invalid
    accepted = [
        {"base"},
        {"base", "from-a"},
        {"base", "from-b"},
        {"base", "from-a", "from-b-2"},
        {"base", "from-a", "from-b", "from-b-2"},
        {"base", "from-a", "from-b", "from-b-2", "from-a-2"},
    ]
    # The changefeed of each region lists only timestamps of the served history.
    for region in (a, b):
        _check_feed(region.vouch.url)
    seen = [set(names) for _, names in poller.answers]
    assert all(s in accepted for s in seen), [s for s in seen if s not in accepted]
    assert {"base", "from-b"} in seen, "the poller never saw region B's branch"
    assert seen[-1] == final
    assert len(poller.unreachable) <= len(poller.answers) // 10, poller.unreachable[:5]
    # Refusals of a lagging region's older timestamp are TUF's rollback protection at
    # work, not wrong answers; they must stay the exception.
    assert len(poller.stale) <= len(poller.answers), poller.stale[:5]


@pytest.mark.parametrize("regions", ["own-couchdb-keys"], indirect=True)
def test_server_keys_replicated_with_the_metadata_sign_in_both_regions(
    regions: Regions, tmp_path: Path
) -> None:
    """Each region keeps its server-managed keys in its own CouchDB
    (``trust_keys``), and that database replicates like the metadata: the
    timestamp and snapshot keys region A creates sign region B's publishes,
    and no region makes a second key of its own for the GUN."""
    a, b = regions.a, regions.b
    assert regions.keys is None
    _replicate_continuously(regions)
    _replicate_continuously(regions, "_keys")
    cli_a = NotaryCLI(a.vouch.url, tmp_path / "trust", home=tmp_path / "home")
    cli_a.run("init", GUN)
    cli_a.run("add", GUN, "v1.0", _content(tmp_path, "v1.0"))
    cli_a.run("publish", GUN)
    cli_a.run("key", "rotate", GUN, "snapshot", "-r")  # a server-managed snapshot key, in A

    def key_docs(region: Region) -> set[tuple[str, str, str]]:
        resp = ch.couch("GET", f"/{DB}_keys/_all_docs?include_docs=true", base=region.couch.url)
        if resp.status_code == 404:
            return set()
        docs = (row["doc"] for row in resp.json()["rows"])
        return {(d["gun"], d["role"], d["_id"]) for d in docs if d.get("type") == "private_key"}

    made_in_a = key_docs(a)
    assert {(g, r) for g, r, _ in made_in_a} == {(GUN, "timestamp"), (GUN, "snapshot")}
    _wait("A's keys to reach region B", lambda: key_docs(b) >= made_in_a)

    cli_b = NotaryCLI(b.vouch.url, tmp_path / "trust", home=tmp_path / "home")
    _wait("A's publishes to reach region B", lambda: _listed(cli_b) == {"v1.0"})
    cli_b.run("add", GUN, "v1.1", _content(tmp_path, "v1.1"))
    cli_b.run("publish", GUN)  # B signs snapshot and timestamp with A's keys
    _wait("B's publish to reach region A", lambda: _listed(cli_a) == {"v1.0", "v1.1"})
    fresh = NotaryCLI(a.vouch.url, tmp_path / "trust-fresh", home=tmp_path / "home-fresh")
    assert _listed(fresh) == {"v1.0", "v1.1"}
    assert key_docs(a) == key_docs(b) == made_in_a
