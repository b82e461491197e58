"""The trust server's configuration: one typed object, from a file and the environment.

Precedence: defaults < config file < environment (``VOUCH_*``, nested with
``__``, e.g. ``VOUCH_STORAGE__URL``). The config file may be vouch's own
(JSON or TOML with the fields below) or notary-server's JSON config as is;
:func:`from_notary_config` translates the latter, so operators can switch
without rewriting it.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class TLSSettings(BaseModel):
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None


class StorageSettings(BaseModel):
    # Empty means the embedded default: SQLite in the data dir.
    url: str = ""


class KeySettings(BaseModel):
    """Server-managed keys (timestamp, optionally snapshot)."""

    type: Literal["local", "memory", "remote"] = "local"
    key_algorithm: Literal["ecdsa", "ed25519"] = "ecdsa"
    # Local key service: its database (empty: keys.db in the data dir) and the
    # alias whose passphrase encrypts new keys. Passphrases come from
    # NOTARY_SIGNER_<ALIAS> (as notary-signer reads them) or from ``passphrases``.
    url: str = ""
    default_alias: str = "vouch"
    passphrases: dict[str, SecretStr] = Field(default_factory=dict)
    # Remote signer (notary-signer's gRPC API), for the signer issue.
    hostname: str = ""
    port: int = 7899
    tls_ca_file: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None


class AuthSettings(BaseModel):
    type: Literal["none", "token"] = "none"
    realm: str = ""
    service: str = ""
    issuer: str = ""
    rootcertbundle: Path | None = None
    autoredirect: bool = False


class CachingSettings(BaseModel):
    current_metadata: int = Field(300, ge=0, le=31_536_000)
    consistent_metadata: int = Field(2_592_000, ge=0, le=31_536_000)


class ServerSettings(BaseSettings):
    """Everything ``vouch server`` needs; see docs/server.md."""

    model_config = SettingsConfigDict(
        env_prefix="VOUCH_", env_nested_delimiter="__", extra="forbid"
    )

    listen: str = "127.0.0.1:4443"
    data_dir: Path = Path(".vouch")
    plain_http: bool = False  # serve without TLS; only with this explicit flag
    tls: TLSSettings = Field(default_factory=TLSSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    caching: CachingSettings = Field(
        default_factory=lambda: CachingSettings(current_metadata=300, consistent_metadata=2_592_000)
    )
    gun_prefixes: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0)
    log_level: str = "info"
    workers: int = Field(1, ge=1)

    @field_validator("gun_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for p in value:
            if not p.endswith("/") or p.startswith("/") or p.startswith("..") or "//" in p:
                raise ValueError(f"GUN prefix {p!r} must end in '/' and be a clean relative path")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values).
        return (env_settings, init_settings)

    def storage_url(self) -> str:
        return self.storage.url or f"sqlite:///{(self.data_dir / 'vouch.db').resolve()}"

    def key_url(self) -> str:
        # A file of its own by default: with SQLite, a publish holds the metadata
        # database's write lock while the key service records key use.
        return self.keys.url or f"sqlite:///{(self.data_dir / 'keys.db').resolve()}"

    def passphrases(self) -> dict[str, str]:
        """Alias → passphrase from settings and ``NOTARY_SIGNER_<ALIAS>`` variables."""
        out = {alias: secret.get_secret_value() for alias, secret in self.keys.passphrases.items()}
        for name, value in os.environ.items():
            if name.startswith("NOTARY_SIGNER_") and name != "NOTARY_SIGNER_DEFAULT_ALIAS":
                out.setdefault(name.removeprefix("NOTARY_SIGNER_").lower(), value)
        return out


def _resolve(base: Path, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def is_notary_config(doc: dict[str, Any]) -> bool:
    server = doc.get("server")
    return (isinstance(server, dict) and "http_addr" in server) or "trust_service" in doc


def from_notary_config(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Translate notary-server's JSON config into vouch's settings fields.

    Relative paths are relative to the config file's directory, as in notary.
    """
    out: dict[str, Any] = {}
    server = doc.get("server", {})
    if "http_addr" in server:
        out["listen"] = server["http_addr"]
    tls = {
        "cert_file": _resolve(base, server.get("tls_cert_file")),
        "key_file": _resolve(base, server.get("tls_key_file")),
        "client_ca_file": _resolve(base, server.get("client_ca_file")),
    }
    if bool(tls["cert_file"]) != bool(tls["key_file"]):
        raise ValueError("server.tls_cert_file and server.tls_key_file must be set together")
    if tls["cert_file"]:
        out["tls"] = tls
    else:
        # notary-server serves plain HTTP when no certificate is configured.
        out["plain_http"] = True
    storage = doc.get("storage", {})
    backend = storage.get("backend", "memory")
    if backend == "memory":
        out["storage"] = {"url": "memory"}
    elif backend in ("sqlite3", "sqlite"):
        out["storage"] = {"url": f"sqlite:///{_resolve(base, storage.get('db_url', 'notary.db'))}"}
    elif backend in ("postgres", "mysql"):
        url = storage.get("db_url", "")
        out["storage"] = {"url": url}
    elif backend == "couchdb":
        # https://user:pass@host:6984/ (database "vouch") or …/<database>; see
        # docs/deploy/couchdb.md. Required: an empty URL would silently mean SQLite.
        if not storage.get("db_url"):
            raise ValueError("storage.db_url is required for the couchdb backend")
        out["storage"] = {"url": storage["db_url"]}
    else:
        raise ValueError(f"storage backend {backend!r} is not supported by vouch")
    trust = doc.get("trust_service", {})
    if trust.get("type") == "remote":
        out["keys"] = {
            "type": "remote",
            "hostname": trust.get("hostname", ""),
            "port": int(trust.get("port", 7899)),
            "key_algorithm": trust.get("key_algorithm", "ecdsa"),
            "tls_ca_file": _resolve(base, trust.get("tls_ca_file")),
            "tls_client_cert": _resolve(base, trust.get("tls_client_cert")),
            "tls_client_key": _resolve(base, trust.get("tls_client_key")),
        }
    elif trust.get("type") == "local":
        # notary's local trust service: in-memory ed25519 keys, lost on restart.
        out["keys"] = {"type": "memory", "key_algorithm": "ed25519"}
    auth = doc.get("auth")
    if isinstance(auth, dict) and auth.get("type") == "token":
        opts = auth.get("options", {})
        out["auth"] = {
            "type": "token",
            "realm": opts.get("realm", ""),
            "service": opts.get("service", ""),
            "issuer": opts.get("issuer", ""),
            "rootcertbundle": _resolve(base, opts.get("rootcertbundle")),
            "autoredirect": bool(opts.get("autoredirect", False)),
        }
    max_age = doc.get("caching", {}).get("max_age", {})
    if max_age:
        out["caching"] = {k: v for k, v in max_age.items() if k in CachingSettings.model_fields}
    prefixes = doc.get("repositories", {}).get("gun_prefixes")
    if prefixes:
        out["gun_prefixes"] = prefixes
    level = doc.get("logging", {}).get("level")
    if level:
        out["log_level"] = level
    return out


_FILE_FIELDS = {
    "tls": ("cert_file", "key_file", "client_ca_file"),
    "auth": ("rootcertbundle",),
    "keys": ("tls_ca_file", "tls_client_cert", "tls_client_key"),
}


def _relative_to(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """File paths in vouch's config are relative to the config file, as in notary's."""
    out = dict(doc)
    for section, names in _FILE_FIELDS.items():
        sub = out.get(section)
        if isinstance(sub, dict):
            sub = dict(sub)
            for name in names:
                if isinstance(sub.get(name), str):
                    sub[name] = _resolve(base, sub[name])
            out[section] = sub
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServerSettings:
    """Settings from an optional config file (vouch's or notary-server's), then the environment."""
    values: dict[str, Any] = {}
    if config_file is not None:
        text = config_file.read_text()
        doc = tomllib.loads(text) if config_file.suffix == ".toml" else json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError(f"{config_file}: the config must be an object")
        base = config_file.resolve().parent
        values = from_notary_config(doc, base) if is_notary_config(doc) else _relative_to(doc, base)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ServerSettings(**values)
