"""Alembic's environment: how the migrations reach a database, or render as SQL.

opsdash passes an open connection (``config.attributes["connection"]``, inside the
transaction that ``opsdash.engine.schema`` holds); the ``alembic`` command line used
by developers passes ``-x url=...``. Offline mode renders Postgres SQL for
``supabase/migrations/``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from opsdash.engine import models  # noqa: F401  (the tables autogenerate compares against)

config = context.config
target_metadata = SQLModel.metadata


def _configure_online(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters most things by copying the table: autogenerate writes batch ops.
        render_as_batch=True,
        compare_type=True,
    )


def run_offline() -> None:
    context.configure(
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
        # The Supabase CLI (or `psql -1`) decides the transaction, not the file.
        transactional_ddl=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_online(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from opsdash.engine.db import connect

    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with -x url=... (e.g. sqlite:////tmp/dev.db)")
    db = connect(url)
    try:
        with db.write() as conn:
            _configure_online(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        db.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
