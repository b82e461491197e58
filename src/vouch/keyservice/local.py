"""The embedded key service: keys in SQL, encrypted at rest the notary-signer way.

Rows are notary-signer's (:mod:`vouch.keyservice.schema`); each private key
is a JWE under the passphrase of the row's ``passphrase_alias``, so keys
survive restarts, can be re-encrypted under a new alias while old aliases
stay readable, and a database dump alone reveals nothing.

Cost model: decrypting a row runs PBKDF2 (8192 rounds) in a worker thread,
once per key per process; decrypted keys sit in a bounded LRU cache. Every
signature still depends on a read of the row (concurrent signatures with one
key share the read in flight), so a key deleted through another instance
stops signing everywhere within one query's time.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self

from sqlalchemy import Row, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from vouch.crypto import jwe
from vouch.crypto.privkey import PrivateKey, public_der
from vouch.keyservice.base import (
    MAX_NAME,
    KeyInfo,
    KeyNotFoundError,
    KeyServiceUnavailableError,
    make_signature,
)
from vouch.keyservice.encrypted import DEFAULT_CACHE_SIZE, ENV_PREFIX, EncryptedKeys
from vouch.keyservice.schema import (
    ENCRYPTION_ALG,
    KEYWRAP_ALG,
    metadata,
    private_keys,
    public_key_of,
)
from vouch.tuf.keys import Key
from vouch.tuf.metadata import Signature

DEFAULT_ALIAS_VAR: Final = "NOTARY_SIGNER_DEFAULT_ALIAS"
PKCS11_PREFIX: Final = "NOTARY_SIGNER_PKCS11_"
#: ``last_used`` is refreshed at most this often: the first signature is what
#: matters (it stops reuse), later ones only keep the column roughly current
#: without a database write per signature.
LAST_USED_RESOLUTION: Final = timedelta(hours=1)

_t = private_keys.c
_LIVE = _t.deleted_at.is_(None)
_SIGNING_COLUMNS = (
    _t.key_id,
    _t.algorithm,
    _t.public,
    _t.private,
    _t.passphrase_alias,
    _t.last_used,
)
_INFO_COLUMNS = (_t.key_id, _t.algorithm, _t.public, _t.gun, _t.role, _t.created_at, _t.last_used)


def passphrases_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{alias: passphrase}`` from every ``NOTARY_SIGNER_<ALIAS>`` variable, as notary-signer
    reads them (alias case does not matter: notary upper-cases it)."""
    env = os.environ if environ is None else environ
    return {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX)
        and name != DEFAULT_ALIAS_VAR
        and not name.startswith(PKCS11_PREFIX)  # the token's settings and PIN, not aliases
        and value
    }


def _now() -> datetime:
    """Naive UTC: the columns are ``timestamp``/``datetime`` without zone, as notary's."""
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    """A column's naive UTC time as the aware time :class:`KeyInfo` promises."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class LocalKeyService(EncryptedKeys["Row[Any]"]):
    """:class:`~vouch.keyservice.base.KeyService` over the ``private_keys`` table.

    ``passphrases`` maps alias → passphrase (case-insensitive alias);
    ``default_alias`` encrypts new keys and must be among them. Call
    :meth:`create_table` (or use :meth:`open`) before the first request.

    Concurrency: within one instance, concurrent :meth:`create_key` calls for
    the same (gun, role, algorithm) are serialised and return the same key.
    Separate instances (other processes or hosts on one database) may each
    create a key in a race; both are stored and stay usable, which is what
    notary-signer does too and is safe because a client puts into root the
    one key its own request returned.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        passphrases: Mapping[str, str],
        default_alias: str,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        p2c: int = jwe.DEFAULT_P2C,
        clock: Callable[[], datetime] = _now,  # naive UTC, as stored
        owns_engine: bool = False,
    ) -> None:
        super().__init__(passphrases, default_alias, cache_size=cache_size, p2c=p2c, clock=clock)
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._owns_engine = owns_engine

    @classmethod
    async def open(
        cls, url: str, passphrases: Mapping[str, str], default_alias: str, **kwargs: Any
    ) -> Self:
        """A service with its own engine for ``url``, table created if missing.

        The engine hides SQL parameters in errors and logs, so a failed
        statement can never print a row's ``private`` value.
        """
        engine = create_async_engine(url, hide_parameters=True, pool_pre_ping=True)
        service = cls(engine, passphrases, default_alias, owns_engine=True, **kwargs)
        try:
            await service.create_table()
        except BaseException:
            await engine.dispose()
            raise
        return service

    async def create_table(self) -> None:
        """Create ``private_keys`` if missing (schema changes belong to migrations)."""
        async with self._connect() as conn:
            await conn.run_sync(metadata.create_all, checkfirst=True)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """:meth:`_connect` for one read in autocommit: no BEGIN/COMMIT round trips.

        Every signature reads its row (so a deletion anywhere stops it at once);
        that read is the signer's hot path, and a single SELECT needs no transaction.
        """
        async with self._connect(self._autocommit) as conn:
            yield conn

    @asynccontextmanager
    async def _connect(self, engine: AsyncEngine | None = None) -> AsyncIterator[AsyncConnection]:
        """A transaction; database failures become :class:`KeyServiceUnavailableError`.

        The driver's message is kept (it names the failure) but the exception
        chain is not: SQLAlchemy's text would carry statement parameters.
        """
        try:
            async with (engine or self._engine).begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None) or exc
            detail = f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"
            raise KeyServiceUnavailableError(f"key database error: {detail[:300]}") from None
        except OSError as exc:
            raise KeyServiceUnavailableError(f"key database unreachable: {exc}") from None

    # -- creating keys -------------------------------------------------------------------

    async def _unused_key(self, gun: str, role: str, algorithm: str) -> Key | None:
        query = (
            select(_t.algorithm, _t.public, _t.gun, _t.role)
            .where(_t.gun == gun, _t.role == role, _t.algorithm == algorithm)
            .where(_t.last_used.is_(None), _LIVE)
            .order_by(_t.id.desc())
        )
        return await self._first_of(query, gun, role)

    async def _first_of(self, query: Any, gun: str, role: str) -> Key | None:
        """The public key of the first row of ``query`` that is exactly ``gun``'s
        ``role`` (a table created with a case-folding collation matches more)."""
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            if (row.gun, row.role) == (gun, role):
                return public_key_of(row.algorithm, row.public)
        return None

    async def _store_new(
        self, key: PrivateKey, gun: str, role: str, algorithm: str, token: str
    ) -> None:
        now = self._clock()
        values = {
            "created_at": now,
            "updated_at": now,
            "key_id": key.keyid,
            "encryption_alg": ENCRYPTION_ALG,
            "keywrap_alg": KEYWRAP_ALG,
            "algorithm": algorithm,
            "passphrase_alias": self._default_alias,
            "public": public_der(key),
            "private": token.encode("ascii"),
            "gun": gun,
            "role": role,
        }
        async with self._connect() as conn:
            await conn.execute(private_keys.insert().values(**values))

    # -- reading keys --------------------------------------------------------------------

    async def get_key(self, gun: str, role: str) -> Key | None:
        query = select(*_INFO_COLUMNS).where(_t.gun == gun, _t.role == role, _LIVE)
        return await self._first_of(query.order_by(_t.id.desc()), gun, role)

    async def _row(self, key_id: str, *columns: Any) -> Row[Any] | None:
        if not key_id or len(key_id) > MAX_NAME:
            return None
        query = select(*columns).where(_t.key_id == key_id, _LIVE)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return row if row is not None and row.key_id == key_id else None

    async def _signing_row(self, key_id: str) -> Row[Any] | None:
        """The row a signature needs (one read shared by concurrent Sign calls)."""
        return await self._shared_read(key_id, lambda: self._row(key_id, *_SIGNING_COLUMNS))

    async def key_info(self, key_id: str) -> KeyInfo | None:
        row = await self._row(key_id, *_INFO_COLUMNS)
        if row is None:
            return None
        key = public_key_of(row.algorithm, row.public)
        return KeyInfo(key, row.gun, row.role, _aware(row.created_at), _aware(row.last_used))

    # -- signing -------------------------------------------------------------------------

    async def sign(self, key_id: str, message: bytes) -> Signature:
        row = await self._signing_row(key_id)
        if row is None:
            raise KeyNotFoundError(f"signing key not found: {key_id}")
        key = await self._private_key(
            key_id, row.passphrase_alias, bytes(row.private), row.algorithm, bytes(row.public)
        )
        signature = make_signature(key, message, key_id)
        now = self._clock()
        if row.last_used is None or now - row.last_used >= LAST_USED_RESOLUTION:
            mark = update(private_keys).where(_t.key_id == key_id)
            async with self._connect() as conn:
                await conn.execute(mark.values(last_used=now, updated_at=now))
        return signature

    # -- lifecycle -----------------------------------------------------------------------

    async def delete_key(self, key_id: str) -> None:
        """Soft delete (``deleted_at``), as notary-signer: the ID can never come back."""
        self._cache.pop(key_id, None)
        if not key_id or len(key_id) > MAX_NAME:
            return
        now = self._clock()
        query = update(private_keys).where(_t.key_id == key_id, _LIVE)
        async with self._connect() as conn:
            await conn.execute(query.values(deleted_at=now, updated_at=now))

    async def check_health(self) -> None:
        async with self._connect() as conn:
            await conn.execute(select(_t.id).limit(1))

    async def close(self) -> None:
        self._cache.clear()
        if self._owns_engine:
            await self._engine.dispose()
