"""Server settings: vouch's own config, notary-server's config as is, the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from vouch.server.settings import load_settings


def test_defaults_are_the_embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.listen == "127.0.0.1:4443" and not s.plain_http
    assert s.storage_url() == f"sqlite:///{tmp_path / '.vouch' / 'vouch.db'}"
    assert s.key_url().endswith("/.vouch/keys.db")
    assert s.keys.type == "local" and s.auth.type == "none"


def test_notary_server_config_is_accepted_as_is(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    cfg = {
        "server": {
            "http_addr": ":4443",
            "tls_cert_file": "./certs/server.crt",
            "tls_key_file": "./certs/server.key",
        },
        "trust_service": {
            "type": "remote",
            "hostname": "notarysigner",
            "port": "7899",
            "key_algorithm": "ecdsa",
            "tls_ca_file": "./certs/root-ca.crt",
            "tls_client_cert": "./certs/server.crt",
            "tls_client_key": "./certs/server.key",
        },
        "storage": {
            "backend": "mysql",
            "db_url": "server@tcp(mysql:3306)/notaryserver?parseTime=True",
        },
        "auth": {
            "type": "token",
            "options": {
                "realm": "https://auth.docker.io/token",
                "service": "notary-server",
                "issuer": "auth.docker.io",
                "rootcertbundle": "certs/auth.crt",
            },
        },
        "caching": {"max_age": {"current_metadata": 0, "consistent_metadata": 60}},
        "repositories": {"gun_prefixes": ["docker.io/", "example.com/"]},
        "logging": {"level": "debug"},
    }
    path = tmp_path / "server-config.json"
    path.write_text(json.dumps(cfg))
    s = load_settings(path)
    assert s.listen == ":4443"
    assert s.tls.cert_file == tmp_path / "certs/server.crt"  # relative to the config file
    assert s.storage.url == "server@tcp(mysql:3306)/notaryserver?parseTime=True"
    assert s.keys.type == "remote" and s.keys.hostname == "notarysigner" and s.keys.port == 7899
    assert s.keys.tls_ca_file == tmp_path / "certs/root-ca.crt"
    assert s.auth.type == "token" and s.auth.issuer == "auth.docker.io"
    assert s.auth.rootcertbundle == tmp_path / "certs/auth.crt"
    assert s.caching.current_metadata == 0 and s.caching.consistent_metadata == 60
    assert s.gun_prefixes == ["docker.io/", "example.com/"]
    assert s.log_level == "debug"


def test_notary_config_without_tls_means_plain_http_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "server": {"http_addr": "127.0.0.1:4443"},
                "trust_service": {"type": "local"},
                "storage": {"backend": "memory"},
            }
        )
    )
    s = load_settings(path)
    assert s.plain_http and s.storage_url() == "memory"
    assert s.keys.type == "memory" and s.keys.key_algorithm == "ed25519"


def test_notary_config_with_half_tls_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"server": {"http_addr": ":1", "tls_cert_file": "a.crt"}}))
    with pytest.raises(ValueError, match="together"):
        load_settings(path)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vouch.json"
    path.write_text(json.dumps({"listen": "127.0.0.1:1", "storage": {"url": "memory"}}))
    monkeypatch.setenv("VOUCH_LISTEN", "127.0.0.1:2")
    monkeypatch.setenv("VOUCH_KEYS__KEY_ALGORITHM", "ed25519")
    monkeypatch.setenv("NOTARY_SIGNER_PROD", "s3cret")
    s = load_settings(path)
    assert s.listen == "127.0.0.1:2"
    assert s.storage.url == "memory"
    assert s.keys.key_algorithm == "ed25519"
    assert s.passphrases()["prod"] == "s3cret"


@pytest.mark.parametrize(
    "doc",
    [
        {"listen": 5, "unknown_setting": True},
        {"gun_prefixes": ["noslash"]},
        {"gun_prefixes": ["/abs/"]},
        {"keys": {"key_algorithm": "rsa"}},
        {"caching": {"current_metadata": -1}},
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, doc: dict[str, object]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValidationError):
        load_settings(path)


def test_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "vouch.toml"
    path.write_text('listen = "0.0.0.0:8443"\n[storage]\nurl = "memory"\n')
    s = load_settings(path)
    assert s.listen == "0.0.0.0:8443" and s.storage_url() == "memory"
