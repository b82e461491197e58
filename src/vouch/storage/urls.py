"""Turn the storage URLs operators write into something SQLAlchemy can open.

Operators migrating from notary-server bring its ``storage.db_url`` unchanged:
a libpq-style ``postgres://…?sslmode=…`` URL or a Go MySQL DSN such as
``user:pass@tcp(host:3306)/db?parseTime=true``. Neither is a valid SQLAlchemy
URL with an async driver, and SSL settings must become an :class:`ssl.SSLContext`
because neither asyncpg nor aiomysql reads libpq/Go parameter names. Plain
SQLAlchemy URLs are accepted too; a driverless one gets the async driver.

Error messages never include the URL itself: it may carry a password.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

Dialect = Literal["sqlite", "postgresql", "mysql"]

_ASYNC_DRIVERS: dict[Dialect, str] = {
    "sqlite": "aiosqlite",
    "postgresql": "asyncpg",
    "mysql": "aiomysql",
}
_BACKEND_ALIASES: dict[str, Dialect] = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}

# libpq / lib/pq parameters that only steer the client and have no asyncpg meaning.
_PG_IGNORED = frozenset(
    {"fallback_application_name", "binary_parameters", "disable_prepared_binary_result"}
)
_PG_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
# go-sql-driver/mysql parameters that tune the Go driver only; vouch's driver needs none.
_MYSQL_IGNORED = frozenset(
    {
        "parseTime",
        "loc",
        "charset",
        "collation",
        "readTimeout",
        "writeTimeout",
        "allowNativePasswords",
        "allowOldPasswords",
        "checkConnLiveness",
        "clientFoundRows",
        "columnsWithAlias",
        "interpolateParams",
        "maxAllowedPacket",
        "multiStatements",
        "rejectReadOnly",
        "serverPubKey",
    }
)
_GO_DSN = re.compile(
    r"^(?:(?P<user>[^:@/]*)(?::(?P<password>.*))?@)?"
    r"(?:(?P<net>[a-z0-9]+)(?:\((?P<addr>[^)]*)\))?)?"
    r"/(?P<db>[^/?]*)(?:\?(?P<params>.*))?$",
    re.DOTALL,
)
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True)
class DatabaseTarget:
    """An async SQLAlchemy URL plus the driver arguments a URL cannot carry."""

    url: URL
    dialect: Dialect
    connect_args: dict[str, Any] = field(default_factory=dict)
    #: The driver must refuse a connection that did not negotiate TLS (aiomysql
    #: silently falls back to plaintext when the server does not offer TLS).
    require_tls: bool = False


def translate(raw: str) -> DatabaseTarget:
    """Translate a storage URL (SQLAlchemy, libpq or Go MySQL DSN) to a :class:`DatabaseTarget`.

    ``memory`` is not a database and is handled by the caller.
    """
    raw = raw.strip()
    if "://" not in raw:
        match = _GO_DSN.match(raw)
        if match is None:
            raise ValueError(
                "unrecognised storage URL: expected memory, sqlite:///path, "
                "postgres://…, mysql://… or a Go MySQL DSN user:pass@tcp(host:3306)/db"
            )
        return _from_go_dsn(match)
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError("malformed storage URL") from None
    backend, _, driver = url.drivername.partition("+")
    dialect = _BACKEND_ALIASES.get(backend)
    if dialect is None:
        raise ValueError(f"unsupported storage backend {backend!r}")
    if driver and driver != _ASYNC_DRIVERS[dialect]:
        raise ValueError(
            f"driver {driver!r} is not supported for {dialect}; "
            f"use {dialect}+{_ASYNC_DRIVERS[dialect]} or no driver"
        )
    url = url.set(drivername=f"{dialect}+{_ASYNC_DRIVERS[dialect]}")
    if dialect == "postgresql":
        return _postgres(url)
    if dialect == "mysql":
        return _mysql_url(url)
    return _sqlite(url)


def _sqlite(url: URL) -> DatabaseTarget:
    if not url.database or url.database == ":memory:" or "mode=memory" in str(url):
        raise ValueError(
            "in-memory SQLite is not supported (each connection would see its own "
            "database); use the 'memory' store or a file path"
        )
    return DatabaseTarget(url=url, dialect="sqlite")


def _postgres(url: URL) -> DatabaseTarget:
    """Map libpq query parameters onto asyncpg's ``connect()`` arguments.

    Unknown parameters become server run-time settings, as lib/pq (notary's
    driver) does with them (``search_path``, ``statement_timeout``, …).
    """
    query = dict(url.query)
    params = {k: v if isinstance(v, str) else v[-1] for k, v in query.items()}
    connect_args: dict[str, Any] = {}
    settings: dict[str, str] = {}
    ssl_params = {k: params.pop(k) for k in list(params) if k.startswith("ssl")}
    connect_args["ssl"] = pg_ssl(
        ssl_params.pop("sslmode", "prefer"),
        rootcert=ssl_params.pop("sslrootcert", None),
        cert=ssl_params.pop("sslcert", None),
        key=ssl_params.pop("sslkey", None),
    )
    if ssl_params:
        raise ValueError(f"unsupported PostgreSQL SSL parameters: {sorted(ssl_params)}")
    keep: dict[str, str] = {}
    for name, value in params.items():
        if name in _PG_IGNORED:
            continue
        if name == "connect_timeout":
            connect_args["timeout"] = float(value)
        elif name in {"host", "port"}:
            keep[name] = value  # socket directory or multi-host, understood by the dialect
        else:
            settings[name] = value
    if settings:
        connect_args["server_settings"] = settings
    return DatabaseTarget(url=url.set(query=keep), dialect="postgresql", connect_args=connect_args)


def pg_ssl(
    mode: str, *, rootcert: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | bool | str:
    """The asyncpg ``ssl`` argument for a libpq ``sslmode`` (and certificate files).

    As in libpq, ``require`` with a root certificate verifies the chain (like
    ``verify-ca``); ``verify-ca`` checks the chain but not the host name.
    """
    if mode not in _PG_SSLMODES:
        raise ValueError(f"unsupported sslmode {mode!r}")
    if mode == "disable":
        return False
    if mode in {"allow", "prefer"}:
        return mode
    verify = mode in {"verify-ca", "verify-full"} or rootcert is not None
    if verify:
        ctx = ssl.create_default_context()
        if rootcert and rootcert != "system":
            ctx.load_verify_locations(cafile=rootcert)
        elif rootcert is None and (default := Path.home() / ".postgresql" / "root.crt").exists():
            ctx.load_verify_locations(cafile=str(default))
        ctx.check_hostname = mode == "verify-full"
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, keyfile=key)
    return ctx


def _mysql_url(url: URL) -> DatabaseTarget:
    """A SQLAlchemy MySQL URL: pass through, forcing utf8mb4."""
    return DatabaseTarget(url=url.update_query_dict({"charset": "utf8mb4"}), dialect="mysql")


def _from_go_dsn(m: re.Match[str]) -> DatabaseTarget:
    """Translate a go-sql-driver/mysql DSN (notary's MySQL ``db_url``).

    TLS: ``tls=true`` verifies against the system CAs (or ``tls-ca``),
    ``tls=skip-verify`` encrypts without verifying, any other name (Go's
    registered "custom" configs) requires ``tls-ca`` and verifies against it.
    ``tls-ca``, ``tls-cert`` and ``tls-key`` are vouch extensions: Go registers
    such files in code, which a DSN cannot express.
    """
    net = m["net"] or "tcp"
    addr = m["addr"]
    params: dict[str, str] = {}
    for item in (m["params"] or "").split("&"):
        if item:
            name, _, value = item.partition("=")
            params[name] = value
    query: dict[str, str] = {"charset": "utf8mb4"}
    host: str | None = "127.0.0.1"
    port: int | None = 3306
    if net in {"tcp", "tcp4", "tcp6"}:
        if addr:
            host, port = _split_host_port(addr)
    elif net == "unix":
        host, port = "localhost", None
        query["unix_socket"] = addr or "/tmp/mysql.sock"  # noqa: S108  (Go's default)
    else:
        raise ValueError(f"unsupported MySQL network {net!r}")
    connect_args: dict[str, Any] = {}
    tls = params.pop("tls", "false")
    ca, cert, key = (
        params.pop("tls-ca", None),
        params.pop("tls-cert", None),
        params.pop("tls-key", None),
    )
    ctx = mysql_ssl(tls, ca=ca, cert=cert, key=key)
    if ctx is not None:
        connect_args["ssl"] = ctx
    if "timeout" in params:
        connect_args["connect_timeout"] = max(1, round(go_duration(params.pop("timeout"))))
    unknown = sorted(set(params) - _MYSQL_IGNORED)
    if unknown:
        raise ValueError(f"unsupported MySQL DSN parameters: {unknown}")
    url = URL.create(
        "mysql+aiomysql",
        username=m["user"] or "root",
        password=m["password"] or None,
        host=host,
        port=port,
        database=m["db"] or None,
        query=query,
    )
    return DatabaseTarget(
        url=url, dialect="mysql", connect_args=connect_args, require_tls=ctx is not None
    )


def mysql_ssl(
    tls: str, *, ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext | None:
    """The aiomysql ``ssl`` context for a Go DSN ``tls`` value (None: no TLS)."""
    if tls in {"false", ""}:
        if ca or cert:
            raise ValueError("tls-ca/tls-cert given but tls=false")
        return None
    if tls == "preferred":
        raise ValueError("tls=preferred is not supported (it allows plaintext); use tls=true")
    if tls == "skip-verify":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if tls != "true" and not ca:
            raise ValueError(f"tls={tls} names a custom TLS config: give its CA file as tls-ca")
        ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, keyfile=key)
    return ctx


def go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``30s``, ``1m30s`` or ``500ms``."""
    pos, total = 0, 0.0
    for part in _GO_DURATION_PART.finditer(text):
        if part.start() != pos:
            break
        total += float(part[1]) * _GO_DURATION_UNITS[part[2]]
        pos = part.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid Go duration {text!r}")
    return total


def _split_host_port(addr: str) -> tuple[str, int]:
    if addr.startswith("["):  # [::1]:3306
        host, _, rest = addr[1:].partition("]")
        return host, int(rest.lstrip(":") or 3306)
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, 3306
    return host, int(port)
