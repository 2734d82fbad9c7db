"""The schema's version: apply the migrations, read where a database stands.

The migrations themselves live in ``opsdash/migrations`` (Alembic). Embedded mode
(SQLite) migrates at every start; a Postgres database is shared by processes of
possibly different versions, so it changes only when an operator runs
``opsdash migrate``, and a process refuses to start on an older schema.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from opsdash.engine.db import Database, SchemaOutdated, connect_with

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported inside the functions: it takes longer to import than the rest of
# the engine, and the read API's worker processes never need it.

__all__ = [
    "SchemaOutdated",
    "ensure_schema",
    "head_revision",
    "ready_database",
    "render_sql",
    "revisions",
    "schema_status",
    "upgrade",
]

log = logging.getLogger("opsdash.schema")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _config(output: io.StringIO | None = None) -> Config:
    from alembic.config import Config

    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def revisions() -> list[str]:
    """Every revision, oldest first."""
    return [script.revision for script in reversed(list(_scripts().walk_revisions()))]


def script_path(revision: str) -> Path:
    """The file that defines ``revision``."""
    script = _scripts().get_revision(revision)
    assert script is not None and script.path is not None
    return Path(script.path)


def schema_status(db: Database | Engine) -> tuple[str | None, str]:
    """(the database's revision or None when unversioned, the newest revision we know)."""
    from alembic.runtime.migration import MigrationContext

    engine = db.engine if isinstance(db, Database) else db
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    return current, head_revision()


# One migration at a time per schema; released at commit, so a pooler is fine.
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('opsdash.migrate:' || current_schema()))"


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply the missing migrations in one transaction.

    The transaction holds the write lock (SQLite) or a transaction-level advisory
    lock (Postgres, safe through a transaction-mode pooler) before it reads the
    current revision, so processes that start together migrate once, one after the
    other.
    """
    from alembic import command

    with db.write() as conn:
        if db.is_postgres:
            conn.execute(text(_MIGRATION_LOCK))
        config = _config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def ensure_schema(db: Database) -> None:
    """Make sure the schema is usable at start-up.

    SQLite (the embedded mode) migrates itself. On Postgres an older schema raises
    ``SchemaOutdated``; a newer one (a revision this opsdash does not know, during a
    rolling upgrade) is used with a warning, since migrations only add.
    """
    if not db.is_postgres:
        upgrade(db)
        return
    current, head = schema_status(db)
    if current == head:
        return
    if current is not None and current not in revisions():
        log.warning(
            "the database schema is at revision %s, newer than this opsdash (%s): "
            "upgrade opsdash on this machine",
            current,
            head,
        )
        return
    raise SchemaOutdated(current, head)


@contextmanager
def ready_database(settings: Any) -> Iterator[Database]:
    """The database ``settings`` name, its schema checked (SQLite: migrated), for one
    command; disposed afterwards."""
    db = connect_with(settings)
    try:
        ensure_schema(db)
        yield db
    finally:
        db.dispose()


def render_sql(start: str | None, end: str) -> str:
    """The Postgres SQL of the migrations after ``start`` up to ``end`` (offline mode)."""
    from alembic import command

    output = io.StringIO()
    span = f"{start}:{end}" if start else end
    command.upgrade(_config(output), span, sql=True)
    return output.getvalue()
