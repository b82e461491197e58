"""Initial schema: notary-server's tables plus the per-GUN lock row and the current index.

``tuf_files`` and ``changefeed`` follow notary-server's schema (spec §9.1) with
64-bit versions. Two tables are vouch's own:

* ``repositories`` holds one row per GUN that publishers lock
  (``SELECT … FOR UPDATE``) before reading the state, so concurrent publishes
  of one GUN serialise across server instances;
* ``tuf_current`` points at the current version of each (GUN, role), kept in
  the publishing transaction, so a current GET and the state read of a
  publish are primary-key look-ups however long the history grows.

Names compare byte-wise on every dialect: PostgreSQL columns use collation
"C", MySQL/MariaDB tables a binary NO PAD collation (the default collations
there ignore case and trailing spaces, which would merge distinct GUNs).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Binary collations, preferred first; only NO PAD ones keep "a" and "a " apart.
_MYSQL_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin", "utf8mb4_bin")


def _name() -> sa.types.TypeEngine[str]:
    return sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.types.TypeEngine[Any]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _sha256() -> sa.types.TypeEngine[str]:
    return sa.CHAR(64).with_variant(
        mysql.CHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )


def _table_kw() -> dict[str, Any]:
    bind = op.get_bind()
    if bind.dialect.name != "mysql":
        return {"sqlite_autoincrement": True}
    found = set(
        bind.execute(
            sa.text(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
                "WHERE COLLATION_NAME IN :names"
            ).bindparams(sa.bindparam("names", expanding=True)),
            {"names": list(_MYSQL_COLLATIONS)},
        ).scalars()
    )
    collation = next(c for c in _MYSQL_COLLATIONS if c in found)
    return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": collation}


def upgrade() -> None:
    kw = _table_kw()
    op.create_table(
        "repositories",
        sa.Column("gun", _name(), primary_key=True),
        sa.Column("created_at", _time(), nullable=False),
        **kw,
    )
    op.create_table(
        "tuf_files",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("gun", _name(), nullable=False),
        sa.Column("role", _name(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "data",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("sha256", _sha256(), nullable=False),
        sa.UniqueConstraint("gun", "role", "version", name="tuf_files_gun_role_version_key"),
        **kw,
    )
    op.create_index("tuf_files_gun_role_sha256_idx", "tuf_files", ["gun", "role", "sha256"])
    op.create_table(
        "tuf_current",
        sa.Column("gun", _name(), nullable=False),
        sa.Column("role", _name(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gun", "role", name="tuf_current_pkey"),
        sa.ForeignKeyConstraint(
            ["gun", "role", "version"],
            ["tuf_files.gun", "tuf_files.role", "tuf_files.version"],
            name="tuf_current_file_fkey",
        ),
        **kw,
    )
    op.create_table(
        "changefeed",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("gun", _name(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("category", sa.String(20), nullable=False),
        sa.CheckConstraint("category IN ('update', 'deletion')", name="changefeed_category_check"),
        **kw,
    )
    op.create_index("changefeed_gun_id_idx", "changefeed", ["gun", "id"])


def downgrade() -> None:
    op.drop_table("changefeed")
    op.drop_table("tuf_current")
    op.drop_table("tuf_files")
    op.drop_table("repositories")
