"""notary's changelist: staged changes as files, byte-compatible with the notary CLI.

``notary add``, ``remove``, ``delegation …`` and ``witness`` do not touch
metadata; each drops one JSON file into ``<trust_dir>/tuf/<gun>/changelist/``
and ``publish`` applies them in file-name order. vouch reads and writes the
very same files so the two tools can share a trust directory: a change staged
by one is listed by ``status`` and published by the other.

Byte compatibility means writing what Go's ``encoding/json`` writes: struct
member order (never sorted), HTML-safe string escaping, ``[]byte`` as
standard base64, no trailing newline, ``omitempty`` honoured. Reading is as
lenient as Go's decoder where that is harmless (member names match without
regard to case, the last duplicate wins, unknown members are ignored) and
strict where notary's ``publish`` would fail anyway (unknown action or type).

The ``data`` member is itself Go JSON whose shape depends on the type;
:class:`TargetData`, :class:`DelegationData` and :class:`RoleData` encode and
decode those payloads.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

from vouch.client.config import StrPath, gun_dir
from vouch.tuf import canonical
from vouch.tuf.errors import FormatError
from vouch.tuf.keys import Key
from vouch.tuf.metadata import MISSING, FileMeta

log = logging.getLogger(__name__)

Action = Literal["create", "update", "delete"]
ChangeType = Literal["target", "delegation", "role", "witness"]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)
CHANGE_TYPES: Final[tuple[str, ...]] = get_args(ChangeType)

SCOPE_ROOT: Final = "root"
SCOPE_TARGETS: Final = "targets"
CHANGELIST_DIR: Final = "changelist"
CHANGE_SUFFIX: Final = ".change"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

_INT64 = 2**63


class ChangelistError(ValueError):
    """A change or payload that cannot be read or written as notary does."""


def changelist_dir(trust_dir: StrPath, gun: str) -> Path:
    """``<trust_dir>/tuf/<gun>/changelist``, where ``gun`` is validated first."""
    return gun_dir(trust_dir, gun) / CHANGELIST_DIR


# -- Go encoding/json, the parts notary's changelist uses -------------------------

_GO_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')
_GO_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _go_escape(match: re.Match[str]) -> str:
    ch = match.group()
    short = _GO_SHORT.get(ch)
    if short is not None:
        return short
    if "\ud800" <= ch <= "\udfff":
        return "\\ufffd"  # Go has no lone surrogates; invalid UTF-8 becomes U+FFFD
    return f"\\u{ord(ch):04x}"


def go_string(text: str) -> bytes:
    """A JSON string as Go 1.19 writes it (``\\u0008``, not ``\\b``; ``<>&`` escaped)."""
    return b'"' + _GO_ESCAPE.sub(_go_escape, text).encode("utf-8") + b'"'


# Strings (kept, to HTML-escape) or whitespace outside strings (dropped).
_COMPACT = re.compile(rb'("(?:[^"\\]|\\.)*")|[ \t\n\r]+', re.DOTALL)


def go_compact(raw: bytes) -> bytes:
    """Raw JSON as Go re-emits a ``json.RawMessage``: whitespace dropped, ``<>&`` and
    U+2028/9 escaped inside strings, everything else (key order, number literals,
    existing escapes) kept exactly. Raises :class:`ChangelistError` if not JSON."""
    try:
        json.loads(raw.decode("utf-8", "surrogateescape"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ChangelistError(f"custom data is not valid JSON: {exc}") from exc
    compact = _COMPACT.sub(lambda m: m.group(1) or b"", raw)
    return canonical.html_escape(compact)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_WS = re.compile(r"[ \t\n\r]*")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Go matches member names to struct fields ASCII-case-insensitively, with
# U+017F and U+212A (Kelvin) folding to s and k.
_FOLD = str.maketrans({"\u017f": "s", "\u212a": "k"} | {chr(c): chr(c + 32) for c in range(65, 91)})


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _members(raw: bytes | str, what: str) -> builtins.list[tuple[str, Any, str]] | None:
    """The members of a JSON object as ``(name, value, raw text)`` in document
    order, or ``None`` for ``null``. Invalid UTF-8 survives as surrogate escapes."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    out: builtins.list[tuple[str, Any, str]] = []
    try:
        pos = _skip(text, 0)
        if text.startswith("null", pos) and _skip(text, pos + 4) == len(text):
            return None
        if text[pos] != "{":
            raise ChangelistError(f"{what} must be a JSON object")
        pos = _skip(text, pos + 1)
        closed = text[pos] == "}"
        pos += closed
        while not closed:
            if text[pos] != '"':
                raise ChangelistError(f"{what}: expected a member name at offset {pos}")
            name, pos = _DECODER.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos] != ":":
                raise ChangelistError(f"{what}: expected ':' at offset {pos}")
            start = _skip(text, pos + 1)
            value, end = _DECODER.raw_decode(text, start)
            out.append((name, value, text[start:end]))
            pos = _skip(text, end)
            if text[pos] not in ",}":
                raise ChangelistError(f"{what}: expected ',' or '}}' at offset {pos}")
            closed = text[pos] == "}"
            pos = pos + 1 if closed else _skip(text, pos + 1)
    except ChangelistError:
        raise
    except IndexError:
        raise ChangelistError(f"{what} is not valid JSON: unexpected end") from None
    except (ValueError, RecursionError) as exc:
        raise ChangelistError(f"{what} is not valid JSON: {exc}") from exc
    if _skip(text, pos) != len(text):
        raise ChangelistError(f"{what}: trailing data at offset {pos}")
    return out


def _fields(pairs: Iterable[tuple[str, Any]], names: tuple[str, ...]) -> dict[str, int]:
    """Field name -> index of the member Go would decode into it (the last match)."""
    chosen: dict[str, int] = {}
    for index, (key, _value) in enumerate(pairs):
        name = key if key in names else key.translate(_FOLD)
        if name in names:
            chosen[name] = index
    return chosen


def _go_str(value: Any, what: str) -> str:
    """A Go string field: ``null`` leaves it empty; invalid text becomes U+FFFD."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ChangelistError(f"{what} must be a string")
    return _LONE_SURROGATE.sub("\ufffd", value)


def _go_int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not -_INT64 <= value < _INT64:
        raise ChangelistError(f"{what} must be a 64-bit integer")
    return value


def _go_bytes(value: Any, what: str) -> bytes | None:
    """A Go ``[]byte``: standard base64 with padding (CR/LF ignored), or null."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ChangelistError(f"{what} must be a base64 string")
    text = value.replace("\r", "").replace("\n", "")
    if len(text) % 4:
        raise ChangelistError(f"{what} is not valid base64")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ChangelistError(f"{what} is not valid base64") from exc


def _go_str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ChangelistError(f"{what} must be a list of strings")
    return tuple(_go_str(v, what) for v in value)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _list_json(items: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


# -- a change ----------------------------------------------------------------------

_CHANGE_FIELDS = ("action", "role", "type", "path", "data")


@dataclass(frozen=True, slots=True)
class Change:
    """One staged change (notary's ``TUFChange``); ``scope`` is the JSON ``role`` member.

    ``data`` is the type's payload (see :class:`TargetData` and friends) or
    ``None``, which notary writes as ``null`` (deletions, witness). ``path``
    is the target name, ``""`` for other types.
    """

    action: Action
    scope: str
    type: ChangeType
    path: str = ""
    data: bytes | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ChangelistError(f"unknown change action {self.action!r}")
        if self.type not in CHANGE_TYPES:
            raise ChangelistError(f"unknown change type {self.type!r}")

    def to_json(self) -> bytes:
        """The file's bytes, exactly as notary writes them."""
        data = b"null" if self.data is None else b'"' + _b64(self.data) + b'"'
        return b"".join(
            (
                b'{"action":' + go_string(self.action),
                b',"role":' + go_string(self.scope),
                b',"type":' + go_string(self.type),
                b',"path":' + go_string(self.path),
                b',"data":' + data + b"}",
            )
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Change:
        members = _members(raw, "change")
        if members is None:
            raise ChangelistError("change is null")
        found = _fields(((n, v) for n, v, _ in members), _CHANGE_FIELDS)
        value = {name: members[i][1] for name, i in found.items()}
        action = _go_str(value.get("action"), "change action")
        ctype = _go_str(value.get("type"), "change type")
        if action not in ACTIONS:
            raise ChangelistError(f"unknown change action {action!r}")
        if ctype not in CHANGE_TYPES:
            raise ChangelistError(f"unknown change type {ctype!r}")
        return cls(
            cast(Action, action),
            _go_str(value.get("role"), "change role"),
            cast(ChangeType, ctype),
            _go_str(value.get("path"), "change path"),
            _go_bytes(value.get("data"), "change data"),
        )


# -- payloads ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetData:
    """A target change's payload: notary's ``FileMeta`` in Go struct order.

    ``hashes`` maps algorithm to base64 digest (written sorted, as Go writes a
    map); ``custom`` is raw JSON, kept the way Go re-emits a
    ``json.RawMessage`` (see :func:`go_compact`), so a ``--custom`` file's key
    order and number literals survive exactly as with notary.
    """

    length: int
    hashes: Mapping[str, str]
    custom: bytes | None = None

    def __post_init__(self) -> None:
        # Kept in the form Go writes, so equal payloads compare equal.
        if self.custom is not None:
            object.__setattr__(self, "custom", go_compact(self.custom))

    @classmethod
    def for_bytes(cls, content: bytes, custom: bytes | None = None) -> TargetData:
        """The payload ``notary add`` stages for a file: its length, sha256 and sha512."""
        hashes = {
            "sha256": _b64(hashlib.sha256(content).digest()).decode(),
            "sha512": _b64(hashlib.sha512(content).digest()).decode(),
        }
        return cls(len(content), hashes, custom)

    @classmethod
    def from_file_meta(cls, meta: FileMeta) -> TargetData:
        """Payload for a metadata entry; ``custom`` in canonical form, so it signs
        the same in Go (which signs the raw bytes) and in vouch."""
        try:
            custom = None if meta.custom is MISSING else canonical.encode(meta.custom)
        except FormatError as exc:
            raise ChangelistError(f"custom data: {exc}") from exc
        return cls(meta.length, dict(meta.hashes), custom)

    def to_file_meta(self) -> FileMeta:
        """The targets entry notary's ``publish`` makes of this (``custom: null`` is
        dropped, as Go drops it)."""
        doc: dict[str, Any] = {"length": self.length, "hashes": dict(self.hashes)}
        try:
            if self.custom is not None:
                custom = canonical.loads(self.custom)
                if custom is not None:
                    doc["custom"] = custom
            return FileMeta.from_dict(doc, kind="staged target")
        except FormatError as exc:
            raise ChangelistError(str(exc)) from exc

    def to_json(self) -> bytes:
        hashes = b",".join(
            go_string(name) + b':"' + _b64(_go_bytes(self.hashes[name], name) or b"") + b'"'
            for name in sorted(self.hashes)
        )
        out = b'{"length":%d,"hashes":{%s}' % (self.length, hashes)
        if self.custom is not None:
            out += b',"custom":' + self.custom
        return out + b"}"

    @classmethod
    def from_json(cls, raw: bytes) -> TargetData:
        members = _members(raw, "target data") or []
        found = _fields(((n, v) for n, v, _ in members), ("length", "hashes", "custom"))
        length = _go_int(members[found["length"]][1], "length") if "length" in found else 0
        hashes_raw = members[found["hashes"]][1] if "hashes" in found else None
        if hashes_raw is not None and not isinstance(hashes_raw, dict):
            raise ChangelistError("target hashes must be an object")
        hashes: dict[str, str] = {}
        for name, digest in (hashes_raw or {}).items():
            value = _go_bytes(digest, f"hash {name}")
            if value is None:
                raise ChangelistError(f"hash {name} is null")
            hashes[_go_str(name, "hash name")] = _b64(value).decode()
        custom: bytes | None = None
        if "custom" in found and members[found["custom"]][1] is not None:
            custom = members[found["custom"]][2].encode("utf-8", "surrogateescape")
        return cls(length, hashes, custom)


def _key_json(key: Key) -> bytes:
    """Go's ``TUFKey``: ``keytype`` then ``keyval`` with ``public`` before ``private``."""
    public = _go_bytes(key.public, "key public") or b""
    keytype = go_string(key.keytype)
    return b'{"keytype":%s,"keyval":{"public":"%s","private":null}}' % (keytype, _b64(public))


def _key_from(value: Any, what: str) -> Key:
    if not isinstance(value, dict):
        raise ChangelistError(f"{what} must be an object")
    items = builtins.list(value.items())
    found = _fields(items, ("keytype", "keyval"))
    keyval = items[found["keyval"]][1] if "keyval" in found else None
    if not isinstance(keyval, dict):
        raise ChangelistError(f"{what} has no keyval object")
    kv_items = builtins.list(keyval.items())
    kv = _fields(kv_items, ("public", "private"))
    public = _go_bytes(kv_items[kv["public"]][1], f"{what} public") if "public" in kv else None
    if public is None:
        raise ChangelistError(f"{what} has no public key")
    if "private" in kv and kv_items[kv["private"]][1] is not None:
        raise ChangelistError(f"{what} carries a private key")
    keytype = _go_str(items[found["keytype"]][1], f"{what} keytype") if "keytype" in found else ""
    return Key(keytype, _b64(public).decode())


def _keys_from(value: Any, what: str) -> tuple[Key, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ChangelistError(f"{what} must be a list of keys")
    return tuple(_key_from(v, what) for v in value)


_DELEGATION_FIELDS = (
    "new_name",
    "threshold",
    "add_keys",
    "remove_keys",
    "add_paths",
    "remove_paths",
    "clear_paths",
)


@dataclass(frozen=True, slots=True)
class DelegationData:
    """A delegation change's payload (notary's ``TUFDelegation``); empty members are
    omitted on output, as Go's ``omitempty`` does.

    ``remove_keys`` holds *canonical* key IDs (of the bare public key), which
    notary maps to the role's TUF key IDs when applying. ``add_paths=("",)``
    is ``--all-paths``; ``clear_paths`` removes every path.
    """

    new_name: str = ""
    threshold: int = 0
    add_keys: tuple[Key, ...] = ()
    remove_keys: tuple[str, ...] = ()
    add_paths: tuple[str, ...] = ()
    remove_paths: tuple[str, ...] = ()
    clear_paths: bool = False

    def to_json(self) -> bytes:
        parts: builtins.list[bytes] = []
        if self.new_name:
            parts.append(b'"new_name":' + go_string(self.new_name))
        if self.threshold:
            parts.append(b'"threshold":%d' % self.threshold)
        if self.add_keys:
            parts.append(b'"add_keys":' + _list_json(_key_json(k) for k in self.add_keys))
        for name in ("remove_keys", "add_paths", "remove_paths"):
            values: tuple[str, ...] = getattr(self, name)
            if values:
                parts.append(b'"%s":' % name.encode() + _list_json(map(go_string, values)))
        if self.clear_paths:
            parts.append(b'"clear_paths":true')
        return b"{" + b",".join(parts) + b"}"

    @classmethod
    def from_json(cls, raw: bytes) -> DelegationData:
        members = _members(raw, "delegation data") or []
        found = _fields(((n, v) for n, v, _ in members), _DELEGATION_FIELDS)
        value = {name: members[i][1] for name, i in found.items()}
        clear = value.get("clear_paths")
        if clear is not None and not isinstance(clear, bool):
            raise ChangelistError("clear_paths must be a boolean")
        return cls(
            new_name=_go_str(value.get("new_name"), "new_name"),
            threshold=_go_int(value.get("threshold"), "threshold"),
            add_keys=_keys_from(value.get("add_keys"), "add_keys entry"),
            remove_keys=_go_str_list(value.get("remove_keys"), "remove_keys"),
            add_paths=_go_str_list(value.get("add_paths"), "add_paths"),
            remove_paths=_go_str_list(value.get("remove_paths"), "remove_paths"),
            clear_paths=bool(clear),
        )


@dataclass(frozen=True, slots=True)
class RoleData:
    """A root-scope ``role`` change's payload (notary's ``TUFRootData``): replace all
    keys of base role ``role`` with ``keys``. notary's CLI only builds these in
    memory (``key rotate`` publishes at once) but applies them from files too."""

    role: str
    keys: tuple[Key, ...] = ()

    def to_json(self) -> bytes:
        keys = _list_json(_key_json(k) for k in self.keys)
        return b'{"keys":' + keys + b',"role":' + go_string(self.role) + b"}"

    @classmethod
    def from_json(cls, raw: bytes) -> RoleData:
        members = _members(raw, "role data") or []
        found = _fields(((n, v) for n, v, _ in members), ("keys", "role"))
        value = {name: members[i][1] for name, i in found.items()}
        return cls(_go_str(value.get("role"), "role"), _keys_from(value.get("keys"), "key"))


# -- building changes as the notary CLI does ----------------------------------------


def target_change(path: str, meta: TargetData, scope: str = SCOPE_TARGETS) -> Change:
    """``notary add`` / ``addhash`` (one change per ``--roles`` entry)."""
    return Change("create", scope, "target", path, meta.to_json())


def target_removal(path: str, scope: str = SCOPE_TARGETS) -> Change:
    """``notary remove``."""
    return Change("delete", scope, "target", path, None)


def delegation_change(action: Action, scope: str, data: DelegationData | None = None) -> Change:
    """``notary delegation add`` (create), ``remove`` with keys/paths or ``purge``
    (update), or ``remove`` of the whole role (delete, no data)."""
    return Change(action, scope, "delegation", "", None if data is None else data.to_json())


def witness_change(scope: str) -> Change:
    """``notary witness``: re-sign ``scope`` unchanged at the next publish."""
    return Change("update", scope, "witness", "", None)


def role_change(role: str, keys: Sequence[Key]) -> Change:
    """Replace the keys of base role ``role`` in root (what ``key rotate`` stages)."""
    return Change("create", SCOPE_ROOT, "role", "", RoleData(role, tuple(keys)).to_json())


# -- the directory -----------------------------------------------------------------

_STAMP = re.compile(r"(\d{20})_")
_clock = time.time_ns  # the file-name time source (tests replace it)


class Changelist:
    """The staged changes of one repository: a directory of files, applied in
    file-name order.

    As in notary, every non-directory entry counts as a change (whatever its
    name), so :meth:`add` never leaves a partial file in the directory: it
    writes next to it and renames into place. Names are
    ``<%020d unix nanoseconds>_<uuid4>.change``; the time part is kept
    strictly above every name present at the first :meth:`add` and every
    name added since, so order is that of :meth:`add` calls even if the clock
    steps back. The directory is created (0700) on the
    first :meth:`add`; reading a missing one gives no changes.
    """

    def __init__(self, directory: StrPath) -> None:
        self.directory = Path(directory)
        self._last_stamp: int | None = None  # highest name stamp seen, read once

    @classmethod
    def for_gun(cls, trust_dir: StrPath, gun: str) -> Changelist:
        return cls(changelist_dir(trust_dir, gun))

    @property
    def location(self) -> Path:
        return self.directory

    def names(self) -> builtins.list[str]:
        """File names in application order (byte order, as Go sorts them)."""
        try:
            with os.scandir(self.directory) as entries:
                names = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(names, key=os.fsencode)

    def read(self, name: str) -> Change:
        try:
            raw = (self.directory / _check_name(name)).read_bytes()
        except OSError as exc:
            raise ChangelistError(f"cannot read change {name}: {exc.strerror or exc}") from exc
        try:
            return Change.from_json(raw)
        except ChangelistError as exc:
            raise ChangelistError(f"change {name}: {exc}") from exc

    def items(self, *, skip_invalid: bool = False) -> builtins.list[tuple[str, Change]]:
        """``(file name, change)`` in application order.

        An unreadable file raises :class:`ChangelistError` (notary's ``publish``
        fails on it too); with ``skip_invalid`` it is logged and left out, as
        notary's ``status`` does.
        """
        out = []
        for name in self.names():
            try:
                out.append((name, self.read(name)))
            except ChangelistError as exc:
                if not skip_invalid:
                    raise
                log.warning("%s", exc)
        return out

    def add(self, change: Change) -> str:
        """Stage ``change`` (atomically, mode 0600) and return its file name."""
        _make_dirs(self.directory)
        if self._last_stamp is None:
            stamps = [int(m.group(1)) for n in self.names() if (m := _STAMP.match(n))]
            self._last_stamp = max(stamps, default=-1)
        stamp = max(_clock(), self._last_stamp + 1)
        name = f"{stamp:020d}_{uuid.uuid4()}{CHANGE_SUFFIX}"
        _atomic_create(self.directory, name, change.to_json())
        self._last_stamp = stamp
        return name

    def remove(self, names: Iterable[str]) -> None:
        """Unstage the named changes; names already gone are ignored."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / _check_name(name)).unlink()

    def clear(self) -> None:
        """Unstage everything (``notary reset --all``, or after a publish)."""
        self.remove(self.names())

    def list(self) -> builtins.list[Change]:
        """The changes in application order (see :meth:`items`)."""
        return [change for _, change in self.items()]


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ChangelistError(f"invalid change file name {name!r}")
    return name


def _make_dirs(directory: Path) -> None:
    """Create missing directories with mode 0700 (like Go's MkdirAll(dir, 0700))."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=DIR_MODE)


def _atomic_create(directory: Path, name: str, data: bytes) -> None:
    """Write ``data`` to a 0600 temp file beside ``directory``, fsync, rename in.

    The data is synced so a crash can never leave an empty change behind (which
    would make every later publish fail); the directory is not, as losing a
    just-staged change in a crash is harmless and syncing it doubles the cost.
    """
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, directory / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


__all__ = [
    "ACTIONS",
    "CHANGE_TYPES",
    "SCOPE_ROOT",
    "SCOPE_TARGETS",
    "Action",
    "Change",
    "ChangeType",
    "Changelist",
    "ChangelistError",
    "DelegationData",
    "RoleData",
    "TargetData",
    "changelist_dir",
    "delegation_change",
    "go_compact",
    "go_string",
    "role_change",
    "target_change",
    "target_removal",
    "witness_change",
]
