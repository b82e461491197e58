"""Registry token auth from the ``vouch`` CLI: NOTARY_AUTH, the Docker config and the
login prompt, against ``vouch server`` behind a real token server (:mod:`token_server`).

Users: alice may push and pull ``example.com/alice/*``; bob may pull
``example.com/*``; anonymous users get nothing.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from token_server import ANONYMOUS, TokenServer, User, notary_auth, rule
from vouch.cli import prompts
from vouch.cli.main import cli
from vouch_harness import VOUCH, VouchServer

GUN = "example.com/alice/app"
USERS = {
    "alice": User("alice-pw", (rule("example.com/alice/*", "push", "pull"),)),
    "bob": User("bob-pw", (rule("example.com/*", "pull"),)),
    ANONYMOUS: User("", ()),
}
PASSPHRASES = {f"NOTARY_{r}_PASSPHRASE": "auth-passphrase" for r in ("ROOT", "TARGETS", "SNAPSHOT")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TokenServer, VouchServer]]:
    workdir = tmp_path_factory.mktemp("cli-auth")
    with TokenServer(USERS) as tokens:
        bundle = tokens.authority.write_bundle(workdir / "token-root.crt")
        auth = {
            "type": "token",
            "realm": tokens.realm,
            "service": tokens.service,
            "issuer": tokens.issuer,
            "rootcertbundle": str(bundle),
        }
        config = workdir / "vouch.json"
        config.write_text(json.dumps({"auth": auth}))
        with VouchServer(workdir / "server", extra_args=("--config", str(config))) as server:
            yield tokens, server


def vouch(
    url: str, home: Path, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {"HOME": str(home), "PATH": "/usr/bin:/bin", **PASSPHRASES, **(env or {})}
    return subprocess.run(
        [VOUCH, "-s", url, "-d", str(home / "trust"), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        check=False,
    )


def test_notary_auth_docker_config_and_prompt(
    stack: tuple[TokenServer, VouchServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens, server = stack
    alice = {"NOTARY_AUTH": notary_auth("alice", "alice-pw")}
    target = tmp_path / "t.bin"
    target.write_bytes(b"t")
    for args in (("init", GUN, "-p"), ("add", GUN, "v1", target, "-p")):
        done = vouch(server.url, tmp_path / "alice", *args, env=alice)
        assert done.returncode == 0, done.stdout + done.stderr
    assert any(r.account == "alice" for r in tokens.requests)

    # Anonymous: refused with one clear line, and no prompt without a terminal.
    anonymous = vouch(server.url, tmp_path / "anon", "list", GUN)
    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith("Error: you are not authorized to perform this operation")
    assert "Traceback" not in anonymous.stderr

    # bob's login from the Docker config (what `docker login` leaves behind).
    bob_home = tmp_path / "bob"
    host = server.url.removeprefix("http://")
    basic = base64.b64encode(b"bob:bob-pw").decode()
    (bob_home / ".docker").mkdir(parents=True)
    (bob_home / ".docker" / "config.json").write_text(
        json.dumps({"auths": {host: {"auth": basic}}})
    )
    listed = vouch(server.url, bob_home, "list", GUN, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)] == ["v1"]

    # On a terminal with no stored login, vouch asks (on stderr, so --json stays clean).
    monkeypatch.setenv("HOME", str(tmp_path / "carol"))
    monkeypatch.delenv("NOTARY_AUTH", raising=False)
    monkeypatch.setattr(prompts, "interactive", lambda: True)
    result = CliRunner().invoke(
        cli,
        ["-s", server.url, "-d", str(tmp_path / "carol" / "trust"), "list", GUN, "--json"],
        input="bob\nbob-pw\n",
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "Enter username" in result.stderr and "Enter password" in result.stderr
    assert [t["name"] for t in json.loads(result.stdout)] == ["v1"]
