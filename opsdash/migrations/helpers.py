"""Operations the migrations share, so each revision reads as a list of changes.

Revisions import these, so their behaviour must never change once a revision that
uses them has shipped: add a new helper instead.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB


def is_postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"


def json_type() -> sa.types.TypeEngine[Any]:
    """jsonb on Postgres (what the Supabase deployment uses), JSON text on SQLite."""
    return sa.JSON().with_variant(JSONB(), "postgresql")


def pg_default(sql: str) -> sa.TextClause | None:
    """A server default that only Postgres gets (SQLite cannot add a column with it)."""
    return sa.text(sql) if is_postgres() else None


def add_column_if_missing(table: str, column: sa.Column[Any]) -> None:
    """Add ``column`` unless the table has it: the original system's tables lack
    opsdash's columns, tables that opsdash created already have them.

    Postgres says it in the SQL (``ADD COLUMN IF NOT EXISTS``), so the rendered
    Supabase file is idempotent too; SQLite has no such clause, so look first.
    """
    if is_postgres():
        op.add_column(table, column, if_not_exists=True)
        return
    existing = {info["name"] for info in sa.inspect(op.get_bind()).get_columns(table)}
    if column.name not in existing:
        op.add_column(table, column)


def set_pg_default(table: str, column: str, default: str) -> None:
    """Give a column a server default on Postgres (lets operators insert by hand)."""
    if is_postgres():
        op.alter_column(table, column, server_default=sa.text(default))
