"""The client update workflow: fetch, verify and cache a repository's metadata.

This is the I/O edge around :class:`vouch.tuf.trusted.TrustedSet`, which holds
every trust rule. It follows the notary client's order and recovery (§10.1):
cached root (or a pinned first root) → timestamp (always fetched; the cached
one is used while valid if the server is unreachable) → snapshot, targets and
delegations by checksum, cache first → on a verification failure, fetch the
newest root, walk the versioned roots up to it, and retry once.

Versions trusted before (the cached files) are floors, so a server cannot roll
a client back across runs. Every verified download is cached verbatim.

Fetching is concurrent, verifying is not. On first contact (no cached root)
the current ``timestamp.json``, ``snapshot.json``, ``targets.json`` and any
delegations the caller names (``prefetch``) are requested together with
``root.json``, so a cold client costs one round trip. Those files are then
used only if they are exactly what the verified timestamp and snapshot pin,
hash and length; a file that is not (a publish raced the fetch, or a hostile
server) is fetched again by the pinned checksum, and never trusted as it
came. The children of each verified targets role are fetched together too,
at most ``concurrency`` requests in flight, and verified in notary's order.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from vouch.client.cache import MetadataCache
from vouch.tuf import roles, timefmt
from vouch.tuf.canonical import loads
from vouch.tuf.errors import (
    ExpiredError,
    FormatError,
    HashMismatchError,
    RollbackError,
    SignatureError,
    TrustError,
)
from vouch.tuf.metadata import Metadata, Root
from vouch.tuf.pinning import TrustPinning
from vouch.tuf.trusted import TrustedSet

log = logging.getLogger("vouch.client")

MAX_ROOT_SIZE = 100 * 1024 * 1024
MAX_TIMESTAMP_SIZE = 1024 * 1024
MAX_ROOT_CHAIN = 1000
# A file fetched before anything pins its length (first contact): the same
# bound as for a root, notary's limit for downloads of unknown size.
MAX_SPECULATIVE_SIZE = MAX_ROOT_SIZE
DEFAULT_CONCURRENCY = 4


class MetadataNotFoundError(Exception):
    """The server has no such file (for root: the repository does not exist)."""


class MetadataUnavailableError(Exception):
    """The server could not be asked (offline, 401, 5xx): cached data may be used."""


class Source(Protocol):
    async def __call__(self, name: str, max_size: int) -> bytes:
        """Fetch ``<name>`` (e.g. ``timestamp.json``) of this GUN, at most ``max_size`` bytes."""
        ...


class RepositoryNotFoundError(TrustError):
    """The server has no trust data for this GUN and nothing is cached."""


@dataclass
class UpdateResult:
    trusted: TrustedSet
    warnings: list[str] = field(default_factory=list)
    offline: bool = False


# Canonical files end their signed part with the version (members are sorted).
_TAIL_VERSION = re.compile(rb'"version":([0-9]{1,16})\},"signatures":\[')


def _cached_version(data: bytes) -> int:
    """A cached file's version, without building 10,000 target models for it."""
    found = _TAIL_VERSION.findall(data[-4096:]) if b'"signatures"' in data[-4096:] else []
    if len(found) == 1 and data.rfind(b'"signatures":[') > data.rfind(b'"version":'):
        return int(found[0])
    signed = loads(data).get("signed")
    version = signed.get("version") if isinstance(signed, dict) else None
    if not isinstance(version, int):
        raise FormatError("no version")
    return version


def _floors(cache: MetadataCache) -> dict[str, int]:
    out: dict[str, int] = {}
    for role in (roles.TIMESTAMP, roles.SNAPSHOT, roles.TARGETS):
        data = cache.read(role)
        if data is None:
            continue
        try:
            out[role] = _cached_version(data)
        except (TrustError, AttributeError):
            log.warning("ignoring an unreadable cached %s", role)
    return out


class Updater:
    """One refresh of one GUN; create a new one for each refresh.

    ``prefetch`` names delegated roles the caller will need (the admission
    engine asks for ``targets/releases``): on first contact they are fetched
    along with the top-level files instead of after ``targets`` is verified.
    ``concurrency`` bounds the requests in flight while walking delegations.
    """

    def __init__(
        self,
        gun: str,
        source: Source | Callable[[str, int], Awaitable[bytes]],
        cache: MetadataCache,
        *,
        pinning: TrustPinning | None = None,
        now: datetime | None = None,
        prefetch: Iterable[str] = (),
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.gun = gun
        self.fetch = source
        self.cache = cache
        self.pinning = pinning or TrustPinning()
        self.now = now or timefmt.now()
        self.prefetch = tuple(prefetch)
        for role in self.prefetch:
            roles.check_delegation_name(role)
        self.warnings: list[str] = []
        self.offline = False
        self._limit = asyncio.Semaphore(concurrency)
        # Requests started ahead of their turn, by file name; see _take_early.
        self._early: dict[str, asyncio.Future[bytes]] = {}

    async def refresh(self) -> UpdateResult:
        try:
            trusted = await self._bootstrap()
            try:
                await self._load_tree(trusted)
            except (
                SignatureError,
                HashMismatchError,
                RollbackError,
                ExpiredError,
                FormatError,
            ) as exc:
                if self.offline:
                    raise
                log.info("verification failed (%s); checking for a newer root", exc)
                root = await self._newest_root(trusted)
                if root is None:
                    raise
                trusted = TrustedSet(self.gun, root, now=self.now, floors=_floors(self.cache))
                await self._load_tree(trusted)
        finally:
            await _cancel(self._early.values())
            self._early.clear()
        return UpdateResult(trusted, self.warnings, self.offline)

    async def _limited(self, name: str, max_size: int) -> bytes:
        async with self._limit:
            return await self.fetch(name, max_size)

    def _start_early(self) -> None:
        """First contact: ask now for what the verification will want next."""
        wanted = [
            ("timestamp.json", MAX_TIMESTAMP_SIZE),
            ("snapshot.json", MAX_SPECULATIVE_SIZE),
            ("targets.json", MAX_SPECULATIVE_SIZE),
            *((f"{role}.json", MAX_SPECULATIVE_SIZE) for role in self.prefetch),
        ]
        for name, limit in wanted:
            if name not in self._early:
                self._early[name] = asyncio.ensure_future(self._limited(name, limit))

    async def _take_early(self, name: str) -> bytes | None:
        """The early copy of ``name``, or None if there is none or it failed
        (the caller then fetches by checksum and reports that fetch's error)."""
        early = self._early.pop(name, None)
        if early is None:
            return None
        try:
            return await early
        except Exception as exc:
            log.debug("early fetch of %s failed: %s", name, exc)
            return None

    async def _bootstrap(self) -> TrustedSet:
        cached = self.cache.read(roles.ROOT)
        floors = _floors(self.cache)
        if cached is not None:
            return TrustedSet(self.gun, cached, now=self.now, floors=floors)
        self._start_early()
        try:
            root = await self.fetch("root.json", MAX_ROOT_SIZE)
        except MetadataNotFoundError as exc:
            raise RepositoryNotFoundError(
                f"{self.gun} does not have trust data on the server"
            ) from exc
        trusted = TrustedSet(self.gun, root, now=self.now, bootstrap=True, pinning=self.pinning)
        self.cache.write(roles.ROOT, root)
        return trusted

    async def _newest_root(self, trusted: TrustedSet) -> bytes | None:
        """Walk ``<v>.root.json`` from the trusted version to the newest root."""
        try:
            latest = await self.fetch("root.json", MAX_ROOT_SIZE)
        except (MetadataNotFoundError, MetadataUnavailableError):
            return None
        latest_md = Metadata.from_bytes(latest, Root)
        current = trusted.root.signed.version
        target = latest_md.signed.version
        if target <= current:
            return None
        if target - current > MAX_ROOT_CHAIN:
            raise RollbackError(f"root jumps from {current} to {target}; refusing to walk it")
        chain = TrustedSet(self.gun, trusted.root_bytes, now=self.now)
        for version in range(current + 1, target):
            data = await self.fetch(f"{version}.root.json", MAX_ROOT_SIZE)
            chain.update_root(data)
        chain.update_root(latest)
        self.cache.write(roles.ROOT, latest)
        # Old cached files were signed under the old root; they no longer apply.
        return latest

    async def _timestamp(self, trusted: TrustedSet) -> None:
        cached = self.cache.read(roles.TIMESTAMP)
        early = self._early.pop("timestamp.json", None)
        try:
            # The early request is this very request, made sooner: its result
            # or error stands as is.
            if early is not None:
                data = await early
            else:
                data = await self.fetch("timestamp.json", MAX_TIMESTAMP_SIZE)
        except (MetadataUnavailableError, MetadataNotFoundError) as exc:
            if cached is None:
                if isinstance(exc, MetadataNotFoundError):
                    raise RepositoryNotFoundError(
                        f"{self.gun} does not have trust data on the server"
                    ) from exc
                raise
            self.offline = True
            self.warnings.append(f"using the cached timestamp: {exc}")
            trusted.update_timestamp(cached)
            return
        trusted.update_timestamp(data)
        if data != cached:
            self.cache.write(roles.TIMESTAMP, data)

    async def _pinned(self, trusted: TrustedSet, role: str) -> bytes:
        """``role``'s bytes as the snapshot (or timestamp) pins them, cache first."""
        if role == roles.SNAPSHOT:
            assert trusted.timestamp is not None
            meta = trusted.timestamp.signed.meta[roles.SNAPSHOT]
        else:
            assert trusted.snapshot is not None
            meta = trusted.snapshot.signed.meta[role]
        cached = self.cache.read(role)
        if cached is not None:
            try:
                meta.verify(cached, role)
                return cached
            except HashMismatchError:
                pass
        early = await self._take_early(f"{role}.json")
        if early is not None:
            try:
                meta.verify(early, role)
            except HashMismatchError as exc:
                log.info("the current %s is not the pinned one (%s); fetching that", role, exc)
            else:
                self.cache.write(role, early)
                return early
        digest = meta.sha256_hex()
        name = f"{role}.{digest}.json" if digest else f"{role}.json"
        data = await self._limited(name, meta.length)
        meta.verify(data, role)
        self.cache.write(role, data)
        return data

    async def _load_tree(self, trusted: TrustedSet) -> None:
        await self._timestamp(trusted)
        trusted.update_snapshot(await self._pinned(trusted, roles.SNAPSHOT))
        trusted.update_targets(await self._pinned(trusted, roles.TARGETS))
        # Pre-order, depth-first; a delegation that fails is skipped, as in
        # notary. A verified role's children are all requested at once.
        fetching: dict[str, asyncio.Future[bytes]] = {}
        try:
            stack = self._fetch_children(trusted, roles.TARGETS, fetching)
            while stack:
                child = stack.pop()
                pending = fetching.pop(child, None)
                if pending is None:
                    continue
                try:
                    trusted.update_delegated_targets(await pending, child)
                except (TrustError, MetadataNotFoundError, MetadataUnavailableError) as exc:
                    self.warnings.append(f"skipping delegation {child}: {exc}")
                    continue
                stack.extend(self._fetch_children(trusted, child, fetching))
        finally:
            await _cancel(fetching.values())

    def _fetch_children(
        self, trusted: TrustedSet, role: str, fetching: dict[str, asyncio.Future[bytes]]
    ) -> list[str]:
        """Start fetching ``role``'s delegations that the snapshot lists; return
        their names as a stack (first child on top)."""
        assert trusted.snapshot is not None
        listed = trusted.snapshot.signed.meta
        names = [c.name for c in trusted.delegations_of(role) if c.name in listed]
        for name in names:
            if name not in fetching:
                fetching[name] = asyncio.ensure_future(self._pinned(trusted, name))
        return names[::-1]


async def _cancel(futures: Iterable[asyncio.Future[bytes]]) -> None:
    """Stop requests nobody will use, and collect their errors unseen."""
    pending = list(futures)
    for future in pending:
        future.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
