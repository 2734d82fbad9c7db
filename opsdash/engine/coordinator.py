"""Plans sync runs: which jobs to queue, with dates in each company's own time zone."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select

from opsdash.engine import ledger, queue
from opsdash.engine.db import Database
from opsdash.engine.models import Company, table_of
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.coordinator")


@dataclass(frozen=True)
class SyncRun:
    planned: int
    queued: int
    took_ms: float
    run_id: uuid.UUID | None = None


def company_zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone %r; using UTC", name)
        return ZoneInfo("UTC")


def local_days(timezone: str | None, now: datetime, days_ahead: int) -> list[date]:
    """The company's own today and the days after it, ``days_ahead`` in all."""
    today = now.astimezone(company_zone(timezone)).date()
    return [today + timedelta(days=offset) for offset in range(days_ahead)]


def in_run(jobs: Sequence[queue.NewJob], run_id: str) -> list[queue.NewJob]:
    """``jobs`` tagged with a run's id (``params.run``), so the ledger can sum them up later."""
    return [dataclasses.replace(job, params={**job.params, "run": run_id}) for job in jobs]


def schedule_jobs_for(
    companies: Sequence[Company | SyncTarget], *, now: datetime, days_ahead: int, max_attempts: int
) -> list[queue.NewJob]:
    return [
        queue.schedule_job(
            company.id,
            day.isoformat(),
            max_attempts=max_attempts,
            service_company_id=company.service_company_id,
        )
        for company in companies
        for day in local_days(company.timezone, now, days_ahead)
    ]


@dataclass(frozen=True)
class SyncTarget:
    id: uuid.UUID
    service_company_id: str
    timezone: str


def syncable_companies(db: Database, company_id: uuid.UUID | None = None) -> list[SyncTarget]:
    """Enabled companies: only the two columns planning needs (thousands of rows, hourly)."""
    companies = table_of(Company).c
    query = select(companies.id, companies.service_company_id, companies.timezone).where(
        companies.sync_enabled, companies.portal_enabled
    )
    if company_id is not None:
        query = query.where(companies.id == company_id)
    with db.read() as conn:
        rows = conn.execute(query.order_by(companies.service_company_id)).all()
    return [SyncTarget(row.id, row.service_company_id, row.timezone) for row in rows]


def plan_and_enqueue(
    db: Database,
    *,
    days_ahead: int,
    max_attempts: int = 3,
    company_id: uuid.UUID | None = None,
    day: date | None = None,
    include_users: bool = True,
    expedite: bool = False,
    now: datetime | None = None,
    trigger: str = "scheduled",
) -> SyncRun:
    """Queue one sync run: the users job plus a schedule job per enabled company-day.

    Narrowed to one company and/or one day for an operator's resync. Queued in
    one statement; jobs already pending are not queued again, and with
    ``expedite`` (an operator asking now) they are made due at once.
    """
    started = time.perf_counter()
    now = now or utcnow()
    companies = syncable_companies(db, company_id)
    if day is not None:
        jobs = [
            queue.schedule_job(
                company.id,
                day.isoformat(),
                max_attempts=max_attempts,
                service_company_id=company.service_company_id,
            )
            for company in companies
        ]
    else:
        jobs = schedule_jobs_for(
            companies, now=now, days_ahead=days_ahead, max_attempts=max_attempts
        )
    if include_users:
        jobs.insert(0, queue.users_job(max_attempts=max_attempts))
    run_id = uuid.uuid4()
    jobs = in_run(jobs, str(run_id))
    queued = queue.enqueue(db, jobs, now=now)
    if expedite and queued < len(jobs):
        queue.expedite(db, [job.dedup_key for job in jobs], now=now)
    ledger.record_run(
        db,
        run_id,
        trigger=trigger,
        scope=_scope([c.service_company_id for c in companies] if company_id else None, day),
        planned=len(jobs),
        queued=queued,
        queued_at=now,
    )
    took_ms = (time.perf_counter() - started) * 1000
    log.info("sync run planned: %d jobs, %d queued in %.0f ms", len(jobs), queued, took_ms)
    return SyncRun(planned=len(jobs), queued=queued, took_ms=took_ms, run_id=run_id)


def _scope(service_ids: list[str] | None, day: date | None) -> str:
    """How the console's history names a run: "all companies", "company 1005, 2026-12-01"."""
    parts = ["all companies" if service_ids is None else f"company {', '.join(service_ids)}"]
    if day is not None:
        parts.append(day.isoformat())
    return ", ".join(parts)
