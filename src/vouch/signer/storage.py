"""Open the signer's key store from its config: notary-signer's table, CouchDB, or memory.

The SQL backends use :class:`~vouch.keyservice.local.LocalKeyService`, whose
``private_keys`` rows are notary-signer's own, so a vouch signer and a
notary-signer can take turns on one database (both directions). The URL goes
through :func:`vouch.storage.urls.translate`, so notary's ``db_url`` forms
(libpq URLs with ``sslmode``, Go MySQL DSNs with ``tls=``) work unchanged.

The ``couchdb`` backend (a vouch addition) uses
:class:`~vouch.keyservice.couch.CouchKeyService`: the same JWE-encrypted keys,
one document each, in the database the URL's path names, or ``vouch_keys``
when the URL names only the server (``https://user:pass@host:6984/``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from vouch.crypto.pkcs11token import TokenError
from vouch.keyservice.base import KeyService, KeyServiceUnavailableError
from vouch.keyservice.couch import CouchKeyService, key_target
from vouch.keyservice.local import LocalKeyService
from vouch.keyservice.memory import MemoryKeyService
from vouch.keyservice.pkcs11 import Pkcs11KeyService
from vouch.signer.config import ConfigError, SignerConfig
from vouch.storage.urls import DatabaseTarget, translate


def database_target(config: SignerConfig) -> DatabaseTarget:
    """The SQLAlchemy target of a SQL backend's ``db_url``."""
    if config.db_url is None:
        raise ConfigError("the memory backend has no database")
    if config.backend == "couchdb":
        raise ConfigError("the couchdb backend has no SQL database")
    url = config.db_url
    if config.backend == "sqlite" and "://" not in url:
        url = f"sqlite:///{url}"
    target = translate(url)
    expected = {"sqlite": "sqlite", "postgres": "postgresql", "mysql": "mysql"}.get(
        config.backend, ""
    )
    if target.dialect != expected:
        raise ConfigError(f"storage.db_url is a {target.dialect} URL but the backend is {expected}")
    return target


def make_engine(target: DatabaseTarget) -> AsyncEngine:
    """An engine that never prints statement parameters (a row's ``private`` value)."""
    connect_args: dict[str, Any] = dict(target.connect_args)
    if target.dialect == "sqlite":
        connect_args.setdefault("timeout", 30)
    engine = create_async_engine(
        target.url,
        connect_args=connect_args,
        hide_parameters=True,
        pool_pre_ping=target.dialect != "sqlite",
        pool_recycle=1800,
    )
    if target.require_tls:
        sa.event.listen(engine.sync_engine, "connect", _require_mysql_tls)
    return engine


def _require_mysql_tls(dbapi_conn: Any, _record: Any) -> None:
    """aiomysql silently continues in plaintext when the server offers no TLS; refuse that
    for a DSN that asked for ``tls=``: passphrase-encrypted keys would still cross the
    network, but so would everything an attacker needs to learn which keys exist."""
    cur = dbapi_conn.cursor()
    cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    row = cur.fetchone()
    cur.close()
    if not row or not row[1]:
        raise KeyServiceUnavailableError("the DSN asks for TLS but MySQL did not negotiate it")


async def open_key_service(config: SignerConfig, *, create_table: bool = True) -> KeyService:
    """The configured store, its ``private_keys`` table created if missing.

    notary-signer leaves the schema to separate migrations; creating the table
    here (it is the same table) saves operators that step on a fresh database.
    """
    if config.backend == "memory":
        return MemoryKeyService()
    if config.backend == "pkcs11":
        assert config.pkcs11 is not None  # config_from_dict guarantees it
        try:
            return await Pkcs11KeyService.open(config.pkcs11)
        except TokenError as exc:
            raise ConfigError(f"pkcs11: {exc}") from None
    assert config.default_alias is not None  # config_from_dict guarantees it
    if config.backend == "couchdb":
        assert config.db_url is not None
        try:
            return await CouchKeyService.open(
                key_target(config.db_url),
                config.passphrases,
                config.default_alias,
                create=create_table,
            )
        except ValueError as exc:
            raise ConfigError(f"storage.db_url: {exc}") from None
    engine = make_engine(database_target(config))
    try:
        service = LocalKeyService(
            engine, config.passphrases, config.default_alias, owns_engine=True
        )
        if create_table:
            await service.create_table()
    except BaseException:
        await engine.dispose()
        raise
    return service


__all__ = ["database_target", "make_engine", "open_key_service"]
