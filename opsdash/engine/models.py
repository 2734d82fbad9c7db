"""The tables of docs/contracts.md, compatible with the existing Supabase deployment."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Index, Table, UniqueConstraint, inspect, text
from sqlmodel import Field, SQLModel

from opsdash.engine.sqltypes import JSONType, UTCDateTime, utcnow
from opsdash.privacy import Role, effective_toggles


class JobType(StrEnum):
    SYNC_USERS = "sync_users"
    SYNC_SCHEDULE = "sync_schedule"


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
FINISHED_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json(default_factory: Any = dict, *, nullable: bool = True) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSONType, nullable=nullable))


class Company(SQLModel, table=True):
    __tablename__ = "companies"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    service_company_id: str = Field(unique=True, index=True)
    name: str
    sync_enabled: bool = True
    portal_enabled: bool = True
    feature_toggles: dict[str, Any] = _json()
    toggle_overrides: dict[str, Any] = _json()
    timezone: str = Field(default="UTC", sa_column_kwargs={"server_default": "UTC"})
    created_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=True)
    )
    updated_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=True)
    )

    def effective_toggles(self) -> dict[str, Any]:
        """Upstream toggles with the operator's overrides on top (``privacy.effective_toggles``)."""
        return effective_toggles(self.feature_toggles, self.toggle_overrides)


class BackgroundJob(SQLModel, table=True):
    __tablename__ = "background_jobs"
    __table_args__ = (
        # Idempotent enqueue: at most one active job per unit of work.
        Index(
            "background_jobs_dedup_active",
            "dedup_key",
            unique=True,
            sqlite_where=text("status IN ('pending', 'running')"),
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        # The claim: due pending jobs in order.
        Index(
            "background_jobs_due",
            "scheduled_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "background_jobs_company_due",
            "company_id",
            "scheduled_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "background_jobs_lease",
            "lease_expires_at",
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
        Index("background_jobs_created", "created_at"),
        Index("background_jobs_status_created", "status", "created_at"),
        Index("background_jobs_company_created", "company_id", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    job_type: str
    company_id: uuid.UUID | None = Field(
        default=None, foreign_key="companies.id", ondelete="CASCADE"
    )
    status: str = Field(default=JobStatus.PENDING, sa_column_kwargs={"server_default": "pending"})
    params: dict[str, Any] = _json()
    result: dict[str, Any] | None = _json(lambda: None)
    error_message: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    max_attempts: int = Field(default=3, sa_column_kwargs={"server_default": "3"})
    scheduled_at: datetime | None = Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime(), nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    )
    started_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    duration_ms: int | None = None
    created_at: datetime | None = Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime(), nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    )
    locked_by: str | None = None
    lease_expires_at: datetime | None = _ts()
    dedup_key: str | None = None
    errors: list[dict[str, Any]] = _json(list)
    rescue_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class JobStat(SQLModel, table=True):
    """Hourly roll-up of finished jobs, so pruning never erases the history."""

    __tablename__ = "job_stats"

    hour: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    job_type: str = Field(primary_key=True)
    status: str = Field(primary_key=True)
    count: int = 0
    total_duration_ms: int = 0
    max_duration_ms: int = 0


class ScheduleData(SQLModel, table=True):
    __tablename__ = "schedule_data"
    __table_args__ = (UniqueConstraint("company_id", "date", name="schedule_data_company_date"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    company_id: uuid.UUID = Field(foreign_key="companies.id", ondelete="CASCADE")
    date: date
    storage_path: str
    file_size_kb: float
    checksum: str
    job_count: int = 0
    employee_count: int = 0
    team_count: int = 0
    status: str = "ready"
    updated_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=True)
    )
    # When a sync last confirmed this day (content changed or not); updated_at is
    # when the content last changed. Freshness reads the newer of the two.
    synced_at: datetime | None = _ts()


class SyncRunRecord(SQLModel, table=True):
    """The run ledger: one row per sync run, kept long after its jobs are pruned."""

    __tablename__ = "sync_runs"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    trigger: str = "scheduled"
    """'scheduled' (the coordinator's cron) or 'operator' (console, CLI)."""
    scope: str = "all"
    queued_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )
    finished_at: datetime | None = _ts()
    planned: int = 0
    queued: int = 0
    companies: int = 0
    days_done: int = 0
    days_failed: int = 0
    days_unchanged: int = 0
    upstream_calls: int = 0
    bytes_written: int = 0


class Alert(SQLModel, table=True):
    """One episode of an alert condition: opened once, notified, resolved once."""

    __tablename__ = "alerts"
    __table_args__ = (
        # One open episode per condition: whoever inserts it first sends the alert.
        Index(
            "alerts_open_key",
            "key",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index("alerts_opened", "opened_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    key: str
    kind: str
    company_id: uuid.UUID | None = Field(
        default=None, foreign_key="companies.id", ondelete="CASCADE"
    )
    subject: str
    detail: dict[str, Any] = _json()
    opened_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    resolved_at: datetime | None = _ts()
    last_notified_at: datetime | None = _ts()
    notifications: int = 0


class AlertDelivery(SQLModel, table=True):
    """The outbox: one message for one channel, retried with backoff until sent."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        Index(
            "alert_deliveries_due",
            "next_attempt_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("alert_deliveries_created", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    alert_id: uuid.UUID | None = Field(default=None, foreign_key="alerts.id", ondelete="CASCADE")
    event: str
    """'opened', 'escalated', 'reminder', 'resolved', 'summary' or 'test'."""
    channel: str
    """'webhook' or 'email'."""
    subject: str
    body: str
    payload: dict[str, Any] = _json()
    status: str = "pending"
    attempts: int = 0
    max_attempts: int = 8
    next_attempt_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    created_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    sent_at: datetime | None = _ts()
    error: str | None = None
    locked_by: str | None = None
    lease_expires_at: datetime | None = _ts()


class UserProfile(SQLModel, table=True):
    """A portal user. ``id`` is the Supabase Auth user's id (the token's ``sub``);
    ``maidcentral_user_id`` is the upstream ``UserId``. The two are equal for users
    opsdash created, and differ for Auth users adopted from an earlier system."""

    __tablename__ = "user_profiles"
    __table_args__ = (
        Index("user_profiles_maidcentral_user_id", "maidcentral_user_id", unique=True),
    )

    id: uuid.UUID = Field(primary_key=True)
    maidcentral_user_id: uuid.UUID | None = None
    company_id: uuid.UUID | None = Field(
        default=None, foreign_key="companies.id", index=True, ondelete="CASCADE"
    )
    role: str
    employee_information_id: str | None = None
    email: str | None = Field(default=None, index=True)
    full_name: str | None = None
    updated_at: datetime | None = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=True)
    )


class OperatorRecord(SQLModel, table=True):
    """Someone who may sign in to a console: the browser console asks for a password."""

    __tablename__ = "operators"

    name: str = Field(primary_key=True)
    password_hash: str
    """An argon2 hash (``engine/operators.py``); never the password."""
    read_only: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    created_at: datetime | None = Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime(), nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    )
    disabled_at: datetime | None = _ts()
    """Set: the operator may no longer sign in (kept, so the audit's name stays theirs)."""
    last_login_at: datetime | None = _ts()


class OperatorAudit(SQLModel, table=True):
    """One operator action from a console: who, when, what, on what, and how it ended."""

    __tablename__ = "operator_audit"
    __table_args__ = (Index("operator_audit_at", "at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    at: datetime | None = Field(
        default_factory=utcnow,
        sa_column=Column(UTCDateTime(), nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    )
    operator: str
    console: str
    """'terminal' or 'web'."""
    action: str
    target: dict[str, Any] = _json()
    result: str
    """'ok', 'refused' (a read-only operator) or 'failed'."""
    detail: str | None = None


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind ``model``, for queries that select columns rather than objects.

    SQLModel sets ``__table__`` on a table model without declaring it, so the type checker
    cannot see it; the mapper's table is the same object, checked here once per module.
    """
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table


__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "Alert",
    "AlertDelivery",
    "BackgroundJob",
    "Company",
    "JobStat",
    "JobStatus",
    "JobType",
    "OperatorAudit",
    "OperatorRecord",
    "Role",
    "ScheduleData",
    "SyncRunRecord",
    "UserProfile",
    "date",
    "table_of",
]
