"""Start the trust server: settings → storage, key service, TLS, auth → uvicorn.

On the embedded defaults (no config) this gives a working server on
https://127.0.0.1:4443 with SQLite and keys encrypted at rest in ``.vouch/``,
and a generated development CA whose path is printed so clients can trust it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn

from vouch.server.app import Authorizer, HTTPSettings, build_app
from vouch.server.service import KeyService, TrustService
from vouch.server.settings import ServerSettings
from vouch.storage.base import MetadataStore

log = logging.getLogger("vouch.server")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":4443" means all interfaces, as in notary
    return host, int(port)


def local_passphrases(settings: ServerSettings, echo: Callable[[str], Any]) -> dict[str, str]:
    """Passphrases for the local key service.

    Without one configured for the default alias, a random passphrase is
    generated once into ``<data_dir>/keys.passphrase`` (mode 0600): keys in the
    database stay encrypted, and a database backup alone does not leak them.
    Production deployments set ``NOTARY_SIGNER_<ALIAS>`` instead.
    """
    passphrases = settings.passphrases()
    alias = settings.keys.default_alias
    if alias not in passphrases:
        path = settings.data_dir / "keys.passphrase"
        if not path.exists():
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
            echo(
                f"generated a passphrase for the key service in {path}; "
                f"set NOTARY_SIGNER_{alias.upper()} to manage it yourself"
            )
        passphrases[alias] = path.read_text().strip()
    return passphrases


async def open_components(
    settings: ServerSettings, echo: Callable[[str], Any] = print, *, create: bool = True
) -> tuple[MetadataStore, KeyService]:
    from vouch.keyservice.memory import MemoryKeyService
    from vouch.storage.sql import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = await open_store(settings.storage_url(), create=create)
    keys: KeyService
    if settings.keys.type == "memory":
        keys = MemoryKeyService()
    elif settings.keys.type == "local":
        try:
            keys = await open_local_keys(settings, echo, create=create)
        except BaseException:
            await store.close()
            raise
    else:
        from vouch.keyservice.remote import RemoteKeyService

        k = settings.keys
        try:
            keys = RemoteKeyService(
                k.hostname,
                k.port,
                ca_file=k.tls_ca_file,
                cert_file=k.tls_client_cert,
                key_file=k.tls_client_key,
            )
        except (ValueError, OSError) as exc:
            await store.close()
            raise SystemExit(f"keys.type remote: {exc}") from None
    return store, keys


async def open_local_keys(
    settings: ServerSettings, echo: Callable[[str], Any], *, create: bool = True
) -> KeyService:
    """The local key service on the key database.

    ``keys.url`` names it: an SQL URL (``private_keys`` table) or a CouchDB URL
    (database from the URL's path, ``vouch_keys`` if it names only the server).
    Unset: with CouchDB metadata storage, the database ``<metadata database>_keys``
    on the same server; otherwise ``keys.db`` in the data directory.
    """
    from sqlalchemy.ext.asyncio import create_async_engine

    from vouch.keyservice.local import LocalKeyService
    from vouch.storage.couchhttp import is_couch_url
    from vouch.storage.urls import translate

    if is_couch_url(settings.keys.url) or (
        not settings.keys.url and is_couch_url(settings.storage.url)
    ):
        from vouch.keyservice.base import KeyServiceError
        from vouch.keyservice.couch import CouchKeyService, key_target, keys_beside

        try:
            couch = (
                key_target(settings.keys.url)
                if settings.keys.url
                else keys_beside(settings.storage.url)
            )
            return await CouchKeyService.open(
                couch,
                local_passphrases(settings, echo),
                settings.keys.default_alias,
                create=create,
            )
        except (ValueError, KeyServiceError) as exc:
            raise SystemExit(f"keys: {exc}") from None
    url = settings.key_url()
    if url == "memory":
        raise SystemExit("the local key service needs a database; set keys.url or storage.url")
    target = translate(url)
    connect_args = dict(target.connect_args)
    if target.dialect == "sqlite":
        connect_args.setdefault("timeout", 30)
    engine = create_async_engine(
        target.url, connect_args=connect_args, hide_parameters=True, pool_pre_ping=True
    )
    service = LocalKeyService(
        engine,
        local_passphrases(settings, echo),
        settings.keys.default_alias,
        owns_engine=True,
    )
    await service.create_table()
    return service


def build_authorizer(settings: ServerSettings) -> Authorizer | None:
    if settings.auth.type != "token":
        return None
    from vouch.server.authhttp import TokenAuthMiddleware

    middleware: Authorizer = TokenAuthMiddleware.from_settings(settings.auth)
    return middleware


def ssl_context(settings: ServerSettings, echo: Callable[[str], Any]) -> ssl.SSLContext | None:
    if settings.plain_http:
        return None
    from vouch.server import devtls

    cert, key = settings.tls.cert_file, settings.tls.key_file
    if cert is None or key is None:
        host, port = split_listen(settings.listen)
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1") else host  # noqa: S104
        extra = [] if shown == "localhost" else [shown]
        paths = devtls.ensure_dev_tls(
            settings.data_dir / "tls", server_url=f"https://{shown}:{port}", extra_names=extra
        )
        cert, key = paths.server_cert, paths.server_key
        echo(paths.hint)
    reloading = devtls.ReloadingSSLContext(cert, key, client_ca=settings.tls.client_ca_file)
    return reloading.context


class _Config(uvicorn.Config):
    """uvicorn config whose TLS context is ours (reloaded on certificate rotation)."""

    def __init__(self, *args: Any, context: ssl.SSLContext | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._context = context

    def load(self) -> None:
        super().load()
        if self._context is not None:
            self.ssl = self._context


async def serve(
    settings: ServerSettings,
    echo: Callable[[str], Any] = print,
    *,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve until told to stop; ``sockets``: listen on these (a worker of :func:`run`)."""
    store, keys = await open_components(settings, echo, create=sockets is None)
    service = TrustService(store, keys, key_algorithm=settings.keys.key_algorithm)
    http = HTTPSettings(
        current_max_age=settings.caching.current_metadata,
        consistent_max_age=settings.caching.consistent_metadata,
        max_upload_bytes=settings.max_upload_bytes,
        gun_prefixes=tuple(settings.gun_prefixes),
    )
    app = build_app(service, settings=http, authorizer=build_authorizer(settings))
    host, port = split_listen(settings.listen)
    context = ssl_context(settings, echo)
    config = _Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        context=context,
        lifespan="off",
    )
    scheme = "https" if context is not None else "http"
    where = _redact(settings.storage_url())
    if sockets is None:
        echo(f"vouch server listening on {scheme}://{host}:{port} (storage: {where})")
    try:
        await uvicorn.Server(config).serve(sockets=sockets)
    finally:
        await store.close()
        close = getattr(keys, "close", None)
        if close is not None:
            await close()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def run(settings: ServerSettings, echo: Callable[[str], Any] = print) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if settings.workers > 1:
        from vouch.server.workers import run_workers

        run_workers(settings, echo)
        return
    _run_loop(serve(settings, echo))


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)


__all__ = ["run", "serve", "split_listen"]
_ = Path
