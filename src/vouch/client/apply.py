"""Applying staged changes to a working copy of a repository, and signing it.

Pure functions over the core's models: a :class:`Working` copy holds the
root, the targets roles and the snapshot as they will be published; changes
from the changelist edit it; :func:`sign_working` bumps versions and signs
every edited role with whatever keys the caller can provide. Nothing here
touches the network or the disk.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from vouch.client.changelist import DelegationData
from vouch.tuf import build, roles
from vouch.tuf.errors import RoleError, TrustError
from vouch.tuf.keys import Key
from vouch.tuf.metadata import (
    DelegatedRole,
    Delegations,
    FileMeta,
    Metadata,
    Root,
    Signer,
    Snapshot,
    Targets,
)

# The notary client re-signs root on publish when it expires within this.
ROOT_RESIGN_WINDOW = timedelta(days=182)


class ChangeError(TrustError):
    """A staged change that cannot be applied (unknown role, path not delegated...)."""


@dataclass
class Working:
    """What the next publish will upload: editable copies of the signed content."""

    gun: str
    root: Root
    root_bytes: bytes
    targets: dict[str, Targets]
    snapshot: Snapshot | None
    files: dict[str, bytes] = field(default_factory=dict)  # current bytes of unchanged roles
    dirty: set[str] = field(default_factory=set)

    @classmethod
    def from_files(cls, gun: str, files: dict[str, bytes]) -> Working:
        """A working copy of trusted files (role → bytes)."""
        root: Metadata[Root] = Metadata.from_bytes(files[roles.ROOT], Root)
        targets: dict[str, Targets] = {}
        for role, data in files.items():
            if role == roles.TARGETS or roles.is_delegation(role):
                targets[role] = copy.deepcopy(Metadata.from_bytes(data, Targets).signed)
        snap = files.get(roles.SNAPSHOT)
        snapshot = (
            copy.deepcopy(Metadata.from_bytes(snap, Snapshot).signed) if snap is not None else None
        )
        root_model = copy.deepcopy(root.signed)
        return cls(gun, root_model, files[roles.ROOT], targets, snapshot, dict(files))

    # -- targets -----------------------------------------------------------

    def role_targets(self, role: str, *, create: bool = False, now: datetime) -> Targets:
        found = self.targets.get(role)
        if found is not None:
            return found
        if role != roles.TARGETS and self._declaration(role) is not None and create:
            fresh = build.targets(now, role=role)
            fresh.version = 0  # becomes 1 when signed
            self.targets[role] = fresh
            return fresh
        raise ChangeError(f"role {role} does not exist in {self.gun}")

    def _declaration(self, role: str) -> DelegatedRole | None:
        parent = self.targets.get(roles.parent_of(role))
        if parent is None or parent.delegations is None:
            return None
        return parent.delegations.role(role)

    def add_target(self, role: str, name: str, meta: FileMeta, now: datetime) -> None:
        if role != roles.TARGETS:
            decl = self._declaration(role)
            if decl is None:
                raise ChangeError(f"role {role} is not delegated in {self.gun}")
            if not decl.matches(name):
                raise ChangeError(f"{role} may not sign {name!r}: outside its delegated paths")
        self.role_targets(role, create=True, now=now).targets[name] = meta
        self.dirty.add(role)

    def remove_target(self, role: str, name: str, now: datetime) -> None:
        t = self.role_targets(role, now=now)
        if t.targets.pop(name, None) is not None:
            self.dirty.add(role)

    # -- delegations -------------------------------------------------------

    def update_delegation(self, role: str, data: DelegationData) -> None:
        """Create or edit a delegation in its parent (keys, paths, threshold)."""
        try:
            roles.check_delegation_name(role)
        except RoleError as exc:
            raise ChangeError(str(exc)) from exc
        parent_name = roles.parent_of(role)
        parent = self.targets.get(parent_name)
        if parent is None:
            raise ChangeError(f"parent role {parent_name} of {role} does not exist")
        if parent.delegations is None:
            parent.delegations = Delegations()
        deleg = parent.delegations
        spec = deleg.role(role)
        if spec is None:
            spec = DelegatedRole(role, [], 1, [])
            deleg.roles.append(spec)
        for key in data.add_keys:
            deleg.keys[key.keyid] = key
            if key.keyid not in spec.keyids:
                spec.keyids.append(key.keyid)
        for bare in data.remove_keys:
            spec.keyids = [
                k for k in spec.keyids if k != bare and deleg.keys[k].canonical_keyid() != bare
            ]
        paths = [] if data.clear_paths else list(spec.paths or [])
        for p in data.add_paths:
            if p not in paths:
                paths.append(p)
        remove = set(data.remove_paths)
        spec.paths = [p for p in paths if p not in remove]
        if data.threshold:
            spec.threshold = data.threshold
        _prune_keys(deleg)
        self.dirty.add(parent_name)

    def delete_delegation(self, role: str) -> None:
        parent_name = roles.parent_of(role)
        parent = self.targets.get(parent_name)
        if parent is None or parent.delegations is None or parent.delegations.role(role) is None:
            raise ChangeError(f"delegation {role} does not exist")
        parent.delegations.roles = [r for r in parent.delegations.roles if r.name != role]
        _prune_keys(parent.delegations)
        for name in [r for r in self.targets if r == role or r.startswith(role + "/")]:
            del self.targets[name]
            self.dirty.discard(name)
            if self.snapshot is not None:
                self.snapshot.meta.pop(name, None)
        self.dirty.add(parent_name)

    def remove_keys_everywhere(self, key_ids: list[str]) -> None:
        """``delegation purge``: drop the keys from every delegation of every role."""
        for name, t in self.targets.items():
            if t.delegations is None:
                continue
            before = [list(r.keyids) for r in t.delegations.roles]
            for spec in t.delegations.roles:
                spec.keyids = [
                    k
                    for k in spec.keyids
                    if k not in key_ids and t.delegations.keys[k].canonical_keyid() not in key_ids
                ]
            if before != [r.keyids for r in t.delegations.roles]:
                _prune_keys(t.delegations)
                self.dirty.add(name)


def _prune_keys(deleg: Delegations) -> None:
    """Drop delegation keys no role uses any more, as the notary client does."""
    used = {k for r in deleg.roles for k in r.keyids}
    deleg.keys = {k: v for k, v in deleg.keys.items() if k in used}


SignerLookup = Callable[[str, dict[str, Key]], list[Signer]]


@dataclass
class SignedUpload:
    files: dict[str, bytes]  # role → bytes to upload
    roles_signed: list[str]


def sign_working(
    work: Working,
    signers_for: SignerLookup,
    now: datetime,
    *,
    include_root: bool = False,
    sign_snapshot: bool = True,
) -> SignedUpload:
    """Sign every dirty role (version + 1, default expiry), root if needed, and
    the snapshot when its key is available. Returns the files to upload."""
    upload: dict[str, bytes] = {}
    signed_roles: list[str] = []
    resign_root = roles.ROOT in work.dirty or (work.root.expires_at - now) < ROOT_RESIGN_WINDOW
    if resign_root:
        signers = signers_for(roles.ROOT, work.root.role_keys(roles.ROOT))
        if not signers:
            raise ChangeError("no root key available to sign root")
        work.root.version += 1
        work.root.set_expires(build.expiry_for(roles.ROOT, now))
        md_root: Metadata[Root] = Metadata(work.root)
        md_root.sign(*signers)
        work.root_bytes = md_root.to_bytes()
        signed_roles.append(roles.ROOT)
    if include_root or roles.ROOT in signed_roles:
        upload[roles.ROOT] = work.root_bytes
    work.files[roles.ROOT] = work.root_bytes

    for role in sorted(work.dirty - {roles.ROOT}, key=lambda r: (r.count("/"), r)):
        t = work.targets.get(role)
        if t is None:
            continue
        keys = _role_keys(work, role)
        signers = signers_for(role, keys)
        if not signers:
            raise ChangeError(f"no key available to sign {role}")
        t.version += 1
        t.set_expires(build.expiry_for(role, now))
        md: Metadata[Targets] = Metadata(t)
        md.sign(*signers)
        upload[role] = work.files[role] = md.to_bytes()
        signed_roles.append(role)

    if sign_snapshot:
        snap_signers = signers_for(roles.SNAPSHOT, work.root.role_keys(roles.SNAPSHOT))
        if snap_signers:
            meta = dict(work.snapshot.meta) if work.snapshot is not None else {}
            for role, data in work.files.items():
                if role not in (roles.SNAPSHOT, roles.TIMESTAMP):
                    meta[role] = FileMeta.for_bytes(data)
            version = (work.snapshot.version if work.snapshot is not None else 0) + 1
            snap = Snapshot(version, "", meta)
            snap.set_expires(build.expiry_for(roles.SNAPSHOT, now))
            md_snap: Metadata[Snapshot] = Metadata(snap)
            md_snap.sign(*snap_signers)
            upload[roles.SNAPSHOT] = md_snap.to_bytes()
            work.snapshot = snap
            signed_roles.append(roles.SNAPSHOT)
    return SignedUpload(upload, signed_roles)


def _role_keys(work: Working, role: str) -> dict[str, Key]:
    if role == roles.TARGETS:
        return work.root.role_keys(roles.TARGETS)
    parent = work.targets.get(roles.parent_of(role))
    if parent is None or parent.delegations is None:
        raise RoleError(f"{role} has no parent")
    spec = parent.delegations.role(role)
    if spec is None:
        raise RoleError(f"{role} is not delegated")
    return {k: parent.delegations.keys[k] for k in spec.keyids if k in parent.delegations.keys}
