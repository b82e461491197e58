"""The real notary CLI scenario against ``vouch server`` on real PostgreSQL and MariaDB.

Each test gets a fresh, uniquely named database on the machine's server (dropped
afterwards; unique per pytest-xdist worker too) and gives it to ``vouch server`` in
notary-server's own ``storage.db_url`` forms: ``postgres://…?sslmode=disable`` and the Go
MySQL DSN ``root@tcp(127.0.0.1:3306)/<db>?parseTime=true``. The server's keys live in the
same database (``keys.url``), their passphrase comes from ``NOTARY_SIGNER_VOUCH``.

The scenario (tests/notary_harness.py) runs with the real notary CLI, and the server
process is replaced halfway, between the two GUNs, by a new one whose data directory was
wiped: only the database survives. The results must match what the same scenario gives
on notary-server. After the scenario the server is replaced once more, and ``notary list``
and a further publish (which needs the server-held snapshot and timestamp keys) work.

A database server that cannot be reached FAILS these tests: a skipped backend suite would
look like a green one. .ci/run starts both servers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pymysql
import pytest

import notary_harness
from notary_harness import CORPUS_GUN, KOLKATA_GUN, Corpus, NotaryCLI, build_corpus
from vouch_harness import VouchServer

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@dataclass(frozen=True)
class Database:
    backend: str
    name: str
    #: The URL exactly as a notary-server config's ``storage.db_url`` would hold it.
    url: str
    #: Rows of ``tuf_files`` for a GUN (counted with the database's own client).
    count_files: Callable[[str], int]


def _unreachable(server: str, exc: BaseException) -> None:
    pytest.fail(
        f"{server} is not reachable on 127.0.0.1 ({type(exc).__name__}: {exc}). These tests "
        "need it running (.ci/run starts it); they fail rather than skip.",
        pytrace=False,
    )


async def _pg(sql: str, *args: object, database: str = "postgres") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database=database, timeout=10, **PG)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def _my(sql: str, *args: object, database: str | None = None) -> list[tuple[object, ...]]:
    conn = pymysql.connect(database=database, connect_timeout=10, **MY)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args or None)
            rows = list(cur.fetchall())
        conn.commit()
        return rows
    finally:
        conn.close()


def _db_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"vouch_srv_{worker}_{secrets.token_hex(4)}"


@pytest.fixture(params=["postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A new, empty database on the real server, dropped after the test."""
    name = _db_name()
    if request.param == "postgresql":
        try:
            asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        except (OSError, asyncpg.PostgresError) as exc:
            _unreachable("PostgreSQL", exc)

        def pg_count(gun: str) -> int:
            sql = "SELECT count(*) FROM tuf_files WHERE gun = $1"
            return int(asyncio.run(_pg(sql, gun, database=name))[0][0])

        try:
            yield Database(
                "postgresql",
                name,
                f"postgres://postgres@127.0.0.1:5432/{name}?sslmode=disable",
                pg_count,
            )
        finally:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        try:
            _my(f"CREATE DATABASE `{name}`")
        except pymysql.MySQLError as exc:
            _unreachable("MariaDB", exc)

        def my_count(gun: str) -> int:
            rows = _my("SELECT count(*) FROM tuf_files WHERE gun = %s", gun, database=name)
            return int(str(rows[0][0]))

        try:
            yield Database(
                "mariadb", name, f"root@tcp(127.0.0.1:3306)/{name}?parseTime=true", my_count
            )
        finally:
            _my(f"DROP DATABASE IF EXISTS `{name}`")


def _replace_process(server: VouchServer) -> None:
    """Stop the server, wipe everything it kept on disk, start a new process."""
    server.stop()
    data = server.workdir / "data"
    shutil.rmtree(data, ignore_errors=True)
    server.start()
    assert not any(p.suffix == ".db" for p in data.rglob("*")), "state outside the database"


def test_notary_scenario_on_real_database(
    database: Database,
    notary_corpus: Corpus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "VOUCH_KEYS__URL": database.url,
        "NOTARY_SIGNER_VOUCH": secrets.token_urlsafe(24),
    }
    server = VouchServer(tmp_path / "server", storage=database.url, env=env)
    restarts: list[str] = []

    # Halfway through the scenario (main GUN done, second GUN next), a new process.
    scenario = notary_harness._Scenario
    run_second = scenario.run_kolkata_gun

    def restart_then_second_gun(sc: notary_harness._Scenario) -> None:
        _replace_process(server)
        restarts.append(server.url)
        sc.cli = NotaryCLI(server.url, sc.trust_dir, home=sc.cli.home)
        # What the first process stored is served by the second.
        listed = sc.cli.run("list", CORPUS_GUN).stdout
        assert "after-targets-rotation" in listed, listed
        run_second(sc)

    monkeypatch.setattr(scenario, "run_kolkata_gun", restart_then_second_gun)
    try:
        server.start()
        corpus = build_corpus(server, tmp_path / "scenario")  # type: ignore[arg-type]
        assert restarts, "the mid-scenario restart did not happen"

        # The same results as notary-server gave for the same scenario.
        assert corpus.refused == notary_corpus.refused == []
        for gun in notary_corpus.guns:
            assert corpus.list_output[gun] == notary_corpus.list_output[gun], gun
        assert corpus.roles == notary_corpus.roles
        assert corpus.targets == notary_corpus.targets
        assert corpus.target_roles == notary_corpus.target_roles
        for gun in (CORPUS_GUN, KOLKATA_GUN):
            assert database.count_files(gun) > 0, f"nothing of {gun} in {database.name}"

        # Once more a new process on the same database: reads, then a publish that needs
        # the snapshot and timestamp keys the first process created (server-managed
        # snapshot since `key rotate snapshot -r`).
        _replace_process(server)
        cli = NotaryCLI(server.url, corpus.trust_dir, home=corpus.cli_home)
        for gun in (CORPUS_GUN, KOLKATA_GUN):
            assert cli.run("list", gun).stdout == corpus.list_output[gun], gun
        before = database.count_files(CORPUS_GUN)
        content = tmp_path / "after-restart.bin"
        content.write_bytes(b"published by a restarted server\n")
        cli.run("add", CORPUS_GUN, "after-restart", content)
        cli.run("publish", CORPUS_GUN)
        listed = cli.run("list", CORPUS_GUN).stdout
        assert "after-restart" in listed, listed
        assert database.count_files(CORPUS_GUN) > before
        lookup = cli.run("lookup", CORPUS_GUN, "after-restart").stdout
        assert "after-restart" in lookup and str(len(content.read_bytes())) in lookup, lookup
        # A client that has never seen the repository bootstraps from the new process.
        fresh = NotaryCLI(server.url, tmp_path / "fresh-trust", home=tmp_path / "fresh-home")
        assert "after-restart" in fresh.run("list", CORPUS_GUN).stdout
    except BaseException:
        print(server.log())
        raise
    finally:
        server.stop()
