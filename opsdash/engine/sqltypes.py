"""Column types that behave the same on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

# jsonb on Postgres (indexable, what the Supabase deployment uses); JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")

SQLITE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out, on every dialect.

    SQLite has no timestamp type, so SQLAlchemy stores naive text there; this
    type converts aware values to naive UTC on the way in and marks them UTC
    on the way out, so callers only ever see aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_hour(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in: how ``job_stats`` buckets jobs."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
