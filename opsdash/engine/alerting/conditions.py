"""What is wrong right now: the alert conditions, each named by a stable key.

A condition present now opens an alert (once); a condition that disappears
resolves it. Keys are stable across processes and evaluations, so every
process that evaluates the same database arrives at the same set.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from opsdash.engine.db import Database
from opsdash.engine.freshness import CompanyFreshness, Freshness
from opsdash.engine.models import BackgroundJob, JobStatus, JobType, table_of

J = table_of(BackgroundJob).c

COMPANY, JOB_FAILED, RESCUED, STORAGE, BUCKET_PUBLIC, DATABASE = (
    "company",
    "job_failed",
    "jobs_rescued",
    "storage_unreachable",
    "bucket_public",
    "database_unreachable",
)
# How long after the last rescue the "jobs rescued" alert stays open.
RESCUE_QUIET = timedelta(minutes=15)
USERS_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Condition:
    key: str
    kind: str
    subject: str
    level: str = "warning"
    """'warning' or 'critical'; a rise in level is sent as an escalation."""
    company_id: uuid.UUID | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def company_conditions(rows: Iterable[CompanyFreshness]) -> list[Condition]:
    """A company that turned late or failing (one key per company, its level rising)."""
    conditions = []
    for row in rows:
        if row.state not in (Freshness.LATE, Freshness.FAILING):
            continue
        age = _hours(row.oldest_age)
        conditions.append(
            Condition(
                key=f"{COMPANY}:{row.id}",
                kind=COMPANY,
                subject=f"{row.name} ({row.service_company_id}) is {row.state.value}",
                level="critical" if row.state == Freshness.FAILING else "warning",
                company_id=row.id,
                detail={
                    "company": row.service_company_id,
                    "state": row.state.value,
                    "oldest_day_age_hours": age,
                    "failed_days": [day.isoformat() for day in row.failed_days],
                },
            )
        )
    return conditions


def failed_job_conditions(
    db: Database, rows: Iterable[CompanyFreshness], *, now: datetime
) -> list[Condition]:
    """Units of work whose latest job used up its attempts (until a later one succeeds)."""
    conditions = [
        Condition(
            key=f"{JOB_FAILED}:{row.id}:{day.date.isoformat()}",
            kind=JOB_FAILED,
            subject=f"sync of {row.name} ({row.service_company_id}) for {day.date} failed",
            company_id=row.id,
            detail={
                "company": row.service_company_id,
                "date": day.date.isoformat(),
                "error": day.last_error,
            },
        )
        for row in rows
        for day in row.days
        if day.last_status == JobStatus.FAILED
    ]
    with db.read() as conn:
        latest_users = conn.execute(
            select(J.status, J.error_message)
            .where(J.job_type == JobType.SYNC_USERS, J.created_at >= now - USERS_WINDOW)
            .where(J.status != JobStatus.CANCELLED)
            .order_by(J.created_at.desc(), J.id.desc())
            .limit(1)
        ).first()
    if latest_users is not None and latest_users.status == JobStatus.FAILED:
        conditions.append(
            Condition(
                key=f"{JOB_FAILED}:{JobType.SYNC_USERS}",
                kind=JOB_FAILED,
                subject="the users sync failed",
                detail={"error": latest_users.error_message},
            )
        )
    return conditions


def rescue_condition(db: Database, *, now: datetime) -> list[Condition]:
    """Jobs whose worker lost its lease recently (a crashed or hung worker)."""
    with db.read() as conn:
        rescued = conn.execute(
            select(func.count()).where(
                J.created_at >= now - USERS_WINDOW,
                J.rescue_count > 0,
                J.scheduled_at >= now - RESCUE_QUIET,
            )
        ).scalar_one()
    if not rescued:
        return []
    return [
        Condition(
            key=RESCUED,
            kind=RESCUED,
            subject=f"{rescued} job(s) rescued after their worker lost its lease",
            detail={"jobs": rescued},
        )
    ]


def outage_condition(
    kind: str,
    what: str,
    down_since: datetime | None,
    *,
    now: datetime,
    after: timedelta,
    reason: str = "",
) -> list[Condition]:
    if down_since is None or now - down_since < after:
        return []
    return [
        Condition(
            key=kind,
            kind=kind,
            subject=f"{what} unreachable since {down_since:%Y-%m-%d %H:%M:%S} UTC",
            level="critical",
            detail={"since": down_since.isoformat(), "reason": reason},
        )
    ]


def bucket_condition(public_bucket: str | None) -> list[Condition]:
    if public_bucket is None:
        return []
    return [
        Condition(
            key=BUCKET_PUBLIC,
            kind=BUCKET_PUBLIC,
            subject=f"storage bucket {public_bucket!r} is public: anyone can read the schedules",
            level="critical",
            detail={"bucket": public_bucket},
        )
    ]


def _hours(age: timedelta | None) -> float | None:
    return round(age.total_seconds() / 3600, 2) if age is not None else None
