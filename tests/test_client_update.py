"""The client update workflow against a hostile or buggy server (a simulator).

Each attack must be refused with a clear error and leave the local trusted
cache as it was; honest changes (rotations, new versions) must be followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from simulator import RepoSim
from vouch.client.cache import BadGunError, MetadataCache
from vouch.client.update import (
    MAX_SPECULATIVE_SIZE,
    MetadataNotFoundError,
    MetadataUnavailableError,
    RepositoryNotFoundError,
    Updater,
)
from vouch.tuf.errors import (
    ExpiredError,
    HashMismatchError,
    RollbackError,
    SignatureError,
    TrustError,
)
from vouch.tuf.metadata import Metadata


class FakeServer:
    """Serves a simulator's current files by notary's URL names; can be tampered with."""

    def __init__(self, sim: RepoSim) -> None:
        self.sim = sim
        self.overrides: dict[str, bytes] = {}
        self.requests: list[tuple[str, int]] = []
        self.down = False
        self.roots: dict[int, bytes] = {}

    def publish(self) -> None:
        for i, data in enumerate(self.sim.root_history, start=1):
            self.roots[i] = data

    def _files(self) -> dict[str, bytes]:
        self.publish()
        out: dict[str, bytes] = {}
        for role, data in self.sim.files.items():
            out[f"{role}.json"] = data
            out[f"{role}.{hashlib.sha256(data).hexdigest()}.json"] = data
        for v, data in self.roots.items():
            out[f"{v}.root.json"] = data
            out[f"root.{hashlib.sha256(data).hexdigest()}.json"] = data
        out.update(self.overrides)
        return out

    async def __call__(self, name: str, max_size: int) -> bytes:
        self.requests.append((name, max_size))
        if self.down:
            raise MetadataUnavailableError("connection refused")
        files = self._files()
        if name not in files:
            raise MetadataNotFoundError(name)
        data = files[name]
        if len(data) > max_size:
            raise HashMismatchError(f"{name} is larger than {max_size} bytes")
        return data


def run(updater: Updater):  # type: ignore[no-untyped-def]
    return asyncio.run(updater.refresh())


@pytest.fixture
def sim() -> RepoSim:
    s = RepoSim()
    s.add_target("v1", b"one")
    s.delegate("targets/releases", ["rel/"])
    s.add_target("rel/1", b"r1", role="targets/releases")
    s.publish()
    return s


def _snapshot_cache(cache: MetadataCache) -> dict[str, bytes | None]:
    return {
        r: cache.read(r) for r in ("root", "timestamp", "snapshot", "targets", "targets/releases")
    }


def test_cold_then_warm_start(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    result = run(Updater(sim.gun, server, cache))
    assert set(result.trusted.all_targets()) == {"v1", "rel/1"}
    names = [n for n, _ in server.requests]
    assert names[0] == "root.json" and names[1] == "timestamp.json"
    assert names[2].startswith("snapshot.") and names[3].startswith("targets.")
    for role in ("root", "timestamp", "snapshot", "targets", "targets/releases"):
        assert cache.read(role) == sim.files[role]
    server.requests.clear()
    run(Updater(sim.gun, server, cache))
    assert [n for n, _ in server.requests] == ["timestamp.json"]


def test_a_cache_write_that_fails_fails_the_refresh(sim: RepoSim, tmp_path: Path) -> None:
    """Files are cached from a writer thread while the refresh goes on; refresh()
    returns only after every write, and a write that failed is its error."""
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    blocker = cache.path("targets/releases").parent  # a file where a directory must go
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        run(Updater(sim.gun, server, cache))
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert cache.read(role) == sim.files[role], f"{role}: the writes before it landed"
    blocker.unlink()
    result = run(Updater(sim.gun, server, cache))
    assert set(result.trusted.all_targets()) == {"v1", "rel/1"}
    for role in ("root", "timestamp", "snapshot", "targets", "targets/releases"):
        assert cache.read(role) == sim.files[role]


def test_size_limits_requested(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    limits = dict(server.requests)
    assert limits["root.json"] == 100 * 1024 * 1024
    assert limits["timestamp.json"] == 1024 * 1024
    # First contact: the current files are asked for before anything pins their size.
    assert limits["snapshot.json"] == limits["targets.json"] == MAX_SPECULATIVE_SIZE
    # Later (root cached): by checksum, at most the pinned length.
    sim.add_target("v2", b"two")
    sim.publish()
    server.requests.clear()
    run(Updater(sim.gun, server, cache))
    limits = dict(server.requests)
    snap_name = next(n for n in limits if n.startswith("snapshot."))
    assert snap_name != "snapshot.json"
    assert limits[snap_name] == len(sim.files["snapshot"])
    targets_name = next(n for n in limits if n.startswith("targets."))
    assert limits[targets_name] == len(sim.files["targets"])


def test_endless_data_refused(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    before = _snapshot_cache(cache)
    sim.add_target("v2", b"two")
    sim.publish()
    digest = hashlib.sha256(sim.files["snapshot"]).hexdigest()
    server.overrides[f"snapshot.{digest}.json"] = sim.files["snapshot"] + b" " * 10_000_000
    with pytest.raises(TrustError):
        run(Updater(sim.gun, server, cache))
    assert _snapshot_cache(cache)["snapshot"] == before["snapshot"]


def test_rollback_across_runs_refused(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    old_ts = sim.files["timestamp"]
    sim.add_target("v2", b"two")
    sim.publish()
    run(Updater(sim.gun, server, cache))
    before = _snapshot_cache(cache)
    server.overrides["timestamp.json"] = old_ts  # replay an older, validly signed timestamp
    with pytest.raises(RollbackError):
        run(Updater(sim.gun, server, cache))
    assert _snapshot_cache(cache) == before


def test_freeze_refused_and_offline_uses_valid_cache(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    later = sim.now + timedelta(days=20)  # the 14-day timestamp is stale by then
    with pytest.raises(ExpiredError):
        run(Updater(sim.gun, server, cache, now=later))
    server.down = True
    result = run(Updater(sim.gun, server, cache))  # offline, cached timestamp still valid
    assert result.offline and "v1" in result.trusted.all_targets()
    with pytest.raises(ExpiredError):
        run(Updater(sim.gun, server, cache, now=later))


def test_mix_and_match_refused_and_cache_kept(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    before = _snapshot_cache(cache)
    old_targets = sim.files["targets"]
    sim.add_target("v2", b"two")
    sim.publish()
    digest = hashlib.sha256(sim.files["targets"]).hexdigest()
    server.overrides[f"targets.{digest}.json"] = old_targets
    with pytest.raises(HashMismatchError):
        run(Updater(sim.gun, server, cache))
    assert cache.read("targets") == before["targets"]


def test_unsigned_root_swap_refused(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    before = _snapshot_cache(cache)
    evil = RepoSim(gun=sim.gun)
    evil.add_target("v1", b"malware")
    evil.root.version = 2
    evil.sign_root()
    evil.publish()
    evil_server = FakeServer(evil)
    evil_server.roots = {2: evil.files["root"]}
    with pytest.raises(SignatureError):
        run(Updater(sim.gun, evil_server, cache))
    assert _snapshot_cache(cache) == before


def test_root_rotations_followed_through_versioned_roots(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    sim.rotate_root()
    sim.rotate_root()  # two rotations behind; each signed by its predecessor only
    sim.signers["timestamp"] = sim.signers["timestamp"]
    sim.publish()
    server.requests.clear()
    result = run(Updater(sim.gun, server, cache))
    assert result.trusted.root.signed.version == 3
    names = [n for n, _ in server.requests]
    assert "2.root.json" in names and "root.json" in names
    assert Metadata.from_bytes(cache.read("root") or b"").signed.version == 3


def test_rotation_skipping_a_link_refused(sim: RepoSim, tmp_path: Path) -> None:
    server = FakeServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    run(Updater(sim.gun, server, cache))
    sim.rotate_root(sign_with_old=False)  # v2 not signed by v1's key
    sim.rotate_root()
    sim.publish()
    # Make the timestamp fail verification under root v1 so recovery runs.
    from simulator import bare_signing

    new_ts = bare_signing()
    sim.root.roles["timestamp"].keyids = [new_ts.public.keyid]
    sim.root.keys[new_ts.public.keyid] = new_ts.public
    sim.signers["timestamp"] = [new_ts]
    sim.root.version = 3
    sim.root_history.pop()
    sim.sign_root()
    sim.publish()
    with pytest.raises(SignatureError):
        run(Updater(sim.gun, server, cache))
    assert Metadata.from_bytes(cache.read("root") or b"").signed.version == 1


def test_delegation_escape_and_bad_delegation_skipped(tmp_path: Path) -> None:
    sim = RepoSim()
    sim.delegate("targets/releases", ["rel/"])
    sim.delegate("targets/broken", ["b/"])
    sim.add_target("rel/ok", b"ok", role="targets/releases")
    sim.add_target("evil/escape", b"x", role="targets/releases")
    sim.add_target("b/1", b"b", role="targets/broken")
    sim.publish()
    from simulator import bare_signing

    sim.signers["targets/broken"] = [bare_signing()]  # now signed by a key nobody delegated to
    sim.sign_targets("targets/broken")
    sim.sign_snapshot()
    sim.sign_timestamp()
    result = run(Updater(sim.gun, FakeServer(sim), MetadataCache(tmp_path, sim.gun)))
    assert set(result.trusted.all_targets()) == {"rel/ok"}
    assert any("targets/broken" in w for w in result.warnings)


def test_missing_repository(tmp_path: Path) -> None:
    sim = RepoSim()
    server = FakeServer(sim)
    server.overrides = {}
    sim.files.clear()
    sim.root_history.clear()
    with pytest.raises(RepositoryNotFoundError):
        run(Updater(sim.gun, server, MetadataCache(tmp_path, sim.gun)))


def test_cache_files_private_and_replaced_atomically(tmp_path: Path) -> None:
    cache = MetadataCache(tmp_path, "example.com/app")
    cache.write("targets/releases", b"one")
    cache.write("targets/releases", b"two" * 100_000)
    path = cache.path("targets/releases")
    assert path.read_bytes() == b"two" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert [p.name for p in cache.dir.rglob(".tmp-*")] == []
    # A stale temporary file of a crashed process with our PID is not reused.
    stale = path.parent / f".tmp-{os.getpid()}-0"
    stale.write_bytes(b"stale")
    cache.write("targets/releases", b"three")
    assert path.read_bytes() == b"three" and stale.read_bytes() == b"stale"
    # Someone removes the directory under a live cache object: it is made again.
    shutil.rmtree(cache.dir)
    cache.write("targets/releases", b"four")
    assert path.read_bytes() == b"four"


@pytest.mark.parametrize("gun", ["../evil", "/abs", "a//b", "a/./b", ""])
def test_path_traversal_guns_refused(tmp_path: Path, gun: str) -> None:
    with pytest.raises(BadGunError):
        MetadataCache(tmp_path, gun)


# -- concurrency: first contact in one round trip, races with a publish --------


class SlowServer(FakeServer):
    """A FakeServer whose every answer takes a while, recording how many requests
    were in flight together. ``waves`` counts the times the client went from
    idle to asking: the number of sequential round trips it waited for."""

    def __init__(self, sim: RepoSim) -> None:
        super().__init__(sim)
        self.in_flight = 0
        self.peak = 0
        self.waves = 0
        self.before_answer: dict[str, Callable[[], None]] = {}

    async def __call__(self, name: str, max_size: int) -> bytes:
        if self.in_flight == 0:
            self.waves += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            hook = self.before_answer.pop(name, None)
            if hook is not None:
                hook()
            return await super().__call__(name, max_size)
        finally:
            self.in_flight -= 1


def test_first_contact_is_one_round_trip(sim: RepoSim, tmp_path: Path) -> None:
    server = SlowServer(sim)
    cache = MetadataCache(tmp_path, sim.gun)
    result = run(Updater(sim.gun, server, cache, prefetch=["targets/releases"]))
    assert set(result.trusted.all_targets()) == {"v1", "rel/1"}
    assert server.waves == 1
    assert sorted(n for n, _ in server.requests) == sorted(
        ["root.json", "timestamp.json", "snapshot.json", "targets.json", "targets/releases.json"]
    )
    for role in ("root", "timestamp", "snapshot", "targets", "targets/releases"):
        assert cache.read(role) == sim.files[role]
    # Without the hint the delegation comes in a second round trip.
    other = SlowServer(sim)
    result = run(Updater(sim.gun, other, MetadataCache(tmp_path / "2", sim.gun)))
    assert set(result.trusted.all_targets()) == {"v1", "rel/1"}
    assert other.waves == 2


def test_delegations_fetched_together(tmp_path: Path) -> None:
    sim = RepoSim()
    for i in range(12):
        sim.delegate(f"targets/team{i}", [f"t{i}/"])
        sim.add_target(f"t{i}/app", f"app {i}".encode(), role=f"targets/team{i}")
    sim.delegate("targets/team0/sub", ["t0/sub/"], parent="targets/team0")
    sim.add_target("t0/sub/x", b"x", role="targets/team0/sub")
    sim.publish()
    server = SlowServer(sim)
    result = run(Updater(sim.gun, server, MetadataCache(tmp_path, sim.gun), concurrency=4))
    assert set(result.trusted.all_targets()) == {f"t{i}/app" for i in range(12)} | {"t0/sub/x"}
    assert server.peak == 4  # bounded, but more than one at a time
    # Verification still follows notary's pre-order: team0, its child, team1...
    assert list(result.trusted.targets) == [
        "targets",
        "targets/team0",
        "targets/team0/sub",
        *(f"targets/team{i}" for i in range(1, 12)),
    ]


def test_publish_racing_first_contact_falls_back_to_pinned_files(
    sim: RepoSim, tmp_path: Path
) -> None:
    """The current snapshot/targets/releases were fetched before a publish, the
    timestamp after it: they are not what the timestamp pins, so exactly the
    pinned versions are fetched by checksum, and the result is the new state."""
    server = SlowServer(sim)
    old = dict(sim.files)

    def publish() -> None:
        sim.add_target("v2", b"two")
        sim.add_target("rel/2", b"r2", role="targets/releases")
        sim.publish()
        server.overrides.update(
            {f"{r}.json": old[r] for r in ("snapshot", "targets", "targets/releases")}
        )

    server.before_answer["timestamp.json"] = publish
    cache = MetadataCache(tmp_path, sim.gun)
    result = run(Updater(sim.gun, server, cache, prefetch=["targets/releases"]))
    assert set(result.trusted.all_targets()) == {"v1", "v2", "rel/1", "rel/2"}
    names = [n for n, _ in server.requests]
    for role in ("snapshot", "targets", "targets/releases"):
        pinned = f"{role}.{hashlib.sha256(sim.files[role]).hexdigest()}.json"
        assert pinned in names
        assert cache.read(role) == sim.files[role]
    assert server.waves == 4  # the fallback is sequential, in TUF order


def test_racing_the_other_way_uses_the_older_pinned_state(sim: RepoSim, tmp_path: Path) -> None:
    """A timestamp fetched before a publish pins the old files: the newer ones
    that came with it are not used, the pinned old ones are."""
    server = SlowServer(sim)
    old = dict(sim.files)
    sim.add_target("v2", b"two")
    sim.publish()
    server.overrides["timestamp.json"] = old["timestamp"]
    for role in ("snapshot", "targets", "targets/releases"):  # old versions stay, by checksum
        server.overrides[f"{role}.{hashlib.sha256(old[role]).hexdigest()}.json"] = old[role]
    result = run(Updater(sim.gun, server, MetadataCache(tmp_path, sim.gun)))
    assert set(result.trusted.all_targets()) == {"v1", "rel/1"}


def test_crafted_early_files_never_trusted(sim: RepoSim, tmp_path: Path) -> None:
    """A server answering the early requests with other content (validly signed
    old files, garbage, endless data) gets its pinned files fetched instead;
    when those are bad too, the update fails and nothing is cached."""
    server = SlowServer(sim)
    evil = RepoSim(gun=sim.gun)
    evil.add_target("v1", b"malware")
    evil.publish()
    server.overrides["snapshot.json"] = sim.files["snapshot"] + b" " * 1_000_000
    server.overrides["targets.json"] = evil.files["targets"]
    server.overrides["targets/releases.json"] = b"{not json"
    cache = MetadataCache(tmp_path, sim.gun)
    result = run(Updater(sim.gun, server, cache, prefetch=["targets/releases"]))
    assert result.trusted.all_targets()["v1"].meta.length == len(b"one")
    assert cache.read("targets") == sim.files["targets"]
    # Now the pinned targets is bad as well: refused, and not cached.
    digest = hashlib.sha256(sim.files["targets"]).hexdigest()
    server.overrides[f"targets.{digest}.json"] = evil.files["targets"]
    fresh = MetadataCache(tmp_path / "fresh", sim.gun)
    with pytest.raises(HashMismatchError):
        run(Updater(sim.gun, server, fresh))
    assert fresh.read("targets") is None


def test_early_requests_do_not_outlive_a_failed_update(tmp_path: Path) -> None:
    """No repository: the early requests are cancelled or collected, none left running."""
    sim = RepoSim()
    server = SlowServer(sim)
    sim.files.clear()
    sim.root_history.clear()

    async def go() -> None:
        with pytest.raises(RepositoryNotFoundError):
            await Updater(sim.gun, server, MetadataCache(tmp_path, sim.gun)).refresh()
        assert server.in_flight == 0
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    asyncio.run(go())
