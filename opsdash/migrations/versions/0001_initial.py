"""The schema of docs/contracts.md, adopting the original system's tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Safe on three kinds of database: an empty one; one holding the original system's
tables as its Edge Functions made them (the columns docs/contracts.md lists as added are
missing); one that an opsdash without migrations made. Every table, column and
index is created only when missing, so no row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsdash.migrations.helpers import (
    add_column_if_missing,
    is_postgres,
    json_type,
    pg_default,
    set_pg_default,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def _uuid_pk() -> sa.Column[object]:
    return sa.Column(
        "id", sa.Uuid(), primary_key=True, server_default=pg_default("gen_random_uuid()")
    )


def upgrade() -> None:
    _companies()
    _background_jobs()
    _job_stats()
    _schedule_data()
    _user_profiles()
    if is_postgres():
        op.execute(ROW_LEVEL_SECURITY)
        op.execute(STORAGE_BUCKET)


def _companies() -> None:
    op.create_table(
        "companies",
        _uuid_pk(),
        sa.Column("service_company_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("sync_enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("portal_enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("feature_toggles", json_type(), server_default=sa.text("'{}'")),
        if_not_exists=True,
    )
    add_column_if_missing(
        "companies", sa.Column("toggle_overrides", json_type(), server_default=sa.text("'{}'"))
    )
    add_column_if_missing(
        "companies",
        sa.Column("timezone", sa.String(), nullable=False, server_default=sa.text("'UTC'")),
    )
    add_column_if_missing(
        "companies", sa.Column("created_at", TIMESTAMP, server_default=pg_default("now()"))
    )
    add_column_if_missing(
        "companies", sa.Column("updated_at", TIMESTAMP, server_default=pg_default("now()"))
    )
    op.create_index(
        "ix_companies_service_company_id",
        "companies",
        ["service_company_id"],
        unique=True,
        if_not_exists=True,
    )


def _background_jobs() -> None:
    op.create_table(
        "background_jobs",
        _uuid_pk(),
        sa.Column("job_type", sa.String(), nullable=False),
        sa.Column("company_id", sa.Uuid(), sa.ForeignKey("companies.id", ondelete="CASCADE")),
        sa.Column("status", sa.String(), nullable=False, server_default=sa.text("'pending'")),
        sa.Column("params", json_type(), server_default=sa.text("'{}'")),
        sa.Column("result", json_type()),
        sa.Column("error_message", sa.String()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3")),
        sa.Column(
            "scheduled_at", TIMESTAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")
        ),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("completed_at", TIMESTAMP),
        sa.Column("duration_ms", sa.Integer()),
        sa.Column(
            "created_at", TIMESTAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")
        ),
        if_not_exists=True,
    )
    for column in (
        sa.Column("locked_by", sa.String()),
        sa.Column("lease_expires_at", TIMESTAMP),
        sa.Column("dedup_key", sa.String()),
        sa.Column("errors", json_type(), server_default=sa.text("'[]'")),
        sa.Column("rescue_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
    ):
        add_column_if_missing("background_jobs", column)
    # The original tables may have been made without these defaults.
    set_pg_default("background_jobs", "id", "gen_random_uuid()")
    set_pg_default("background_jobs", "params", "'{}'::jsonb")
    set_pg_default("background_jobs", "errors", "'[]'::jsonb")

    # (name, columns, unique, the partial index's condition or None)
    indexes: list[tuple[str, list[str], bool, str | None]] = [
        # Idempotent enqueue: at most one active job per unit of work.
        ("background_jobs_dedup_active", ["dedup_key"], True, "status IN ('pending', 'running')"),
        # The claim: due pending jobs in order, overall and per company.
        ("background_jobs_due", ["scheduled_at"], False, "status = 'pending'"),
        ("background_jobs_company_due", ["company_id", "scheduled_at"], False,
         "status = 'pending'"),
        ("background_jobs_lease", ["lease_expires_at"], False, "status = 'running'"),
        ("background_jobs_created", ["created_at"], False, None),
        ("background_jobs_status_created", ["status", "created_at"], False, None),
        ("background_jobs_company_created", ["company_id", "created_at"], False, None),
    ]  # fmt: skip
    for name, columns, unique, where in indexes:
        condition = sa.text(where) if where is not None else None
        op.create_index(
            name,
            "background_jobs",
            columns,
            unique=unique,
            if_not_exists=True,
            sqlite_where=condition,
            postgresql_where=condition,
        )


def _job_stats() -> None:
    op.create_table(
        "job_stats",
        sa.Column("hour", TIMESTAMP, primary_key=True),
        sa.Column("job_type", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("total_duration_ms", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_duration_ms", sa.Integer(), nullable=False, server_default=sa.text("0")),
        if_not_exists=True,
    )


def _schedule_data() -> None:
    op.create_table(
        "schedule_data",
        _uuid_pk(),
        sa.Column(
            "company_id",
            sa.Uuid(),
            sa.ForeignKey("companies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("storage_path", sa.String(), nullable=False),
        sa.Column("file_size_kb", sa.Float(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("employee_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("team_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.String(), nullable=False, server_default=sa.text("'ready'")),
        sa.Column("updated_at", TIMESTAMP, server_default=pg_default("now()")),
        sa.UniqueConstraint("company_id", "date", name="schedule_data_company_date"),
        if_not_exists=True,
    )
    set_pg_default("schedule_data", "id", "gen_random_uuid()")


def _user_profiles() -> None:
    op.create_table(
        "user_profiles",
        # The Auth user's id: no default, the profile follows the account.
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("company_id", sa.Uuid(), sa.ForeignKey("companies.id", ondelete="CASCADE")),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("employee_information_id", sa.String()),
        if_not_exists=True,
    )
    add_column_if_missing("user_profiles", sa.Column("email", sa.String()))
    add_column_if_missing("user_profiles", sa.Column("full_name", sa.String()))
    add_column_if_missing(
        "user_profiles", sa.Column("updated_at", TIMESTAMP, server_default=pg_default("now()"))
    )
    op.create_index(
        "ix_user_profiles_company_id", "user_profiles", ["company_id"], if_not_exists=True
    )
    op.create_index("ix_user_profiles_email", "user_profiles", ["email"], if_not_exists=True)


# Row level security, only in a database that has Supabase's `auth` schema: opsdash
# connects as the service role (which bypasses RLS), a signed-in portal user may read
# only their own profile, and schedules are served by the read API, never straight
# from the tables. Every check looks at this database and the schema being migrated
# (the role is cluster-wide, the `auth` schema is not).
ROW_LEVEL_SECURITY = """
do $$
begin
    if to_regnamespace('auth') is not null then
        alter table companies enable row level security;
        alter table background_jobs enable row level security;
        alter table job_stats enable row level security;
        alter table schedule_data enable row level security;
        alter table user_profiles enable row level security;
        if to_regprocedure('auth.uid()') is not null
           and exists (select 1 from pg_roles where rolname = 'authenticated')
           and not exists (
               select 1 from pg_policies
               where schemaname = current_schema()
                 and tablename = 'user_profiles' and policyname = 'own profile'
           ) then
            execute 'create policy "own profile" on user_profiles for select '
                    'to authenticated using (id = auth.uid())';
        end if;
    end if;
end
$$
"""

# The private bucket that holds schedule-data/{service_company_id}/{date}/schedule.json.
STORAGE_BUCKET = """
do $$
begin
    if to_regclass('storage.buckets') is not null then
        insert into storage.buckets (id, name, public)
        values ('schedule-data', 'schedule-data', false)
        on conflict (id) do nothing;
    end if;
end
$$
"""


def downgrade() -> None:
    # The first revision also adopts the original system's tables: dropping them
    # would destroy data opsdash did not create.
    raise NotImplementedError("0001 cannot be downgraded: drop the tables by hand if meant")
