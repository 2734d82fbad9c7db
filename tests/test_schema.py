"""The Supabase migration matches the models, and the operators' own queries keep working."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from opsdash.engine import queue
from opsdash.engine.db import Database, connect, create_schema
from opsdash.engine.models import Company, ScheduleData
from opsdash.engine.sqltypes import utcnow

pytestmark = pytest.mark.postgres

MIGRATION = next(Path(__file__).parent.parent.joinpath("supabase", "migrations").glob("*.sql"))


def _columns(url: str) -> dict[tuple[str, str], tuple[str, str]]:
    schema = url.rsplit("%3D", 1)[1]
    dsn = url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {(table, column): (kind, nullable) for table, column, kind, nullable in rows}


def _indexes(db: Database) -> set[str]:
    with db.read() as conn:
        names = conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
        )
        return set(names.scalars())


def test_migration_matches_models_column_for_column(pg_schemas) -> None:
    from_models, from_migration = pg_schemas.new_url(), pg_schemas.new_url()
    models_db = connect(from_models)
    create_schema(models_db)
    migration_db = connect(from_migration)
    with migration_db.write() as conn:
        conn.exec_driver_sql(MIGRATION.read_text())
    assert _columns(from_migration) == _columns(from_models)
    assert _indexes(migration_db) >= _indexes(models_db)
    # Applying it twice is harmless, and the models accept the migrated schema.
    with migration_db.write() as conn:
        conn.exec_driver_sql(MIGRATION.read_text())
    create_schema(migration_db)
    assert queue.enqueue(migration_db, [queue.users_job()]) == 1
    models_db.dispose()
    migration_db.dispose()


def test_operator_queries_run_unchanged(pg_db: Database) -> None:
    company = Company(service_company_id="1001", name="Sparkle")
    with pg_db.session() as session:
        session.add(company)
        session.commit()
        for offset in range(3):
            session.add(
                ScheduleData(
                    company_id=company.id,
                    date=utcnow().date() + timedelta(days=offset),
                    storage_path=f"1001/day{offset}/schedule.json",
                    file_size_kb=10.5,
                    checksum="0" * 64,
                )
            )
        session.commit()
    queue.enqueue(pg_db, [queue.users_job(max_attempts=1), queue.schedule_job(company.id, "x")])
    worker = queue.new_worker_id()
    for job in queue.claim(pg_db, worker, lease_s=30) + queue.claim(pg_db, worker, lease_s=30):
        if job.job_type == "sync_users":
            queue.complete(pg_db, job, worker, {})
        else:
            queue.fail(pg_db, job, worker, "boom", retry_base_s=1, retryable=False)

    with pg_db.write() as conn:
        conn.execute(text("INSERT INTO background_jobs (job_type) VALUES ('sync_users')"))
        pending = conn.execute(
            text("SELECT * FROM background_jobs WHERE status = 'pending' ORDER BY scheduled_at")
        ).all()
        assert len(pending) == 1
        stats = conn.execute(
            text(
                "SELECT job_type, status, COUNT(*), AVG(duration_ms), MAX(duration_ms) "
                "FROM background_jobs WHERE created_at > NOW() - INTERVAL '24 hours' "
                "GROUP BY job_type, status"
            )
        ).all()
        assert {(row[0], row[1], row[2]) for row in stats} == {
            ("sync_users", "completed", 1),
            ("sync_users", "pending", 1),
            ("sync_schedule", "failed", 1),
        }
        reset = conn.execute(
            text(
                "UPDATE background_jobs SET status = 'pending', attempts = 0 "
                "WHERE status = 'failed' AND job_type = 'sync_schedule'"
            )
        )
        assert reset.rowcount == 1
        storage = conn.execute(
            text(
                "SELECT c.name, COUNT(sd.id), SUM(sd.file_size_kb), MAX(sd.updated_at) "
                "FROM schedule_data sd JOIN companies c ON sd.company_id = c.id GROUP BY c.name"
            )
        ).all()
        assert [(row[0], row[1], row[2]) for row in storage] == [("Sparkle", 3, 31.5)]
    # The job reset by hand is simply picked up again.
    claimed = queue.claim(pg_db, worker, lease_s=30) + queue.claim(pg_db, worker, lease_s=30)
    assert {job.job_type for job in claimed} == {"sync_users", "sync_schedule"}


def test_migration_applies_where_the_cluster_has_supabase_roles_but_no_auth_schema(
    pg_schemas,
) -> None:
    """Roles are shared by the whole cluster; the migration must not take a role's presence
    for a Supabase database. The role is created inside the transaction and rolled back,
    so the shared server is left as it was, whatever state it was in."""
    url = pg_schemas.new_url()
    schema = url.rsplit("%3D", 1)[1]
    dsn = url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute(f'SET LOCAL search_path TO "{schema}"')
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')"
            " THEN CREATE ROLE authenticated NOLOGIN; END IF; END $$"
        )
        assert conn.execute("SELECT to_regprocedure('auth.uid()')").fetchone() == (None,)
        conn.execute(MIGRATION.read_text())
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchone()
        assert tables == (5,)
        conn.rollback()
