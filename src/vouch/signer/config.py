"""notary-signer's configuration file, read as notary-signer reads it.

Operators replacing notary-signer keep their config: the same JSON keys
(``server.grpc_addr``, ``server.tls_cert_file``, ``server.tls_key_file``,
``server.client_ca_file``, ``storage.backend``, ``storage.db_url``,
``storage.default_alias``, ``logging.level``), the same environment overrides
(``NOTARY_SIGNER_<SECTION>_<KEY>``, e.g. ``NOTARY_SIGNER_STORAGE_DB_URL``), the
same passphrase variables (``NOTARY_SIGNER_<ALIAS>``), and relative paths
resolved against the config file's directory. Anything notary-signer would
refuse at start-up (no TLS, no address, no default alias for a database) is
refused here too, before a port is opened.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from vouch.crypto.pkcs11token import TokenConfig
from vouch.keyservice.encrypted import ENV_PREFIX
from vouch.keyservice.local import DEFAULT_ALIAS_VAR, passphrases_from_env

Backend = Literal["memory", "sqlite", "postgres", "mysql", "pkcs11", "couchdb"]
#: The token's user PIN: from the environment only, never from the config file.
PKCS11_PIN_VAR: Final = "NOTARY_SIGNER_PKCS11_PIN"

_BACKENDS: Final[dict[str, Backend]] = {
    "memory": "memory",
    "sqlite3": "sqlite",
    "sqlite": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "pkcs11": "pkcs11",
    "couchdb": "couchdb",
}
#: Config keys that the environment may override, as viper's AutomaticEnv maps them.
_ENV_KEYS: Final = (
    ("server", "grpc_addr"),
    ("server", "tls_cert_file"),
    ("server", "tls_key_file"),
    ("server", "client_ca_file"),
    ("storage", "backend"),
    ("storage", "db_url"),
    ("storage", "default_alias"),
    ("logging", "level"),
    ("pkcs11", "module"),
    ("pkcs11", "token_label"),
    ("pkcs11", "slot"),
)


class ConfigError(ValueError):
    """The configuration cannot run a signer; the message says which key to fix."""


class _Secret(dict[str, str]):
    """Alias → passphrase whose repr never shows a passphrase."""

    def __repr__(self) -> str:
        return f"<passphrases for {len(self)} aliases>"


@dataclass(frozen=True)
class SignerConfig:
    """Everything ``vouch signer`` needs to serve."""

    grpc_addr: str
    tls_cert_file: Path
    tls_key_file: Path
    client_ca_file: Path | None
    backend: Backend
    #: The database as written in the config (a notary ``db_url`` or an SQLAlchemy
    #: URL); for sqlite an absolute path or URL. None for memory.
    db_url: str | None
    default_alias: str | None
    passphrases: Mapping[str, str] = field(default_factory=_Secret, repr=False)
    log_level: str = "error"
    #: The token, for the ``pkcs11`` backend (PIN included; never in a repr).
    pkcs11: TokenConfig | None = None

    @property
    def listen_address(self) -> str:
        """``grpc_addr`` in the form grpc's ``add_secure_port`` wants (``:7899`` → all
        interfaces, as Go's ``net.Listen`` reads it)."""
        host, sep, port = self.grpc_addr.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"server.grpc_addr {self.grpc_addr!r} must be host:port")
        if host in ("", "[::]", "::"):
            return f"[::]:{port}"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{port}"


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> SignerConfig:
    """Parse notary-signer's config file (JSON, or TOML by extension) plus environment."""
    text = path.read_text()
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the config must be an object")
    return config_from_dict(doc, path.resolve().parent, environ)


def config_from_dict(
    doc: Mapping[str, Any], base: Path, environ: Mapping[str, str] | None = None
) -> SignerConfig:
    """:func:`load_config` for an already parsed document; ``base`` anchors relative paths."""
    env = os.environ if environ is None else environ

    def get(section: str, key: str) -> str | None:
        override = env.get(f"{ENV_PREFIX}{section}_{key}".upper())
        if override:
            return override
        sub = doc.get(section)
        value = sub.get(key) if isinstance(sub, Mapping) else None
        if value is None or value == "":
            return None
        if not isinstance(value, str | int):
            raise ConfigError(f"{section}.{key} must be a string")
        return str(value)

    def path_of(section: str, key: str) -> Path | None:
        value = get(section, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    grpc_addr = get("server", "grpc_addr")
    if not grpc_addr:
        raise ConfigError("grpc listen address required for server (server.grpc_addr)")
    cert, key = path_of("server", "tls_cert_file"), path_of("server", "tls_key_file")
    if cert is None or key is None:
        # notary-signer has no plaintext mode: signing requests must be authenticated.
        raise ConfigError("server.tls_cert_file and server.tls_key_file are required")
    raw_backend = get("storage", "backend")
    if raw_backend is None:
        raise ConfigError(
            "storage.backend is required (memory, mysql, postgres, sqlite3, couchdb or pkcs11)"
        )
    backend = _BACKENDS.get(raw_backend.lower())
    if backend is None:
        raise ConfigError(
            f"{raw_backend} is not an allowed backend, must be one of: "
            "memory, mysql, postgres, sqlite3, couchdb, pkcs11"
        )
    db_url: str | None = None
    default_alias: str | None = None
    token: TokenConfig | None = None
    if backend == "pkcs11":
        section = doc.get("pkcs11")
        if isinstance(section, Mapping) and "pin" in section:
            raise ConfigError(f"pkcs11.pin is never read from a file: set {PKCS11_PIN_VAR}")
        token = _token_config(get, env)
    elif backend != "memory":
        db_url = get("storage", "db_url")
        if not db_url:
            raise ConfigError(f"storage.db_url is required for the {raw_backend} backend")
        if backend == "sqlite" and "://" not in db_url:
            p = Path(db_url).expanduser()
            db_url = str(p if p.is_absolute() else base / p)
        default_alias = get("storage", "default_alias") or env.get(DEFAULT_ALIAS_VAR) or None
        if not default_alias:
            raise ConfigError(
                "must provide a default alias for the key DB "
                f"(storage.default_alias or {DEFAULT_ALIAS_VAR})"
            )
    return SignerConfig(
        grpc_addr=grpc_addr,
        tls_cert_file=cert,
        tls_key_file=key,
        client_ca_file=path_of("server", "client_ca_file"),
        backend=backend,
        db_url=db_url,
        default_alias=default_alias,
        passphrases=_Secret(passphrases_from_env(env)),
        log_level=(get("logging", "level") or "error").lower(),
        pkcs11=token,
    )


def _token_config(get: Any, env: Mapping[str, str]) -> TokenConfig:
    """The ``pkcs11`` section: ``module`` (required), ``token_label`` and/or ``slot``;
    the PIN only from :data:`PKCS11_PIN_VAR`."""
    module = get("pkcs11", "module")
    if not module:
        raise ConfigError("pkcs11.module (the PKCS#11 library's path) is required")
    raw_slot = get("pkcs11", "slot")
    if raw_slot is not None and not raw_slot.isdigit():
        raise ConfigError(f"pkcs11.slot {raw_slot!r} must be a slot number")
    label = get("pkcs11", "token_label")
    if label is None and raw_slot is None:
        raise ConfigError("pkcs11.token_label or pkcs11.slot is required")
    pin = env.get(PKCS11_PIN_VAR)
    if not pin:
        raise ConfigError(f"the token's user PIN must be set in {PKCS11_PIN_VAR}")
    return TokenConfig(
        module=module,
        token_label=label,
        slot=int(raw_slot) if raw_slot is not None else None,
        pin=pin,
    )


__all__ = [
    "PKCS11_PIN_VAR",
    "Backend",
    "ConfigError",
    "SignerConfig",
    "config_from_dict",
    "load_config",
]
