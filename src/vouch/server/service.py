"""The trust server's operations, independent of HTTP.

Reads go through the store's batched, content-addressed read path where the
backend has one (:mod:`vouch.storage.readcache`: as fresh as the database,
whatever other instances publish), else straight to the store. Writes go through
:meth:`MetadataStore.update`, whose callback validates the upload with the
core's publish rules and signs the server's snapshot and timestamp, so a
publish is atomic and concurrent publishers cannot fork a repository.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from vouch.storage.base import MetadataStore, NewFile, RepoState, StoredFile
from vouch.storage.readcache import CachedReader, cached_reader
from vouch.tuf import roles, timefmt
from vouch.tuf.errors import TrustError
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Metadata, Root, Signature, Snapshot, Timestamp
from vouch.tuf.publish import (
    NoSigningKeyError,
    UpdateError,
    plan_snapshot,
    plan_timestamp,
    refresh_snapshot,
    signing_keyids,
    validate_update,
)

log = logging.getLogger("vouch.server")

SERVER_KEY_ROLES = (roles.TIMESTAMP, roles.SNAPSHOT)
#: Seconds a key the key service was found to hold is assumed held (one query
#: per publish and role saved, on database-backed key services and signers).
HELD_KEY_TTL = 30.0


class KeyService(Protocol):
    """What the server needs from a key service (local, or a remote signer)."""

    async def create_key(self, gun: str, role: str, algorithm: str) -> Key: ...

    async def rotate_key(self, gun: str, role: str, algorithm: str) -> Key: ...

    async def public_key(self, key_id: str) -> Key | None: ...

    async def sign(self, key_id: str, message: bytes) -> Signature: ...

    async def check_health(self) -> None: ...


class Reader(Protocol):
    """The three look-ups GETs need (a :class:`MetadataStore` or a cached reader)."""

    async def get_current(self, gun: str, role: str) -> StoredFile | None: ...

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile | None: ...

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None: ...


class NotFoundError(Exception):
    """No such metadata (404 ``METADATA_NOT_FOUND``)."""


class SigningUnavailableError(Exception):
    """The server must sign but its key service cannot (503)."""


@dataclass(frozen=True, slots=True)
class _Freshness:
    expires: datetime
    snapshot_sha256: str | None


class TrustService:
    """notary-server's behaviour over a :class:`MetadataStore` and a :class:`KeyService`."""

    def __init__(
        self,
        store: MetadataStore,
        keys: KeyService,
        *,
        key_algorithm: str = "ecdsa",
        timestamp_refresh: timedelta = timedelta(days=1),
        snapshot_refresh: timedelta = timedelta(days=30),
    ) -> None:
        self.store = store
        #: Where reads go: the batched cached reader on database backends.
        self.reader: Reader = cached_reader(store) or store
        self.keys = keys
        self.key_algorithm = key_algorithm
        self.timestamp_refresh = timestamp_refresh
        self.snapshot_refresh = snapshot_refresh
        self._expiry_cache: OrderedDict[str, _Freshness] = OrderedDict()
        self._roots: OrderedDict[str, Metadata[Root]] = OrderedDict()
        self._held: dict[str, float] = {}  # key ID -> until when it is known to be held

    # -- reads ---------------------------------------------------------------

    async def get_current(self, gun: str, role: str) -> StoredFile:
        if role == roles.TIMESTAMP:
            return await self._fresh_timestamp(gun)
        if role == roles.SNAPSHOT:
            ts = await self._fresh_timestamp(gun)
            snap_sha = self._freshness(ts).snapshot_sha256
            found = await self.reader.get_current(gun, role)
            if found is not None and (snap_sha is None or found.sha256 == snap_sha):
                return found
            if snap_sha is not None:
                pinned = await self.reader.get_checksum(gun, role, snap_sha)
                if pinned is not None:
                    return pinned
            raise NotFoundError(role)
        found = await self.reader.get_current(gun, role)
        if found is None:
            raise NotFoundError(role)
        return found

    async def get_version(self, gun: str, role: str, version: int) -> StoredFile:
        found = await self.reader.get_version(gun, role, version)
        if found is None:
            raise NotFoundError(role)
        return found

    async def get_checksum(self, gun: str, role: str, sha256: str) -> StoredFile:
        found = await self.reader.get_checksum(gun, role, sha256)
        if found is None:
            raise NotFoundError(role)
        return found

    def _freshness(self, file: StoredFile) -> _Freshness:
        hit = self._expiry_cache.get(file.sha256)
        if hit is None:
            md = Metadata.from_bytes(file.data)
            snap_sha = None
            if isinstance(md.signed, Timestamp):
                snap_sha = md.signed.meta[roles.SNAPSHOT].sha256_hex()
            hit = _Freshness(md.signed.expires_at, snap_sha)
            self._expiry_cache[file.sha256] = hit
            if len(self._expiry_cache) > 4096:
                self._expiry_cache.popitem(last=False)
        return hit

    async def _fresh_timestamp(self, gun: str) -> StoredFile:
        """The current timestamp, re-signed first if it (or the server-held
        snapshot it pins) is near expiry. If re-signing fails, the stored
        timestamp is served while it is still valid (notary#598)."""
        ts = await self.reader.get_current(gun, roles.TIMESTAMP)
        if ts is None:
            raise NotFoundError(roles.TIMESTAMP)
        now = timefmt.now()
        if self._freshness(ts).expires - now > self.timestamp_refresh:
            return ts
        try:
            stored = await self.store.update(gun, self._refresh_fn(now))
            self._remember(stored)
        except (SigningUnavailableError, NoSigningKeyError, TrustError) as exc:
            if self._freshness(ts).expires > now:
                log.warning(
                    "re-signing the timestamp of %s failed, serving the stored one: %s", gun, exc
                )
                return ts
            raise SigningUnavailableError(
                f"timestamp of {gun} expired and cannot be re-signed: {exc}"
            ) from exc
        for f in stored:
            if f.role == roles.TIMESTAMP:
                return f
        latest = await self.reader.get_current(gun, roles.TIMESTAMP)
        assert latest is not None
        return latest

    def _refresh_fn(self, now: datetime) -> Any:
        async def refresh(state: RepoState) -> list[NewFile]:
            ts = state.current.get(roles.TIMESTAMP)
            snap = state.current.get(roles.SNAPSHOT)
            root = state.current.get(roles.ROOT)
            if ts is None or snap is None or root is None:
                return []
            if self._freshness(ts).expires - now > self.timestamp_refresh:
                return []  # another instance refreshed it meanwhile
            root_md: Metadata[Root] = Metadata.from_bytes(root.data, Root)
            out: list[NewFile] = []
            snap_bytes = snap.data
            snap_md = Metadata.from_bytes(snap.data, Snapshot)
            if snap_md.signed.expires_at - now <= self.snapshot_refresh:
                held = await self._held_keys(root_md.signed, roles.SNAPSHOT)
                if held:
                    new_snap = refresh_snapshot(snap.data, root.data, now)
                    snap_bytes = await self._sign(new_snap, held)
                    out.append(NewFile(roles.SNAPSHOT, new_snap.signed.version, snap_bytes))
                elif snap_md.signed.is_expired(now):
                    raise NoSigningKeyError(
                        "ErrBadHierarchy", "snapshot expired and its key is held by the client"
                    )
            new_ts = plan_timestamp(snap_bytes, ts.data, now)
            ts_bytes = await self._sign(
                new_ts, await self._held_keys(root_md.signed, roles.TIMESTAMP, strict=True)
            )
            out.append(NewFile(roles.TIMESTAMP, new_ts.signed.version, ts_bytes))
            return out

        return refresh

    # -- keys ----------------------------------------------------------------

    async def _held_keys(self, root: Root, role: str, *, strict: bool = False) -> list[str]:
        held = []
        now = time.monotonic()
        for kid in signing_keyids(root, role):
            if self._held.get(kid, 0.0) > now:
                held.append(kid)
                continue
            try:
                key = await self.keys.public_key(kid)
            except Exception as exc:
                raise SigningUnavailableError(str(exc)) from exc
            if key is not None:
                held.append(kid)
                self._remember_held(kid, now)
        if strict and not held:
            raise NoSigningKeyError("ErrBadRoot", f"no  {role} keys exist on the server")
        return held[: root.roles[role].threshold] if held else held

    async def _sign(self, md: Metadata[Any], keyids: list[str]) -> bytes:
        message = md.signing_bytes()
        for kid in keyids:
            try:
                md.add_signature(await self.keys.sign(kid, message))
            except Exception as exc:
                raise SigningUnavailableError(f"signing with key {kid} failed: {exc}") from exc
        return md.to_bytes()

    async def get_key(self, gun: str, role: str) -> Key:
        """``GET <role>.key``: a key of root's role the service holds, or a new one."""
        root = await self.reader.get_current(gun, roles.ROOT)
        try:
            if root is not None:
                root_md: Metadata[Root] = Metadata.from_bytes(root.data, Root)
                for kid in signing_keyids(root_md.signed, role):
                    key = await self.keys.public_key(kid)
                    if key is not None:
                        return key
            return await self.keys.create_key(gun, role, self.key_algorithm)
        except Exception as exc:  # the key service is down or refuses: 503, not 500
            raise SigningUnavailableError(f"key service: {exc}") from exc

    async def rotate_key(self, gun: str, role: str) -> Key:
        try:
            return await self.keys.rotate_key(gun, role, self.key_algorithm)
        except Exception as exc:
            raise SigningUnavailableError(f"key service: {exc}") from exc

    # -- writes --------------------------------------------------------------

    async def update(
        self,
        gun: str,
        uploads: dict[str, bytes],
        *,
        documents: Mapping[str, Any] | None = None,
    ) -> list[StoredFile]:
        """Validate and store an upload. ``documents``: the uploads as
        :func:`vouch.tuf.canonical.loads` already parsed them, if the caller did."""
        now = timefmt.now()

        async def apply(state: RepoState) -> list[NewFile]:
            stored = {role: f.data for role, f in state.current.items()}
            versions = {role: f.version for role, f in state.current.items()}
            root_file = state.current.get(roles.ROOT)
            plan = validate_update(
                gun,
                stored,
                uploads,
                now,
                versions=versions,
                documents=documents,
                stored_root=self._parsed_root(root_file) if root_file else None,
            )
            out = [
                NewFile(role, md.signed.version, data) for role, (md, data) in plan.accepted.items()
            ]
            if plan.snapshot_uploaded:
                snap_bytes = uploads[roles.SNAPSHOT]
            else:
                held = await self._held_keys(plan.root.signed, roles.SNAPSHOT)
                if not held:
                    raise NoSigningKeyError(
                        "ErrBadHierarchy",
                        "no snapshot was included in update and server does not hold current "
                        "snapshot key for repository",
                        missing=roles.SNAPSHOT,
                    )
                snap_md = plan_snapshot(plan, stored.get(roles.SNAPSHOT), now)
                snap_bytes = await self._sign(snap_md, held)
                out.append(NewFile(roles.SNAPSHOT, snap_md.signed.version, snap_bytes))
            ts_md = plan_timestamp(
                snap_bytes,
                stored.get(roles.TIMESTAMP),
                now,
                previous_version=versions.get(roles.TIMESTAMP),
            )
            ts_keys = await self._held_keys(plan.root.signed, roles.TIMESTAMP, strict=True)
            out.append(
                NewFile(roles.TIMESTAMP, ts_md.signed.version, await self._sign(ts_md, ts_keys))
            )
            return out

        stored = await self.store.update(gun, apply)
        self._remember(stored)
        return stored

    def _remember_held(self, kid: str, now: float) -> None:
        """Remember that the key service holds ``kid``, for :data:`HELD_KEY_TTL` seconds.

        A key named by a root is held for the repository's life in practice; if
        one is deleted meanwhile, signing with it fails and the publish gets a
        503 instead of a 400, for at most that long."""
        self._held[kid] = now + HELD_KEY_TTL
        if len(self._held) > 8192:
            self._held = {k: t for k, t in self._held.items() if t > now}

    def _parsed_root(self, file: StoredFile) -> Metadata[Root]:
        """The stored root, parsed once per process (by its SHA-256; never modified)."""
        md = self._roots.get(file.sha256)
        if md is None:
            md = Metadata.from_bytes(file.data, Root)
            self._roots[file.sha256] = md
            if len(self._roots) > 1024:
                self._roots.popitem(last=False)
        else:
            self._roots.move_to_end(file.sha256)
        return md

    def _remember(self, stored: list[StoredFile]) -> None:
        if isinstance(self.reader, CachedReader):
            self.reader.remember(stored)

    async def delete(self, gun: str) -> None:
        await self.store.delete(gun)
        if isinstance(self.reader, CachedReader):
            self.reader.forget(gun)


__all__ = [
    "KeyService",
    "NotFoundError",
    "SigningUnavailableError",
    "TrustService",
    "UpdateError",
]
