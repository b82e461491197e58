"""Constructors for fresh metadata with Notary's defaults.

Pure functions: they build typed objects; signing goes through the
:class:`~vouch.tuf.metadata.Signer` protocol, so the same code serves the
client (local keys), the server (its key service) and the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final

from vouch.tuf import roles
from vouch.tuf.keys import Key
from vouch.tuf.metadata import (
    Delegations,
    FileMeta,
    RoleKeys,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

# Notary's default lifetimes (a year is 365 days), as both binaries set them.
DEFAULT_EXPIRY: Final = {
    roles.ROOT: timedelta(days=3650),
    roles.TARGETS: timedelta(days=1095),
    roles.SNAPSHOT: timedelta(days=1095),
    roles.TIMESTAMP: timedelta(days=14),
}


def expiry_for(role: str, now: datetime) -> datetime:
    base = role if role in DEFAULT_EXPIRY else roles.TARGETS
    return now + DEFAULT_EXPIRY[base]


def root(
    role_keys: Mapping[str, Iterable[Key]],
    now: datetime,
    *,
    version: int = 1,
    thresholds: Mapping[str, int] | None = None,
) -> Root:
    """A root listing the given keys for each of the four base roles."""
    md = Root(version, "", {}, {}, False)
    md.set_expires(expiry_for(roles.ROOT, now))
    for role in roles.BASE_ROLES:
        keys = list(role_keys.get(role, ()))
        if not keys:
            raise ValueError(f"root needs at least one {role} key")
        md.roles[role] = RoleKeys([], (thresholds or {}).get(role, 1))
        for key in keys:
            md.add_key(role, key)
    return md


def targets(now: datetime, *, version: int = 1, role: str = roles.TARGETS) -> Targets:
    md = Targets(version, "", {}, Delegations())
    md.set_expires(expiry_for(role, now))
    return md


def snapshot(files: Mapping[str, bytes], now: datetime, *, version: int = 1) -> Snapshot:
    """A snapshot pinning the envelope bytes of root, targets and delegations."""
    md = Snapshot(version, "", {name: FileMeta.for_bytes(data) for name, data in files.items()})
    md.set_expires(expiry_for(roles.SNAPSHOT, now))
    return md


def timestamp(snapshot_bytes: bytes, now: datetime, *, version: int = 1) -> Timestamp:
    md = Timestamp(version, "", {roles.SNAPSHOT: FileMeta.for_bytes(snapshot_bytes)})
    md.set_expires(expiry_for(roles.TIMESTAMP, now))
    return md
