"""Typed models of Notary's metadata, lossless in both directions.

Every model keeps the members it does not know in ``unrecognized``, so parsing
a document and encoding it again gives back the same bytes (Notary's own
files re-encode byte-for-byte; see the interop tests). Verification never
uses the models' re-encoding, though: like Go, it re-canonicalises the
``signed`` object exactly as parsed (:attr:`Metadata.signed_raw`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from vouch.tuf import canonical, roles, timefmt
from vouch.tuf.errors import (
    BadKeyIDError,
    FormatError,
    HashMismatchError,
    RoleError,
    SignatureError,
)
from vouch.tuf.keys import Key, b64decode, b64encode, verify


# Sentinel for "member absent", which Notary distinguishes from null/empty.
class _Missing:
    """Sentinel for an absent member; survives copy and deepcopy as itself."""

    def __repr__(self) -> str:
        return "MISSING"

    def __copy__(self) -> _Missing:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Missing:
        return self

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

HASH_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
HASH_SIZES = {"sha256": 32, "sha512": 64}
_FILE_META_FIELDS = frozenset(("length", "hashes", "custom"))
# Padded standard base64 of exactly 32 or 64 bytes: the strings a strict
# decoder turns into a digest of that size (the unused low bits of the last
# character are not checked, by Go's decoder nor by binascii's).
_B64_DIGEST = {
    32: re.compile(r"[A-Za-z0-9+/]{43}="),
    64: re.compile(r"[A-Za-z0-9+/]{86}=="),
}


def _check_b64_size(value: str, size: int, what: str) -> None:
    """The slow, exact check (and its error) for a hash that missed the fast one."""
    if len(b64decode(value, what)) != size:
        raise FormatError(f"{what} has the wrong length")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be an object")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a string")
    return value


def _int(value: Any, what: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{what} must be an integer")
    if minimum is not None and value < minimum:
        raise FormatError(f"{what} must be at least {minimum}, not {value}")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"{what} must be a list of strings")
    return cast(list[str], value)


@dataclass(slots=True)
class FileMeta:
    """Length and hashes of a target or of a metadata file (envelope bytes)."""

    length: int
    hashes: dict[str, str]
    custom: Any = MISSING
    unrecognized: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, name: str = "", kind: str = "file meta") -> FileMeta:
        # Hot path (10,000s of targets per file): no copies, no error texts
        # unless something is wrong; the checks are the same either way.
        if not isinstance(data, dict):
            raise FormatError(f"{kind} {name!r} must be an object")
        length = data.get("length")
        hashes = data.get("hashes")
        if type(length) is not int or length < 0:
            raise FormatError(f"{kind} {name!r} length must be a non-negative integer")
        if not isinstance(hashes, dict):
            raise FormatError(f"{kind} {name!r} hashes must be an object")
        known = 0
        for algo, value in hashes.items():
            if not isinstance(value, str):
                raise FormatError(f"{kind} {name!r} hash {algo} must be a string")
            size = HASH_SIZES.get(algo)
            if size is not None:
                if _B64_DIGEST[size].fullmatch(value) is None:
                    _check_b64_size(value, size, f"{kind} {name!r} {algo}")
                known += 1
        if not known:
            raise FormatError(f"{kind} {name!r} has no sha256 or sha512 hash")
        if len(data) == 2:  # the usual entry: nothing else to keep
            return cls(length, hashes)
        rest = {k: v for k, v in data.items() if k not in _FILE_META_FIELDS}
        return cls(length, hashes, data.get("custom", MISSING), rest)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hashes": self.hashes, "length": self.length}
        if self.custom is not MISSING:
            out["custom"] = self.custom
        out.update(self.unrecognized)
        return out

    @classmethod
    def for_bytes(cls, data: bytes, custom: Any = MISSING) -> FileMeta:
        """Meta for ``data`` with both hashes, as Notary always writes them."""
        if custom is not MISSING:
            canonical.check_value(custom, "custom")
        return cls(
            len(data),
            {name: b64encode(fn(data).digest()) for name, fn in HASH_ALGORITHMS.items()},
            custom,
        )

    def sha256_hex(self) -> str | None:
        value = self.hashes.get("sha256")
        return b64decode(value, "sha256").hex() if value is not None else None

    def verify(self, data: bytes, what: str = "file") -> None:
        """Raise :class:`HashMismatchError` unless ``data`` has this length and hashes."""
        if len(data) != self.length:
            raise HashMismatchError(f"{what} is {len(data)} bytes, expected {self.length}")
        checked = 0
        for name, fn in HASH_ALGORITHMS.items():
            expected = self.hashes.get(name)
            if expected is None:
                continue
            if b64decode(expected, name) != fn(data).digest():
                raise HashMismatchError(f"{name} checksum for {what} did not match")
            checked += 1
        if not checked:
            raise HashMismatchError(f"no supported checksum for {what}")

    def same_content(self, other: FileMeta) -> bool:
        """True if both describe the same bytes (length and every shared hash)."""
        shared = set(self.hashes) & set(other.hashes) & set(HASH_ALGORITHMS)
        return (
            self.length == other.length
            and bool(shared)
            and all(self.hashes[h] == other.hashes[h] for h in shared)
        )


@dataclass(slots=True)
class RoleKeys:
    """A base role in root: its key IDs and threshold."""

    keyids: list[str]
    threshold: int
    unrecognized: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, what: str) -> RoleKeys:
        rest = dict(_obj(data, what))
        keyids = _str_list(rest.pop("keyids", None), f"{what} keyids")
        threshold = _int(rest.pop("threshold", None), f"{what} threshold", 1)
        return cls(keyids, threshold, rest)

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": self.keyids, "threshold": self.threshold, **self.unrecognized}


@dataclass(slots=True)
class DelegatedRole:
    """A delegation: who may sign which target paths.

    ``paths`` are plain string prefixes (``""`` is everything); an absent
    ``paths`` member means the role can sign nothing. ``path_hash_prefixes``
    and ``terminating`` are TUF members Notary never writes; they are kept and
    honoured when present.
    """

    name: str
    keyids: list[str]
    threshold: int
    paths: list[str] | None = None
    path_hash_prefixes: list[str] | None = None
    terminating: bool | None = None
    unrecognized: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> DelegatedRole:
        rest = dict(_obj(data, "delegated role"))
        name = _str(rest.pop("name", None), "delegated role name")
        what = f"delegation {name}"
        keyids = _str_list(rest.pop("keyids", None), f"{what} keyids")
        threshold = _int(rest.pop("threshold", None), f"{what} threshold", 1)
        paths = rest.pop("paths", None)
        prefixes = rest.pop("path_hash_prefixes", None)
        terminating = rest.pop("terminating", None)
        if paths is not None:
            paths = _str_list(paths, f"{what} paths")
        if prefixes is not None:
            prefixes = _str_list(prefixes, f"{what} path_hash_prefixes")
        if terminating is not None and not isinstance(terminating, bool):
            raise FormatError(f"{what} terminating must be a boolean")
        return cls(name, keyids, threshold, paths, prefixes, terminating, rest)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keyids": self.keyids, "name": self.name}
        # Go omits empty paths (omitempty); an explicit [] would change the bytes.
        if self.paths:
            out["paths"] = self.paths
        if self.path_hash_prefixes is not None:
            out["path_hash_prefixes"] = self.path_hash_prefixes
        if self.terminating is not None:
            out["terminating"] = self.terminating
        out["threshold"] = self.threshold
        out.update(self.unrecognized)
        return out

    def matches(self, target: str) -> bool:
        """True if this role is trusted for ``target`` by its paths or hash prefixes."""
        if self.paths and any(target.startswith(p) for p in self.paths):
            return True
        if self.path_hash_prefixes:
            digest = hashlib.sha256(target.encode("utf-8")).hexdigest()
            return any(digest.startswith(p) for p in self.path_hash_prefixes)
        return False


@dataclass(slots=True)
class Delegations:
    keys: dict[str, Key] = field(default_factory=dict)
    roles: list[DelegatedRole] = field(default_factory=list)
    unrecognized: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Delegations:
        rest = dict(_obj(data, "delegations"))
        keys_raw = _obj(rest.pop("keys", {}), "delegation keys")
        roles_raw = rest.pop("roles", [])
        if not isinstance(roles_raw, list):
            raise FormatError("delegation roles must be a list")
        keys = {kid: Key.from_dict(k) for kid, k in keys_raw.items()}
        return cls(keys, [DelegatedRole.from_dict(r) for r in roles_raw], rest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": {kid: k.to_dict() for kid, k in self.keys.items()},
            "roles": [r.to_dict() for r in self.roles],
            **self.unrecognized,
        }

    def role(self, name: str) -> DelegatedRole | None:
        for r in self.roles:
            if r.name == name:
                return r
        return None


@dataclass(slots=True)
class Signed:
    """Members every role's ``signed`` object has."""

    TYPE: ClassVar[str] = ""
    version: int
    expires: str
    unrecognized: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @property
    def expires_at(self) -> datetime:
        return timefmt.parse(self.expires)

    def set_expires(self, when: datetime) -> None:
        self.expires = timefmt.format(when)

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at <= now

    @classmethod
    def _common(cls, data: Any) -> tuple[dict[str, Any], int, str]:
        rest = dict(_obj(data, "signed"))
        kind = rest.pop("_type", None)
        if kind != cls.TYPE:
            raise RoleError(f"expected metadata of type {cls.TYPE}, got {kind!r}")
        version = _int(rest.pop("version", None), "version", 1)
        expires = _str(rest.pop("expires", None), "expires")
        timefmt.parse(expires)
        return rest, version, expires

    @classmethod
    def from_dict(cls, data: Any) -> Signed:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _base(self) -> dict[str, Any]:
        return {"_type": self.TYPE, "expires": self.expires, "version": self.version}


@dataclass(slots=True)
class Root(Signed):
    TYPE: ClassVar[str] = "Root"
    keys: dict[str, Key] = field(default_factory=dict)
    roles: dict[str, RoleKeys] = field(default_factory=dict)
    consistent_snapshot: bool | None = False

    @classmethod
    def from_dict(cls, data: Any) -> Root:
        rest, version, expires = cls._common(data)
        keys = {kid: Key.from_dict(k) for kid, k in _obj(rest.pop("keys", None), "keys").items()}
        roles_raw = _obj(rest.pop("roles", None), "roles")
        role_map = {name: RoleKeys.from_dict(r, f"role {name}") for name, r in roles_raw.items()}
        consistent = rest.pop("consistent_snapshot", None)
        if consistent is not None and not isinstance(consistent, bool):
            raise FormatError("consistent_snapshot must be a boolean")
        root = cls(version, expires, keys, role_map, consistent, unrecognized=rest)
        root.check()
        return root

    def check(self) -> None:
        """Structure rules: four base roles, thresholds, no dangling key IDs."""
        for name in roles.BASE_ROLES:
            if name not in self.roles:
                raise FormatError(f"missing {name} role specification")
        for name, role in self.roles.items():
            for kid in role.keyids:
                if kid not in self.keys:
                    raise FormatError(f"key ID {kid} specified in {name} without corresponding key")

    def to_dict(self) -> dict[str, Any]:
        out = self._base()
        if self.consistent_snapshot is not None:
            out["consistent_snapshot"] = self.consistent_snapshot
        out["keys"] = {kid: k.to_dict() for kid, k in self.keys.items()}
        out["roles"] = {name: r.to_dict() for name, r in self.roles.items()}
        out.update(self.unrecognized)
        return out

    def role_keys(self, role: str) -> dict[str, Key]:
        """The keys of a base role, by ID."""
        spec = self.roles.get(role)
        if spec is None:
            raise RoleError(f"root has no {role} role")
        return {kid: self.keys[kid] for kid in spec.keyids if kid in self.keys}

    def add_key(self, role: str, key: Key) -> None:
        self.keys[key.keyid] = key
        spec = self.roles.setdefault(role, RoleKeys([], 1))
        if key.keyid not in spec.keyids:
            spec.keyids.append(key.keyid)


@dataclass(slots=True)
class Targets(Signed):
    TYPE: ClassVar[str] = "Targets"
    targets: dict[str, FileMeta] = field(default_factory=dict)
    delegations: Delegations | None = field(default_factory=Delegations)

    @classmethod
    def from_dict(cls, data: Any) -> Targets:
        rest, version, expires = cls._common(data)
        raw = _obj(rest.pop("targets", None), "targets")
        targets = {name: FileMeta.from_dict(m, name, "target") for name, m in raw.items()}
        deleg_raw = rest.pop("delegations", None)
        delegations = Delegations.from_dict(deleg_raw) if deleg_raw is not None else None
        return cls(version, expires, targets, delegations, unrecognized=rest)

    def check_delegations(self, role_name: str) -> None:
        """Delegation rules for this file as role ``role_name``: names are clean,
        direct children of this role, with known key IDs."""
        if self.delegations is None:
            return
        for role in self.delegations.roles:
            roles.check_delegation_name(role.name)
            if roles.parent_of(role.name) != role_name:
                raise RoleError(f"{role_name} cannot declare {role.name}: not a direct child")
            for kid in role.keyids:
                if kid not in self.delegations.keys:
                    raise FormatError(f"key ID {kid} of {role.name} has no corresponding key")

    def to_dict(self) -> dict[str, Any]:
        out = self._base()
        if self.delegations is not None:
            out["delegations"] = self.delegations.to_dict()
        out["targets"] = {name: m.to_dict() for name, m in self.targets.items()}
        out.update(self.unrecognized)
        return out


@dataclass(slots=True)
class _MetaFile(Signed):
    """Snapshot and timestamp: a ``meta`` map of role name to file meta."""

    meta: dict[str, FileMeta] = field(default_factory=dict)
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: Any) -> _MetaFile:
        rest, version, expires = cls._common(data)
        raw = _obj(rest.pop("meta", None), "meta")
        meta = {name: FileMeta.from_dict(m, name, "meta") for name, m in raw.items()}
        for name in cls.REQUIRED:
            if name not in meta or "sha256" not in meta[name].hashes:
                raise FormatError(
                    f"{cls.TYPE.lower()} is missing {name} sha256 checksum information"
                )
        return cls(version, expires, meta, unrecognized=rest)

    def to_dict(self) -> dict[str, Any]:
        out = self._base()
        out["meta"] = {name: m.to_dict() for name, m in self.meta.items()}
        out.update(self.unrecognized)
        return out


@dataclass(slots=True)
class Snapshot(_MetaFile):
    TYPE: ClassVar[str] = "Snapshot"
    REQUIRED: ClassVar[tuple[str, ...]] = (roles.ROOT, roles.TARGETS)

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        return cast(Snapshot, super(Snapshot, cls).from_dict(data))


@dataclass(slots=True)
class Timestamp(_MetaFile):
    TYPE: ClassVar[str] = "Timestamp"
    REQUIRED: ClassVar[tuple[str, ...]] = (roles.SNAPSHOT,)

    @classmethod
    def from_dict(cls, data: Any) -> Timestamp:
        return cast(Timestamp, super(Timestamp, cls).from_dict(data))


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    method: str
    sig: str

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        obj = _obj(data, "signature")
        keyid = _str(obj.get("keyid"), "signature keyid")
        # Go lower-cases the method on parse.
        method = _str(obj.get("method"), "signature method").lower()
        sig = _str(obj.get("sig"), "signature sig")
        return cls(keyid, method, sig)

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "method": self.method, "sig": self.sig}

    @property
    def signature_bytes(self) -> bytes:
        return b64decode(self.sig, "signature")


class Signer(Protocol):
    """Anything that can sign as one key: a local key, a signer service, an HSM."""

    @property
    def keyid(self) -> str:
        """The TUF key ID the signature is made under (certificate ID for roots)."""
        ...

    def sign(self, message: bytes) -> Signature: ...


T = TypeVar("T", Root, Targets, Snapshot, Timestamp)
_CLASSES: dict[str, type[Any]] = {c.TYPE: c for c in (Root, Targets, Snapshot, Timestamp)}


@dataclass(slots=True)
class Metadata(Generic[T]):
    """A signed document: the typed ``signed`` part plus its signatures.

    ``raw`` holds the exact bytes it was parsed from (what hashes cover), and
    ``signed_raw`` the parsed ``signed`` object (what signatures cover).
    """

    signed: T
    signatures: list[Signature] = field(default_factory=list)
    signed_raw: dict[str, Any] | None = None
    raw: bytes | None = None

    @staticmethod
    def from_bytes(data: bytes, expected: type[T] | None = None) -> Metadata[Any]:
        """Parse envelope bytes. ``expected`` pins the ``_type`` (role confusion)."""
        return Metadata.from_document(canonical.loads(data), data, expected)

    @staticmethod
    def from_document(document: Any, data: bytes, expected: type[T] | None = None) -> Metadata[Any]:
        """Like :meth:`from_bytes` for a ``document`` already parsed from ``data`` with
        :func:`vouch.tuf.canonical.loads` (and not modified since): a caller that had to
        look into the JSON first does not pay for parsing it twice."""
        doc = _obj(document, "metadata")
        signed_raw = _obj(doc.get("signed"), "signed")
        sigs_raw = doc.get("signatures")
        if not isinstance(sigs_raw, list):
            raise FormatError("signatures must be a list")
        kind = signed_raw.get("_type")
        cls = _CLASSES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise RoleError(f"unknown metadata type {kind!r}")
        if expected is not None and cls is not expected:
            raise RoleError(f"expected {expected.TYPE} metadata, got {kind}")
        signed = cls.from_dict(signed_raw)
        sigs = [Signature.from_dict(s) for s in sigs_raw]
        return Metadata(signed, sigs, signed_raw, data)

    def signed_bytes(self) -> bytes:
        """The canonical bytes signatures are made over."""
        source = self.signed_raw if self.signed_raw is not None else self.signed.to_dict()
        return canonical.encode(source)

    def to_bytes(self) -> bytes:
        """Envelope bytes from the typed model, byte-identical to Notary's output."""
        body = canonical.encode(self.signed.to_dict())
        return canonical.envelope(body, [s.to_dict() for s in self.signatures])

    def sign(self, *signers: Signer, replace: bool = True) -> None:
        """Sign the current ``signed`` content with each signer.

        Refreshes ``signed_raw`` from the model first, so edits made to the
        typed objects are what gets signed. With ``replace`` the previous
        signatures are dropped, since they cannot cover the edited content.
        """
        self.signed_raw = self.signed.to_dict()
        self.raw = None
        message = canonical.encode(self.signed_raw)
        ids = {s.keyid for s in signers}
        kept = [] if replace else [s for s in self.signatures if s.keyid not in ids]
        self.signatures = kept + [signer.sign(message) for signer in signers]

    def signing_bytes(self) -> bytes:
        """Freeze the model as the content to sign and return its canonical bytes.

        For signers that cannot be called synchronously (a key service, an
        HSM): sign these bytes, then :meth:`add_signature` each result.
        """
        self.signed_raw = self.signed.to_dict()
        self.raw = None
        self.signatures = []
        return canonical.encode(self.signed_raw)

    def add_signature(self, signature: Signature) -> None:
        self.signatures = [s for s in self.signatures if s.keyid != signature.keyid]
        self.signatures.append(signature)
        self.raw = None

    def verified_keyids(self, keys: dict[str, Key], threshold: int, role: str) -> set[str]:
        """Check signatures against ``keys`` and return the distinct keys that signed.

        Raises :class:`SignatureError` when fewer than ``threshold`` distinct
        keys verify. Keys are counted by their bare public key, so one key
        listed twice (say as a bare key and as a certificate) counts once.
        """
        if not self.signatures:
            raise SignatureError(f"{role}: metadata has no signatures")
        message = self.signed_bytes()
        valid: set[str] = set()
        material: set[str] = set()
        for sig in self.signatures:
            key = keys.get(sig.keyid)
            if key is None:
                continue
            if key.keyid != sig.keyid:
                raise BadKeyIDError(f"{role}: key listed as {sig.keyid} has ID {key.keyid}")
            try:
                raw = sig.signature_bytes
            except FormatError:
                continue
            if sig.keyid in valid or not verify(key, sig.method, raw, message):
                continue
            bare = key.canonical_keyid()
            if bare in material:
                continue
            material.add(bare)
            valid.add(sig.keyid)
        if len(valid) < threshold:
            raise SignatureError(
                f"valid signatures did not meet threshold for {role}: {len(valid)} of {threshold}"
            )
        return valid


def new_metadata(signed: T) -> Metadata[T]:
    return Metadata(signed)
