"""The ``vouch`` CLI as a drop-in for the notary CLI.

In process with click's CliRunner for the offline commands, prompts and
error reporting; as a real ``.venv/bin/vouch`` process against a real
``vouch server`` process for the flows a user runs (README flow, a second
signer with a delegation, key rotation, failures). Interop with the real
notary programs is in ``test_cli_notary.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from notary_harness import free_port
from vouch.cli import prompts
from vouch.cli.main import cli
from vouch.cli.output import plain_table
from vouch.crypto.keystore import EnvPassphraseRetriever, KeyStore
from vouch_harness import VOUCH, VouchServer

PASSPHRASE = "cli-test-passphrase"
PASS_VARS = {f"NOTARY_{r}_PASSPHRASE": PASSPHRASE for r in ("ROOT", "TARGETS", "SNAPSHOT")}
ENV = {**PASS_VARS, "NOTARY_DELEGATION_PASSPHRASE": PASSPHRASE}
NO_PASSPHRASES = dict.fromkeys([*ENV, "NOTARY_AUTH"], "")
SHA256_HELLO = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ~/.notary/config.json, Docker config or passphrases from the developer's shell."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in NO_PASSPHRASES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(prompts, "interactive", lambda: False)


def invoke(
    *args: str | Path, env: dict[str, str] | None = None, input: str | None = None
) -> Result:
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], env=env, input=input, catch_exceptions=False)


def one_error_line(result: Result) -> str:
    """The failure was reported as one ``Error:`` line (after any prompts), no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


# -- start-up and layout ---------------------------------------------------------------------


def test_help_lists_notary_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("init", "add", "addhash", "remove", "publish", "status", "reset", "list"):
        assert f"  {name} " in result.output
    for name in ("lookup", "verify", "delete", "witness", "key", "delegation", "cert", "server"):
        assert f"  {name} " in result.output
    for flag in ("--server", "--trustDir", "--configFile", "--tlscacert", "--debug"):
        assert flag in result.output


def test_client_commands_load_without_heavy_imports() -> None:
    """``vouch --help`` and argument parsing must not pay for httpx, cryptography or rich."""
    code = (
        "import sys\n"
        "import vouch.cli.main, vouch.cli.repo, vouch.cli.stage, vouch.cli.read\n"
        "import vouch.cli.keys, vouch.cli.delegations, vouch.cli.certs, vouch.cli.server\n"
        "heavy = ('httpx', 'cryptography', 'rich', 'vouch.client.repository', 'vouch.server')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plain_tables_are_laid_out_like_notary() -> None:
    """Byte for byte what notary 0.7's tabwriter printed for the same rows."""
    rows = [["v1", SHA256_HELLO, "6", "targets"]]
    assert plain_table(["NAME", "DIGEST", "SIZE (BYTES)", "ROLE"], rows) == (
        "NAME    DIGEST" + " " * 62 + "SIZE (BYTES)    ROLE\n"
        "----    ------" + " " * 62 + "------------    ----\n"
        f"v1      {SHA256_HELLO}    6               targets\n"
    )
    delegations = [["targets/rel", "a/", "d9f5", "1"], ["", "b/", "", ""]]
    assert plain_table(["ROLE", "PATHS", "KEY IDS", "THRESHOLD"], delegations) == (
        "ROLE           PATHS    KEY IDS    THRESHOLD\n"
        "----           -----    -------    ---------\n"
        "targets/rel    a/       d9f5       1\n"
        "               b/                  \n"
    )


# -- offline: staging, keys, prompts, errors ----------------------------------------------------


def test_staging_is_offline_and_status_shows_it(tmp_path: Path) -> None:
    trust, gun = tmp_path / "trust", "example.com/offline"
    content = tmp_path / "hello.txt"
    content.write_text("hello\n")
    custom = tmp_path / "custom.json"
    custom.write_text('{"by": "ci", "n": 1}')
    # Global options after the subcommand, as cobra allows; the server is never contacted.
    assert invoke("add", gun, "v1", content, "--custom", custom, "-d", trust).exit_code == 0
    result = invoke("-d", trust, "addhash", gun, "v2", "6", "--sha256", SHA256_HELLO)
    assert 'Addition of target "v2" by sha256 hash' in result.output
    assert invoke("-d", trust, "remove", gun, "old", "-r", "targets/releases").exit_code == 0
    assert invoke("-d", trust, "witness", gun, "targets").exit_code == 0
    status = invoke("-d", trust, "status", gun)
    assert status.stdout.splitlines()[2].split() == ["#", "ACTION", "SCOPE", "TYPE", "PATH"]
    shaped = json.loads(invoke("-d", trust, "status", gun, "--json").stdout)
    assert shaped == [
        {"index": 0, "action": "create", "scope": "targets", "type": "target", "path": "v1"},
        {"index": 1, "action": "create", "scope": "targets", "type": "target", "path": "v2"},
        {
            "index": 2,
            "action": "delete",
            "scope": "targets/releases",
            "type": "target",
            "path": "old",
        },
        {"index": 3, "action": "update", "scope": "targets", "type": "witness", "path": ""},
    ]
    # The change files are notary's: Go struct order, base64 payload.
    files = sorted((trust / "tuf" / gun / "changelist").iterdir())
    first = json.loads(files[0].read_bytes())
    assert list(first) == ["action", "role", "type", "path", "data"]
    assert invoke("-d", trust, "reset", gun, "-n", "1,3").exit_code == 0
    paths = [c["path"] for c in json.loads(invoke("-d", trust, "status", gun, "--json").stdout)]
    assert paths == ["v1", "old"]
    assert "Successfully reset" in invoke("-d", trust, "reset", gun, "--all").stdout
    assert invoke("-d", trust, "status", gun).stdout == f"No unpublished changes for {gun}\n"


def test_add_many_targets_from_a_file_list(tmp_path: Path) -> None:
    trust, gun = tmp_path / "trust", "example.com/many"
    for i in range(3):
        (tmp_path / f"f{i}.bin").write_bytes(b"x" * i)
    listing = tmp_path / "targets.txt"
    listing.write_text("# name path\nimg-0 f0.bin\n\nimg-1 f1.bin\nf2.bin\n")
    result = invoke("-d", trust, "add", gun, "--from-file", listing)
    assert result.exit_code == 0, result.output
    paths = [c["path"] for c in json.loads(invoke("-d", trust, "status", gun, "--json").stdout)]
    assert paths == ["img-0", "img-1", "f2.bin"]


def test_keys_generate_list_export_import_remove(tmp_path: Path) -> None:
    trust, other = tmp_path / "trust", tmp_path / "other"
    made = invoke("-d", trust, "key", "generate", "--role", "targets/releases", env=ENV)
    assert made.exit_code == 0, made.output
    key_id = made.stdout.split()[-1]
    assert invoke("-d", trust, "key", "generate", env=ENV).exit_code == 0
    listed = json.loads(invoke("-d", trust, "key", "list", "--json").stdout)
    assert [k["role"] for k in listed] == ["root", "targets/releases"]
    assert listed[1] == {
        "role": "targets/releases",
        "gun": "",
        "key_id": key_id,
        "location": str(trust / "private"),
        "file": str(trust / "private" / f"{key_id}.key"),
        "encrypted": True,
    }
    table = invoke("-d", trust, "key", "list").stdout.splitlines()
    assert table[1].split() == ["ROLE", "GUN", "KEY", "ID", "LOCATION"]
    bundle = tmp_path / "bundle.pem"
    assert invoke("-d", trust, "key", "export", "--key", key_id, "-o", bundle).exit_code == 0
    assert f"path: {key_id}" in bundle.read_text() and bundle.stat().st_mode & 0o077 == 0
    imported = invoke("-d", other, "key", "import", bundle, env=ENV)
    assert f"Imported targets/releases key {key_id}" in imported.stdout
    store = KeyStore(other, EnvPassphraseRetriever(environ=ENV))
    assert store.load(key_id).keyid == key_id
    assert "Aborting" in invoke("-d", other, "key", "remove", key_id, input="no\n").stdout
    assert invoke("-d", other, "key", "remove", key_id, "-y").exit_code == 0
    assert "No signing keys found." in invoke("-d", other, "key", "list").stdout


def test_key_generate_to_files_and_plain_import(tmp_path: Path) -> None:
    """``-o`` writes notary's pair; an unencrypted PKCS#8 key is encrypted on import."""
    trust = tmp_path / "trust"
    out = tmp_path / "alice"
    result = invoke("-d", trust, "key", "generate", "-r", "targets/alice", "-o", out, env=ENV)
    assert result.exit_code == 0, result.output
    public = Path(f"{out}.pem").read_text()
    assert public.startswith("-----BEGIN PUBLIC KEY-----\nrole: targets/alice\n")
    assert Path(f"{out}-key.pem").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY")
    assert not (trust / "private").exists()  # -o does not store the key
    imported = invoke("-d", trust, "key", "import", f"{out}-key.pem", env=ENV)
    assert imported.exit_code == 0 and "targets/alice" in imported.stdout


def test_passphrases_are_prompted_for_when_interactive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompts, "interactive", lambda: True)
    trust = tmp_path / "trust"
    # Too short, then a mismatch, then accepted.
    answers = "short\nfirst-pass\nother-pass\nfirst-pass\nfirst-pass\n"
    made = invoke("-d", trust, "key", "generate", input=answers)
    assert made.exit_code == 0, made.output
    assert "too short" in made.stderr and "do not match" in made.stderr
    key_id = made.stdout.split()[-1]
    changed = invoke(
        "-d", trust, "key", "passwd", key_id, input="first-pass\nsecond-pass\nsecond-pass\n"
    )
    assert changed.exit_code == 0, changed.output
    assert "Enter passphrase for root key with ID" in changed.stderr
    store = KeyStore(
        trust, EnvPassphraseRetriever(environ={"NOTARY_ROOT_PASSPHRASE": "second-pass"})
    )
    assert store.load(key_id).keyid == key_id
    wrong = invoke("-d", trust, "key", "passwd", key_id, input="nope-1\nnope-2\nnope-3\n")
    assert wrong.stderr.count("Passphrase incorrect") == 2
    assert "wrong passphrase for root key" in one_error_line(wrong)


def test_without_a_terminal_missing_passphrases_name_the_variable(tmp_path: Path) -> None:
    made = invoke("-d", tmp_path / "trust", "key", "generate")
    assert "NOTARY_ROOT_PASSPHRASE" in one_error_line(made)


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    assert "invalid GUN" in one_error_line(invoke("-d", trust, "status", "../escape"))
    missing = invoke("-c", tmp_path / "nope.json", "status", "example.com/x")
    assert "error opening config file" in one_error_line(missing)
    bad_hex = invoke("-d", trust, "addhash", "example.com/x", "t", "3", "--sha256", "abc")
    assert "invalid sha256 hex" in one_error_line(bad_hex)
    a_dir = invoke("-d", trust, "add", "example.com/x", "t", tmp_path)
    assert a_dir.exit_code == 2  # a directory is not a file: click's usage error
    not_delegation = invoke("-d", trust, "remove", "example.com/x", "t", "-r", "snapshot")
    assert "must start with 'targets/'" in one_error_line(not_delegation)
    assert "invalid key ID" in one_error_line(invoke("-d", trust, "key", "remove", "abc"))
    debug = invoke("-D", "-d", trust, "status", "../escape")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_registry_login_prompt_comes_last(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from vouch.client.auth import Credentials

    server = "https://notary.example.com"
    monkeypatch.setenv("NOTARY_AUTH", "dXNlcjpwdw==")  # user:pw
    assert asyncio.run(prompts.registry_credentials(server)) == Credentials(
        "user", "pw", source="NOTARY_AUTH"
    )
    monkeypatch.delenv("NOTARY_AUTH")
    assert asyncio.run(prompts.registry_credentials(server)) is None  # no terminal, no login
    monkeypatch.setattr(prompts, "interactive", lambda: True)
    with CliRunner().isolation(input="alice\nsecret\n"):
        creds = asyncio.run(prompts.registry_credentials(server))
    assert creds is not None and (creds.username, creds.password) == ("alice", "secret")


# -- real processes: vouch CLI against vouch server ---------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VouchServer]:
    with VouchServer(tmp_path_factory.mktemp("cli-server")) as srv:
        yield srv


def run(
    url: str,
    trust: Path,
    *args: str | Path,
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """``vouch -s url -d trust args…`` as a process, with a private HOME and passphrases."""
    home = trust.parent / "home"
    full_env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **ENV, **(env or {})}
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [VOUCH, "-s", url, "-d", str(trust), *map(str, args)],
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vouch {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"{proc.stdout.decode()}{proc.stderr.decode()}"
        )
    return proc


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def err_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 1
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_readme_flow(server: VouchServer, tmp_path: Path) -> None:
    """init, add, publish, list, lookup, verify: the notary README, with vouch."""
    trust, gun = tmp_path / "trust", "example.com/cli/readme"
    hello = tmp_path / "hello.txt"
    hello.write_text("hello\n")
    assert "No root keys found" in out(run(server.url, trust, "init", gun))
    run(server.url, trust, "add", gun, "v1", hello)
    published = out(run(server.url, trust, "publish", gun))
    assert published == (
        f"Pushing changes to {gun}\nSuccessfully published changes for repository {gun}\n"
    )
    listing = out(run(server.url, trust, "list", gun)).splitlines()
    assert listing[0].split() == ["NAME", "DIGEST", "SIZE", "(BYTES)", "ROLE"]
    assert listing[2].split() == ["v1", SHA256_HELLO, "6", "targets"]
    shaped = json.loads(out(run(server.url, trust, "list", gun, "--json")))
    assert shaped == [
        {"name": "v1", "digest": SHA256_HELLO, "size": 6, "role": "targets", "custom": None}
    ]
    assert out(run(server.url, trust, "lookup", gun, "v1")) == f"v1 sha256:{SHA256_HELLO} 6\n"
    looked = json.loads(out(run(server.url, trust, "lookup", gun, "v1", "--json")))
    assert looked["digest"] == SHA256_HELLO
    # verify passes the content through only when it is what was signed
    assert run(server.url, trust, "verify", gun, "v1", input="hello\n").stdout == b"hello\n"
    assert run(server.url, trust, "verify", gun, "v1", "-i", hello, "-q").stdout == b""
    tampered = run(server.url, trust, "verify", gun, "v1", input="hellO\n", check=False)
    assert tampered.stdout == b""
    assert "data not present in the trusted collection" in err_line(tampered)
    missing = run(server.url, trust, "lookup", gun, "v9", check=False)
    assert "No valid trust data for v9" in err_line(missing)
    # A fresh trust dir (another machine) sees the same, trusting on first use.
    other = tmp_path / "other"
    assert json.loads(out(run(server.url, other, "list", gun, "--json"))) == shaped
    run(server.url, trust, "delete", gun, "--remote")
    gone = run(server.url, tmp_path / "third", "list", gun, "--json", check=False)
    assert "does not have trust data" in err_line(gone)


def test_a_second_signer_with_a_delegation(server: VouchServer, tmp_path: Path) -> None:
    """The owner delegates ``rel/`` to a release manager, who signs with their own key."""
    owner, signer, gun = tmp_path / "owner", tmp_path / "signer", "example.com/cli/deleg"
    app, rel = tmp_path / "app.bin", tmp_path / "rel.bin"
    app.write_bytes(b"app")
    rel.write_bytes(b"release 2.0")
    run(server.url, owner, "init", gun, "-p")
    run(server.url, owner, "add", gun, "app", app, "-p")
    # Delegates have no snapshot key: the server must sign snapshots (as with notary).
    run(server.url, owner, "key", "rotate", gun, "snapshot", "-r")
    made = out(
        run(
            server.url,
            signer,
            "key",
            "generate",
            "--role",
            "targets/releases",
            "-o",
            tmp_path / "releases",
        )
    )
    key_id = made.split()[-1]
    added = run(
        server.url,
        owner,
        "delegation",
        "add",
        gun,
        "targets/releases",
        tmp_path / "releases.pem",
        "--paths",
        "rel/",
        "-p",
    )
    assert f"with keys [{key_id}]" in out(added)
    run(server.url, signer, "key", "import", tmp_path / "releases-key.pem")
    run(server.url, signer, "add", gun, "rel/2.0", rel, "-r", "targets/releases", "-p")
    both = {
        t["name"]: t["role"] for t in json.loads(out(run(server.url, owner, "list", gun, "--json")))
    }
    assert both == {"app": "targets", "rel/2.0": "targets/releases"}
    only = json.loads(out(run(server.url, owner, "list", gun, "-r", "targets/releases", "--json")))
    assert [t["name"] for t in only] == ["rel/2.0"]
    delegations = json.loads(out(run(server.url, signer, "delegation", "list", gun, "--json")))
    assert delegations == [
        {"role": "targets/releases", "paths": ["rel/"], "key_ids": [key_id], "threshold": 1}
    ]
    table = out(run(server.url, signer, "delegation", "list", gun)).splitlines()
    assert table[3].split() == ["targets/releases", "rel/", key_id, "1"]
    # Outside the delegated paths the signer cannot publish.
    refused = run(
        server.url, signer, "add", gun, "app/evil", rel, "-r", "targets/releases", "-p", check=False
    )
    assert "outside its delegated paths" in err_line(refused)
    run(server.url, signer, "reset", gun, "--all")
    # The owner removes the delegation; the tag it signed is gone from the listing.
    run(server.url, owner, "delegation", "remove", gun, "targets/releases", "-y", "-p")
    names = [t["name"] for t in json.loads(out(run(server.url, signer, "list", gun, "--json")))]
    assert names == ["app"]


def test_key_rotation_and_root_certificates(server: VouchServer, tmp_path: Path) -> None:
    trust, gun = tmp_path / "trust", "example.com/cli/rotate"
    target = tmp_path / "t.bin"
    target.write_bytes(b"t")
    run(server.url, trust, "init", gun, "-p")
    run(server.url, trust, "add", gun, "t", target, "-p")
    before = json.loads(out(run(server.url, trust, "cert", "list", gun, "--json")))
    assert [c["cn"] for c in before] == [gun]
    for args in (("targets",), ("snapshot", "-r"), ("timestamp", "-r")):
        rotated = out(run(server.url, trust, "key", "rotate", gun, *args))
        assert rotated == f"Successfully rotated {args[0]} key for repository {gun}\n"
    run(server.url, trust, "key", "rotate", gun, "root", input="yes\n")
    run(server.url, trust, "list", gun)  # publish leaves the cache as it was; a read updates it
    after = json.loads(out(run(server.url, trust, "cert", "list", gun, "--json")))
    assert after[0]["key_id"] != before[0]["key_id"] and after[0]["root_version"] > 1
    # A client that trusted the old root follows the rotation.
    other = tmp_path / "other"
    run(server.url, other, "list", gun)
    assert [t["name"] for t in json.loads(out(run(server.url, trust, "list", gun, "--json")))] == [
        "t"
    ]
    no = run(server.url, trust, "key", "rotate", gun, "root", input="no\n")
    assert "Aborting action." in out(no)
    run(server.url, trust, "add", gun, "u", target)
    staged = run(server.url, trust, "key", "rotate", gun, "targets", check=False)
    assert "unpublished change" in err_line(staged)


def test_unknown_gun_offline_server_and_wrong_passphrase(
    server: VouchServer, tmp_path: Path
) -> None:
    trust = tmp_path / "trust"
    unknown = run(server.url, trust, "list", "example.com/cli/nothing", check=False)
    assert err_line(unknown) == (
        f"Error: {server.url} does not have trust data for example.com/cli/nothing"
    )
    offline = run(f"http://127.0.0.1:{free_port()}", trust, "list", "example.com/x", check=False)
    assert err_line(offline).startswith("Error: client is offline: unable to reach trust server")
    gun = "example.com/cli/passphrase"
    run(server.url, trust, "init", gun, "-p")
    run(server.url, trust, "addhash", gun, "t", "3", "--sha256", SHA256_HELLO)
    wrong = run(
        server.url, trust, "publish", gun, env={"NOTARY_TARGETS_PASSPHRASE": "nope"}, check=False
    )
    assert "wrong passphrase for targets key" in err_line(wrong)
    # Nothing was lost: the change is still staged and publishes with the right passphrase.
    assert json.loads(out(run(server.url, trust, "status", gun, "--json")))[0]["path"] == "t"
    run(server.url, trust, "publish", gun)


def test_init_with_an_existing_root_key_and_certificate(
    server: VouchServer, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    from vouch.crypto.certs import root_certificate
    from vouch.crypto.keyfile import decode_key_file
    from vouch.tuf.keys import certificate_key

    gun = "example.com/cli/ownroot"
    made = out(run(server.url, tmp_path / "keys", "key", "generate", "-o", tmp_path / "root"))
    key_id = made.split()[-1]
    key = decode_key_file((tmp_path / "root-key.pem").read_bytes(), PASSPHRASE).key
    cert = root_certificate(key, gun)
    (tmp_path / "root.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    trust = tmp_path / "trust"
    wrong_cn = root_certificate(key, "example.com/other")
    (tmp_path / "other.crt").write_bytes(wrong_cn.public_bytes(serialization.Encoding.PEM))
    refused = run(server.url, trust, "init", gun, "--rootcert", tmp_path / "other.crt", check=False)
    assert "does not match GUN" in err_line(refused)
    run(
        server.url,
        trust,
        "init",
        gun,
        "--rootkey",
        tmp_path / "root-key.pem",
        "--rootcert",
        tmp_path / "root.crt",
        "-p",
    )
    certs = json.loads(out(run(server.url, trust, "cert", "list", "--json")))
    assert [(c["key_id"], c["canonical_key_id"]) for c in certs] == [
        (certificate_key([cert]).keyid, key_id)
    ]
    assert json.loads(out(run(server.url, tmp_path / "reader", "list", gun, "--json"))) == []


def test_delegation_changes_are_staged_as_notary_stages_them(tmp_path: Path) -> None:
    import base64

    trust, gun = tmp_path / "trust", "example.com/deleg"
    out_file = tmp_path / "ci"
    key_id = invoke("-d", trust, "key", "generate", "-r", "targets/ci", "-o", out_file, env=ENV)
    key_id_value = key_id.stdout.split()[-1]
    added = invoke(
        "-d",
        trust,
        "delegation",
        "add",
        gun,
        "targets/ci",
        f"{out_file}.pem",
        "--paths",
        "a/,b/",
        "--paths",
        "c/",
    )
    assert f"with keys [{key_id_value}], with paths [a/\nb/\nc/]" in added.stdout
    invoke("-d", trust, "delegation", "remove", gun, "targets/ci", key_id_value, "--paths", "b/")
    invoke("-d", trust, "delegation", "purge", gun, "--key", key_id_value)
    files = sorted((trust / "tuf" / gun / "changelist").iterdir())
    changes = [json.loads(f.read_bytes()) for f in files]
    payloads = [json.loads(base64.b64decode(c["data"])) for c in changes]
    assert [(c["action"], c["role"], c["type"]) for c in changes] == [
        ("create", "targets/ci", "delegation"),
        ("create", "targets/ci", "delegation"),
        ("update", "targets/ci", "delegation"),
        ("delete", "targets/*", "delegation"),
    ]
    assert payloads[0]["add_keys"][0]["keytype"] == "ecdsa"
    assert payloads[1] == {"add_paths": ["a/", "b/", "c/"]}
    assert payloads[2] == {"remove_keys": [key_id_value], "remove_paths": ["b/"]}
    assert payloads[3] == {"remove_keys": [key_id_value]}
    whole = invoke("-d", trust, "delegation", "remove", gun, "targets/ci", input="no\n")
    assert "Aborting action." in one_error_line(whole)
    bad = invoke("-d", trust, "delegation", "add", gun, "targets/ci", f"{out_file}-key.pem")
    assert "holds a private key" in one_error_line(bad)
