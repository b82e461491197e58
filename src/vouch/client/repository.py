"""The client's Python API: one repository (GUN) on one trust server.

Reads go through :mod:`vouch.client.update` (full TUF verification, local
cache); writes are staged in notary's changelist and applied, signed and
uploaded by :meth:`Repository.publish`, as the notary CLI does, so the same
trust directory can be used by ``notary`` and ``vouch`` alternately.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from vouch.client import errors
from vouch.client.cache import MetadataCache
from vouch.client.remote import Remote
from vouch.client.update import (
    MetadataNotFoundError,
    MetadataUnavailableError,
    RepositoryNotFoundError,
    Updater,
    UpdateResult,
)
from vouch.tuf import build, roles, timefmt
from vouch.tuf.errors import TrustError
from vouch.tuf.keys import Key
from vouch.tuf.metadata import MISSING, FileMeta, Metadata, Signer, Targets
from vouch.tuf.pinning import TrustPinning
from vouch.tuf.trusted import TargetInfo, TrustedSet

# Keys, the changelist and signing are imported when first used: reading a
# repository (``vouch list``, the admission controller) needs none of them.
if TYPE_CHECKING:
    from vouch.client.apply import Working
    from vouch.client.changelist import Change, Changelist
    from vouch.crypto.keystore import KeyStore, PassphraseRetriever
    from vouch.crypto.privkey import PrivateKey
    from vouch.crypto.tokenkeys import TokenKeyRef, TokenProvider

__all__ = ["Repository", "RepositoryError", "TargetInfo"]


class RepositoryError(TrustError):
    """An operation that cannot proceed (not initialised, no keys, bad change)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A target as listed: its name, length, sha256 (hex) and signing role."""

    name: str
    length: int
    sha256: str
    role: str
    custom: object = None


def _target(info: TargetInfo) -> Target:
    digest = info.meta.sha256_hex() or ""
    custom = None if info.meta.custom is MISSING else info.meta.custom
    return Target(info.name, info.meta.length, digest, info.role, custom)


class Repository:
    """A GUN on a trust server, with a local trust dir (keys, cache, changelist).

    ``remote`` may be ``None`` for offline staging. Every network method is
    async; the CLI runs them with :func:`asyncio.run`.
    """

    def __init__(
        self,
        gun: str,
        remote: Remote | None,
        trust_dir: Path,
        *,
        pinning: TrustPinning | None = None,
        passphrases: PassphraseRetriever | None = None,
        tokens: TokenProvider | None = None,
    ) -> None:
        self.gun = gun
        self.remote = remote
        self.trust_dir = Path(trust_dir)
        self.cache = MetadataCache(self.trust_dir, gun)
        self._passphrases = passphrases
        self._tokens = tokens
        self.pinning = pinning or TrustPinning()

    @cached_property
    def changelist(self) -> Changelist:
        from vouch.client.changelist import Changelist

        return Changelist.for_gun(self.trust_dir, self.gun)

    @cached_property
    def keys(self) -> KeyStore:
        from vouch.crypto.keystore import KeyStore

        return KeyStore(self.trust_dir, self._passphrases, tokens=self._tokens)

    # -- reading -------------------------------------------------------------

    async def _fetch(self, name: str, max_size: int) -> bytes:
        if self.remote is None:
            raise MetadataUnavailableError("no trust server configured (offline)")
        try:
            return await self.remote.get_metadata(self.gun, name, max_size)
        except errors.NotFound as exc:
            raise MetadataNotFoundError(str(exc)) from exc
        except (errors.ServerUnavailable, errors.Unauthorized) as exc:
            raise MetadataUnavailableError(str(exc)) from exc

    async def refresh(
        self, *, now: datetime | None = None, prefetch: Iterable[str] = ()
    ) -> UpdateResult:
        """Fetch and verify the repository; the result holds the trusted set.

        ``prefetch`` names delegations the caller is about to read (say
        ``targets/releases``): on first contact they are requested in the same
        round trip as root, timestamp, snapshot and targets.
        """
        return await Updater(
            self.gun, self._fetch, self.cache, pinning=self.pinning, now=now, prefetch=prefetch
        ).refresh()

    async def list_targets(self, roles_filter: list[str] | None = None) -> list[Target]:
        trusted = (await self.refresh()).trusted
        out = [_target(info) for info in trusted.all_targets().values()]
        if roles_filter:
            out = [t for t in out if t.role in roles_filter]
        return sorted(out, key=lambda t: t.name)

    async def lookup(self, name: str) -> Target | None:
        info = (await self.refresh()).trusted.find_target(name)
        return _target(info) if info is not None else None

    async def verify(self, name: str, content: bytes) -> Target:
        """The target ``name`` if ``content`` is exactly what was signed."""
        info = (await self.refresh()).trusted.find_target(name)
        if info is None:
            raise RepositoryError(f"no trust data for target {name!r} in {self.gun}")
        info.meta.verify(content, name)
        return _target(info)

    # -- staging (offline) ---------------------------------------------------

    def add_target(
        self,
        name: str,
        content: bytes | None = None,
        *,
        length: int | None = None,
        hashes: dict[str, str] | None = None,
        custom: bytes | None = None,
        roles_to: list[str] | None = None,
    ) -> list[str]:
        """Stage a target (from its content, or ``length`` + ``hashes`` as ``addhash``)."""
        from vouch.client.changelist import TargetData, target_change

        if content is not None:
            data = TargetData.for_bytes(content, custom)
        elif length is not None and hashes:
            data = TargetData(length, hashes, custom)
        else:
            raise RepositoryError("give the target's content, or its length and hashes")
        data.to_file_meta()  # refuse bad custom data now, not at publish
        return [
            self.changelist.add(target_change(name, data, r)) for r in roles_to or [roles.TARGETS]
        ]

    def remove_target(self, name: str, *, roles_from: list[str] | None = None) -> list[str]:
        from vouch.client.changelist import target_removal

        return [self.changelist.add(target_removal(name, r)) for r in roles_from or [roles.TARGETS]]

    def add_delegation(
        self,
        role: str,
        keys: list[Key],
        *,
        paths: list[str] | None = None,
        all_paths: bool = False,
        threshold: int = 1,
    ) -> list[str]:
        """Stage a delegation (or new keys and paths for an existing one), as
        ``notary delegation add``: one change for keys, one for paths."""
        from vouch.client.changelist import DelegationData, delegation_change

        roles.check_delegation_name(role)
        staged = []
        if keys:
            staged.append(
                self.changelist.add(
                    delegation_change(
                        "create", role, DelegationData(threshold=threshold, add_keys=tuple(keys))
                    )
                )
            )
        wanted = [""] if all_paths else list(paths or [])
        if wanted:
            staged.append(
                self.changelist.add(
                    delegation_change("create", role, DelegationData(add_paths=tuple(wanted)))
                )
            )
        if not staged:
            raise RepositoryError("a delegation change needs keys or paths")
        return staged

    def remove_delegation(
        self,
        role: str,
        *,
        key_ids: list[str] | None = None,
        paths: list[str] | None = None,
        all_paths: bool = False,
    ) -> str:
        """Stage removing keys or paths from a delegation, or the whole role."""
        from vouch.client.changelist import DelegationData, delegation_change

        if not key_ids and not paths and not all_paths:
            return self.changelist.add(delegation_change("delete", role))
        data = DelegationData(
            remove_keys=tuple(key_ids or ()),
            remove_paths=tuple(paths or ()),
            clear_paths=all_paths,
        )
        return self.changelist.add(delegation_change("update", role, data))

    def purge_delegation_keys(self, key_ids: list[str]) -> str:
        from vouch.client.changelist import DelegationData, delegation_change

        data = DelegationData(remove_keys=tuple(key_ids))
        return self.changelist.add(delegation_change("delete", "targets/*", data))

    def witness(self, role: str) -> str:
        from vouch.client.changelist import witness_change

        return self.changelist.add(witness_change(role))

    def status(self) -> list[Change]:
        return self.changelist.list()

    def reset(self) -> None:
        self.changelist.clear()

    # -- keys ----------------------------------------------------------------

    def _load_or_create(self, role: str, keytype: str = "ecdsa") -> PrivateKey:
        from vouch.crypto.privkey import PrivateKey

        gun = self.gun if role in (roles.TARGETS, roles.SNAPSHOT) else ""
        for info in self.keys.list_keys(role=role, gun=gun or None):
            if info.token is None:  # a key on a token is chosen explicitly (init --hsm)
                return self.keys.load(info.keyid)
        key = PrivateKey.generate(keytype)
        self.keys.save(key, role, gun)
        return key

    def _signers(self, role: str, keys: dict[str, Key]) -> list[Signer]:
        signers: list[Signer] = []
        for key in keys.values():
            canonical_id = key.canonical_keyid()
            if canonical_id in self.keys:  # a key file, or a key on a PKCS#11 token
                signers.append(self.keys.signer(canonical_id, key))
        return signers

    def _root_signer(
        self, root_key_id: str, root_cert: Key | None, now: datetime
    ) -> tuple[Signer, Key]:
        """The root key's signer under its certificate, and that certificate (a fresh
        self-signed one unless given; made by the token for a key on a token)."""
        from vouch.crypto.certs import root_key
        from vouch.crypto.tokenkeys import token_root_key

        ref = self.keys.token_ref(root_key_id)
        if ref is not None:
            if root_cert is None:
                token = self.keys.token_for(ref)
                root_cert = token_root_key(token, ref.keyid, ref.public, self.gun, now=now)
            return self.keys.signer(root_key_id, root_cert), root_cert
        root_priv = self.keys.load(root_key_id)
        root_cert = root_cert or root_key(root_priv, self.gun, now=now)
        return root_priv.signer(root_cert), root_cert

    # -- writing -------------------------------------------------------------

    def _remote(self) -> Remote:
        if self.remote is None:
            raise RepositoryError("this operation needs a trust server")
        return self.remote

    async def initialize(
        self,
        *,
        root_key_id: str | None = None,
        root_cert: Key | None = None,
        server_managed_snapshot: bool = False,
        hsm: bool = False,
        now: datetime | None = None,
    ) -> None:
        """``notary init``: keys, root certificate, and root/targets/snapshot v1
        signed into the local cache; published by the next :meth:`publish`.

        ``root_cert`` (``init --rootcert``) is an existing ``*-x509`` root key
        to use instead of a fresh self-signed certificate; it must certify the
        root private key. ``hsm`` generates the root key on the PKCS#11 token
        (``root_key_id`` may also name a key already on one).
        """

        now = now or timefmt.now()
        remote = self._remote()
        if root_key_id is None:
            if hsm:
                root_key_id = self.keys.generate_on_token(roles.ROOT).keyid
            else:
                root_key_id = self._load_or_create(roles.ROOT).keyid
        if root_cert is not None and root_cert.canonical_keyid() != root_key_id:
            raise RepositoryError(f"the root certificate does not match root key {root_key_id}")
        root_signer, root_pub = self._root_signer(root_key_id, root_cert, now)
        targets_priv = self._load_or_create(roles.TARGETS)
        timestamp_key = await remote.get_key(self.gun, roles.TIMESTAMP)
        if server_managed_snapshot:
            snapshot_key = await remote.get_key(self.gun, roles.SNAPSHOT)
        else:
            snapshot_key = self._load_or_create(roles.SNAPSHOT).public
        root = build.root(
            {
                roles.ROOT: [root_pub],
                roles.TARGETS: [targets_priv.public],
                roles.SNAPSHOT: [snapshot_key],
                roles.TIMESTAMP: [timestamp_key],
            },
            now,
        )
        md_root = Metadata(root)
        md_root.sign(root_signer)
        md_targets: Metadata[Targets] = Metadata(build.targets(now))
        md_targets.sign(targets_priv.signer())
        self.cache.clear()
        self.cache.write(roles.ROOT, md_root.to_bytes())
        self.cache.write(roles.TARGETS, md_targets.to_bytes())
        if not server_managed_snapshot:
            files = {roles.ROOT: md_root.to_bytes(), roles.TARGETS: md_targets.to_bytes()}
            md_snap = Metadata(build.snapshot(files, now))
            md_snap.sign(*self._signers(roles.SNAPSHOT, root.role_keys(roles.SNAPSHOT)))
            self.cache.write(roles.SNAPSHOT, md_snap.to_bytes())

    async def _published_files(self) -> tuple[dict[str, bytes], bool]:
        """The current trusted files, or the locally initialised ones before the
        first publish (second value True)."""
        try:
            trusted = (await self.refresh()).trusted
        except RepositoryNotFoundError:
            files = {}
            for role in (roles.ROOT, roles.TARGETS, roles.SNAPSHOT):
                data = self.cache.read(role)
                if data is not None:
                    files[role] = data
            if roles.ROOT not in files or roles.TARGETS not in files:
                raise RepositoryError(f"{self.gun} is not initialized: run init first") from None
            return files, True
        return _files_of(trusted), False

    async def publish(self, *, now: datetime | None = None) -> list[str]:
        """Apply the changelist, sign what changed, upload it in one request.
        Returns the roles uploaded; the changelist is cleared on success."""
        from vouch.client.apply import Working, sign_working

        now = now or timefmt.now()
        remote = self._remote()
        files, first = await self._published_files()
        work = Working.from_files(self.gun, files)
        staged = self.changelist.items()
        for _name, change in staged:
            _apply(work, change, now)
        if first:
            work.dirty.add(roles.TARGETS)
        upload = sign_working(work, self._signers, now, include_root=first)
        await remote.publish(self.gun, upload.files)
        self.changelist.remove(name for name, _ in staged)
        return sorted(upload.files)

    async def delete(self, *, remote: bool = False) -> None:
        """Delete the local trust data (and the server's, with ``remote``)."""
        if remote:
            await self._remote().delete(self.gun)
        self.cache.clear()
        self.changelist.clear()

    async def rotate_key(self, role: str, *, server_managed: bool = False) -> Key:
        """Rotate a base role's key and publish a new root listing it."""
        from vouch.client.changelist import Change, RoleData
        from vouch.crypto.privkey import PrivateKey

        if role not in (roles.TARGETS, roles.SNAPSHOT, roles.TIMESTAMP):
            raise RepositoryError("rotate targets, snapshot or timestamp (root: rotate_root)")
        remote = self._remote()
        if role == roles.TIMESTAMP or server_managed:
            new = await remote.rotate_key(self.gun, role)
        else:
            priv = PrivateKey.generate("ecdsa")
            self.keys.save(priv, role, self.gun)
            new = priv.public
        self.changelist.add(
            Change("create", roles.ROOT, "role", "", RoleData(role, (new,)).to_json())
        )
        await self.publish()
        return new

    async def rotate_root(
        self,
        *,
        key_id: str | None = None,
        hsm: bool = False,
        object_id: bytes | None = None,
        now: datetime | None = None,
    ) -> Key:
        """``notary key rotate <gun> root``: a new root key (or the stored ``key_id``)
        with a new certificate, published at once in a root signed by the old and
        the new root keys. Staged changes are left staged, as with notary.

        ``hsm`` makes the new root key on the PKCS#11 token (``object_id``: its
        CKA_ID, adopting a key pair already there), where the certificate is
        signed too; ``key_id`` may also name a key already on a token."""
        from vouch.client.apply import Working, sign_working
        from vouch.client.changelist import role_change
        from vouch.crypto.keystore import KeyStoreError
        from vouch.crypto.privkey import PrivateKey
        from vouch.crypto.tokenerrors import TokenError

        if key_id is not None and hsm:
            raise RepositoryError("give a stored root key or --hsm, not both")
        now = now or timefmt.now()
        remote = self._remote()
        files, first = await self._published_files()
        if first:
            raise RepositoryError(f"{self.gun} is not published yet: publish before rotating root")
        work = Working.from_files(self.gun, files)
        old_keys = work.root.role_keys(roles.ROOT)
        if not self._signers(roles.ROOT, old_keys):
            raise RepositoryError("the current root key is not in this trust dir: cannot rotate")
        made: TokenKeyRef | str | None = None  # what to undo if the rotation is refused
        if hsm:
            made = self.keys.generate_on_token(roles.ROOT, object_id=object_id, reuse_ref=True)
            key_id = made.keyid
            if any(k.canonical_keyid() == key_id for k in old_keys.values()):
                raise RepositoryError(f"key {key_id} is the current root key already")
        elif key_id is None:
            priv = PrivateKey.generate("ecdsa")
            self.keys.save(priv, roles.ROOT)
            key_id = made = priv.keyid

        def signers(role: str, keys: dict[str, Key]) -> list[Signer]:
            # The old root's keys vouch for the new root, the new key for itself.
            return self._signers(role, {**old_keys, **keys} if role == roles.ROOT else keys)

        try:
            _, new = self._root_signer(key_id, None, now)
            _apply(work, role_change(roles.ROOT, [new]), now)
            upload = sign_working(work, signers, now)
            await remote.publish(self.gun, upload.files)
        except (errors.UpdateRejected, TrustError, KeyStoreError, TokenError) as refused:
            # Refused, or failed before anything was sent: no root names the new key.
            # (Not after a network failure: the server may have stored the new root.)
            try:
                if isinstance(made, str):
                    self.keys.remove(made)
                elif made is not None and made.created:
                    # A key pair this call made goes; an adopted or earlier one stays
                    # referenced, so that a retry with the same --pkcs11-id uses it.
                    self.keys.discard_token_key(made)
            except (KeyStoreError, TokenError, OSError) as cleanup:
                refused.add_note(f"(the unused new root key {key_id} was not removed: {cleanup})")
            raise
        except errors.RemoteError as exc:
            if made is not None and not isinstance(made, str) and made.created:
                cka = object_id.hex() if object_id is not None else made.keyid
                exc.add_note(
                    f"The new root key {made.keyid} stays on the token in case the server "
                    "stored the new root; if it did not, retry with --hsm --pkcs11-id "
                    f"{cka} to use that key."
                )
            raise
        return new


def _files_of(trusted: TrustedSet) -> dict[str, bytes]:
    files = {roles.ROOT: trusted.root_bytes}
    if trusted.snapshot is not None and trusted.snapshot.raw is not None:
        files[roles.SNAPSHOT] = trusted.snapshot.raw
    for role, md in trusted.targets.items():
        if md.raw is not None:
            files[role] = md.raw
    return files


def _apply(work: Working, change: Change, now: datetime) -> None:
    from vouch.client.apply import ChangeError
    from vouch.client.changelist import DelegationData, RoleData, TargetData

    try:
        if change.type == "target":
            if change.action == "delete":
                work.remove_target(change.scope, change.path, now)
            else:
                meta: FileMeta = TargetData.from_json(change.data or b"{}").to_file_meta()
                work.add_target(change.scope, change.path, meta, now)
        elif change.type == "delegation":
            data = DelegationData.from_json(change.data) if change.data else DelegationData()
            if change.scope.endswith("/*"):
                work.remove_keys_everywhere(list(data.remove_keys))
            elif change.action == "delete":
                work.delete_delegation(change.scope)
            else:
                work.update_delegation(change.scope, data)
        elif change.type == "witness":
            if change.scope not in work.targets:
                raise ChangeError(f"cannot witness {change.scope}: no such role")
            work.dirty.add(change.scope)
        elif change.type == "role":
            role_data = RoleData.from_json(change.data or b"{}")
            spec = work.root.roles[role_data.role]
            spec.keyids = []
            for key in role_data.keys:
                work.root.add_key(role_data.role, key)
            work.dirty.add(roles.ROOT)
            if role_data.role == roles.TARGETS:
                work.dirty.add(roles.TARGETS)  # re-sign it with the new key, as notary does
        else:
            raise ChangeError(f"unknown change type {change.type!r}")
    except ChangeError:
        raise
    except (TrustError, ValueError) as exc:
        raise ChangeError(f"cannot apply {change.type} change to {change.scope}: {exc}") from exc
