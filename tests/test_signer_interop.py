"""The signer pair against the REAL notary programs (Debian package ``notary`` 0.7.0).

* notary-server with ``trust_service: remote`` → ``vouch signer`` (MariaDB, mTLS): the
  notary CLI initialises and publishes through it, and the timestamp notary-server
  serves is signed by a key that lives (JWE-encrypted) in vouch signer's database.
* ``vouch server`` (configured with notary-server's own config file) → the real
  notary-signer (PostgreSQL, mTLS): the notary CLI publishes through it. Then the
  signer is stopped: stored metadata is still served, the publish gets a 503; the
  signer is restarted on its port: the server reconnects by itself and the publish
  goes through. Finally ``vouch signer`` takes over notary-signer's config file and
  database as is, and signs with the key notary-signer created.

Certificates come from a CA made per test; databases are created per test and dropped.
Missing notary binaries or database servers FAIL these tests: a skipped interop suite
would look exactly like a passing one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import pytest

import couchdb_harness as ch
from notary_harness import (
    NOTARY_BIN,
    NOTARY_SERVER_BIN,
    NotaryCLI,
    NotaryServer,
    _parent_death_signal,
    fetch,
    free_port,
    metadata_url,
)
from procs import Managed, stop_process
from vouch.keyservice import KeyServiceUnavailableError, LocalKeyService
from vouch.keyservice.couch import CouchKeyService
from vouch.keyservice.remote import MIN_CHANNEL_AGE, RemoteKeyService
from vouch.signer.certs import MTLSBundle, issue_mtls_bundle
from vouch.tuf.keys import Key, verify
from vouch.tuf.metadata import Metadata, Root, Timestamp
from vouch_harness import VouchServer

NOTARY_SIGNER_BIN = "/usr/bin/notary-signer"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
ALIAS = "signeralias"


@pytest.fixture(autouse=True)
def _require_notary() -> None:
    missing = [
        b for b in (NOTARY_BIN, NOTARY_SERVER_BIN, NOTARY_SIGNER_BIN) if not os.access(b, os.X_OK)
    ]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: install the Debian package 'notary' (.ci/run does)",
            pytrace=False,
        )


def _db_name() -> str:
    return f"vouch_sig_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{secrets.token_hex(4)}"


async def _pg(sql: str, *args: object, database: str = "postgres") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database=database, timeout=10, **PG)  # type: ignore[arg-type]
    try:
        return await conn.fetch(sql, *args)  # type: ignore[no-any-return]
    finally:
        await conn.close()


def _my(sql: str, *args: object, database: str | None = None) -> list[dict[str, Any]]:
    conn = pymysql.connect(
        database=database,
        connect_timeout=10,
        cursorclass=pymysql.cursors.DictCursor,
        **MY,  # type: ignore[arg-type]
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args or None)
            rows = list(cur.fetchall())
        conn.commit()
        return rows  # type: ignore[return-value]
    finally:
        conn.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    name = _db_name()
    try:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed (.ci/run starts it): {exc}")
    try:
        yield name
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    name = _db_name()
    try:
        _my(f"CREATE DATABASE `{name}`")
    except pymysql.MySQLError as exc:
        pytest.fail(f"MariaDB on 127.0.0.1:3306 is needed (.ci/run starts it): {exc}")
    try:
        yield name
    finally:
        _my(f"DROP DATABASE IF EXISTS `{name}`")


async def _signer_health(tls: MTLSBundle, port: int) -> None:
    keys = RemoteKeyService(
        "127.0.0.1",
        port,
        ca_file=tls.ca_cert,
        cert_file=tls.client_cert,
        key_file=tls.client_key,
        timeout=2,
    )
    try:
        await keys.check_health()
    finally:
        await keys.close()


class SignerProcess(Managed):
    """A signer program (notary-signer or ``vouch signer``) that can be stopped and
    restarted on its port; ready once its gRPC health check answers over mTLS."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], tls: MTLSBundle, port: int, log: Path
    ) -> None:
        self.argv, self.env, self.tls, self.port, self.log_path = list(argv), env, tls, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log_path.parent,
                preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - only a prctl() call
            )
        deadline = time.monotonic() + 20
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                asyncio.run(_signer_health(self.tls, self.port))
                return
            except KeyServiceUnavailableError as exc:
                last = exc
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"{self.argv[0]} did not become healthy ({last}):\n{self.log()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout=10)


def vouch_signer_argv(config: Path) -> list[str]:
    # ``vouch signer`` once registered in the top-level CLI; the same click command.
    return [sys.executable, "-m", "vouch.signer", "--config", str(config)]


def signer_config(path: Path, tls: MTLSBundle, port: int, backend: str, db_url: str) -> Path:
    """notary-signer's config format, relative paths and all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "server": {
            "grpc_addr": f"127.0.0.1:{port}",
            "tls_cert_file": os.path.relpath(tls.signer_cert, path.parent),
            "tls_key_file": os.path.relpath(tls.signer_key, path.parent),
            "client_ca_file": os.path.relpath(tls.ca_cert, path.parent),
        },
        "storage": {"backend": backend, "db_url": db_url, "default_alias": ALIAS},
        "logging": {"level": "info"},
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


def trust_service(tls: MTLSBundle, port: int) -> dict[str, str]:
    """notary-server's ``trust_service`` section for a remote signer on ``port``."""
    return {
        "type": "remote",
        "hostname": "127.0.0.1",
        "port": str(port),
        "key_algorithm": "ecdsa",
        "tls_ca_file": str(tls.ca_cert),
        "tls_client_cert": str(tls.client_cert),
        "tls_client_key": str(tls.client_key),
    }


def timestamp_keys(base_url: str, gun: str) -> tuple[Metadata[Timestamp], list[str]]:
    """The served timestamp and the key IDs root gives the timestamp role."""
    ts = Metadata.from_bytes(fetch(metadata_url(base_url, gun, "timestamp.json")), Timestamp)
    root = Metadata.from_bytes(fetch(metadata_url(base_url, gun, "root.json")), Root)
    return ts, list(root.signed.roles["timestamp"].keyids)


def assert_signed_by(ts: Metadata[Timestamp], keyids: list[str], held: dict[str, Key]) -> str:
    """The timestamp verifies with a key from ``held`` that root names; return its ID."""
    assert keyids and set(keyids) <= set(held), (keyids, sorted(held))
    verified = ts.verified_keyids({k: held[k] for k in keyids}, 1, "timestamp")
    assert len(verified) == 1
    return verified.pop()


def publish(cli: NotaryCLI, gun: str, name: str, workdir: Path, *, check: bool = True) -> Any:
    target = workdir / f"{name}.txt"
    target.write_text(f"content of {name}\n")
    cli.run("add", gun, name, str(target))
    return cli.run("publish", gun, check=check)


@dataclass
class SignedThroughSigner:
    """A repository the real notary CLI published through notary-server, whose
    keys a ``vouch signer`` holds: its first timestamp and who signed it."""

    signer: SignerProcess
    server: NotaryServer
    cli: NotaryCLI
    timestamp: Metadata[Timestamp]
    keyids: list[str]


@contextmanager
def notary_through_signer(
    workdir: Path,
    config: Path,
    gun: str,
    *,
    env: dict[str, str],
    tls: MTLSBundle,
    port: int,
    log: Path | None = None,
) -> Iterator[SignedThroughSigner]:
    """``vouch signer`` from ``config``, a real notary-server using it over mutual
    TLS, and ``gun`` initialised and published once (target ``v1``) with the
    real notary CLI."""
    log = log if log is not None else config.with_suffix(".log")
    with (
        SignerProcess(vouch_signer_argv(config), env, tls, port, log) as sp,
        NotaryServer(
            workdir / "notary-server", extra_config={"trust_service": trust_service(tls, port)}
        ) as server,
    ):
        cli = NotaryCLI(server.url, workdir / "trust")
        cli.run("init", gun, "-p")
        publish(cli, gun, "v1", workdir)
        assert "v1" in cli.run("list", gun).stdout
        ts, keyids = timestamp_keys(server.url, gun)
        yield SignedThroughSigner(sp, server, cli, ts, keyids)


def test_notary_server_signs_with_vouch_signer(tmp_path: Path, mariadb_database: str) -> None:
    """Real notary-server + real notary CLI; the keys are vouch signer's (MariaDB, Go DSN)."""
    tls = issue_mtls_bundle(tmp_path / "tls")
    port = free_port()
    dsn = f"root@tcp(127.0.0.1:3306)/{mariadb_database}?parseTime=true"
    config = signer_config(tmp_path / "signer" / "signer.json", tls, port, "mysql", dsn)
    passphrase = secrets.token_urlsafe(24)
    env = {**os.environ, f"NOTARY_SIGNER_{ALIAS.upper()}": passphrase}
    gun = "example.com/vouch-signer/app"
    with notary_through_signer(tmp_path, config, gun, env=env, tls=tls, port=port) as repo:
        sp, ts, keyids = repo.signer, repo.timestamp, repo.keyids
        assert ts.signed.version == 2

        rows = _my(
            "SELECT key_id, algorithm, public, role, passphrase_alias, last_used, private "
            "FROM private_keys WHERE gun = %s",
            gun,
            database=mariadb_database,
        )
        held = {
            r["key_id"]: Key(r["algorithm"], base64.b64encode(r["public"]).decode()) for r in rows
        }
        signer_key = assert_signed_by(ts, keyids, held)
        row = next(r for r in rows if r["key_id"] == signer_key)
        assert (row["role"], row["passphrase_alias"]) == ("timestamp", ALIAS)
        assert row["last_used"] is not None
        assert row["private"].count(b".") == 4  # a JWE, not a key in clear
        assert passphrase not in sp.log()
        assert sp.proc is not None  # hardened: no core dumps of a process holding keys
        limits = Path(f"/proc/{sp.proc.pid}/limits").read_text()
        assert any(
            ln.startswith("Max core file size") and ln.split()[4:6] == ["0", "0"]
            for ln in limits.splitlines()
        ), limits
        assert "Sign: " in sp.log() and signer_key in sp.log()  # audited by key ID


def test_vouch_server_with_notary_signer_outage_restart_and_handover(
    tmp_path: Path, pg_database: str
) -> None:
    tls = issue_mtls_bundle(tmp_path / "tls")
    port = free_port()
    passphrase = secrets.token_urlsafe(24)
    gun = "example.com/notary-signer/app"

    async def create_table() -> None:  # notary-signer needs its schema; vouch makes it
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}"
        keys = await LocalKeyService.open(url, {ALIAS: passphrase}, ALIAS)
        await keys.close()

    asyncio.run(create_table())
    db_url = f"postgres://postgres@127.0.0.1:5432/{pg_database}?sslmode=disable"
    config = signer_config(tmp_path / "signer" / "signer.json", tls, port, "postgres", db_url)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        f"NOTARY_SIGNER_{ALIAS.upper()}": passphrase,
    }
    notary_signer = SignerProcess(
        [NOTARY_SIGNER_BIN, "-config", str(config)], env, tls, port, config.with_suffix(".log")
    )
    # vouch server reads notary-server's config file as is.
    server_config = tmp_path / "server" / "notary-server.json"
    server_config.parent.mkdir(parents=True)
    server_config.write_text(
        json.dumps(
            {
                "server": {"http_addr": "127.0.0.1:4443"},
                "trust_service": trust_service(tls, port),
                "storage": {"backend": "sqlite3", "db_url": "vouch.db"},
            }
        )
    )
    vouch = VouchServer(tmp_path / "server", extra_args=("--config", str(server_config)))

    async def held_keys() -> dict[str, Key]:
        rows = await _pg(
            "SELECT key_id, algorithm, public FROM private_keys WHERE gun = $1",
            gun,
            database=pg_database,
        )
        return {
            r["key_id"]: Key(r["algorithm"], base64.b64encode(r["public"]).decode()) for r in rows
        }

    with notary_signer, vouch:
        cli = NotaryCLI(vouch.url, tmp_path / "trust")
        cli.run("init", gun, "-p")
        publish(cli, gun, "v1", tmp_path)
        ts, keyids = timestamp_keys(vouch.url, gun)
        signer_key = assert_signed_by(ts, keyids, asyncio.run(held_keys()))
        (used,) = asyncio.run(
            _pg(
                "SELECT last_used FROM private_keys WHERE key_id = $1",
                signer_key,
                database=pg_database,
            )
        )
        assert used["last_used"] is not None  # notary-signer signed it

        # -- the signer goes away ------------------------------------------------------------
        notary_signer.stop()
        stored = fetch(metadata_url(vouch.url, gun, "timestamp.json"))
        assert stored == ts.raw  # still served, unchanged, while it is valid
        assert "v1" in cli.run("list", gun).stdout  # clients keep updating
        with pytest.raises(urllib.error.HTTPError) as health:
            fetch(f"{vouch.url}/_notary_server/health")
        assert health.value.code == 503
        assert "Trust operational" in health.value.read().decode()
        started = time.monotonic()
        failed = publish(cli, gun, "v2", tmp_path, check=False)
        assert failed.returncode != 0
        assert "503" in failed.stdout + failed.stderr, failed
        assert time.monotonic() - started < 10  # a clear answer, not a hang

        # -- the signer comes back: the server reconnects by itself ---------------------------
        notary_signer.start()
        time.sleep(MIN_CHANNEL_AGE)
        cli.run("publish", gun)  # the staged v2
        ts2, _ = timestamp_keys(vouch.url, gun)
        assert ts2.signed.version == ts.signed.version + 1
        assert_signed_by(ts2, keyids, asyncio.run(held_keys()))
        fetch(f"{vouch.url}/_notary_server/health")

        # -- vouch signer takes over notary-signer's config file and database as is -----------
        notary_signer.stop()
        log = config.with_name("vouch-signer.log")
        with SignerProcess(vouch_signer_argv(config), env, tls, port, log):
            time.sleep(MIN_CHANNEL_AGE)
            publish(cli, gun, "v3", tmp_path)
            listing = cli.run("list", gun).stdout
            assert all(name in listing for name in ("v1", "v2", "v3"))
            ts3, _ = timestamp_keys(vouch.url, gun)
            # The key notary-signer created (jose2go's JWE) now signs in vouch signer.
            assert assert_signed_by(ts3, keyids, asyncio.run(held_keys())) == signer_key
            assert ts3.signed.version == ts2.signed.version + 1


def test_notary_server_signs_with_vouch_signer_on_couchdb(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``vouch signer`` with notary-style ``{"backend": "couchdb", "db_url": …}`` as a
    process behind the real notary-server: the notary CLI publishes, the served timestamp
    is signed by a key stored (JWE-encrypted) as a document in the CouchDB key database.
    Then ``vouch signer rotate-alias`` (a process too) re-encrypts every key under a new
    alias while the signer runs, and the keys sign with the new passphrase alone."""
    ch.require_couch()
    name = ch.new_db_name("vouch_signer_keys")
    request.addfinalizer(lambda: ch.drop_db(name))
    tls = issue_mtls_bundle(tmp_path / "tls")
    port = free_port()
    config = signer_config(
        tmp_path / "signer" / "signer.json", tls, port, "couchdb", ch.store_url(name)
    )
    passphrase, new_passphrase = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {**os.environ, f"NOTARY_SIGNER_{ALIAS.upper()}": passphrase}
    gun = "example.com/vouch-signer-couch/app"
    with notary_through_signer(tmp_path, config, gun, env=env, tls=tls, port=port) as repo:
        sp, cli, ts, keyids = repo.signer, repo.cli, repo.timestamp, repo.keyids
        docs = [d for d in ch.all_docs(name) if d.get("type") == "private_key"]
        held = {d["key_id"]: Key(d["algorithm"], d["public"]) for d in docs if d["gun"] == gun}
        signer_key = assert_signed_by(ts, keyids, held)
        doc = next(d for d in docs if d["key_id"] == signer_key)
        assert doc["_id"] == f"key:{signer_key}"
        assert (doc["role"], doc["passphrase_alias"], doc["deleted"]) == ("timestamp", ALIAS, None)
        assert doc["last_used"] is not None
        assert doc["private"].count(".") == 4  # a JWE, not a key in clear
        assert passphrase not in sp.log()

        # -- rotate-alias on CouchDB, the signer running ------------------------------------
        rotate = subprocess.run(
            [
                *(str(Path(sys.executable).with_name("vouch")), "signer", "rotate-alias"),
                *("--config", str(config), "--to", "fresh"),
            ],
            env={**env, "NOTARY_SIGNER_FRESH": new_passphrase},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr
        assert f"re-encrypted {len(docs)} keys under 'fresh'" in rotate.stdout
        assert passphrase not in rotate.stdout + rotate.stderr
        publish(cli, gun, "v2", tmp_path)  # the running signer still signs
        assert "v2" in cli.run("list", gun).stdout
    after = [d for d in ch.all_docs(name) if d.get("type") == "private_key"]
    assert {d["passphrase_alias"] for d in after} == {"fresh"}

    async def signs_with_the_new_passphrase_only() -> None:
        keys = await CouchKeyService.open(ch.store_url(name), {"fresh": new_passphrase}, "fresh")
        try:
            sig = await keys.sign(signer_key, b"after rotation")
            assert held[signer_key].keyid == signer_key
            assert verify(held[signer_key], sig.method, sig.signature_bytes, b"after rotation")
        finally:
            await keys.close()

    asyncio.run(signs_with_the_new_passphrase_only())
