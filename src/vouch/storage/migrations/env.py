"""Alembic environment: migrate the connection :mod:`vouch.storage.migrations` passes in.

There is no offline (``--sql``) mode and no autogenerate: migrations are
written by hand so that each one is reviewed for all three dialects.
"""

from __future__ import annotations

from alembic import context


def _run() -> None:
    attrs = context.config.attributes
    context.configure(connection=attrs["connection"], version_table=attrs["version_table"])
    with context.begin_transaction():
        context.run_migrations()


_run()
