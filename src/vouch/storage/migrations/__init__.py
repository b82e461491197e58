"""Versioned schema migrations (Alembic), driven from code.

Alembic's configuration lives here rather than in an ``alembic.ini`` so that an
installed vouch can migrate its database with nothing but the package: the
migration scripts are ordinary package modules and ship with it. Callers hand
in a connection that is already inside a transaction (SQLite: ``BEGIN
IMMEDIATE``), and commit it; this module adds a schema lock so that several
server instances starting at once on one database migrate it exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

#: Alembic's bookkeeping table (named so it cannot clash with another app's Alembic).
VERSION_TABLE = "vouch_schema_version"
_SCRIPTS = Path(__file__).parent
# Arbitrary constant key for pg_advisory_xact_lock: "vouch" in ASCII.
_PG_LOCK_KEY = 0x766F756368
_MYSQL_LOCK_NAME = "vouch_schema_migration"
_MYSQL_LOCK_WAIT_S = 600


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = VERSION_TABLE
    return cfg


def head() -> str:
    """The newest revision this vouch knows."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def current(conn: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Migrate the database behind ``conn`` (in a transaction; the caller commits)."""
    with _schema_lock(conn):
        command.upgrade(_config(conn), revision)


@contextmanager
def _schema_lock(conn: Connection) -> Iterator[None]:
    """Serialise migrators. SQLite needs nothing: the caller's BEGIN IMMEDIATE is the lock.

    The lock is also what keeps two migrations in one process apart: Alembic
    keeps its running context in a module global, and under asyncio two
    migrations could otherwise interleave at every database round trip.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        yield
    elif dialect == "mysql":
        got = conn.execute(
            text("SELECT GET_LOCK(:n, :t)"), {"n": _MYSQL_LOCK_NAME, "t": _MYSQL_LOCK_WAIT_S}
        ).scalar()
        if got != 1:
            raise TimeoutError("timed out waiting for another vouch to finish migrating")
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": _MYSQL_LOCK_NAME})
    else:
        yield
