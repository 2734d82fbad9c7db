"""Freshness, the run ledger and alerts: schedule_data.synced_at, sync_runs, alerts,
alert_deliveries (docs/freshness-and-alerts.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Only adds: a nullable column (freshness falls back to ``updated_at`` where it is
null) and three new tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsdash.migrations.helpers import add_column_if_missing, is_postgres, json_type, pg_default

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def _uuid_pk() -> sa.Column[object]:
    return sa.Column(
        "id", sa.Uuid(), primary_key=True, server_default=pg_default("gen_random_uuid()")
    )


def _count(name: str, default: int = 0) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text(str(default)))


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, TIMESTAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP"))


def upgrade() -> None:
    add_column_if_missing("schedule_data", sa.Column("synced_at", TIMESTAMP))
    op.create_table(
        "sync_runs",
        _uuid_pk(),
        sa.Column("trigger", sa.String(), nullable=False, server_default=sa.text("'scheduled'")),
        sa.Column("scope", sa.String(), nullable=False, server_default=sa.text("'all'")),
        _now("queued_at"),
        sa.Column("finished_at", TIMESTAMP),
        *(
            _count(name)
            for name in (
                "planned",
                "queued",
                "companies",
                "days_done",
                "days_failed",
                "days_unchanged",
                "upstream_calls",
                "bytes_written",
            )
        ),
        if_not_exists=True,
    )
    op.create_index("ix_sync_runs_queued_at", "sync_runs", ["queued_at"], if_not_exists=True)

    op.create_table(
        "alerts",
        _uuid_pk(),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("company_id", sa.Uuid(), sa.ForeignKey("companies.id", ondelete="CASCADE")),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("detail", json_type(), server_default=sa.text("'{}'")),
        _now("opened_at"),
        sa.Column("resolved_at", TIMESTAMP),
        sa.Column("last_notified_at", TIMESTAMP),
        _count("notifications"),
        if_not_exists=True,
    )
    open_only = sa.text("resolved_at IS NULL")
    # One open episode per condition: whoever inserts it first sends the alert.
    op.create_index(
        "alerts_open_key",
        "alerts",
        ["key"],
        unique=True,
        if_not_exists=True,
        sqlite_where=open_only,
        postgresql_where=open_only,
    )
    op.create_index("alerts_opened", "alerts", ["opened_at"], if_not_exists=True)

    op.create_table(
        "alert_deliveries",
        _uuid_pk(),
        sa.Column("alert_id", sa.Uuid(), sa.ForeignKey("alerts.id", ondelete="CASCADE")),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("payload", json_type(), server_default=sa.text("'{}'")),
        sa.Column("status", sa.String(), nullable=False, server_default=sa.text("'pending'")),
        _count("attempts"),
        _count("max_attempts", 8),
        _now("next_attempt_at"),
        _now("created_at"),
        sa.Column("sent_at", TIMESTAMP),
        sa.Column("error", sa.String()),
        sa.Column("locked_by", sa.String()),
        sa.Column("lease_expires_at", TIMESTAMP),
        if_not_exists=True,
    )
    pending = sa.text("status = 'pending'")
    op.create_index(
        "alert_deliveries_due",
        "alert_deliveries",
        ["next_attempt_at"],
        if_not_exists=True,
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_index(
        "alert_deliveries_created", "alert_deliveries", ["created_at"], if_not_exists=True
    )
    if is_postgres():
        op.execute(ROW_LEVEL_SECURITY)


# As in 0001: only where Supabase's `auth` schema exists; opsdash's service role bypasses it.
ROW_LEVEL_SECURITY = """
do $$
begin
    if to_regnamespace('auth') is not null then
        alter table sync_runs enable row level security;
        alter table alerts enable row level security;
        alter table alert_deliveries enable row level security;
    end if;
end
$$
"""


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    op.drop_table("alerts")
    op.drop_table("sync_runs")
    with op.batch_alter_table("schedule_data") as batch:
        batch.drop_column("synced_at")
