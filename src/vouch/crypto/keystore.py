"""The notary CLI's private key store: ``<trust_dir>/private/<key id>.key``.

One PEM file per key (see :mod:`vouch.crypto.keyfile`), named by the key's
ID. For root keys that is the *canonical* (bare public key) ID, not the
per-GUN certificate ID that appears in root.json, which is why the same root
key file serves every repository. Files are 0600 in 0700 directories and are
replaced atomically, so a crash never leaves a half-written key behind.

The pre-0.4 layouts ``private/root_keys/<id>_root.key`` and
``private/tuf_keys/<gun>/<id>_<role>.key`` are listed and loaded too. notary
migrates them in place when it opens the store; we only read them, so a
vouch run never rewrites a user's key directory behind their back.

Passphrases come from a :data:`PassphraseRetriever`, called as
``retriever(key_id, alias, creating, attempt)`` where ``alias`` is the role
name (notary's convention); :class:`EnvPassphraseRetriever` reads notary's
``NOTARY_*_PASSPHRASE`` variables and can chain to an interactive prompt the
caller supplies (this package never prompts by itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from vouch.crypto.keyfile import (
    KeyFileError,
    WrongPassphraseError,
    decode_key_file,
    encode_key_file,
    peek_key_file,
)
from vouch.crypto.privkey import PrivateKey
from vouch.crypto.tokenerrors import TokenError
from vouch.crypto.tokenkeys import REF_EXTENSION, TOKEN_DIR, TokenKeyRef, TokenProvider
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signer

if TYPE_CHECKING:  # the PKCS#11 binding loads only when a token is used
    from vouch.crypto.pkcs11token import Token

log = logging.getLogger(__name__)

PRIVATE_DIR: Final = "private"
KEY_EXTENSION: Final = ".key"
LEGACY_ROOT_DIR: Final = "root_keys"
LEGACY_NONROOT_DIR: Final = "tuf_keys"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

#: Base roles: a key for any other alias is a delegation key.
BASE_ROLES: Final = frozenset({"root", "targets", "snapshot", "timestamp"})

#: notary's environment variables, by passphrase alias.
PASSPHRASE_ENV: Final = {
    "root": "NOTARY_ROOT_PASSPHRASE",
    "targets": "NOTARY_TARGETS_PASSPHRASE",
    "snapshot": "NOTARY_SNAPSHOT_PASSPHRASE",
    "delegation": "NOTARY_DELEGATION_PASSPHRASE",
}

#: ``(key_id, alias, creating, attempt) -> passphrase``. ``alias`` is the role
#: name; ``attempt`` counts from 0 and grows after each wrong passphrase.
#: Return ``""`` when creating to store the key unencrypted; raise
#: :class:`PassphraseUnavailableError` to give up.
PassphraseRetriever = Callable[[str, str, bool, int], str]

DEFAULT_MAX_ATTEMPTS: Final = 3


class KeyStoreError(Exception):
    """The key store cannot do what was asked."""


class KeyNotFoundError(KeyStoreError):
    """No key file for that key ID."""


class PassphraseUnavailableError(KeyStoreError):
    """The retriever has no passphrase to offer (nothing set, or the user gave up)."""


def short_id(key_id: str) -> str:
    """The 7-character prefix notary shows in prompts; enough to tell keys apart."""
    return key_id[:7]


class EnvPassphraseRetriever:
    """notary's passphrase lookup: ``NOTARY_<ALIAS>_PASSPHRASE``, then a fallback.

    An unset or empty variable counts as absent. Aliases that are not base
    roles (delegations, or no role at all) also try
    ``NOTARY_DELEGATION_PASSPHRASE``; timestamp keys have no variable. A
    variable's value is offered once: if it is wrong, asking again would give
    the same answer, so the retriever gives up rather than fall through to a
    prompt (notary does the same).
    """

    def __init__(
        self,
        fallback: PassphraseRetriever | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.fallback = fallback
        self._environ = environ

    def variables(self, alias: str) -> list[str]:
        """The variables consulted for ``alias``, in order."""
        names = []
        if alias in PASSPHRASE_ENV:
            names.append(PASSPHRASE_ENV[alias])
        if alias not in BASE_ROLES and PASSPHRASE_ENV["delegation"] not in names:
            names.append(PASSPHRASE_ENV["delegation"])
        return names

    def lookup(self, alias: str) -> tuple[str, str] | None:
        """``(variable, value)`` of the first non-empty variable for ``alias``."""
        environ = os.environ if self._environ is None else self._environ
        for name in self.variables(alias):
            value = environ.get(name, "")
            if value:
                return name, value
        return None

    def __call__(self, key_id: str, alias: str, creating: bool, attempt: int) -> str:
        found = self.lookup(alias)
        if found is not None:
            name, value = found
            if attempt > 0 and not creating:
                raise PassphraseUnavailableError(
                    f"{name} does not decrypt {alias or 'the'} key {short_id(key_id)}"
                )
            return value
        if self.fallback is not None:
            return self.fallback(key_id, alias, creating, attempt)
        wanted = " or ".join(self.variables(alias)) or "an interactive prompt"
        raise PassphraseUnavailableError(
            f"no passphrase for {alias or 'the'} key {short_id(key_id)}: set {wanted}"
        )


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A stored key as listed: known without decrypting it."""

    keyid: str
    role: str
    gun: str
    path: Path
    encrypted: bool
    legacy: bool = False
    #: For a key on a PKCS#11 token: the token's label ("" when not recorded).
    token: str | None = None


def _valid_key_name(key_id: str) -> bool:
    return (
        bool(key_id)
        and "/" not in key_id
        and "\\" not in key_id
        and "\x00" not in key_id
        and not key_id.startswith(".")
    )


class KeyStore:
    """Private keys under ``<trust_dir>/private``, readable and writable by notary.

    Decrypted keys are cached for the life of the store object, so each
    passphrase is asked for at most once per key.
    """

    def __init__(
        self,
        trust_dir: str | os.PathLike[str],
        retriever: PassphraseRetriever | None = None,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        tokens: TokenProvider | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.trust_dir = Path(trust_dir)
        self.retriever: PassphraseRetriever = retriever or EnvPassphraseRetriever()
        self.max_attempts = max_attempts
        self._cache: dict[str, PrivateKey] = {}
        self._tokens = tokens

    @property
    def private_dir(self) -> Path:
        return self.trust_dir / PRIVATE_DIR

    def key_path(self, key_id: str) -> Path:
        """Where :meth:`save` puts the key with this ID."""
        if not _valid_key_name(key_id):
            raise ValueError(f"invalid key ID {key_id!r}")
        return self.private_dir / f"{key_id}{KEY_EXTENSION}"

    # -- listing ---------------------------------------------------------------------

    def _candidates(self) -> Iterator[tuple[str, str, str, Path, bool]]:
        """``(key id, role from name, gun from path, file, legacy)`` for every key file,
        current layout first so it wins over a stale legacy copy."""
        base = self.private_dir
        if not base.is_dir():
            return
        for path in sorted(base.glob(f"*{KEY_EXTENSION}")):
            if not path.name.startswith(".") and path.is_file() and not path.is_symlink():
                yield path.name[: -len(KEY_EXTENSION)], "", "", path, False
        root_dir = base / LEGACY_ROOT_DIR
        if root_dir.is_dir():
            for path in sorted(root_dir.glob(f"*{KEY_EXTENSION}")):
                key_id, _, role = path.name[: -len(KEY_EXTENSION)].partition("_")
                yield key_id, role, "", path, True
        nonroot_dir = base / LEGACY_NONROOT_DIR
        if nonroot_dir.is_dir():
            for path in sorted(nonroot_dir.rglob(f"*{KEY_EXTENSION}")):
                key_id, _, role = path.name[: -len(KEY_EXTENSION)].partition("_")
                gun = path.parent.relative_to(nonroot_dir).as_posix()
                yield key_id, role, "" if gun == "." else gun, path, True

    def _info_for(
        self, key_id: str, name_role: str, dir_gun: str, path: Path, legacy: bool
    ) -> KeyInfo | None:
        if not _valid_key_name(key_id) or path.is_symlink() or not path.is_file():
            return None
        try:
            info = peek_key_file(path.read_bytes())
        except (OSError, KeyFileError) as exc:
            log.warning("skipping unreadable key file %s: %s", path, exc)
            return None
        # PEM headers win; legacy files only had the layout to say it.
        role = info.role or name_role
        gun = info.gun or dir_gun
        return KeyInfo(key_id, role, gun, path, info.encrypted, legacy)

    def list_keys(self, role: str | None = None, gun: str | None = None) -> list[KeyInfo]:
        """Every stored key (optionally of one role/GUN), sorted by key ID.

        Reads only PEM headers and file names, so nothing is decrypted and no
        passphrase is asked for.
        """
        found: dict[str, KeyInfo] = {}
        for candidate in self._candidates():
            if candidate[0] in found:
                continue
            info = self._info_for(*candidate)
            if info is None:
                continue
            if (role is None or info.role == role) and (gun is None or info.gun == gun):
                found[info.keyid] = info
        for ref, path in self._token_refs():
            if ref.keyid in found:
                continue
            if (role is None or ref.role == role) and (gun is None or ref.gun == gun):
                found[ref.keyid] = self._ref_info(ref, path)
        return [found[k] for k in sorted(found)]

    # -- keys on PKCS#11 tokens --------------------------------------------------------

    @property
    def token_dir(self) -> Path:
        return self.private_dir / TOKEN_DIR

    def _token_refs(self) -> Iterator[tuple[TokenKeyRef, Path]]:
        if not self.token_dir.is_dir():
            return
        for path in sorted(self.token_dir.glob(f"*{REF_EXTENSION}")):
            if path.name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            try:
                ref = TokenKeyRef.from_json(path.read_bytes(), path)
            except (OSError, TokenError) as exc:
                log.warning("skipping unreadable token key reference %s: %s", path, exc)
                continue
            if path.name == f"{ref.keyid}{REF_EXTENSION}":
                yield ref, path

    @staticmethod
    def _ref_info(ref: TokenKeyRef, path: Path) -> KeyInfo:
        return KeyInfo(ref.keyid, ref.role, ref.gun, path, False, token=ref.token_label or "")

    def token_ref(self, key_id: str) -> TokenKeyRef | None:
        """The reference of a key that lives on a token, or None for file keys."""
        if not _valid_key_name(key_id):
            return None
        path = self.token_dir / f"{key_id}{REF_EXTENSION}"
        if not path.is_file() or path.is_symlink():
            return None
        try:
            ref = TokenKeyRef.from_json(path.read_bytes(), path)
        except (OSError, TokenError) as exc:
            raise KeyStoreError(str(exc)) from None
        return ref if ref.keyid == key_id else None

    def token_for(self, ref: TokenKeyRef) -> Token:
        """The (logged-in) token holding ``ref``'s key."""
        if self._tokens is None:
            raise KeyStoreError(
                f"key {short_id(ref.keyid)} is on a PKCS#11 token and no token is configured"
            )
        token = self._tokens(ref.module, ref.token_label)
        if not token.has_key(ref.keyid):
            raise KeyStoreError(
                f"the {token.config.describe()} does not hold key {ref.keyid}"
                f" (it was made on token {ref.token_label or '?'})"
            )
        return token

    def generate_on_token(
        self,
        role: str,
        gun: str = "",
        *,
        object_id: bytes | None = None,
        reuse_ref: bool = False,
    ) -> TokenKeyRef:
        """A new ECDSA P-256 key generated inside the configured token, and its reference.

        With ``object_id``, the key pair with that ``CKA_ID`` is used if the token
        already has one (made with the vendor's tool, e.g. ``ykman`` in a PIV
        slot); otherwise the new key is generated under that ``CKA_ID``. A key
        pair already referenced in this trust dir is refused, unless
        ``reuse_ref`` (and the reference has this role): then that reference
        is returned (a rotation retried after it failed).
        """
        if not role:
            raise ValueError("a stored key needs a role")
        if self._tokens is None:
            raise KeyStoreError("no PKCS#11 token is configured")
        token = self._tokens(None, None)
        existing = token.find_key_pair(object_id) if object_id is not None else None
        created = existing is None
        if existing is not None:
            known = self.token_ref(existing.keyid)
            if known is not None:
                if reuse_ref and known.role == role:
                    return known
                raise KeyStoreError(f"key {existing.keyid} is already in this trust dir")
            public = existing
        else:
            public = token.generate_ecdsa(f"vouch {role} {gun}".strip(), object_id)
        ref = TokenKeyRef(
            public.keyid,
            role,
            gun,
            public,
            token.config.module,
            token.config.token_label or None,
            created=created,
        )
        path = self.token_dir / f"{ref.keyid}{REF_EXTENSION}"
        _make_private_dirs(path.parent)
        _atomic_write(path, ref.to_json())
        return ref

    def discard_token_key(self, ref: TokenKeyRef) -> None:
        """Undo :meth:`generate_on_token`: drop the reference and, if that call made
        the key pair, destroy it on the token (an adopted one stays)."""
        if ref.created:  # first: a failure leaves the reference to find the pair by
            self.token_for(ref).destroy(ref.keyid)
        (self.token_dir / f"{ref.keyid}{REF_EXTENSION}").unlink(missing_ok=True)

    def signer(self, key_id: str, as_key: Key | None = None) -> Signer:
        """A signer for the key with this ID, presented under ``as_key``'s ID (a root
        certificate) or its own: the token signs for token keys, else the decrypted file."""
        from vouch.crypto.pkcs11token import TokenSigner  # noqa: PLC0415 - loads the binding

        ref = self.token_ref(key_id)
        if ref is None:
            return self.load(key_id).signer(as_key)
        presented = as_key or ref.public
        if presented.canonical_keyid() != key_id:
            raise ValueError("the presented public key does not belong to this private key")
        return TokenSigner(self.token_for(ref), key_id, presented.keyid)

    def public_key(self, key_id: str) -> Key:
        """The bare public key (no passphrase needed for token keys)."""
        ref = self.token_ref(key_id)
        return ref.public if ref is not None else self.load(key_id).public

    def key_info(self, key_id: str) -> KeyInfo:
        """The listing entry for one key; :class:`KeyNotFoundError` if absent."""
        if _valid_key_name(key_id):
            direct = self.private_dir / f"{key_id}{KEY_EXTENSION}"
            if direct.is_file():
                info = self._info_for(key_id, "", "", direct, False)
                if info is not None:
                    return info
            for candidate in self._candidates():
                if candidate[0] == key_id and candidate[4]:
                    info = self._info_for(*candidate)
                    if info is not None:
                        return info
        ref = self.token_ref(key_id)
        if ref is not None:
            return self._ref_info(ref, self.token_dir / f"{key_id}{REF_EXTENSION}")
        raise KeyNotFoundError(f"no private key {key_id!r} in {self.private_dir}")

    def __contains__(self, key_id: object) -> bool:
        if not isinstance(key_id, str):
            return False
        try:
            self.key_info(key_id)
        except KeyNotFoundError:
            return False
        return True

    # -- loading ---------------------------------------------------------------------

    def load(self, key_id: str) -> PrivateKey:
        """The private key with this ID, decrypted with the retriever's passphrase.

        The alias passed to the retriever is the key's role. A wrong
        passphrase is retried up to ``max_attempts`` times, after which the
        last :class:`~vouch.crypto.keyfile.WrongPassphraseError` is raised.
        A file whose key does not have the ID it is filed under is refused:
        the store is content-addressed and signatures carry the real ID.
        """
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        info = self.key_info(key_id)
        if info.token is not None:
            raise KeyStoreError(
                f"key {key_id} is on a PKCS#11 token: it signs there and cannot be read out"
            )
        data = info.path.read_bytes()
        key = self._decrypt(info, data) if info.encrypted else decode_key_file(data).key
        if key.keyid != key_id:
            raise KeyFileError(f"key file {info.path} holds key {key.keyid}, not {key_id}")
        self._cache[key_id] = key
        return key

    def _decrypt(self, info: KeyInfo, data: bytes) -> PrivateKey:
        last: WrongPassphraseError | None = None
        for attempt in range(self.max_attempts):
            try:
                passphrase = self.retriever(info.keyid, info.role, False, attempt)
            except PassphraseUnavailableError as exc:
                if last is None:
                    raise
                raise WrongPassphraseError(
                    f"wrong passphrase for {info.role or 'the'} key {short_id(info.keyid)} ({exc})"
                ) from None
            try:
                return decode_key_file(data, passphrase).key
            except WrongPassphraseError as exc:
                last = exc
        raise WrongPassphraseError(
            f"wrong passphrase for {info.role or 'the'} key {short_id(info.keyid)}"
            f" after {self.max_attempts} attempts"
        )

    # -- writing ---------------------------------------------------------------------

    def save(
        self,
        key: PrivateKey,
        role: str,
        gun: str = "",
        *,
        passphrase: str | None = None,
    ) -> KeyInfo:
        """Store ``key`` as notary would, asking the retriever for a passphrase
        (``creating=True``) unless one is given; ``""`` stores it unencrypted.

        The GUN is recorded only for targets/snapshot/timestamp keys. An
        existing file for the same key is replaced atomically.
        """
        if not role:
            raise ValueError("a stored key needs a role")
        key_id = key.keyid
        path = self.key_path(key_id)
        if passphrase is None:
            passphrase = self.retriever(key_id, role, True, 0)
        data = encode_key_file(key, passphrase, role=role, gun=gun)
        _make_private_dirs(path.parent)
        _atomic_write(path, data)
        self._cache[key_id] = key
        info = peek_key_file(data)
        return KeyInfo(key_id, info.role, info.gun, path, info.encrypted)

    def remove(self, key_id: str) -> None:
        """Delete every file holding this key (current and legacy layouts)."""
        paths = (
            [c[3] for c in self._candidates() if c[0] == key_id] if _valid_key_name(key_id) else []
        )
        if self.token_ref(key_id) is not None:  # the key itself stays on the token
            paths.append(self.token_dir / f"{key_id}{REF_EXTENSION}")
        if not paths:
            raise KeyNotFoundError(f"no private key {key_id!r} in {self.private_dir}")
        for path in paths:
            path.unlink()
        self._cache.pop(key_id, None)


def _make_private_dirs(directory: Path) -> None:
    """Create missing directories down to ``directory`` with mode 0700.

    Only directories we create are chmod-ed (umask cannot widen 0700, but it
    could narrow it); an existing trust dir keeps the mode its owner chose.
    """
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=DIR_MODE)
            path.chmod(DIR_MODE)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a 0600 temp file in the same directory, fsync, then rename.

    The temp name ends in ``.tmp`` so neither we nor notary ever list it.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
