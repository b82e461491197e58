"""Benchmark of vouch's TUF core: parse, verify and trusted-set load times.

This is a benchmark, not a test: it prints timings and never asserts on them.
Two repositories are built and signed once with ECDSA P-256 keys (untimed):

(a) a top-level ``targets.json`` with 10,000 targets (image tags and paths,
    each with sha256, sha512 and length);
(b) a repository whose top-level targets delegate to 1,000 roles
    ``targets/team-NNNN``, each signed by its own key and holding a few
    targets, every role pinned by the snapshot.

Each measured step is then run ``--repeat`` times with ``time.perf_counter``
and its median and minimum are printed. Before every repetition the key caches
of :mod:`vouch.tuf.keys` are cleared (unless ``--warm``), so a repetition costs
what a fresh client process pays.

Run with ``make bench`` (``.venv/bin/python bench/core.py``); ``--quick``
shrinks the fixtures, ``--profile`` prints a cProfile of one repetition.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import cryptography

from vouch.crypto.certs import root_key
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import build, keys, roles
from vouch.tuf.metadata import (
    DelegatedRole,
    FileMeta,
    Metadata,
    Root,
    Signed,
    Signer,
    Targets,
)
from vouch.tuf.trusted import TrustedSet

GUN = "registry.example.com/platform/api-gateway"
SEED = 20240601

FULL_SIZES = {"targets": 10_000, "delegations": 1_000, "per_role": 5}
QUICK_SIZES = {"targets": 1_000, "delegations": 100, "per_role": 5}

# Material for realistic target names: image tags and release artefact paths.
_COMPONENTS = (
    "api-gateway",
    "auth",
    "billing",
    "catalog",
    "checkout",
    "frontend",
    "inventory",
    "ledger",
    "notifications",
    "orders",
    "payments",
    "search",
    "session-store",
    "shipping",
    "telemetry-agent",
    "worker",
)
_VARIANTS = ("", "-alpine3.19", "-alpine3.20", "-bookworm", "-slim", "-distroless", "-rc1")
_PLATFORMS = ("linux-amd64", "linux-arm64", "linux-s390x", "windows-amd64", "darwin-arm64")


# -- machine -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the wheel
        return "unknown"


def machine_lines() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"CPU        {cpu_model()} ({os.cpu_count()} cores, {usable} usable)",
        f"Python     {platform.python_implementation()} {platform.python_version()}"
        f" ({platform.system()} {platform.machine()})",
        f"crypto     cryptography {cryptography.__version__}, {openssl_version()}",
    ]


# -- fixtures ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def fake_meta(rng: random.Random) -> FileMeta:
    """FileMeta with random (well-formed) sha256/sha512 digests and a length."""
    return FileMeta(
        rng.randint(1_024, 900_000_000),
        {"sha256": b64(rng.randbytes(32)), "sha512": b64(rng.randbytes(64))},
    )


def target_names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct names shaped like image tags and release paths."""
    names: set[str] = set()
    while len(names) < count:
        comp = rng.choice(_COMPONENTS)
        version = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}"
        kind = rng.randrange(4)
        if kind == 0:
            names.add(f"v{version}{rng.choice(_VARIANTS)}")
        elif kind == 1:
            names.add(f"{comp}/{version}{rng.choice(_VARIANTS)}")
        elif kind == 2:
            names.add(f"sha-{rng.randbytes(4).hex()[:7]}")
        else:
            year = rng.randint(2019, 2026)
            names.add(f"releases/{year}/{rng.choice(_PLATFORMS)}/{comp}-{version}.tar.gz")
    return sorted(names)


def sign(signed: Signed, signer: Signer) -> bytes:
    md: Metadata[Any] = Metadata(signed)
    md.sign(signer)
    return md.to_bytes()


@dataclass
class Repo:
    """Signed envelope bytes of one repository plus what to look up in it."""

    now: datetime
    files: dict[str, bytes]
    delegated: list[str] = field(default_factory=list)
    targets: int = 0
    probe: str = ""


class RepoBuilder:
    """Keys and base metadata shared by both fixtures (ECDSA P-256 throughout)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.root_priv = PrivateKey.generate(keys.ECDSA)
        self.root_pub = root_key(self.root_priv, GUN, now=now - timedelta(hours=1))
        self.privs = {
            r: PrivateKey.generate(keys.ECDSA)
            for r in (roles.TARGETS, roles.SNAPSHOT, roles.TIMESTAMP)
        }
        role_keys = {roles.ROOT: [self.root_pub], **{r: [k.public] for r, k in self.privs.items()}}
        self.root_bytes = sign(build.root(role_keys, now), self.root_priv.signer(self.root_pub))

    def finish(self, files: dict[str, bytes]) -> dict[str, bytes]:
        """Add root, then a snapshot pinning everything and a timestamp pinning it."""
        files = {roles.ROOT: self.root_bytes, **files}
        snap = sign(build.snapshot(files, self.now), self.privs[roles.SNAPSHOT].signer())
        stamp = sign(build.timestamp(snap, self.now), self.privs[roles.TIMESTAMP].signer())
        return {**files, roles.SNAPSHOT: snap, roles.TIMESTAMP: stamp}

    def big_targets(self, count: int, rng: random.Random) -> Repo:
        top = build.targets(self.now)
        for name in target_names(rng, count):
            top.targets[name] = fake_meta(rng)
        files = self.finish({roles.TARGETS: sign(top, self.privs[roles.TARGETS].signer())})
        probe = sorted(top.targets)[count // 2]
        return Repo(self.now, files, targets=count, probe=probe)

    def delegated(self, count: int, per_role: int, rng: random.Random) -> Repo:
        top = build.targets(self.now)
        assert top.delegations is not None
        files: dict[str, bytes] = {}
        names: list[str] = []
        total = 0
        for i in range(count):
            name = f"targets/team-{i:04d}"
            prefix = f"team-{i:04d}/"
            priv = PrivateKey.generate(keys.ECDSA)
            top.delegations.keys[priv.keyid] = priv.public
            top.delegations.roles.append(DelegatedRole(name, [priv.keyid], 1, [prefix]))
            child = build.targets(self.now, role=name)
            for _ in range(per_role):
                comp = rng.choice(_COMPONENTS)
                tag = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}"
                child.targets[f"{prefix}{comp}:{tag}{rng.choice(_VARIANTS)}"] = fake_meta(rng)
            files[name] = sign(child, priv.signer())
            names.append(name)
            total += len(child.targets)
        files[roles.TARGETS] = sign(top, self.privs[roles.TARGETS].signer())
        last = Metadata.from_bytes(files[names[-1]], Targets)
        probe = sorted(last.signed.targets)[-1]  # found only after walking every role
        return Repo(self.now, self.finish(files), names, total, probe)


# -- measuring -----------------------------------------------------------------


def clear_key_caches() -> None:
    """Forget parsed keys and key IDs, as a fresh process would not have them.

    These are private ``lru_cache`` helpers of :mod:`vouch.tuf.keys`; a cache
    that is renamed or removed is simply skipped.
    """
    for name in ("_load_public", "_cached_key_id", "_load_certs"):
        cached = getattr(keys, name, None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()


@dataclass
class Row:
    label: str
    items: int
    unit: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)


Stages = dict[str, float]


class Timer:
    """Records the time since the previous mark under a stage name."""

    def __init__(self) -> None:
        self.stages: Stages = {}
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = now - self._last
        self._last = now


def repeat(run: Callable[[], Stages], times: int, *, warm: bool) -> dict[str, list[float]]:
    """Run ``run`` ``times`` times and gather each stage's samples."""
    samples: dict[str, list[float]] = {}
    for _ in range(times):
        if not warm:
            clear_key_caches()
        for stage, seconds in run().items():
            samples.setdefault(stage, []).append(seconds)
    return samples


def single(fn: Callable[[], object], stage: str) -> Callable[[], Stages]:
    def run() -> Stages:
        start = time.perf_counter()
        fn()
        return {stage: time.perf_counter() - start}

    return run


def trusted_base(repo: Repo, timer: Timer) -> TrustedSet:
    ts = TrustedSet(GUN, repo.files[roles.ROOT], now=repo.now)
    ts.update_timestamp(repo.files[roles.TIMESTAMP])
    ts.update_snapshot(repo.files[roles.SNAPSHOT])
    timer.mark("root+timestamp+snapshot")
    ts.update_targets(repo.files[roles.TARGETS])
    timer.mark("update_targets")
    return ts


def query(ts: TrustedSet, repo: Repo, timer: Timer) -> None:
    found = ts.all_targets()
    timer.mark("all_targets()")
    info = ts.find_target(repo.probe)
    timer.mark("find_target()")
    if len(found) != repo.targets or info is None:
        raise SystemExit(f"fixture error: {len(found)} targets, probe found: {bool(info)}")


def bench_targets(repo: Repo, times: int, warm: bool) -> list[Row]:
    data = repo.files[roles.TARGETS]
    root: Metadata[Root] = Metadata.from_bytes(repo.files[roles.ROOT], Root)
    role_keys = root.signed.role_keys(roles.TARGETS)
    parsed: Metadata[Targets] = Metadata.from_bytes(data, Targets)

    def verify() -> None:
        parsed.verified_keyids(role_keys, 1, roles.TARGETS)

    def trusted() -> Stages:
        timer = Timer()
        query(trusted_base(repo, timer), repo, timer)
        return timer.stages

    n = repo.targets
    rows = [
        Row("parse  Metadata.from_bytes", n, "target", []),
        Row("verify verified_keyids (1 sig)", n, "target", []),
        Row("  of which canonical re-encode", n, "target", []),
        Row("encode to_bytes", n, "target", []),
    ]
    steps: list[Callable[[], object]] = [
        lambda: Metadata.from_bytes(data, Targets),
        verify,
        parsed.signed_bytes,
        parsed.to_bytes,
    ]
    for row, step in zip(rows, steps, strict=True):
        row.samples = repeat(single(step, "x"), times, warm=warm)["x"]
    stages = repeat(trusted, times, warm=warm)
    totals = [sum(parts) for parts in zip(*stages.values(), strict=True)]
    rows += [
        Row("trusted root+timestamp+snapshot", 1, "set", stages["root+timestamp+snapshot"]),
        Row("trusted update_targets", n, "target", stages["update_targets"]),
        Row("trusted all_targets()", n, "target", stages["all_targets()"]),
        Row("trusted find_target()", 1, "lookup", stages["find_target()"]),
        Row("trusted total", n, "target", totals),
    ]
    return rows


def bench_delegations(repo: Repo, times: int, warm: bool) -> list[Row]:
    def trusted() -> Stages:
        timer = Timer()
        ts = trusted_base(repo, timer)
        # Walk the tree the way a client does: children of each loaded role.
        pending = [d.name for d in ts.delegations_of(roles.TARGETS)]
        while pending:
            name = pending.pop()
            ts.update_delegated_targets(repo.files[name], name)
            pending.extend(d.name for d in ts.delegations_of(name))
        timer.mark("update_delegated_targets")
        query(ts, repo, timer)
        return timer.stages

    stages = repeat(trusted, times, warm=warm)
    totals = [sum(parts) for parts in zip(*stages.values(), strict=True)]
    d, n = len(repo.delegated), repo.targets
    return [
        Row("trusted root+timestamp+snapshot", 1, "set", stages["root+timestamp+snapshot"]),
        Row(f"trusted update_targets ({d:,} roles)", d, "deleg", stages["update_targets"]),
        Row("trusted update_delegated_targets", d, "deleg", stages["update_delegated_targets"]),
        Row("trusted all_targets()", n, "target", stages["all_targets()"]),
        Row("trusted find_target() (last role)", 1, "lookup", stages["find_target()"]),
        Row("trusted total", d, "deleg", totals),
    ]


# -- output --------------------------------------------------------------------


def table(title: str, rows: Iterable[Row]) -> str:
    header = ("step", "n", "median ms", "min ms", "per item (median)")
    body = [
        (
            r.label,
            f"{r.items:,}",
            f"{r.median * 1e3:.2f}",
            f"{r.best * 1e3:.2f}",
            f"{r.median * 1e6 / r.items:,.2f} us/{r.unit}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        rest = zip(line[1:], widths[1:], strict=True)
        return "  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in rest)])

    rule = "-" * len(fmt(header))
    return "\n".join([title, rule, fmt(header), rule, *map(fmt, body), rule])


def kib(data: bytes) -> str:
    return f"{len(data) / 1024:,.0f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=7, help="repetitions per step (7)")
    parser.add_argument("--quick", action="store_true", help="smaller fixtures (1k / 100)")
    parser.add_argument("--warm", action="store_true", help="keep key caches between runs")
    parser.add_argument("--profile", action="store_true", help="cProfile one trusted load")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES

    print("vouch TUF core benchmark")
    print("\n".join(machine_lines()))
    caches = "kept warm" if args.warm else "cleared before each repetition"
    print(f"settings   --repeat {args.repeat}, key caches {caches}, ECDSA P-256")

    started = time.perf_counter()
    rng = random.Random(SEED)
    builder = RepoBuilder(datetime.now(UTC))
    big = builder.big_targets(sizes["targets"], rng)
    tree = builder.delegated(sizes["delegations"], sizes["per_role"], rng)
    tree_bytes = sum(len(tree.files[n]) for n in tree.delegated)
    print(
        f"fixtures   built in {time.perf_counter() - started:.1f} s (untimed): "
        f"(a) targets.json {kib(big.files[roles.TARGETS])}; "
        f"(b) targets.json {kib(tree.files[roles.TARGETS])}, "
        f"{len(tree.delegated):,} roles {tree_bytes / 1024:,.0f} KiB, "
        f"snapshot {kib(tree.files[roles.SNAPSHOT])}"
    )
    print()

    title_a = f"(a) top-level targets.json, {big.targets:,} targets"
    print(table(title_a, bench_targets(big, args.repeat, args.warm)))
    print()
    title_b = (
        f"(b) {len(tree.delegated):,} delegations x {sizes['per_role']} targets "
        f"({tree.targets:,} targets)"
    )
    print(table(title_b, bench_delegations(tree, args.repeat, args.warm)))
    print(f"\nwall time {time.perf_counter() - started:.1f} s")

    if args.profile:
        for label, repo in (("(a)", big), ("(b)", tree)):
            clear_key_caches()
            profiler = cProfile.Profile()
            profiler.enable()
            if repo is big:
                bench_targets(repo, 1, args.warm)
            else:
                bench_delegations(repo, 1, args.warm)
            profiler.disable()
            print(f"\ncProfile of one repetition of {label}, by internal time")
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
