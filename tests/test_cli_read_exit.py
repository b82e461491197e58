"""The read commands' quick exit: all output written, exit status kept.

After a successful ``list``, ``lookup`` or ``verify`` the ``vouch`` process
leaves with ``os._exit`` once stdout and stderr are flushed (start-up and
teardown count in the client benchmark). These tests run the real console
script against a real ``vouch server`` and check that nothing is lost: large
tables and JSON through a pipe, ``verify -o`` files, failures' exit codes; and
that in process (click's runner) the garbage collector is left as it was.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from vouch.cli.main import cli
from vouch.client.remote import Remote
from vouch.client.repository import Repository
from vouch.crypto.keystore import EnvPassphraseRetriever
from vouch_harness import VOUCH, VouchServer

PW = "read-exit-test"
ENV = {f"NOTARY_{r}_PASSPHRASE": PW for r in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION")}
GUN = "example.com/cli/many"
N = 3000
BIG = os.urandom(3 << 20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VouchServer]:
    with VouchServer(tmp_path_factory.mktemp("read-exit-server")) as srv:
        work = tmp_path_factory.mktemp("read-exit-publisher")

        async def publish() -> None:
            async with Remote(srv.url, trust_env=False) as remote:
                repo = Repository(
                    GUN, remote, work, passphrases=EnvPassphraseRetriever(environ=ENV)
                )
                await repo.initialize()
                for i in range(N):
                    repo.add_target(f"release/{i:05d}", f"content {i}".encode())
                repo.add_target("big", BIG)
                await repo.publish()

        asyncio.run(publish())
        yield srv


def vouch(
    server: VouchServer, trust: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": str(trust.parent / "home"), "PATH": "/usr/bin:/bin", **ENV}
    return subprocess.run(
        [VOUCH, "-s", server.url, "-d", str(trust), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_large_listing_arrives_whole(server: VouchServer, tmp_path: Path) -> None:
    for attempt in ("cold", "warm"):
        proc = vouch(server, tmp_path / "trust", "list", GUN)
        assert proc.returncode == 0, (attempt, proc.stderr)
        lines = proc.stdout.decode().splitlines()
        assert lines[0].split()[:2] == ["NAME", "DIGEST"]
        assert len(lines) == 2 + N + 1
        assert lines[-1].startswith("release/02999 ")
    as_json = vouch(server, tmp_path / "trust", "list", GUN, "--json")
    assert as_json.returncode == 0
    assert len(json.loads(as_json.stdout)) == N + 1


def test_verify_output_file_and_stdout_complete(server: VouchServer, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(BIG)
    target = tmp_path / "copy.bin"
    proc = vouch(
        server, tmp_path / "trust", "verify", GUN, "big", "-i", str(source), "-o", str(target)
    )
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == BIG
    piped = vouch(server, tmp_path / "trust", "verify", GUN, "big", stdin=BIG)
    assert piped.returncode == 0 and piped.stdout == BIG
    found = vouch(server, tmp_path / "trust", "lookup", GUN, "release/00042")
    assert found.returncode == 0 and found.stdout.decode().startswith("release/00042 sha256:")


def test_failures_keep_their_exit_status(server: VouchServer, tmp_path: Path) -> None:
    missing = vouch(server, tmp_path / "trust", "lookup", GUN, "no-such-tag")
    assert missing.returncode == 1 and b"No valid trust data" in missing.stderr
    tampered = vouch(
        server, tmp_path / "trust", "verify", GUN, "big", stdin=BIG[:-1] + bytes([BIG[-1] ^ 1])
    )
    assert tampered.returncode == 1 and tampered.stdout == b""
    unknown = vouch(server, tmp_path / "trust", "list", "example.com/cli/none")
    assert unknown.returncode == 1 and b"does not have trust data" in unknown.stderr


def test_in_process_the_collector_is_left_on(server: VouchServer, tmp_path: Path) -> None:
    assert gc.isenabled()
    env = {**ENV, "HOME": str(tmp_path / "home")}
    args = ["-s", server.url, "-d", str(tmp_path / "trust"), "lookup", GUN, "release/00001"]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert gc.isenabled()
    assert cli.finished_read_only  # type: ignore[attr-defined]
    offline = CliRunner().invoke(cli, ["-d", str(tmp_path / "trust"), "status", GUN], env=env)
    assert offline.exit_code == 0, offline.output
    assert not cli.finished_read_only  # type: ignore[attr-defined]
