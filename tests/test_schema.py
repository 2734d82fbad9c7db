"""One schema, versioned: the migrations build what the models describe, adopt the original
system's tables without losing a row, render the Supabase SQL, and gate production starts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import SQLModel

from opsdash.engine import queue
from opsdash.engine.db import Database, SchemaOutdated, connect, create_schema
from opsdash.engine.models import Company, ScheduleData
from opsdash.engine.schema import (
    ensure_schema,
    head_revision,
    revisions,
    schema_status,
    upgrade,
)
from opsdash.engine.sqltypes import UTCDateTime, utcnow
from opsdash.migrations.supabase import DEFAULT_DIR, expected_files, stale_files
from tests.conftest import PostgresSchemas
from tests.private_cluster import PrivateCluster, cluster_missing_reason


@pytest.fixture
def fresh(db_url: str) -> Iterator[Database]:
    """A database with nothing in it yet, on SQLite and on Postgres."""
    database = connect(db_url)
    yield database
    database.dispose()


def _schema_of(url: str) -> str:
    return url.rsplit("%3D", 1)[1]


def _dsn(url: str) -> str:
    return url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")


# --- the migrations and the models agree -------------------------------------------------


def test_migrations_build_exactly_what_the_models_describe(fresh: Database) -> None:
    assert schema_status(fresh) == (None, head_revision())
    create_schema(fresh)
    with fresh.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []
    assert schema_status(fresh) == (head_revision(), head_revision())


def test_migrating_twice_changes_nothing(fresh: Database) -> None:
    create_schema(fresh)
    queue.enqueue(fresh, [queue.users_job()])
    create_schema(fresh)
    with fresh.read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM background_jobs")).scalar_one() == 1
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [head_revision()]


def test_processes_starting_together_migrate_once(db_url: str) -> None:
    handles = [connect(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(handles))
    failures: list[BaseException] = []

    def start(database: Database) -> None:
        barrier.wait()
        try:
            upgrade(database)
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=start, args=(handle,)) for handle in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with handles[0].read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar_one() == 1
    for handle in handles:
        handle.dispose()


# --- start-up: embedded migrates itself, production refuses an older schema --------------


def test_embedded_sqlite_migrates_by_itself(sqlite_url: str) -> None:
    database = connect(sqlite_url)
    ensure_schema(database)
    assert schema_status(database) == (head_revision(), head_revision())
    database.dispose()


@pytest.mark.postgres
def test_postgres_refuses_an_unmigrated_schema_and_says_what_to_run(
    pg_schemas: PostgresSchemas,
) -> None:
    database = connect(pg_schemas.new_url())
    with pytest.raises(SchemaOutdated, match="opsdash migrate") as refused:
        ensure_schema(database)
    assert refused.value.current is None
    with database.read() as conn:  # nothing was created behind the operator's back
        tables = conn.execute(
            text("SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()")
        ).scalar_one()
    assert tables == 0
    upgrade(database)
    ensure_schema(database)  # now it starts
    database.dispose()


@pytest.mark.postgres
def test_a_newer_revision_is_used_and_an_older_one_refused(pg_url: str) -> None:
    database = connect(pg_url)
    with database.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'from-the-future'"))
    # A revision this opsdash does not know is newer (a rolling upgrade): used, with a warning.
    ensure_schema(database)
    if len(revisions()) > 1:
        with database.write() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revisions()[0]})
        with pytest.raises(SchemaOutdated):
            ensure_schema(database)
    database.dispose()


@pytest.mark.postgres
def test_cli_migrate_then_start(
    pg_schemas: PostgresSchemas, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from opsdash.cli import main

    with pytest.MonkeyPatch.context() as patch:
        # The whole production set, as an operator exports it; neither command below calls
        # Supabase or the upstream.
        patch.setenv("DATABASE_URL", pg_schemas.new_url())
        patch.setenv("OPSDASH_DATA_DIR", str(tmp_path))
        patch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
        patch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-key")
        patch.setenv("MAIDCENTRAL_API_URL", "http://127.0.0.1:9")
        patch.setenv("MAIDCENTRAL_API_KEY", "upstream-key")
        for name in ("OPSDASH_DEMO", "OPSDASH_CONFIG", "SUPABASE_JWT_SECRET"):
            patch.delenv(name, raising=False)
        assert main(["token", "--email", "nobody@example.com"]) == 2
        refused = capsys.readouterr().err
        assert "opsdash migrate" in refused and "Traceback" not in refused
        assert main(["migrate"]) == 0
        assert f"-> {head_revision()}" in capsys.readouterr().out
        assert main(["migrate"]) == 0
        assert "already at revision" in capsys.readouterr().out


# --- the Supabase SQL is generated from the same migrations -------------------------------


def test_supabase_files_are_the_rendered_migrations() -> None:
    assert stale_files(DEFAULT_DIR) == [], (
        "supabase/migrations/ is stale: run `python -m opsdash.migrations.supabase`"
    )
    assert len(expected_files()) == len(revisions())


def _apply_supabase_files(url: str) -> None:
    with psycopg.connect(_dsn(url), options=f"-csearch_path={_schema_of(url)}") as conn:
        for _name, sql in sorted(expected_files().items()):
            conn.execute(sql)  # type: ignore[call-overload]


def _columns(url: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    with psycopg.connect(_dsn(url)) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = %s",
            (_schema_of(url),),
        ).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def _indexes(url: str) -> set[tuple[str, str]]:
    schema = _schema_of(url)
    with psycopg.connect(_dsn(url)) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {(name, definition.replace(f"{schema}.", "")) for name, definition in rows}


@pytest.mark.postgres
def test_supabase_sql_builds_the_same_schema_as_opsdash_migrate(
    pg_schemas: PostgresSchemas,
) -> None:
    from_sql, from_migrate = pg_schemas.new_url(), pg_schemas.new_url()
    _apply_supabase_files(from_sql)
    migrated = connect(from_migrate)
    upgrade(migrated)
    assert _columns(from_sql) == _columns(from_migrate)
    assert _indexes(from_sql) == _indexes(from_migrate)
    # A project set up from the files is current for opsdash, and `opsdash migrate` agrees.
    applied = connect(from_sql)
    ensure_schema(applied)
    upgrade(applied)
    applied.dispose()
    migrated.dispose()


# --- the original system's tables and rows --------------------------------------------------

# As the original Edge Functions made them: the tables of docs/contracts.md without the
# columns it lists as added.
LEGACY = sa.MetaData()
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
sa.Table(
    "companies",
    LEGACY,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("service_company_id", sa.Text(), nullable=False, unique=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("sync_enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("portal_enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("feature_toggles", _JSON),
)
sa.Table(
    "background_jobs",
    LEGACY,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("job_type", sa.Text(), nullable=False),
    sa.Column("company_id", sa.Uuid(), sa.ForeignKey("companies.id")),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("params", _JSON),
    sa.Column("result", _JSON),
    sa.Column("error_message", sa.Text()),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3")),
    sa.Column("scheduled_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime()),
    sa.Column("completed_at", UTCDateTime()),
    sa.Column("duration_ms", sa.Integer()),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)
sa.Table(
    "schedule_data",
    LEGACY,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("company_id", sa.Uuid(), sa.ForeignKey("companies.id"), nullable=False),
    sa.Column("date", sa.Date(), nullable=False),
    sa.Column("storage_path", sa.Text(), nullable=False),
    sa.Column("file_size_kb", sa.Float(), nullable=False),
    sa.Column("checksum", sa.Text(), nullable=False),
    sa.Column("job_count", sa.Integer(), nullable=False),
    sa.Column("employee_count", sa.Integer(), nullable=False),
    sa.Column("team_count", sa.Integer(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("updated_at", UTCDateTime()),
    sa.UniqueConstraint("company_id", "date"),
)
sa.Table(
    "user_profiles",
    LEGACY,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("company_id", sa.Uuid(), sa.ForeignKey("companies.id")),
    sa.Column("role", sa.Text(), nullable=False),
    sa.Column("employee_information_id", sa.Text()),
)


def _legacy_rows() -> dict[str, list[dict[str, Any]]]:
    sparkle, shine = uuid.uuid4(), uuid.uuid4()
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    today = date.today()
    toggles = {"TechDashboard_DisplayBillRate": False, "TechDashboard_HideDiscounts": True}
    return {
        "companies": [
            {"id": sparkle, "service_company_id": "1001", "name": "Sparkle",
             "sync_enabled": True, "portal_enabled": True, "feature_toggles": toggles},
            {"id": shine, "service_company_id": "1002", "name": "Shine",
             "sync_enabled": False, "portal_enabled": True, "feature_toggles": {}},
        ],
        "background_jobs": [
            {"id": uuid.uuid4(), "job_type": "sync_users", "company_id": None,
             "status": "completed", "params": {}, "result": {"users": 12},
             "error_message": None, "attempts": 1, "max_attempts": 3,
             "scheduled_at": hour_ago, "started_at": hour_ago, "completed_at": hour_ago,
             "duration_ms": 840, "created_at": hour_ago},
            {"id": uuid.uuid4(), "job_type": "sync_schedule", "company_id": sparkle,
             "status": "failed", "params": {"date": str(today)}, "result": None,
             "error_message": "upstream timed out", "attempts": 3, "max_attempts": 3,
             "scheduled_at": hour_ago, "started_at": hour_ago, "completed_at": hour_ago,
             "duration_ms": 30000, "created_at": hour_ago},
            {"id": uuid.uuid4(), "job_type": "sync_users", "company_id": None,
             "status": "pending", "params": {}, "result": None, "error_message": None,
             "attempts": 0, "max_attempts": 3, "scheduled_at": hour_ago,
             "started_at": None, "completed_at": None, "duration_ms": None,
             "created_at": hour_ago},
        ],
        "schedule_data": [
            {"id": uuid.uuid4(), "company_id": sparkle, "date": today + timedelta(days=n),
             "storage_path": f"1001/{today + timedelta(days=n)}/schedule.json",
             "file_size_kb": 48.5, "checksum": f"{n:064x}", "job_count": 31,
             "employee_count": 9, "team_count": 4, "status": "ready", "updated_at": hour_ago}
            for n in range(3)
        ],
        "user_profiles": [
            {"id": uuid.uuid4(), "company_id": sparkle, "role": "admin",
             "employee_information_id": None},
            {"id": uuid.uuid4(), "company_id": sparkle, "role": "technician",
             "employee_information_id": "E-7"},
            {"id": uuid.uuid4(), "company_id": shine, "role": "office",
             "employee_information_id": None},
        ],
    }  # fmt: skip


def _read_legacy_columns(database: Database) -> dict[str, list[dict[str, Any]]]:
    """Every row of every original table, by its original columns only."""
    tables: dict[str, list[dict[str, Any]]] = {}
    with database.read() as conn:
        for table in LEGACY.sorted_tables:
            rows = conn.execute(sa.select(table).order_by(table.c.id)).mappings()
            tables[table.name] = [dict(row) for row in rows]
    return tables


def test_the_original_systems_rows_survive_the_migration(fresh: Database) -> None:
    LEGACY.create_all(fresh.engine)
    rows = _legacy_rows()
    with fresh.write() as conn:
        for table in LEGACY.sorted_tables:
            conn.execute(table.insert(), rows[table.name])
    before = _read_legacy_columns(fresh)
    assert schema_status(fresh)[0] is None

    create_schema(fresh)

    assert _read_legacy_columns(fresh) == before
    assert schema_status(fresh) == (head_revision(), head_revision())
    with fresh.read() as conn:
        companies = conn.execute(text("SELECT timezone, toggle_overrides FROM companies")).all()
        jobs = conn.execute(
            text("SELECT errors, rescue_count, locked_by, dedup_key FROM background_jobs")
        ).all()
        stats = conn.execute(text("SELECT COUNT(*) FROM job_stats")).scalar_one()
    assert {row.timezone for row in companies} == {"UTC"}
    assert all(row.toggle_overrides in ({}, "{}") for row in companies)
    assert all(row.errors in ([], "[]") and row.rescue_count == 0 for row in jobs)
    assert stats == 0

    # opsdash runs on it: the original pending job is claimed and completed, the failed one
    # reset by hand is picked up again, new work is queued beside the old rows.
    worker = queue.new_worker_id()
    claimed = queue.claim(fresh, worker, lease_s=30)
    assert [job.job_type for job in claimed] == ["sync_users"]
    queue.complete(fresh, claimed[0], worker, {"users": 12})
    with fresh.write() as conn:
        conn.execute(
            text(
                "UPDATE background_jobs SET status = 'pending', attempts = 0 "
                "WHERE status = 'failed' AND job_type = 'sync_schedule'"
            )
        )
    assert [job.job_type for job in queue.claim(fresh, worker, lease_s=30)] == ["sync_schedule"]
    assert queue.enqueue(fresh, [queue.users_job()]) == 1


def test_migrating_an_unversioned_opsdash_schema_keeps_its_rows(fresh: Database) -> None:
    """A database made by opsdash before migrations existed (``create_all``)."""
    SQLModel.metadata.create_all(fresh.engine)
    company = Company(service_company_id="1001", name="Sparkle", timezone="America/Chicago")
    with fresh.session() as session:
        session.add(company)
        session.commit()
    queue.enqueue(fresh, [queue.users_job(), queue.schedule_job(company.id, "2026-11-29")])
    create_schema(fresh)
    with fresh.read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM background_jobs")).scalar_one() == 2
        zone = conn.execute(text("SELECT timezone FROM companies")).scalar_one()
    assert zone == "America/Chicago"
    assert schema_status(fresh)[0] == head_revision()


# --- the operators' own queries ----------------------------------------------------------


@pytest.mark.postgres
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


# --- row level security, in a cluster of the test's own -------------------------------------

RLS_TABLES = {"companies", "background_jobs", "job_stats", "schedule_data", "user_profiles"}
# What a Supabase database has and a plain Postgres does not: the `auth` schema, whose
# uid() reads the verified token's subject.
SUPABASE_AUTH = """
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    reason = cluster_missing_reason()
    if reason:
        pytest.skip(reason)
    private = PrivateCluster().start()
    with psycopg.connect(private.dsn(), autocommit=True) as conn:
        # Supabase's roles exist cluster-wide, in every database of the cluster.
        conn.execute("CREATE ROLE authenticated NOLOGIN")
        conn.execute("CREATE ROLE anon NOLOGIN")
    yield private
    private.stop()


def _database(cluster: PrivateCluster, name: str, setup: str = "") -> str:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[call-overload]
    if setup:
        with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
            conn.execute(setup)  # type: ignore[call-overload]
    return cluster.url(name)


def _row_security(database: Database) -> dict[str, bool]:
    with database.read() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, relrowsecurity FROM pg_class "
                "WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'"
            )
        ).all()
    return {name: enabled for name, enabled in rows if name in RLS_TABLES}


def _policies(database: Database) -> list[str]:
    with database.read() as conn:
        return list(
            conn.execute(
                text("SELECT policyname FROM pg_policies WHERE schemaname = current_schema()")
            ).scalars()
        )


def test_rls_stays_off_where_the_role_exists_but_the_auth_schema_does_not(
    cluster: PrivateCluster,
) -> None:
    database = connect(_database(cluster, "plain"))
    upgrade(database)  # used to fail: schema "auth" does not exist
    assert _row_security(database) == dict.fromkeys(RLS_TABLES, False)
    assert _policies(database) == []
    database.dispose()


def test_rls_and_the_own_profile_policy_where_supabase_auth_exists(
    cluster: PrivateCluster,
) -> None:
    url = _database(cluster, "supabase_like", SUPABASE_AUTH)
    database = connect(url)
    upgrade(database)
    upgrade(database)  # idempotent: the policy is not created twice
    assert _row_security(database) == dict.fromkeys(RLS_TABLES, True)
    assert _policies(database) == ["own profile"]

    mine, other = uuid.uuid4(), uuid.uuid4()
    with database.write() as conn:
        for profile in (mine, other):
            conn.execute(
                text("INSERT INTO user_profiles (id, role) VALUES (:id, 'technician')"),
                {"id": profile},
            )
        conn.execute(text("GRANT SELECT ON user_profiles TO authenticated"))
        # A signed-in portal user sees their own profile only.
        conn.execute(text("SET LOCAL ROLE authenticated"))
        conn.execute(
            text("SELECT set_config('request.jwt.claim.sub', :sub, true)"), {"sub": str(mine)}
        )
        visible = conn.execute(text("SELECT id FROM user_profiles")).scalars().all()
        conn.execute(text("RESET ROLE"))
    assert visible == [mine]

    # The checks look in the schema being migrated: a second schema in the same database
    # gets its own policy although the first already has one.
    with database.write() as conn:
        conn.execute(text("CREATE SCHEMA second"))
    second = connect(f"{url}?options=-csearch_path%3Dsecond")
    upgrade(second)
    assert _row_security(second) == dict.fromkeys(RLS_TABLES, True)
    assert _policies(second) == ["own profile"]
    second.dispose()
    database.dispose()
