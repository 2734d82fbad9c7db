"""Read-only queries the operator console needs, each bounded by a LIMIT or an indexed window.

Everything reads the database, never this process's memory, so work done by
other opsdash processes on the same database shows too. Nothing here changes a
row: job status changes go through :mod:`opsdash.engine.queue`, company edits
through :mod:`opsdash.engine.companies`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, case, func, or_, select, text

from opsdash.engine.db import Database
from opsdash.engine.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    BackgroundJob,
    Company,
    JobStat,
    JobStatus,
    Role,
    ScheduleData,
    UserProfile,
    table_of,
)
from opsdash.engine.sqltypes import utc_hour
from opsdash.privacy import effective_toggles

JOBS = table_of(BackgroundJob)
COMPANIES = table_of(Company)
STATS = table_of(JobStat)
SCHEDULES = table_of(ScheduleData)
PROFILES = table_of(UserProfile)
J = JOBS.c

JOBS_PAGE_LIMIT = 200
# Counts and "latest job" summaries look at this much recent history (created_at index range).
RECENT_WINDOW = timedelta(hours=24)
# A sync run in flight is measured from its oldest active job, but never further back than this.
RUN_WINDOW = timedelta(hours=24)
# Live jobs finish soon after they are created (retries back off 15 minutes at most); a job
# created more than this before the sparkline's first hour is not looked at, to stay on the index.
THROUGHPUT_CREATED_SLACK = timedelta(hours=2)
STORED_DAYS_LIMIT = 400
PEOPLE_LIMIT = 500
COMPANIES_LIMIT = 1000
RETRY_ALL_LIMIT = 1000


# --- jobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """What the jobs table shows: every field narrows; None means "any"."""

    status: str | None = None
    job_type: str | None = None
    company_id: uuid.UUID | None = None
    search: str = ""

    @property
    def is_empty(self) -> bool:
        return self == JobFilter()


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    job_type: str
    company_id: uuid.UUID | None
    company_name: str | None
    day: str | None
    status: str
    attempts: int
    max_attempts: int
    duration_ms: int | None
    created_at: datetime
    error_message: str | None


@dataclass(frozen=True)
class JobDetail:
    id: uuid.UUID
    job_type: str
    company_id: uuid.UUID | None
    company_name: str | None
    status: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error_message: str | None
    errors: list[dict[str, Any]]
    attempts: int
    max_attempts: int
    rescue_count: int
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: int | None
    locked_by: str | None
    lease_expires_at: datetime | None


def _company_ids_matching(db: Database, term: str) -> list[uuid.UUID]:
    pattern = f"%{term}%"
    with db.read() as conn:
        return list(
            conn.execute(
                select(COMPANIES.c.id)
                .where(
                    or_(
                        COMPANIES.c.name.ilike(pattern),
                        COMPANIES.c.service_company_id.ilike(pattern),
                    )
                )
                .limit(COMPANIES_LIMIT)
            ).scalars()
        )


def _filtered(db: Database, query: Select[Any], job_filter: JobFilter) -> Select[Any]:
    if job_filter.status:
        query = query.where(J.status == job_filter.status)
    if job_filter.job_type:
        query = query.where(J.job_type == job_filter.job_type)
    if job_filter.company_id is not None:
        query = query.where(J.company_id == job_filter.company_id)
    term = job_filter.search.strip()
    if term:
        # The dedup key spells out "type:company:date", so one LIKE finds a day or a job type.
        pattern = f"%{term}%"
        matches = [J.dedup_key.ilike(pattern), J.error_message.ilike(pattern)]
        companies = _company_ids_matching(db, term)
        if companies:
            matches.append(J.company_id.in_(companies))
        query = query.where(or_(*matches))
    return query


def jobs_page(
    db: Database, job_filter: JobFilter = JobFilter(), *, limit: int = JOBS_PAGE_LIMIT
) -> list[JobRow]:
    """The newest ``limit`` jobs that match ``job_filter``, newest first."""
    query = (
        select(
            J.id,
            J.job_type,
            J.company_id,
            COMPANIES.c.name.label("company_name"),
            J.params,
            J.status,
            J.attempts,
            J.max_attempts,
            J.duration_ms,
            J.created_at,
            J.error_message,
        )
        .select_from(JOBS.outerjoin(COMPANIES, COMPANIES.c.id == J.company_id))
        .order_by(J.created_at.desc(), J.id.desc())
        .limit(limit)
    )
    query = _filtered(db, query, job_filter)
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [
        JobRow(
            id=row.id,
            job_type=row.job_type,
            company_id=row.company_id,
            company_name=row.company_name,
            day=(row.params or {}).get("date"),
            status=row.status,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            duration_ms=row.duration_ms,
            created_at=row.created_at,
            error_message=row.error_message,
        )
        for row in rows
    ]


def job_detail(db: Database, job_id: uuid.UUID) -> JobDetail | None:
    query = (
        select(JOBS, COMPANIES.c.name.label("company_name"))
        .select_from(JOBS.outerjoin(COMPANIES, COMPANIES.c.id == J.company_id))
        .where(J.id == job_id)
    )
    with db.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return JobDetail(
        id=row.id,
        job_type=row.job_type,
        company_id=row.company_id,
        company_name=row.company_name,
        status=row.status,
        params=row.params or {},
        result=row.result,
        error_message=row.error_message,
        errors=list(row.errors or []),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        rescue_count=row.rescue_count,
        created_at=row.created_at,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        duration_ms=row.duration_ms,
        locked_by=row.locked_by,
        lease_expires_at=row.lease_expires_at,
    )


def failed_job_ids(
    db: Database, job_filter: JobFilter = JobFilter(), *, limit: int = RETRY_ALL_LIMIT
) -> list[uuid.UUID]:
    """Failed jobs matching ``job_filter`` (whatever its status says), newest first."""
    narrowed = JobFilter(
        status=JobStatus.FAILED,
        job_type=job_filter.job_type,
        company_id=job_filter.company_id,
        search=job_filter.search,
    )
    query = _filtered(db, select(J.id), narrowed).order_by(J.created_at.desc()).limit(limit)
    with db.read() as conn:
        return list(conn.execute(query).scalars())


# --- counts, throughput and the run in flight -------------------------------------------


def status_counts(db: Database, *, now: datetime) -> dict[str, int]:
    """Jobs per status: active ones of any age, finished ones created in the last 24 hours."""
    counts = {str(status): 0 for status in JobStatus}
    with db.read() as conn:
        recent = conn.execute(
            select(J.status, func.count())
            .where(J.created_at >= now - RECENT_WINDOW, J.status.in_(FINISHED_STATUSES))
            .group_by(J.status)
        ).all()
        active = conn.execute(
            select(J.status, func.count()).where(J.status.in_(ACTIVE_STATUSES)).group_by(J.status)
        ).all()
    for status, count in (*recent, *active):
        counts[status] = count
    return counts


@dataclass(frozen=True)
class HourlyThroughput:
    """Finished jobs per hour, oldest hour first (the sparkline's data)."""

    hours: list[datetime]
    finished: list[int]
    failed: list[int]


def _hour_bucket(moment: Any, buckets: list[datetime]) -> Any:
    """The index of the hour ``moment`` falls in, as one portable CASE (no dialect date_trunc)."""
    ends = [hour + timedelta(hours=1) for hour in buckets]
    return case(*[(moment < end, index) for index, end in enumerate(ends)], else_=len(buckets))


def throughput(db: Database, *, now: datetime, hours: int = 24) -> HourlyThroughput:
    """Finished jobs per hour from ``job_stats`` (pruned history) plus the jobs still stored."""
    first_hour = utc_hour(now) - timedelta(hours=hours - 1)
    buckets = [first_hour + timedelta(hours=index) for index in range(hours)]
    finished: Counter[datetime] = Counter()
    failed: Counter[datetime] = Counter()
    with db.read() as conn:
        for hour, status, count in conn.execute(
            select(STATS.c.hour, STATS.c.status, STATS.c.count).where(STATS.c.hour >= first_hour)
        ):
            finished[utc_hour(hour)] += count
            if status == JobStatus.FAILED:
                failed[utc_hour(hour)] += count
        bucket = _hour_bucket(J.completed_at, buckets).label("bucket")
        live = conn.execute(
            select(bucket, J.status, func.count())
            .where(
                J.created_at >= first_hour - THROUGHPUT_CREATED_SLACK,
                J.status.in_(FINISHED_STATUSES),
                J.completed_at >= first_hour,
            )
            .group_by(bucket, J.status)
        )
        for index, status, count in live:
            if index < hours:
                finished[buckets[index]] += count
                if status == JobStatus.FAILED:
                    failed[buckets[index]] += count
    return HourlyThroughput(
        hours=buckets,
        finished=[finished[hour] for hour in buckets],
        failed=[failed[hour] for hour in buckets],
    )


@dataclass(frozen=True)
class RunProgress:
    """The sync run in flight: every job created since its oldest still-active job."""

    started_at: datetime
    total: int
    done: int
    failed: int
    running: int

    @property
    def pending(self) -> int:
        return self.total - self.done - self.running


def run_progress(db: Database, *, now: datetime) -> RunProgress | None:
    """None when no job is pending or running."""
    with db.read() as conn:
        # One lookup per status walks the (status, created_at) index straight to its
        # minimum; an IN list makes Postgres walk created_at from the oldest job.
        oldest = [
            conn.execute(select(func.min(J.created_at)).where(J.status == status)).scalar_one()
            for status in ACTIVE_STATUSES
        ]
        oldest_active = min((moment for moment in oldest if moment is not None), default=None)
        if oldest_active is None:
            return None
        since = max(oldest_active, now - RUN_WINDOW)
        by_status = _created_since(conn, since)
    total = sum(by_status.values())
    done = sum(by_status.get(status, 0) for status in FINISHED_STATUSES)
    return RunProgress(
        started_at=since,
        total=total,
        done=done,
        failed=by_status.get(JobStatus.FAILED, 0),
        running=by_status.get(JobStatus.RUNNING, 0),
    )


def counts_since(db: Database, since: datetime) -> dict[str, int]:
    """Jobs created since ``since``, per status (a status with none is left out): what
    ``opsdash sync --wait`` follows."""
    with db.read() as conn:
        return _created_since(conn, since)


def _created_since(conn: Connection, since: datetime) -> dict[str, int]:
    rows = conn.execute(
        select(J.status, func.count()).where(J.created_at >= since).group_by(J.status)
    ).all()
    return {status: count for status, count in rows}


@dataclass(frozen=True)
class SyncTimes:
    last_queued_at: datetime | None
    last_finished_at: datetime | None
    next_due_at: datetime | None


def sync_times(db: Database, *, now: datetime) -> SyncTimes:
    """When work was last queued and finished, and when the next pending job is due."""
    with db.read() as conn:
        last_queued = conn.execute(select(func.max(J.created_at))).scalar_one()
        last_finished = conn.execute(
            select(func.max(J.completed_at)).where(
                J.created_at >= now - RECENT_WINDOW, J.status == JobStatus.COMPLETED
            )
        ).scalar_one()
        next_due = conn.execute(
            select(func.min(J.scheduled_at)).where(J.status == JobStatus.PENDING)
        ).scalar_one()
    return SyncTimes(last_queued, last_finished, next_due)


def ping(db: Database) -> None:
    """Raise when the database cannot be reached."""
    with db.read() as conn:
        conn.execute(text("SELECT 1"))


# --- companies and storage --------------------------------------------------------------


@dataclass(frozen=True)
class CompanyChoice:
    id: uuid.UUID
    service_company_id: str
    name: str


def company_id_of(db: Database, service_company_id: str) -> uuid.UUID | None:
    """The company's id from its upstream ``ServiceCompanyId``; None for an unknown one."""
    with db.read() as conn:
        return conn.execute(
            select(COMPANIES.c.id).where(COMPANIES.c.service_company_id == service_company_id)
        ).scalar_one_or_none()


def company_choices(db: Database) -> list[CompanyChoice]:
    with db.read() as conn:
        rows = conn.execute(
            select(COMPANIES.c.id, COMPANIES.c.service_company_id, COMPANIES.c.name)
            .order_by(COMPANIES.c.name, COMPANIES.c.service_company_id)
            .limit(COMPANIES_LIMIT)
        ).all()
    return [CompanyChoice(row.id, row.service_company_id, row.name) for row in rows]


@dataclass(frozen=True)
class CompanyStorage:
    id: uuid.UUID
    service_company_id: str
    name: str
    timezone: str
    sync_enabled: bool
    portal_enabled: bool
    days_stored: int
    total_kb: float
    last_stored_at: datetime | None
    last_synced_at: datetime | None
    latest_jobs: dict[str, int] = field(default_factory=dict)
    """Status → count over the latest job of each unit of work (company-day) recently queued."""


@dataclass(frozen=True)
class StorageTotals:
    companies: int
    days_stored: int
    total_kb: float


def _latest_job_per_unit(now: datetime) -> Any:
    """The newest job of each dedup key among recent jobs (created_at index range)."""
    ranked = (
        select(
            J.company_id,
            J.status,
            J.completed_at,
            func.row_number()
            .over(partition_by=J.dedup_key, order_by=(J.created_at.desc(), J.id.desc()))
            .label("rank"),
        )
        .where(J.created_at >= now - RECENT_WINDOW, J.company_id.is_not(None))
        .subquery()
    )
    return (
        select(
            ranked.c.company_id,
            ranked.c.status,
            func.count().label("jobs"),
            func.max(ranked.c.completed_at).label("last_completed"),
        )
        .where(ranked.c.rank == 1)
        .group_by(ranked.c.company_id, ranked.c.status)
    )


def company_storage(db: Database, *, now: datetime) -> list[CompanyStorage]:
    """One row per company: what it has stored and how its latest jobs went."""
    stored = (
        select(
            SCHEDULES.c.company_id,
            func.count().label("days"),
            func.coalesce(func.sum(SCHEDULES.c.file_size_kb), 0).label("kb"),
            func.max(SCHEDULES.c.updated_at).label("last_stored"),
        )
        .group_by(SCHEDULES.c.company_id)
        .subquery()
    )
    query = (
        select(COMPANIES, stored.c.days, stored.c.kb, stored.c.last_stored)
        .select_from(COMPANIES.outerjoin(stored, stored.c.company_id == COMPANIES.c.id))
        .order_by(COMPANIES.c.name, COMPANIES.c.service_company_id)
        .limit(COMPANIES_LIMIT)
    )
    with db.read() as conn:
        companies = conn.execute(query).all()
        latest = conn.execute(_latest_job_per_unit(now)).all()
    statuses: dict[uuid.UUID, dict[str, int]] = {}
    last_synced: dict[uuid.UUID, datetime] = {}
    for row in latest:
        statuses.setdefault(row.company_id, {})[row.status] = row.jobs
        if row.status == JobStatus.COMPLETED and row.last_completed is not None:
            last_synced[row.company_id] = row.last_completed
    return [
        CompanyStorage(
            id=row.id,
            service_company_id=row.service_company_id,
            name=row.name,
            timezone=row.timezone,
            sync_enabled=row.sync_enabled,
            portal_enabled=row.portal_enabled,
            days_stored=row.days or 0,
            total_kb=float(row.kb or 0),
            last_stored_at=row.last_stored,
            last_synced_at=last_synced.get(row.id),
            latest_jobs=statuses.get(row.id, {}),
        )
        for row in companies
    ]


def storage_totals(rows: Sequence[CompanyStorage]) -> StorageTotals:
    return StorageTotals(
        companies=len(rows),
        days_stored=sum(row.days_stored for row in rows),
        total_kb=round(sum(row.total_kb for row in rows), 2),
    )


@dataclass(frozen=True)
class StoredDay:
    date: date
    storage_path: str
    file_size_kb: float
    job_count: int
    employee_count: int
    team_count: int
    checksum: str
    status: str
    updated_at: datetime | None


def stored_days(
    db: Database, company_id: uuid.UUID, *, limit: int = STORED_DAYS_LIMIT
) -> list[StoredDay]:
    """A company's stored days, newest date first."""
    query = (
        select(SCHEDULES)
        .where(SCHEDULES.c.company_id == company_id)
        .order_by(SCHEDULES.c.date.desc())
        .limit(limit)
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [
        StoredDay(
            date=row.date,
            storage_path=row.storage_path,
            file_size_kb=row.file_size_kb,
            job_count=row.job_count,
            employee_count=row.employee_count,
            team_count=row.team_count,
            checksum=row.checksum,
            status=row.status,
            updated_at=row.updated_at,
        )
        for row in rows
    ]


@dataclass(frozen=True)
class CompanyToggles:
    id: uuid.UUID
    name: str
    service_company_id: str
    upstream: dict[str, Any]
    overrides: dict[str, Any]

    @property
    def effective(self) -> dict[str, Any]:
        """Upstream toggles with the operator's overrides on top (``privacy.effective_toggles``)."""
        return effective_toggles(self.upstream, self.overrides)


def company_toggles(db: Database, company_id: uuid.UUID) -> CompanyToggles | None:
    query = select(
        COMPANIES.c.id,
        COMPANIES.c.name,
        COMPANIES.c.service_company_id,
        COMPANIES.c.feature_toggles,
        COMPANIES.c.toggle_overrides,
    ).where(COMPANIES.c.id == company_id)
    with db.read() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return CompanyToggles(
        id=row.id,
        name=row.name,
        service_company_id=row.service_company_id,
        upstream=dict(row.feature_toggles or {}),
        overrides=dict(row.toggle_overrides or {}),
    )


# --- people -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    id: uuid.UUID
    role: str
    employee_information_id: str | None
    full_name: str | None
    email: str | None

    @property
    def label(self) -> str:
        return self.full_name or self.email or str(self.id)


def technicians(db: Database, company_id: uuid.UUID, *, limit: int = PEOPLE_LIMIT) -> list[Person]:
    """The company's technicians by name (the people the preview can impersonate)."""
    query = (
        select(
            PROFILES.c.id,
            PROFILES.c.role,
            PROFILES.c.employee_information_id,
            PROFILES.c.full_name,
            PROFILES.c.email,
        )
        .where(PROFILES.c.company_id == company_id, PROFILES.c.role == Role.TECHNICIAN)
        .order_by(PROFILES.c.full_name, PROFILES.c.email, PROFILES.c.id)
        .limit(limit)
    )
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [
        Person(row.id, row.role, row.employee_information_id, row.full_name, row.email)
        for row in rows
    ]
