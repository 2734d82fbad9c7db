"""user_profiles.maidcentral_user_id: the upstream UserId, apart from the Auth user's id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Profiles made before this column existed were keyed by the upstream id, hence the
backfill. A unique index (not a constraint) so that SQLite adds it in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsdash.migrations.helpers import add_column_if_missing

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_column_if_missing("user_profiles", sa.Column("maidcentral_user_id", sa.Uuid()))
    op.execute(
        "UPDATE user_profiles SET maidcentral_user_id = id WHERE maidcentral_user_id IS NULL"
    )
    op.create_index(
        "user_profiles_maidcentral_user_id",
        "user_profiles",
        ["maidcentral_user_id"],
        unique=True,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("user_profiles_maidcentral_user_id", table_name="user_profiles")
    with op.batch_alter_table("user_profiles") as batch:
        batch.drop_column("maidcentral_user_id")
