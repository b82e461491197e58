"""A repository simulator: a Notary repository held in memory, signed with
real keys, whose files tests can serve as they are or tamper with.

It plays the part of a server (honest or hostile) for the trusted-set
attack tests, in the spirit of python-tuf's RepositorySimulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from vouch.crypto.certs import root_certificate
from vouch.crypto.privkey import PrivateKey
from vouch.tuf import build, roles
from vouch.tuf.keys import Key, certificate_key
from vouch.tuf.metadata import DelegatedRole, FileMeta, Metadata, Root, Snapshot, Targets
from vouch.tuf.trusted import TrustedSet


@dataclass
class Signing:
    """A private key and the public form metadata lists it under."""

    private: PrivateKey
    public: Key

    def signer(self):  # type: ignore[no-untyped-def]
        return self.private.signer(self.public)


def root_signing(gun: str, now: datetime, keytype: str = "ecdsa") -> Signing:
    key = PrivateKey.generate(keytype)
    return Signing(key, certificate_key([root_certificate(key, gun, now=now - timedelta(hours=1))]))


def bare_signing(keytype: str = "ecdsa") -> Signing:
    key = PrivateKey.generate(keytype)
    return Signing(key, key.public)


@dataclass
class RepoSim:
    gun: str = "example.com/sim/app"
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    keytype: str = "ecdsa"

    def __post_init__(self) -> None:
        self.signers: dict[str, list[Signing]] = {
            roles.ROOT: [root_signing(self.gun, self.now, self.keytype)],
            roles.TARGETS: [bare_signing(self.keytype)],
            roles.SNAPSHOT: [bare_signing(self.keytype)],
            roles.TIMESTAMP: [bare_signing(self.keytype)],
        }
        self.root: Root = build.root(
            {r: [s.public for s in ss] for r, ss in self.signers.items()}, self.now
        )
        self.root_signers: list[Signing] = list(self.signers[roles.ROOT])
        self.targets: dict[str, Targets] = {roles.TARGETS: build.targets(self.now)}
        self.snapshot_version = 0
        self.timestamp_version = 0
        self.files: dict[str, bytes] = {}
        self.root_history: list[bytes] = []
        self.sign_root()

    # -- root ----------------------------------------------------------------
    def sign_root(self, signers: list[Signing] | None = None) -> bytes:
        md = Metadata(self.root)
        md.sign(*[s.signer() for s in (signers or self.root_signers)])
        data = md.to_bytes()
        self.files[roles.ROOT] = data
        self.root_history.append(data)
        return data

    def rotate_root(self, keytype: str = "ecdsa", *, sign_with_old: bool = True) -> bytes:
        old = self.signers[roles.ROOT]
        new = [root_signing(self.gun, self.now, keytype)]
        self.root.roles[roles.ROOT].keyids = []
        for s in new:
            self.root.add_key(roles.ROOT, s.public)
        self.root.version += 1
        self.signers[roles.ROOT] = new
        self.root_signers = new + (old if sign_with_old else [])
        return self.sign_root()

    # -- targets ---------------------------------------------------------------
    def add_target(self, name: str, data: bytes, role: str = roles.TARGETS) -> None:
        self.targets[role].targets[name] = FileMeta.for_bytes(data)

    def delegate(
        self,
        name: str,
        paths: list[str] | None,
        *,
        parent: str = roles.TARGETS,
        keys: list[Signing] | None = None,
        threshold: int = 1,
        terminating: bool | None = None,
    ) -> list[Signing]:
        keys = keys or [bare_signing(self.keytype)]
        deleg = self.targets[parent].delegations
        assert deleg is not None
        for k in keys:
            deleg.keys[k.public.keyid] = k.public
        deleg.roles.append(
            DelegatedRole(
                name, [k.public.keyid for k in keys], threshold, paths, terminating=terminating
            )
        )
        self.signers[name] = keys
        self.targets[name] = build.targets(self.now, role=name)
        return keys

    # -- publishing ------------------------------------------------------------
    def sign_targets(self, role: str, *, bump: bool = True) -> bytes:
        md = Metadata(self.targets[role])
        if bump and role in self.files:
            md.signed.version += 1
        md.sign(*[s.signer() for s in self.signers[role]])
        data = md.to_bytes()
        self.files[role] = data
        return data

    def publish(self, *, roles_to_sign: list[str] | None = None) -> dict[str, bytes]:
        """Sign targets roles (all by default), then a new snapshot and timestamp."""
        for role in roles_to_sign or list(self.targets):
            self.sign_targets(role)
        self.sign_snapshot()
        self.sign_timestamp()
        return dict(self.files)

    def sign_snapshot(self, snapshot: Snapshot | None = None) -> bytes:
        if snapshot is None:
            self.snapshot_version += 1
            pinned = {r: d for r, d in self.files.items() if r not in ("snapshot", "timestamp")}
            snapshot = build.snapshot(pinned, self.now, version=self.snapshot_version)
        md = Metadata(snapshot)
        md.sign(*[s.signer() for s in self.signers[roles.SNAPSHOT]])
        self.files[roles.SNAPSHOT] = md.to_bytes()
        return self.files[roles.SNAPSHOT]

    def sign_timestamp(self, *, expires: datetime | None = None) -> bytes:
        self.timestamp_version += 1
        ts = build.timestamp(self.files[roles.SNAPSHOT], self.now, version=self.timestamp_version)
        if expires is not None:
            ts.set_expires(expires)
        md = Metadata(ts)
        md.sign(*[s.signer() for s in self.signers[roles.TIMESTAMP]])
        self.files[roles.TIMESTAMP] = md.to_bytes()
        return self.files[roles.TIMESTAMP]


def load_all(
    files: dict[str, bytes],
    gun: str,
    *,
    root: bytes | None = None,
    now: datetime | None = None,
    floors: dict[str, int] | None = None,
) -> TrustedSet:
    """Drive a TrustedSet through a full update the way a client would."""
    ts = TrustedSet(gun, root or files[roles.ROOT], now=now, floors=floors)
    if root is not None and root != files[roles.ROOT]:
        ts.update_root(files[roles.ROOT])
    ts.update_timestamp(files[roles.TIMESTAMP])
    ts.update_snapshot(files[roles.SNAPSHOT])
    ts.update_targets(files[roles.TARGETS])
    pending = [d.name for d in ts.delegations_of(roles.TARGETS)]
    while pending:
        name = pending.pop(0)
        if name in files:
            ts.update_delegated_targets(files[name], name)
            pending.extend(d.name for d in ts.delegations_of(name))
    return ts
