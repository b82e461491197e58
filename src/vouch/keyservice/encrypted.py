"""What the key services that keep JWE-encrypted keys share, whatever holds the keys.

notary-signer's key rows (:mod:`.local`, SQL) and one document per key
(:mod:`.couch`, CouchDB) store the same JWE token under a passphrase chosen by
alias. Both need the same things around it: passphrases by alias that never
show up in a repr, a bounded cache of decrypted keys, decryption off the event
loop with errors a caller can act on, and one read per key shared by the
concurrent signatures that wait for it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Final, Generic, TypeVar

from vouch.crypto import jwe
from vouch.crypto.privkey import PrivateKey
from vouch.keyservice.base import (
    DEFAULT_ALGORITHM,
    KeyDecryptionError,
    KeyInfo,
    ServiceSigner,
    check_algorithm,
    check_names,
    generate,
)
from vouch.keyservice.schema import load_private, private_plaintext
from vouch.tuf.keys import Key

R = TypeVar("R")

#: Passphrases come from ``NOTARY_SIGNER_<ALIAS>``, as notary-signer reads them.
ENV_PREFIX: Final = "NOTARY_SIGNER_"
#: Decrypted keys kept per process (a key costs a JWE decryption, ~0.1 s, to load).
DEFAULT_CACHE_SIZE: Final = 1024


class Passphrases(dict[str, str]):
    """Alias → passphrase that never shows its values in a repr or a traceback."""

    def __repr__(self) -> str:
        return f"<passphrases for {len(self)} aliases>"


class EncryptedKeys(Generic[R]):
    """The base of a key service whose stored keys are JWE tokens (``R``: a stored key)."""

    def __init__(
        self,
        passphrases: Mapping[str, str],
        default_alias: str,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        p2c: int = jwe.DEFAULT_P2C,
        clock: Callable[[], datetime],
    ) -> None:
        self._passphrases = Passphrases({a.upper(): pw for a, pw in passphrases.items()})
        if not default_alias or len(default_alias) > 50:
            raise ValueError("the default passphrase alias must be 1 to 50 characters")
        if not self._passphrases.get(default_alias.upper()):
            raise ValueError(
                f"no passphrase for the default alias {default_alias!r}"
                f" (set {ENV_PREFIX}{default_alias.upper()})"
            )
        self._default_alias = default_alias
        self._cache: OrderedDict[str, PrivateKey] = OrderedDict()
        self._cache_size = cache_size
        self._p2c = p2c
        self._clock = clock
        self._reads: dict[str, asyncio.Future[R | None]] = {}
        self._create_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- creating keys -------------------------------------------------------------------

    async def create_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        """An unused live key of ``gun``/``role``/``algorithm`` if one is stored, else a
        new one (notary-signer hands out the same unused key until it has signed)."""
        check_names(gun, role)
        check_algorithm(algorithm)
        lock = self._create_locks.setdefault((gun, role, algorithm), asyncio.Lock())
        async with lock:
            unused = await self._unused_key(gun, role, algorithm)
            return unused if unused is not None else await self.rotate_key(gun, role, algorithm)

    async def rotate_key(self, gun: str, role: str, algorithm: str = DEFAULT_ALGORITHM) -> Key:
        """A new key, stored encrypted under the default alias's passphrase."""
        check_names(gun, role)
        key = generate(algorithm)
        passphrase = self._passphrases[self._default_alias.upper()]
        token = await asyncio.to_thread(
            jwe.encrypt, private_plaintext(key), passphrase, p2c=self._p2c
        )
        await self._store_new(key, gun, role, algorithm, token)
        self._remember(key)
        return key.public

    async def _unused_key(self, gun: str, role: str, algorithm: str) -> Key | None:
        raise NotImplementedError

    async def _store_new(
        self, key: PrivateKey, gun: str, role: str, algorithm: str, token: str
    ) -> None:
        """Store a new key (``token``: its JWE); never overwrite an existing one."""
        raise NotImplementedError

    # -- reading keys --------------------------------------------------------------------

    async def key_info(self, key_id: str) -> KeyInfo | None:
        raise NotImplementedError

    async def public_key(self, key_id: str) -> Key | None:
        info = await self.key_info(key_id)
        return info.key if info is not None else None

    async def _shared_read(self, key_id: str, read: Callable[[], Awaitable[R | None]]) -> R | None:
        """The stored key a signature needs, read once for all Sign calls waiting on it.

        Concurrent signatures with one key (a busy server's timestamp key) join
        the read already in flight instead of each paying one: under load that
        read, not the signature, was the signer's cost. Each signature uses a
        read that was in flight or started when it arrived, so a key deleted
        through any instance stops signing within one read's time.
        """
        pending = self._reads.get(key_id)
        if pending is None:
            pending = asyncio.ensure_future(read())
            self._reads[key_id] = pending
            pending.add_done_callback(lambda _f: self._reads.pop(key_id, None))
        return await asyncio.shield(pending)

    async def _private_key(
        self, key_id: str, alias: str, token: bytes, algorithm: str, public: bytes
    ) -> PrivateKey:
        """The decrypted key: from the cache, else decrypted (off the loop) and cached."""
        key = self._cache.get(key_id)
        if key is not None:
            self._cache.move_to_end(key_id)
            return key
        passphrase = self._passphrases.get(alias.upper())
        if not passphrase:
            raise KeyDecryptionError(
                f"key {key_id}: no passphrase for alias {alias!r} (set {ENV_PREFIX}{alias.upper()})"
            )
        try:
            plaintext = await asyncio.to_thread(jwe.decrypt, token, passphrase)
        except jwe.WrongPassphraseError:
            raise KeyDecryptionError(
                f"key {key_id}: wrong passphrase for alias {alias!r}"
            ) from None
        except jwe.JWEError as exc:
            raise KeyDecryptionError(f"key {key_id}: unreadable private key: {exc}") from None
        key = load_private(key_id, algorithm, public, plaintext)
        self._remember(key)
        return key

    def _remember(self, key: PrivateKey) -> None:
        self._cache[key.keyid] = key
        self._cache.move_to_end(key.keyid)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def signer(self, key_id: str) -> ServiceSigner:
        return ServiceSigner(self, key_id)  # type: ignore[arg-type]


__all__ = ["DEFAULT_CACHE_SIZE", "ENV_PREFIX", "EncryptedKeys", "Passphrases"]
