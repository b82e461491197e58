"""The notary CLI's client config, and the trust directory's per-GUN paths.

Unit tests cover notary's rules (defaults, ``~``, relative paths, viper's
case-insensitive names and boolean casting, command-line precedence). The
``interop`` tests hand the same config files to /usr/bin/notary and check
that it picks the same trust directory, server and trust-pinning behaviour;
they fail, never skip, without the notary binaries.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notary_harness import NOTARY_BIN, NotaryCLI, NotaryServer, require_notary_binaries
from vouch.client.changelist import changelist_dir
from vouch.client.config import (
    DEFAULT_SERVER_URL,
    ClientConfig,
    ConfigError,
    InvalidGunError,
    check_gun,
    gun_dir,
    gun_metadata_dir,
    load_client_config,
)
from vouch.tuf.pinning import TrustPinning


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$HOME`` (notary reads ``$HOME/.notary/config.json`` by default)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


def write_config(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# --- loading ------------------------------------------------------------------------


def test_defaults_without_any_config_file(home: Path) -> None:
    config = load_client_config()
    assert config == ClientConfig(trust_dir=home / ".notary")
    assert config.server_url == DEFAULT_SERVER_URL == "https://notary-server:4443"
    assert config.trust_pinning == TrustPinning()
    assert config.config_file is None
    assert not config.skip_tls_verify


def test_default_config_file_is_read(home: Path, tmp_path: Path) -> None:
    write_config(home / ".notary/config.json", {"trust_dir": str(tmp_path / "elsewhere")})
    config = load_client_config()
    assert config.trust_dir == tmp_path / "elsewhere"
    assert config.config_file == home / ".notary/config.json"


def test_explicit_missing_file_is_an_error(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"error opening config file.*missing\.json"):
        load_client_config(tmp_path / "missing.json")


@pytest.mark.parametrize("content", [b"{nope", b"[]", b"", b'{"trust_dir": NaN}', b"\xff"])
def test_unreadable_config_is_an_error(home: Path, content: bytes) -> None:
    path = home / ".notary/config.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="error opening config file"):
        load_client_config()


def test_spec_example(home: Path, tmp_path: Path) -> None:
    """§9.3's example: relative paths from the config's directory, ``~`` expanded."""
    cfg_dir = tmp_path / "cfg"
    pem = ca_pem()
    (cfg_dir / "pins").mkdir(parents=True)
    (cfg_dir / "pins/pinned-ca.pem").write_bytes(pem)
    doc = {
        "trust_dir": "~/.docker/trust",
        "remote_server": {
            "url": "https://notary.example.com",
            "root_ca": "./ca.crt",
            "tls_client_cert": "./c.crt",
            "tls_client_key": "../keys/c.key",
            "skipTLSVerify": False,
        },
        "trust_pinning": {
            "certs": {"example.com/app": ["abc"], "example.com/*": ["def", "ghi"]},
            "ca": {"example.com/": "./pins/pinned-ca.pem"},
            "disable_tofu": True,
        },
    }
    config = load_client_config(write_config(cfg_dir / "config.json", doc))
    assert config == ClientConfig(
        trust_dir=home / ".docker/trust",
        server_url="https://notary.example.com",
        root_ca=cfg_dir / "ca.crt",
        tls_client_cert=cfg_dir / "c.crt",
        tls_client_key=tmp_path / "keys/c.key",
        skip_tls_verify=False,
        trust_pinning=TrustPinning(
            certs={"example.com/app": ["abc"], "example.com/*": ["def", "ghi"]},
            ca={"example.com/": pem},
            disable_tofu=True,
        ),
        config_file=cfg_dir / "config.json",
    )
    assert config.trust_pinning.pinned_ids("example.com/other") == ["def", "ghi"]


def test_relative_config_path_and_trust_dir(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "cfg/config.json", {"trust_dir": "trust", "remote_server": {}})
    monkeypatch.chdir(tmp_path)
    config = load_client_config("cfg/config.json")
    assert config.config_file == tmp_path / "cfg/config.json"
    assert config.trust_dir == tmp_path / "cfg/trust"
    assert config.server_url == DEFAULT_SERVER_URL


@pytest.mark.parametrize(
    ("value", "expected"),
    [("~", "{home}"), ("~/x/../y", "{home}/y"), ("~other/x", "{cfg}/~other/x"), ("/abs", "/abs")],
)
def test_home_expansion_is_notarys(home: Path, tmp_path: Path, value: str, expected: str) -> None:
    config = load_client_config(write_config(tmp_path / "cfg/c.json", {"trust_dir": value}))
    assert config.trust_dir == Path(expected.format(home=home, cfg=tmp_path / "cfg"))


def test_member_names_are_case_insensitive_like_viper(home: Path, tmp_path: Path) -> None:
    doc = {
        "Trust_Dir": "/td",
        "REMOTE_SERVER": {"URL": "http://x:1", "skiptlsverify": "true", "Root_CA": "ca.pem"},
        "Trust_Pinning": {"Disable_TOFU": "T", "Certs": {"Example.com/App": ["abc"]}},
    }
    config = load_client_config(write_config(tmp_path / "c.json", doc))
    assert config.trust_dir == Path("/td")
    assert config.server_url == "http://x:1"
    assert config.skip_tls_verify is True
    assert config.root_ca == tmp_path / "ca.pem"
    assert config.trust_pinning.disable_tofu is True
    # GUN keys are kept as written (viper would lower-case them).
    assert config.trust_pinning.certs == {"Example.com/App": ["abc"]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("t", True), ("1", True), ("TRUE", True), ("FALSE", False), (None, False)],
)
def test_booleans_cast_like_viper(tmp_path: Path, value: Any, expected: bool) -> None:
    doc = {"remote_server": {"skipTLSVerify": value}, "trust_pinning": {"disable_tofu": value}}
    config = load_client_config(write_config(tmp_path / "c.json", doc))
    assert config.skip_tls_verify is expected
    assert config.trust_pinning.disable_tofu is expected


def test_empty_values_mean_defaults(home: Path, tmp_path: Path) -> None:
    doc = {"trust_dir": "", "remote_server": {"url": "", "root_ca": ""}}
    config = load_client_config(write_config(tmp_path / "c.json", doc))
    assert (config.trust_dir, config.server_url, config.root_ca) == (
        home / ".notary",
        DEFAULT_SERVER_URL,
        None,
    )


def test_command_line_wins_and_is_relative_to_cwd(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {
        "trust_dir": "/from/config",
        "remote_server": {"url": "https://config:4443", "root_ca": "ca.crt"},
    }
    path = write_config(tmp_path / "cfg/c.json", doc)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load_client_config(
        path,
        trust_dir="td",
        server="http://flag:1",
        tls_ca="flag-ca.crt",
        tls_cert="c.crt",
        tls_key=tmp_path / "k.key",
    )
    assert config.trust_dir == work / "td"
    assert config.server_url == "http://flag:1"
    assert config.root_ca == work / "flag-ca.crt"
    assert config.tls_client_cert == work / "c.crt"
    assert config.tls_client_key == tmp_path / "k.key"
    # Empty flags are "not given", as with notary.
    assert load_client_config(path, trust_dir="", server="").server_url == "https://config:4443"
    assert load_client_config(path, trust_dir="~/x").trust_dir == home / "x"


@pytest.mark.parametrize(
    "doc",
    [
        {"trust_dir": 7},
        {"remote_server": "https://x"},
        {"remote_server": {"url": ["https://x"]}},
        {"remote_server": {"skipTLSVerify": "yes"}},
        {"remote_server": {"skipTLSVerify": 1}},
        {"trust_pinning": {"disable_tofu": 1}},
        {"trust_pinning": {"disable_tofu": "tRUE"}},
        {"trust_pinning": {"disable_tofu": []}},
        {"remote_server": {"tls_client_cert": "c.crt"}},
        {"remote_server": {"tls_client_key": "c.key"}},
        {"trust_pinning": {"certs": ["abc"]}},
        {"trust_pinning": {"certs": {"gun": "abc"}}},
        {"trust_pinning": {"certs": {"gun": [1]}}},
        {"trust_pinning": {"ca": {"example.com/": 7}}},
        {"trust_pinning": {"ca": {"example.com/": "missing.pem"}}},
        {"trust_pinning": {"ca": "x"}},
    ],
)
def test_invalid_config_values(tmp_path: Path, doc: Any) -> None:
    with pytest.raises(ConfigError):
        load_client_config(write_config(tmp_path / "c.json", doc))


def test_pinned_ca_must_hold_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    doc = {"trust_pinning": {"ca": {"example.com/": "ca.pem"}}}
    with pytest.raises(ConfigError, match="no PEM certificate"):
        load_client_config(write_config(tmp_path / "c.json", doc))


def test_half_a_client_certificate_pair_from_the_command_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.json", {"remote_server": {"tls_client_key": "k.key"}})
    assert load_client_config(path, tls_cert="c.crt").tls_client_key == tmp_path / "k.key"
    with pytest.raises(ConfigError, match="both client key and cert"):
        load_client_config(write_config(tmp_path / "d.json", {}), tls_key="k.key")


# --- GUN paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gun", ["docker.io/library/alpine", "localhost:5000/a_b-c", "x", "example.com/a.b/c@d"]
)
def test_valid_guns(tmp_path: Path, gun: str) -> None:
    assert check_gun(gun) == gun
    assert gun_dir(tmp_path, gun) == tmp_path / "tuf" / gun
    assert gun_metadata_dir(tmp_path, gun) == tmp_path / "tuf" / gun / "metadata"
    assert changelist_dir(tmp_path, gun) == tmp_path / "tuf" / gun / "changelist"
    assert gun_dir(tmp_path, gun).resolve().is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize(
    "gun",
    ["", "/etc", "..", "../x", "a/../../x", "a/..", "./a", "a/./b", "a//b", "a/", "a\\..\\b",
     "a\x00b", "a\nb"],
)  # fmt: skip
def test_guns_that_would_escape_or_alias(tmp_path: Path, gun: str) -> None:
    with pytest.raises(InvalidGunError):
        check_gun(gun)
    with pytest.raises(InvalidGunError):
        gun_metadata_dir(tmp_path, gun)


# --- interop: /usr/bin/notary reads the same files ------------------------------------


@dataclass
class Notary:
    """The real CLI with a chosen HOME and working directory and no implicit flags."""

    home: Path
    cwd: Path

    def run(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TZ": "UTC",
        }
        return subprocess.run(
            [NOTARY_BIN, *(os.fspath(a) for a in args)],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    def trust_dir_used(self, *global_flags: str | os.PathLike[str]) -> Path:
        """The trust dir notary picks: ``status`` (offline) creates ``tuf/<gun>/changelist``."""
        gun = "example.com/which-trust-dir"
        proc = self.run(*global_flags, "status", gun)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        found = [
            p for p in self.home.parent.rglob("changelist") if p.parent.name == "which-trust-dir"
        ]
        assert len(found) == 1, found
        trust = found[0].parents[3]
        _remove_tree(trust / "tuf")
        return trust


def _remove_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


@pytest.fixture
def notary(home: Path, tmp_path: Path) -> Iterator[Notary]:
    try:
        require_notary_binaries()
    except Exception as e:  # NotaryUnavailableError: fail, never skip
        pytest.fail(str(e), pytrace=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield Notary(home, cwd)


@pytest.mark.interop
def test_notary_and_vouch_pick_the_same_trust_dir(
    notary: Notary, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(notary.cwd)
    # No config at all: ~/.notary.
    assert notary.trust_dir_used() == load_client_config().trust_dir == home / ".notary"
    # The default config file, with an absolute trust_dir.
    write_config(home / ".notary/config.json", {"trust_dir": str(tmp_path / "abs")})
    assert notary.trust_dir_used() == load_client_config().trust_dir == tmp_path / "abs"
    # An explicit config with ~ and case-insensitive member names.
    cfg = write_config(tmp_path / "cfg/c.json", {"Trust_Dir": "~/tilde"})
    assert notary.trust_dir_used("-c", cfg) == load_client_config(cfg).trust_dir
    assert load_client_config(cfg).trust_dir == home / "tilde"
    # -d wins over the file and is relative to the working directory.
    assert notary.trust_dir_used("-c", cfg, "-d", "flag") == notary.cwd / "flag"
    assert load_client_config(cfg, trust_dir="flag").trust_dir == notary.cwd / "flag"


@pytest.mark.interop
def test_relative_trust_dir_differs_from_notary_on_purpose(
    notary: Notary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notary 0.7 resolves a relative ``trust_dir`` against the working directory,
    although its documentation says "relative to the directory of the configuration
    file"; vouch follows the documentation. Pinned here so the difference stays known."""
    cfg = write_config(tmp_path / "cfg/c.json", {"trust_dir": "./td"})
    monkeypatch.chdir(notary.cwd)
    assert notary.trust_dir_used("-c", cfg) == notary.cwd / "td"
    assert load_client_config(cfg).trust_dir == tmp_path / "cfg/td"


@pytest.mark.interop
def test_missing_explicit_config_fails_in_both(notary: Notary, tmp_path: Path) -> None:
    proc = notary.run("-c", tmp_path / "missing.json", "status", "example.com/x")
    assert proc.returncode != 0
    assert "error opening config file" in proc.stdout + proc.stderr
    with pytest.raises(ConfigError, match="error opening config file"):
        load_client_config(tmp_path / "missing.json")


@pytest.mark.interop
def test_server_url_and_tofu_settings_read_alike(
    notary: Notary, notary_server: NotaryServer, tmp_path: Path
) -> None:
    """Same files, same verdicts: the server comes from ``remote_server.url`` (any
    case), and ``disable_tofu`` (a viper boolean, so ``"true"`` counts) refuses a
    first contact while ``false`` allows it. Values viper silently reads as false
    (numbers, ``"yes"``) are refused by vouch rather than guessed at."""
    gun = "example.com/vouch/config-tofu"
    publisher = NotaryCLI(notary_server.url, tmp_path / "publisher")
    publisher.run("init", gun)
    publisher.run("publish", gun)

    def listing(name: str, doc: dict[str, Any]) -> tuple[ClientConfig, str]:
        doc = {"trust_dir": str(tmp_path / f"td-{name}"), **doc}
        cfg = write_config(tmp_path / f"{name}.json", doc)
        proc = notary.run("-c", cfg, "list", gun)
        return load_client_config(cfg), proc.stdout + proc.stderr

    remote = {"Remote_Server": {"URL": notary_server.url}}
    config, out = listing("tofu", remote)
    assert config.server_url == notary_server.url
    assert "No targets present in this repository." in out
    for value in (True, "true", "1", "T"):
        config, out = listing(
            f"no-tofu-{value}", {**remote, "trust_pinning": {"disable_tofu": value}}
        )
        assert config.trust_pinning.disable_tofu is True
        assert "invalid trust pinning specified" in out
    config, out = listing("explicit-tofu", {**remote, "trust_pinning": {"disable_tofu": "false"}})
    assert config.trust_pinning.disable_tofu is False
    assert "No targets present in this repository." in out
    for ignored in (1, "yes"):
        pins = {"disable_tofu": ignored}
        doc = {"trust_dir": str(tmp_path / f"td-{ignored}"), **remote, "trust_pinning": pins}
        cfg = write_config(tmp_path / f"ignored-{ignored}.json", doc)
        assert "No targets present" in notary.run("-c", cfg, "list", gun).stdout
        with pytest.raises(ConfigError, match="silently read it as false"):
            load_client_config(cfg)
