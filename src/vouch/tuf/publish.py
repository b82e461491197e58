"""The server's rules for accepting a publish, sans I/O.

notary-server validates an upload against what it stores before keeping it;
this module is that validation, plus the plan for the files the server must
add (its own snapshot when the client sent none, and always a timestamp).
The server layer supplies the stored bytes and the signatures; everything
that decides *whether* an update is acceptable lives here.

Where notary-server is weaker than it should be, we are stricter, and say so:

* content outside ``signed``/``signatures`` is refused (Cure53 TUF-01-001:
  unsigned content that is stored verbatim could brick a repository);
* versions may not jump by more than :data:`MAX_VERSION_JUMP` and must stay
  below :data:`MAX_VERSION` (TUF-01-002: a key holder could otherwise push a
  version that leaves no room for the next one);
* the stored root's certificates are not checked for expiry when it is used
  to authorise a *rotation*, so a repository whose root certificate expired
  can be recovered by rotating the root key (notary bricks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vouch.tuf import certs, roles
from vouch.tuf.build import expiry_for
from vouch.tuf.canonical import MAX_SAFE_INT, loads
from vouch.tuf.errors import (
    CertificateError,
    FormatError,
    HashMismatchError,
    RoleError,
    SignatureError,
    TrustError,
)
from vouch.tuf.keys import Key
from vouch.tuf.metadata import FileMeta, Metadata, Root, Snapshot, Targets, Timestamp

MAX_VERSION_JUMP = 1_000_000
MAX_VERSION = MAX_SAFE_INT - MAX_VERSION_JUMP


class UpdateError(TrustError):
    """An upload notary-server would refuse with 400 ``INVALID_UPDATE``.

    ``name`` is notary's serialisable error name (``ErrValidation``,
    ``ErrBadRoot``, ``ErrBadTargets``, ``ErrBadSnapshot``, ``ErrBadHierarchy``)
    which the notary CLI renders for its user.
    """

    def __init__(self, name: str, msg: str, missing: str | None = None) -> None:
        super().__init__(msg)
        self.name = name
        self.msg = msg
        self.missing = missing

    def detail(self) -> dict[str, Any]:
        error: dict[str, Any] = {"Msg": self.msg}
        if self.missing is not None:
            error = {"Missing": self.missing, "Msg": self.msg}
        return {"Name": self.name, "Error": error}


class NoSigningKeyError(UpdateError):
    """The server must sign a role but holds none of the keys root names for it."""


@dataclass
class UpdatePlan:
    """What an accepted upload amounts to.

    ``accepted`` maps each uploaded role (timestamp excluded) to its parsed
    metadata and exact bytes. ``snapshot`` is the snapshot that will be
    current: the uploaded one, or ``None`` when the server must generate one
    (see :func:`plan_snapshot`).
    """

    gun: str
    root: Metadata[Root]
    root_bytes: bytes
    accepted: dict[str, tuple[Metadata[Any], bytes]] = field(default_factory=dict)
    loaded: dict[str, bytes] = field(default_factory=dict)
    snapshot_uploaded: bool = False


_UNPARSED: Any = object()


def _parse(role: str, data: bytes, doc: Any = _UNPARSED) -> Metadata[Any]:
    """Parse an uploaded file strictly: nothing outside the signed part.

    ``doc``: the file as :func:`loads` already parsed it, if the caller did."""
    if doc is _UNPARSED:
        try:
            doc = loads(data)
        except FormatError as exc:
            raise UpdateError("ErrValidation", f"{role}: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"signed", "signatures"}:
        extra = sorted(set(doc) - {"signed", "signatures"}) if isinstance(doc, dict) else []
        raise UpdateError(
            "ErrValidation",
            f"{role}: metadata must hold exactly 'signed' and 'signatures' "
            f"(unsigned content: {extra})",
        )
    sigs = doc["signatures"]
    if isinstance(sigs, list):
        for sig in sigs:
            if not isinstance(sig, dict) or set(sig) - {"keyid", "method", "sig"}:
                raise UpdateError("ErrValidation", f"{role}: malformed signature entry")
    expected = roles.TYPE_OF.get(role, "Targets")
    try:
        md = Metadata.from_document(doc, data)
    except (FormatError, RoleError) as exc:
        raise UpdateError(_err_name(role), f"{role}: {exc}") from exc
    if expected != md.signed.TYPE:
        raise UpdateError(_err_name(role), f"{role} metadata has type {md.signed.TYPE}")
    for sig in md.signatures:
        try:
            _ = sig.signature_bytes
        except FormatError as exc:
            raise UpdateError(_err_name(role), f"{role}: {exc}") from exc
    return md


def _err_name(role: str) -> str:
    if role == roles.ROOT:
        return "ErrBadRoot"
    if role == roles.SNAPSHOT:
        return "ErrBadSnapshot"
    if role == roles.TIMESTAMP:
        return "ErrValidation"
    return "ErrBadTargets"


def _stored_version(stored: dict[str, bytes], versions: Mapping[str, int] | None, role: str) -> int:
    """The stored version of ``role`` (0 if none), without parsing when the
    caller already knows it (a storage row carries it)."""
    if role not in stored:
        return 0
    if versions is not None and role in versions:
        return versions[role]
    return int(Metadata.from_bytes(stored[role]).signed.version)


def _check_version(role: str, md: Metadata[Any], base: int) -> None:
    version = md.signed.version
    if version > MAX_VERSION or version > base + MAX_VERSION_JUMP:
        raise UpdateError(
            _err_name(role),
            f"{role} version {version} jumps too far (current {base}, at most +{MAX_VERSION_JUMP})",
        )


def _valid_root_keys(root: Root, gun: str, now: datetime, *, check_expiry: bool) -> dict[str, Key]:
    listed = root.role_keys(roles.ROOT)
    return certs.valid_root_keys(listed.values(), gun, now, check_expiry=check_expiry)


def _check_root(gun: str, new: Metadata[Root], old: Metadata[Root] | None, now: datetime) -> None:
    """Root rules (§6.3): valid leaf certificates for the GUN, signed by a
    threshold of its own keys and, on rotation, of the previous root's keys."""
    own = _valid_root_keys(new.signed, gun, now, check_expiry=True)
    if not own:
        raise UpdateError(
            "ErrBadRoot",
            "could not validate the path to a trusted root: "
            "unable to retrieve valid leaf certificates",
        )
    if old is not None:
        prev = _valid_root_keys(old.signed, gun, now, check_expiry=False)
        try:
            new.verified_keyids(prev, old.signed.roles[roles.ROOT].threshold, roles.ROOT)
        except SignatureError as exc:
            raise UpdateError(
                "ErrBadRoot",
                "could not rotate trust to a new trusted root: failed to validate data with "
                f"current trusted certificates ({exc})",
            ) from exc
    try:
        new.verified_keyids(own, new.signed.roles[roles.ROOT].threshold, roles.ROOT)
    except SignatureError as exc:
        raise UpdateError(
            "ErrBadRoot",
            "could not validate the path to a trusted root: "
            f"failed to validate integrity of roots ({exc})",
        ) from exc
    if new.signed.is_expired(now):
        raise UpdateError("ErrBadRoot", f"root expired at {new.signed.expires}")


def validate_update(
    gun: str,
    stored: dict[str, bytes],
    uploads: dict[str, bytes],
    now: datetime,
    *,
    versions: Mapping[str, int] | None = None,
    documents: Mapping[str, Any] | None = None,
    stored_root: Metadata[Root] | None = None,
) -> UpdatePlan:
    """Check an upload against the GUN's stored current files.

    ``stored`` maps role → current bytes (``versions``, if given, their
    versions); ``uploads`` maps role → uploaded
    bytes (role names already checked by the caller). A ``timestamp`` upload
    is ignored, as notary-server ignores it. Raises :class:`UpdateError`.

    Callers that already parsed something may pass it, to save parsing it again:
    ``documents`` (role → the upload as :func:`loads` parsed it) and
    ``stored_root`` (``stored["root"]`` parsed, and not modified since).
    """
    # An empty update is valid: the server re-signs what it holds.
    uploads = {r: d for r, d in uploads.items() if r != roles.TIMESTAMP}
    docs = documents or {}
    parsed = {role: _parse(role, data, docs.get(role, _UNPARSED)) for role, data in uploads.items()}

    # 1. The root in effect.
    old_root: Metadata[Root] | None = None
    if roles.ROOT in stored:
        old_root = stored_root or Metadata.from_bytes(stored[roles.ROOT], Root)
    if roles.ROOT in parsed:
        new_root: Metadata[Root] = parsed[roles.ROOT]
        current = old_root.signed.version if old_root is not None else 1
        if new_root.signed.version not in (current, current + 1):
            raise UpdateError(
                "ErrBadRoot",
                "Root modifications must increment the version. "
                f"Current {current}, new {new_root.signed.version}",
            )
        _check_root(gun, new_root, old_root, now)
        root, root_bytes = new_root, uploads[roles.ROOT]
    elif old_root is not None:
        if not _valid_root_keys(old_root.signed, gun, now, check_expiry=True):
            raise UpdateError(
                "ErrBadRoot",
                "the stored root's certificates are no longer valid (expired?): "
                "rotate the root key to recover the repository",
            )
        root, root_bytes = old_root, stored[roles.ROOT]
    else:
        raise UpdateError("ErrValidation", "no pre-existing root and no root provided in update.")

    plan = UpdatePlan(gun, root, root_bytes)
    plan.loaded[roles.ROOT] = root_bytes
    if roles.ROOT in parsed:
        plan.accepted[roles.ROOT] = (root, root_bytes)

    # 2. Targets and delegations, shallowest first, against their parents.
    targets_roles = sorted(
        (r for r in parsed if r == roles.TARGETS or roles.is_delegation(r)),
        key=lambda r: (r.count("/"), r),
    )
    trusted_targets: dict[str, Metadata[Targets]] = {}

    def load_targets(role: str) -> Metadata[Targets] | None:
        if role in trusted_targets:
            return trusted_targets[role]
        if role in stored:
            md: Metadata[Targets] = Metadata.from_bytes(stored[role], Targets)
            trusted_targets[role] = md
            plan.loaded[role] = stored[role]
            return md
        return None

    for role in targets_roles:
        md = parsed[role]
        if role == roles.TARGETS:
            keys = root.signed.role_keys(roles.TARGETS)
            threshold = root.signed.roles[roles.TARGETS].threshold
        else:
            parent_name = roles.parent_of(role)
            parent = load_targets(parent_name)
            spec = None
            if parent is not None and parent.signed.delegations is not None:
                spec = parent.signed.delegations.role(role)
            if parent is None or spec is None or parent.signed.delegations is None:
                raise UpdateError(
                    "ErrBadTargets", f"tuf: invalid role {role}. delegation does not exist"
                )
            dkeys = parent.signed.delegations.keys
            keys = {kid: dkeys[kid] for kid in spec.keyids if kid in dkeys}
            threshold = spec.threshold
        try:
            md.verified_keyids(keys, threshold, role)
            md.signed.check_delegations(role)
        except (SignatureError, FormatError, RoleError) as exc:
            raise UpdateError("ErrBadTargets", str(exc)) from exc
        if md.signed.is_expired(now):
            raise UpdateError("ErrBadTargets", f"{role} expired at {md.signed.expires}")
        _check_version(role, md, _stored_version(stored, versions, role))
        trusted_targets[role] = md
        plan.loaded[role] = uploads[role]
        plan.accepted[role] = (md, uploads[role])

    if roles.ROOT in parsed:
        _check_version(roles.ROOT, parsed[roles.ROOT], old_root.signed.version if old_root else 0)

    # 3. A client snapshot must be signed by root's snapshot keys and pin
    # every file this validation loaded.
    if roles.SNAPSHOT in parsed:
        snap: Metadata[Snapshot] = parsed[roles.SNAPSHOT]
        keys = root.signed.role_keys(roles.SNAPSHOT)
        try:
            snap.verified_keyids(keys, root.signed.roles[roles.SNAPSHOT].threshold, roles.SNAPSHOT)
        except SignatureError as exc:
            raise UpdateError("ErrBadSnapshot", str(exc)) from exc
        if snap.signed.is_expired(now):
            raise UpdateError("ErrBadSnapshot", f"snapshot expired at {snap.signed.expires}")
        for role, data in plan.loaded.items():
            meta = snap.signed.meta.get(role)
            if meta is None:
                raise UpdateError(
                    "ErrBadSnapshot",
                    f"no checksums for supported algorithms were provided for {role}",
                )
            try:
                meta.verify(data, role)
            except HashMismatchError as exc:
                raise UpdateError("ErrBadSnapshot", str(exc)) from exc
        _check_version(roles.SNAPSHOT, snap, _stored_version(stored, versions, roles.SNAPSHOT))
        plan.accepted[roles.SNAPSHOT] = (snap, uploads[roles.SNAPSHOT])
        plan.snapshot_uploaded = True
    return plan


def plan_snapshot(plan: UpdatePlan, previous: bytes | None, now: datetime) -> Metadata[Snapshot]:
    """The server's snapshot for an update without one: the previous snapshot
    with entries for root and every file loaded or uploaded, version + 1."""
    if previous is not None:
        prev: Metadata[Snapshot] = Metadata.from_bytes(previous, Snapshot)
        meta = dict(prev.signed.meta)
        version = prev.signed.version + 1
    else:
        meta, version = {}, 1
    for role, data in plan.loaded.items():
        meta[role] = FileMeta.for_bytes(data)
    if roles.TARGETS not in meta:
        raise UpdateError(
            "ErrBadHierarchy", "no targets metadata to snapshot", missing=roles.TARGETS
        )
    snap = Snapshot(version, "", meta)
    snap.set_expires(expiry_for(roles.SNAPSHOT, now))
    return Metadata(snap)


def refresh_snapshot(previous: bytes, root_bytes: bytes, now: datetime) -> Metadata[Snapshot]:
    """A re-signed copy of an expiring snapshot (same pins, version + 1)."""
    prev: Metadata[Snapshot] = Metadata.from_bytes(previous, Snapshot)
    meta = dict(prev.signed.meta)
    meta[roles.ROOT] = FileMeta.for_bytes(root_bytes)
    snap = Snapshot(prev.signed.version + 1, "", meta)
    snap.set_expires(expiry_for(roles.SNAPSHOT, now))
    return Metadata(snap)


def plan_timestamp(
    snapshot_bytes: bytes,
    previous: bytes | None,
    now: datetime,
    *,
    previous_version: int | None = None,
) -> Metadata[Timestamp]:
    """The server's timestamp over ``snapshot_bytes``, version + 1, 14 days.

    ``previous_version``: the previous timestamp's version, when the caller
    knows it (a storage row carries it), so ``previous`` need not be parsed."""
    version = 1
    if previous_version is not None:
        version = previous_version + 1
    elif previous is not None:
        version = Metadata.from_bytes(previous, Timestamp).signed.version + 1
    ts = Timestamp(version, "", {roles.SNAPSHOT: FileMeta.for_bytes(snapshot_bytes)})
    ts.set_expires(expiry_for(roles.TIMESTAMP, now))
    return Metadata(ts)


def signing_keyids(root: Root, role: str) -> list[str]:
    """The key IDs root names for a server-signed role."""
    spec = root.roles.get(role)
    return list(spec.keyids) if spec is not None else []


def check_root_certificates(root: Root, gun: str, now: datetime) -> None:
    """Raise :class:`CertificateError` if no root certificate is currently valid."""
    if not _valid_root_keys(root, gun, now, check_expiry=True):
        raise CertificateError("no valid root certificate")


__all__ = [
    "MAX_VERSION",
    "MAX_VERSION_JUMP",
    "NoSigningKeyError",
    "UpdateError",
    "UpdatePlan",
    "check_root_certificates",
    "plan_snapshot",
    "plan_timestamp",
    "refresh_snapshot",
    "signing_keyids",
    "validate_update",
]
