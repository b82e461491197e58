"""The notary CLI's client configuration (``~/.notary/config.json``), read as notary reads it.

A drop-in has to accept the config files people already have, so the shape
is notary's own: ``trust_dir``, ``remote_server.{url, root_ca, tls_client_cert,
tls_client_key, skipTLSVerify}`` and ``trust_pinning.{certs, ca,
disable_tofu}``. Like notary (viper), member names are matched without regard
to case, ``~`` is expanded in ``trust_dir`` only, and command-line values win
over the file and are relative to the working directory.

Two deliberate differences from notary 0.7, both towards its documentation:
relative ``trust_dir`` and ``trust_pinning.ca`` paths are taken relative to
the config file's directory (notary resolves them against the working
directory, so the same config means different trust dirs depending on where
you run it), and the pinned CA files are read when the config is loaded, so
a broken pin is reported up front instead of silently on first use. GUN keys
of ``trust_pinning`` keep their case (viper lower-cases them, which makes a
pin for a mixed-case GUN silently fall back to TOFU).

This module also owns the trust directory's per-GUN paths: a GUN becomes
directories under ``tuf/``, so it is validated before it touches the file
system (Cure53 TUF-01-004: ``..`` or an absolute GUN escapes the trust dir).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from vouch.tuf.pinning import TrustPinning

DEFAULT_SERVER_URL: Final = "https://notary-server:4443"
DEFAULT_TRUST_DIR_NAME: Final = ".notary"
CONFIG_FILE_NAME: Final = "config.json"
TUF_DIR: Final = "tuf"
METADATA_DIR: Final = "metadata"

StrPath = str | os.PathLike[str]


class ConfigError(Exception):
    """The client configuration cannot be used; the message names file and member."""


class InvalidGunError(ValueError):
    """A GUN that cannot safely become a directory path under the trust dir."""


@dataclass(slots=True)
class ClientConfig:
    """Everything the client needs from config file and command line, paths absolute.

    ``config_file`` is the file that was read, ``None`` when only defaults
    apply (no ``-c`` and no ``~/.notary/config.json``).
    """

    trust_dir: Path
    server_url: str = DEFAULT_SERVER_URL
    root_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    skip_tls_verify: bool = False
    trust_pinning: TrustPinning = field(default_factory=TrustPinning)
    config_file: Path | None = None


# -- GUN paths ---------------------------------------------------------------------


def check_gun(gun: str) -> str:
    """Return ``gun`` if it is safe as a relative directory path, else raise.

    Refused: empty, absolute, an empty, ``.`` or ``..`` segment (which also
    covers leading, trailing and doubled slashes), backslashes and control
    characters. Anything else is left to the server to judge.
    """
    if not gun:
        raise InvalidGunError("the GUN is empty")
    if gun.startswith("/"):
        raise InvalidGunError(f"invalid GUN {gun!r}: it is an absolute path")
    if "\\" in gun or any(ord(c) < 0x20 or c == "\x7f" for c in gun):
        raise InvalidGunError(f"invalid GUN {gun!r}: backslash or control character")
    if any(seg in ("", ".", "..") for seg in gun.split("/")):
        raise InvalidGunError(f"invalid GUN {gun!r}: empty, '.' or '..' path segment")
    return gun


def gun_dir(trust_dir: StrPath, gun: str) -> Path:
    """``<trust_dir>/tuf/<gun>``: a GUN's slashes become nested directories."""
    return Path(trust_dir) / TUF_DIR / check_gun(gun)


def gun_metadata_dir(trust_dir: StrPath, gun: str) -> Path:
    """``<trust_dir>/tuf/<gun>/metadata``: the byte-exact metadata cache."""
    return gun_dir(trust_dir, gun) / METADATA_DIR


# -- loading -----------------------------------------------------------------------


def home_dir() -> Path:
    """``$HOME`` as notary uses it, else the account's home directory."""
    home = os.environ.get("HOME")
    return Path(home) if home else Path.home()


def default_trust_dir() -> Path:
    return home_dir() / DEFAULT_TRUST_DIR_NAME


def default_config_path() -> Path:
    return default_trust_dir() / CONFIG_FILE_NAME


def expand_home(path: str) -> str:
    """notary's ``~`` expansion: only ``~`` itself or a leading ``~/`` (never ``~user``)."""
    if path == "~" or path.startswith("~/"):
        return str(home_dir()) + path[1:]
    return path


def load_client_config(
    path: StrPath | None = None,
    *,
    trust_dir: StrPath | None = None,
    server: str | None = None,
    tls_ca: StrPath | None = None,
    tls_cert: StrPath | None = None,
    tls_key: StrPath | None = None,
) -> ClientConfig:
    """Read the client config as ``notary -c path -d … -s … --tls…`` would.

    ``path=None`` means ``~/.notary/config.json``, which may be missing (then
    the defaults apply); an explicitly given file must exist. Keyword
    arguments are the command-line overrides; ``None`` or ``""`` means "not
    given", as with notary's flags.
    """
    explicit = path is not None
    file = Path(os.path.abspath(Path(path) if path is not None else default_config_path()))
    read = _read(file, explicit)
    doc = read if read is not None else {}
    base = file.parent
    remote = _section(doc, "remote_server", file)
    pinning = _section(doc, "trust_pinning", file)

    def rel(value: str) -> Path:
        return Path(os.path.normpath(base / value))

    trust = _string(doc, "trust_dir", file)
    config = ClientConfig(
        trust_dir=rel(expand_home(trust)) if trust else default_trust_dir(),
        server_url=_string(remote, "url", file, "remote_server.") or DEFAULT_SERVER_URL,
        root_ca=_path(remote, "root_ca", file, rel),
        tls_client_cert=_path(remote, "tls_client_cert", file, rel),
        tls_client_key=_path(remote, "tls_client_key", file, rel),
        skip_tls_verify=_bool(remote, "skipTLSVerify", file, "remote_server."),
        trust_pinning=_trust_pinning(pinning, file, rel),
        config_file=file if read is not None else None,
    )
    _apply_overrides(
        config,
        trust_dir=trust_dir,
        server=server,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    if (config.tls_client_cert is None) != (config.tls_client_key is None):
        raise ConfigError("either pass both client key and cert, or neither")
    return config


def _apply_overrides(
    config: ClientConfig,
    *,
    trust_dir: StrPath | None,
    server: str | None,
    tls_ca: StrPath | None,
    tls_cert: StrPath | None,
    tls_key: StrPath | None,
) -> None:
    def cwd_path(value: StrPath) -> Path:
        return Path(os.path.abspath(expand_home(os.fspath(value))))

    if trust_dir:
        config.trust_dir = cwd_path(trust_dir)
    if server:
        config.server_url = server
    if tls_ca:
        config.root_ca = cwd_path(tls_ca)
    if tls_cert:
        config.tls_client_cert = cwd_path(tls_cert)
    if tls_key:
        config.tls_client_key = cwd_path(tls_key)


def _read(file: Path, explicit: bool) -> dict[str, Any] | None:
    """The parsed config; ``None`` for a missing default file (notary falls back silently)."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if not explicit:
            return None
        raise ConfigError(
            f"error opening config file: open {file}: no such file or directory"
        ) from None
    except OSError as exc:
        raise ConfigError(f"error opening config file {file}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw.decode("utf-8-sig"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"error opening config file {file}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"error opening config file {file}: the top level must be an object")
    return doc


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _lookup(obj: Mapping[str, Any], name: str) -> Any:
    """viper's case-insensitive member lookup; the last spelling in the file wins."""
    found: Any = None
    for key, value in obj.items():
        if key.lower() == name.lower():
            found = value
    return found


def _section(doc: Mapping[str, Any], name: str, file: Path) -> dict[str, Any]:
    value = _lookup(doc, name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {name} must be an object")
    return value


def _string(obj: Mapping[str, Any], name: str, file: Path, prefix: str = "") -> str:
    value = _lookup(obj, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{file}: {prefix}{name} must be a string")
    return value


def _path(obj: Mapping[str, Any], name: str, file: Path, rel: Callable[[str], Path]) -> Path | None:
    value = _string(obj, name, file, "remote_server.")
    return rel(value) if value else None


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _bool(obj: Mapping[str, Any], name: str, file: Path, prefix: str = "") -> bool:
    """A boolean as viper reads one: JSON ``true``/``false`` or a Go ParseBool string.

    viper turns anything else (numbers, ``"yes"``, lists) into ``false``
    without a word; for ``skipTLSVerify`` and ``disable_tofu`` that hides a
    mistake either way, so those values are refused instead.
    """
    value = _lookup(obj, name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _TRUE | _FALSE:
        return value in _TRUE
    raise ConfigError(
        f"{file}: {prefix}{name} must be true or false, not {value!r} "
        "(notary would silently read it as false)"
    )


def _trust_pinning(
    section: Mapping[str, Any], file: Path, rel: Callable[[str], Path]
) -> TrustPinning:
    certs_raw = _lookup(section, "certs") or {}
    ca_raw = _lookup(section, "ca") or {}
    if not isinstance(certs_raw, dict):
        raise ConfigError(f"{file}: invalid format for trust_pinning.certs")
    certs: dict[str, list[str]] = {}
    for gun, ids in certs_raw.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError(f"{file}: invalid format for trust_pinning.certs ({gun!r})")
        certs[gun] = list(ids)
    if not isinstance(ca_raw, dict):
        raise ConfigError(f"{file}: invalid format for trust_pinning.ca")
    ca: dict[str, bytes] = {}
    for prefix, ca_file in ca_raw.items():
        if not isinstance(ca_file, str) or not ca_file:
            raise ConfigError(f"{file}: trust_pinning.ca[{prefix!r}] must be a file name")
        ca[prefix] = _read_ca_bundle(rel(ca_file), prefix)
    disable = _bool(section, "disable_tofu", file, "trust_pinning.")
    return TrustPinning(certs=certs, ca=ca, disable_tofu=disable)


def _read_ca_bundle(path: Path, prefix: str) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"could not load root cert from CA path {path} (trust_pinning.ca {prefix!r}): "
            f"{exc.strerror or exc}"
        ) from exc
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ConfigError(
            f"trust_pinning.ca {prefix!r}: {path} holds no PEM certificate: {exc}"
        ) from exc
    return pem


__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_SERVER_URL",
    "DEFAULT_TRUST_DIR_NAME",
    "ClientConfig",
    "ConfigError",
    "InvalidGunError",
    "check_gun",
    "default_config_path",
    "default_trust_dir",
    "expand_home",
    "gun_dir",
    "gun_metadata_dir",
    "home_dir",
    "load_client_config",
]
