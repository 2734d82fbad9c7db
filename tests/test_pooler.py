"""opsdash through a real PgBouncer in transaction mode (Supabase's pooler on port 6543 works
the same way): each transaction may run on a different server connection."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from opsdash.demo.server import DemoUpstream
from opsdash.engine.db import Database, behind_transaction_pooler, connect, create_schema
from opsdash.engine.models import BackgroundJob, JobStatus, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import PostgresSchemas, engine_settings, migrated
from tests.pgbouncer import PgBouncer

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    ("url", "setting", "pooled"),
    [
        ("postgresql+psycopg://u@db.example.supabase.co:5432/postgres", "auto", False),
        ("postgresql+psycopg://u@aws-0-eu.pooler.supabase.com:6543/postgres", "auto", True),
        ("postgresql+psycopg://u@pgbouncer.internal:5432/app?pgbouncer=true", "auto", True),
        ("postgresql+psycopg://u@pgbouncer.internal:5432/app?pgbouncer=false", "auto", False),
        ("postgresql+psycopg://u@pgbouncer.internal:5432/app", "transaction", True),
        ("postgresql+psycopg://u@aws-0-eu.pooler.supabase.com:6543/postgres", "none", False),
    ],
)
def test_which_urls_name_a_pooler(url: str, setting: str, pooled: bool) -> None:
    assert behind_transaction_pooler(make_url(url), setting) is pooled  # type: ignore[arg-type]


def test_the_pgbouncer_flag_never_reaches_libpq(pooled_pg_url: str) -> None:
    database = connect(pooled_pg_url)
    try:
        assert database.pooled
        assert "pgbouncer" not in database.engine.url.query
        with database.read() as conn:  # libpq would refuse an unknown URI parameter
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        database.dispose()


def _same_query_from_two_clients(database_url: str, pooler: str) -> None:
    """Two client connections run one query alternately, as two workers would."""
    clients = [connect(database_url, pooler=pooler) for _ in range(2)]  # type: ignore[arg-type]
    try:
        for _ in range(8):  # psycopg prepares a query on its 6th run by default
            for client in clients:
                with client.read() as conn:
                    conn.execute(select(BackgroundJob.id).where(BackgroundJob.attempts > 0))
    finally:
        for client in clients:
            client.dispose()


def test_prepared_statements_collide_through_the_pooler_unless_turned_off(
    pg_schemas: PostgresSchemas, pgbouncer: PgBouncer
) -> None:
    schema = pg_schemas.new_schema()
    # One server connection for every client: the busiest a pooler gets.
    pgbouncer.add_alias(schema, schema, pool_size=1)
    url = pgbouncer.url(schema)
    migrated(url)
    # What the issue saw: psycopg names its prepared statements _pg3_0, _pg3_1, … per
    # client connection, so the second client's _pg3_0 meets the first one's.
    with pytest.raises(ProgrammingError) as collided:
        _same_query_from_two_clients(url, "none")
    assert isinstance(collided.value.orig, psycopg.errors.DuplicatePreparedStatement)
    # Once opsdash knows about the pooler it never prepares server-side.
    _same_query_from_two_clients(url, "transaction")


def test_migrations_run_through_the_pooler(pooled_pg_url: str) -> None:
    database = connect(pooled_pg_url)
    try:
        create_schema(database)
        create_schema(database)
        with database.read() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version is not None
    finally:
        database.dispose()


def test_two_engines_sync_everything_through_the_pooler(
    pooled_pg_url: str,
    tmp_path: Path,
    demo_upstream: DemoUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two processes' worth of engines (the issue's concurrent `opsdash sync --wait` runs)
    share the pooler's few server connections; every job completes."""
    migrated(pooled_pg_url)
    engines = [
        Engine(engine_settings(pooled_pg_url, tmp_path / "data", demo_upstream.url, workers=4))
        for _ in range(2)
    ]
    try:
        for engine in engines:
            engine.sync()
        for engine in engines:
            engine.start(scheduler=False)
        for engine in engines:
            assert engine.wait_idle(timeout_s=120, poll_s=0.05), "the sync did not finish"
        db: Database = engines[0].db
        with db.read() as conn:
            statuses = conn.execute(select(BackgroundJob.status, BackgroundJob.errors)).all()
            stored = conn.execute(select(ScheduleData.storage_path)).scalars().all()
        errors = [entry for _, entry_list in statuses for entry in entry_list or []]
        assert errors == []
        assert {status for status, _ in statuses} == {JobStatus.COMPLETED}
        # 3 demo companies x 7 days, each blob readable.
        assert len(stored) == 3 * 7
        for path in stored:
            assert engines[0].blobs.get(path)
        # Database errors that the engine retried by itself leave no trace on the jobs.
        problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert problems == []
    finally:
        for engine in engines:
            engine.stop()
