"""The trusted set: one repository's verified metadata and the rules to extend it.

This is the client's whole security model in one place, free of I/O: the
caller fetches bytes however it likes and hands them in; each ``update_*``
either accepts them (and they become trusted) or raises a
:class:`~vouch.tuf.errors.TrustError` naming the rule that refused them.

Order is enforced: root (and its rotations) → timestamp → snapshot →
targets → delegations, each bound to its parent by hashes so files from
different repository states cannot be mixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vouch.tuf import certs, roles, timefmt
from vouch.tuf.errors import (
    CertificateError,
    ExpiredError,
    HashMismatchError,
    RoleError,
    RollbackError,
    SignatureError,
    TrustError,
)
from vouch.tuf.keys import Key
from vouch.tuf.metadata import (
    DelegatedRole,
    FileMeta,
    Metadata,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from vouch.tuf.pinning import TrustPinning

# Bounds the delegation walk so a hostile tree cannot make a lookup endless.
MAX_DELEGATIONS = 10_000


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """A target as the client sees it: its meta and the role that vouches for it."""

    name: str
    meta: FileMeta
    role: str


def _root_keys(root: Root, gun: str, now: datetime, *, check_expiry: bool) -> dict[str, Key]:
    listed = root.role_keys(roles.ROOT)
    return certs.valid_root_keys(listed.values(), gun, now, check_expiry=check_expiry)


def verify_root_signatures(
    md: Metadata[Root], trusted_keys: dict[str, Key], threshold: int, what: str
) -> None:
    if not trusted_keys:
        raise CertificateError(
            f"could not validate the path to a trusted root: unable to retrieve valid "
            f"leaf certificates ({what})"
        )
    md.verified_keyids(trusted_keys, threshold, what)


class TrustedSet:
    """Verified metadata of one GUN.

    ``root`` is the trust anchor: either read from the local cache
    (``bootstrap=False``: expired metadata is allowed but its certificates
    must be valid) or downloaded on first contact (``bootstrap=True``: it
    must also satisfy ``pinning``). ``floors`` carries the lowest acceptable
    version per role, taken from what the client trusted before, so a server
    cannot roll a client back across runs.
    """

    def __init__(
        self,
        gun: str,
        root: bytes,
        *,
        now: datetime | None = None,
        bootstrap: bool = False,
        pinning: TrustPinning | None = None,
        floors: dict[str, int] | None = None,
    ) -> None:
        self.gun = gun
        self.now = now or timefmt.now()
        self.floors = dict(floors or {})
        md = Metadata.from_bytes(root, Root)
        root_md: Metadata[Root] = md
        valid = _root_keys(root_md.signed, gun, self.now, check_expiry=True)
        if bootstrap:
            valid = (pinning or TrustPinning()).select(gun, valid, self.now)
        spec = root_md.signed.roles[roles.ROOT]
        try:
            verify_root_signatures(root_md, valid, spec.threshold, "root")
        except SignatureError as exc:
            raise SignatureError(
                f"could not validate the path to a trusted root: failed to validate "
                f"integrity of roots: {exc}"
            ) from exc
        self._check_floor(roles.ROOT, root_md.signed.version)
        self.root: Metadata[Root] = root_md
        self.root_bytes = root
        self.timestamp: Metadata[Timestamp] | None = None
        self.snapshot: Metadata[Snapshot] | None = None
        self.targets: dict[str, Metadata[Targets]] = {}
        # Loaded roles never change, so what they declare and the effective
        # (path-restricted) form of each delegation can be computed once.
        self._declared_by: dict[str, dict[str, DelegatedRole]] = {}
        self._effective_of: dict[str, DelegatedRole] = {}

    # -- helpers -----------------------------------------------------------

    def _check_floor(self, role: str, version: int) -> None:
        floor = self.floors.get(role)
        if floor is not None and version < floor:
            raise RollbackError(f"{role} version {version} is older than trusted version {floor}")

    def _check_expiry(self, role: str, md: Metadata[Any]) -> None:
        if md.signed.is_expired(self.now):
            raise ExpiredError(f"{role} expired at {md.signed.expires}")

    def _role_spec(self, role: str) -> tuple[dict[str, Key], int]:
        spec = self.root.signed.roles[role]
        return self.root.signed.role_keys(role), spec.threshold

    # -- root --------------------------------------------------------------

    def update_root(self, data: bytes) -> Metadata[Root]:
        """Rotate to the next root: version + 1, signed by a threshold of the
        current root's keys *and* a threshold of its own keys."""
        if self.timestamp is not None:
            raise TrustError("root can only be updated before the timestamp is loaded")
        new: Metadata[Root] = Metadata.from_bytes(data, Root)
        old = self.root.signed
        old_keys = _root_keys(old, self.gun, self.now, check_expiry=False)
        try:
            verify_root_signatures(new, old_keys, old.roles[roles.ROOT].threshold, "root")
        except (SignatureError, CertificateError) as exc:
            raise SignatureError(
                f"could not rotate trust to a new trusted root: failed to validate data "
                f"with current trusted certificates: {exc}"
            ) from exc
        if new.signed.version != old.version + 1:
            raise RollbackError(f"root version must be {old.version + 1}, got {new.signed.version}")
        new_keys = _root_keys(new.signed, self.gun, self.now, check_expiry=True)
        verify_root_signatures(new, new_keys, new.signed.roles[roles.ROOT].threshold, "root")
        self.root = new
        self.root_bytes = data
        self.floors[roles.ROOT] = new.signed.version
        return new

    # -- timestamp ---------------------------------------------------------

    def update_timestamp(self, data: bytes) -> Metadata[Timestamp]:
        """Accept a timestamp signed by root's timestamp role, not older than trusted.

        An expired timestamp is still recorded (it keeps its rollback floor)
        before :class:`ExpiredError` is raised.
        """
        if self.snapshot is not None:
            raise TrustError("timestamp cannot change after the snapshot is loaded")
        self._check_expiry("root", self.root)
        new: Metadata[Timestamp] = Metadata.from_bytes(data, Timestamp)
        keys, threshold = self._role_spec(roles.TIMESTAMP)
        new.verified_keyids(keys, threshold, roles.TIMESTAMP)
        self._check_floor(roles.TIMESTAMP, new.signed.version)
        old = self.timestamp
        if old is not None:
            if new.signed.version < old.signed.version:
                raise RollbackError(
                    f"timestamp version {new.signed.version} < trusted {old.signed.version}"
                )
            if new.signed.version == old.signed.version and not new.signed.meta[
                roles.SNAPSHOT
            ].same_content(old.signed.meta[roles.SNAPSHOT]):
                raise RollbackError("timestamp changed content without a new version")
        self.timestamp = new
        self._check_expiry(roles.TIMESTAMP, new)
        return new

    # -- snapshot ----------------------------------------------------------

    def update_snapshot(self, data: bytes) -> Metadata[Snapshot]:
        """Accept the snapshot the timestamp pins (by hash and length)."""
        if self.timestamp is None:
            raise TrustError("load the timestamp before the snapshot")
        if self.targets:
            raise TrustError("snapshot cannot change after targets are loaded")
        self._check_expiry(roles.TIMESTAMP, self.timestamp)
        self.timestamp.signed.meta[roles.SNAPSHOT].verify(data, "snapshot")
        new: Metadata[Snapshot] = Metadata.from_bytes(data, Snapshot)
        keys, threshold = self._role_spec(roles.SNAPSHOT)
        new.verified_keyids(keys, threshold, roles.SNAPSHOT)
        self._check_floor(roles.SNAPSHOT, new.signed.version)
        if self.snapshot is not None and new.signed.version < self.snapshot.signed.version:
            raise RollbackError("snapshot is older than the trusted one")
        try:
            new.signed.meta[roles.ROOT].verify(self.root_bytes, "root")
        except HashMismatchError as exc:
            raise HashMismatchError(f"snapshot does not pin the trusted root: {exc}") from exc
        self.snapshot = new
        self._check_expiry(roles.SNAPSHOT, new)
        return new

    # -- targets and delegations ------------------------------------------

    def _snapshot_meta(self, role: str) -> FileMeta:
        if self.snapshot is None:
            raise TrustError("load the snapshot before targets")
        self._check_expiry(roles.SNAPSHOT, self.snapshot)
        meta = self.snapshot.signed.meta.get(role)
        if meta is None:
            raise RoleError(f"snapshot has no entry for {role}")
        return meta

    def update_targets(self, data: bytes) -> Metadata[Targets]:
        return self.update_delegated_targets(data, roles.TARGETS)

    def update_delegated_targets(self, data: bytes, role: str) -> Metadata[Targets]:
        """Accept ``role``'s targets file: pinned by the snapshot, signed by the
        keys its parent delegates to (root's targets keys for ``targets``)."""
        if role in self.targets:
            raise TrustError(f"{role} is already loaded")
        if role == roles.TARGETS:
            keys, threshold = self._role_spec(roles.TARGETS)
        else:
            roles.check_delegation_name(role)
            parent_name = roles.parent_of(role)
            parent = self.targets.get(parent_name)
            if parent is None:
                raise TrustError(f"load {parent_name} before {role}")
            spec = self._declared(parent_name).get(role)
            if spec is None or parent.signed.delegations is None:
                raise RoleError(f"tuf: invalid role {role}. delegation does not exist")
            deleg_keys = parent.signed.delegations.keys
            keys = {kid: deleg_keys[kid] for kid in spec.keyids if kid in deleg_keys}
            threshold = spec.threshold
        self._snapshot_meta(role).verify(data, role)
        new: Metadata[Targets] = Metadata.from_bytes(data, Targets)
        new.verified_keyids(keys, threshold, role)
        self._check_floor(role, new.signed.version)
        new.signed.check_delegations(role)
        self._check_expiry(role, new)
        self.targets[role] = new
        return new

    # -- queries -----------------------------------------------------------

    def _declared(self, role: str) -> dict[str, DelegatedRole]:
        """Delegations a loaded role declares, by name (the first wins)."""
        found = self._declared_by.get(role)
        if found is None:
            md = self.targets.get(role)
            if md is None or md.signed.delegations is None:
                return {}
            found = {}
            for child in md.signed.delegations.roles:
                found.setdefault(child.name, child)
            self._declared_by[role] = found
        return found

    def delegations_of(self, role: str) -> list[DelegatedRole]:
        """``role``'s children as trusted, their paths restricted by ``role``'s own."""
        return [self._effective(name) for name in self._declared(role)]

    def _effective(self, role: str) -> DelegatedRole:
        """A delegation with its paths cut to those its parent may delegate.

        Like Notary, a child path survives only if one of the parent's paths
        is a prefix of it; hash prefixes are checked along the whole chain
        at lookup time instead.
        """
        hit = self._effective_of.get(role)
        if hit is not None:
            return hit
        parent = roles.parent_of(role)
        declared = self._declared(parent).get(role)
        if declared is None:
            raise RoleError(f"{role} is not delegated")
        child = declared
        if parent != roles.TARGETS and declared.paths is not None:
            parent_paths = self._effective(parent).paths or []
            child = DelegatedRole(
                declared.name,
                declared.keyids,
                declared.threshold,
                [p for p in declared.paths if any(p.startswith(q) for q in parent_paths)],
                declared.path_hash_prefixes,
                declared.terminating,
            )
        self._effective_of[role] = child
        return child

    def walk(self) -> Iterator[tuple[str, list[DelegatedRole]]]:
        """Loaded roles in Notary's order (pre-order, depth-first), each with
        the chain of delegations leading to it (top-level first)."""
        stack: list[tuple[str, list[DelegatedRole]]] = [(roles.TARGETS, [])]
        seen = 0
        while stack:
            name, chain = stack.pop()
            if name not in self.targets:
                continue
            seen += 1
            if seen > MAX_DELEGATIONS + 1:  # the top-level targets role is not a delegation
                raise TrustError(f"more than {MAX_DELEGATIONS} delegated roles")
            yield name, chain
            children = self.delegations_of(name)
            stack.extend((c.name, [*chain, c]) for c in reversed(children))

    def all_targets(self) -> dict[str, TargetInfo]:
        """Every target a client may use: first role in walk order wins,
        names outside a role's delegated paths are ignored."""
        out: dict[str, TargetInfo] = {}
        closed: list[DelegatedRole] = []
        for name, chain in self.walk():
            entries = self.targets[name].signed.targets
            if not chain and not closed:  # the top-level role: no paths to check
                for tname, meta in entries.items():
                    if tname not in out:
                        out[tname] = TargetInfo(tname, meta, name)
                continue
            for tname, meta in entries.items():
                if tname in out or not all(d.matches(tname) for d in chain):
                    continue
                if any(t.matches(tname) and t not in chain for t in closed):
                    continue
                out[tname] = TargetInfo(tname, meta, name)
            if chain and chain[-1].terminating:
                closed.append(chain[-1])
        return out

    def find_target(self, target: str) -> TargetInfo | None:
        """The first trusted entry for ``target`` in walk order, honouring
        delegated paths and terminating roles."""
        for name, chain in self.walk():
            if not all(d.matches(target) for d in chain):
                continue
            meta = self.targets[name].signed.targets.get(target)
            if meta is not None:
                return TargetInfo(target, meta, name)
            if chain and chain[-1].terminating:
                # Only this role's own descendants may still answer.
                return self._find_below(name, target)
        return None

    def find_all(self, target: str) -> list[TargetInfo]:
        """Every role that trustworthily lists ``target``, in walk order.

        Used for signer requirements ("targets/releases must have signed
        this tag"): delegated paths are honoured, terminating roles are not,
        since each entry is judged by who signed it.
        """
        out = []
        for name, chain in self.walk():
            if not all(d.matches(target) for d in chain):
                continue
            meta = self.targets[name].signed.targets.get(target)
            if meta is not None:
                out.append(TargetInfo(target, meta, name))
        return out

    def _find_below(self, role: str, target: str) -> TargetInfo | None:
        for name, chain in self.walk():
            if name.startswith(role + "/") and all(d.matches(target) for d in chain):
                meta = self.targets[name].signed.targets.get(target)
                if meta is not None:
                    return TargetInfo(target, meta, name)
        return None
