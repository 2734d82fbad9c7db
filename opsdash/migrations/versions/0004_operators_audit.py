"""Console operators and the audit trail of their actions: operators, operator_audit.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Only adds two tables. The audit names the operator by name, not by a foreign key, so
removing an operator keeps the record of what they did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsdash.migrations.helpers import is_postgres, json_type, pg_default

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, TIMESTAMP, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP"))


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False, server_default=sa.false()),
        _now("created_at"),
        sa.Column("disabled_at", TIMESTAMP),
        sa.Column("last_login_at", TIMESTAMP),
        if_not_exists=True,
    )
    op.create_table(
        "operator_audit",
        sa.Column(
            "id", sa.Uuid(), primary_key=True, server_default=pg_default("gen_random_uuid()")
        ),
        _now("at"),
        sa.Column("operator", sa.String(), nullable=False),
        sa.Column("console", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", json_type(), server_default=sa.text("'{}'")),
        sa.Column("result", sa.String(), nullable=False),
        sa.Column("detail", sa.String()),
        if_not_exists=True,
    )
    op.create_index("operator_audit_at", "operator_audit", ["at"], if_not_exists=True)
    if is_postgres():
        op.execute(ROW_LEVEL_SECURITY)


# As in 0001: only where Supabase's `auth` schema exists; opsdash's service role bypasses it.
# Password hashes in particular must never be readable through the portal's API.
ROW_LEVEL_SECURITY = """
do $$
begin
    if to_regnamespace('auth') is not null then
        alter table operators enable row level security;
        alter table operator_audit enable row level security;
    end if;
end
$$
"""


def downgrade() -> None:
    op.drop_table("operator_audit")
    op.drop_table("operators")
