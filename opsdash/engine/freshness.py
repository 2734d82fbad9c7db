"""Is each company's data fresh? The one rule, judged by the age of its stored days.

A job engine judges a company by its last job; a sync tool judges it by the age
of its data. A day's age is the time since a sync last confirmed it (changed or
not); a company is as fresh as its stalest day in the sync window (its local
today and the days after it).

States, worst first:

- **failing**: the latest attempt at some day of the window failed, or its
  stalest day is older than two cadences plus the grace;
- **late**: its stalest day is older than one cadence plus the grace;
- **frozen**: sync is off but the portal is on, so technicians see data that no
  longer updates;
- **paused**: the portal is off (nothing is synced, nothing is shown);
- **on time**: every day of the window was confirmed within one cadence (plus
  the grace a sync run needs to get round every company).

A day with no stored data yet counts from when the company was first seen, so a
company discovered minutes ago is on time until its first sync is due.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import func, select, type_coerce

from opsdash.config import Settings
from opsdash.engine.coordinator import local_days
from opsdash.engine.db import Database
from opsdash.engine.models import BackgroundJob, Company, JobStatus, JobType, ScheduleData, table_of
from opsdash.engine.sqltypes import UTCDateTime

COMPANIES = table_of(Company)
SCHEDULES = table_of(ScheduleData)
J = table_of(BackgroundJob).c

# How far back the latest attempt at a day is looked for (created_at index range).
ATTEMPT_WINDOW = timedelta(hours=24)


class Freshness(StrEnum):
    FAILING = "failing"
    LATE = "late"
    FROZEN = "frozen"
    PAUSED = "paused"
    ON_TIME = "on time"

    @property
    def severity(self) -> int:
        """Worst first: the order the console sorts by and the alerts care about."""
        return list(Freshness).index(self)

    @property
    def gauge(self) -> int:
        """The value ``opsdash_company_freshness_state`` exports (0 is healthy)."""
        return {
            Freshness.ON_TIME: 0,
            Freshness.LATE: 1,
            Freshness.FAILING: 2,
            Freshness.PAUSED: 3,
            Freshness.FROZEN: 4,
        }[self]


@dataclass(frozen=True)
class FreshnessPolicy:
    cadence: timedelta
    grace: timedelta

    @property
    def late_after(self) -> timedelta:
        return self.cadence + self.grace

    @property
    def failing_after(self) -> timedelta:
        return 2 * self.cadence + self.grace


def cron_cadence(expression: str, *, now: datetime, samples: int = 48) -> timedelta:
    """The longest gap between consecutive runs of a crontab expression.

    The longest, not the usual, gap: with ``0 8-18 * * *`` data is legitimately
    14 hours old every morning, and that must not read as late.
    """
    trigger = CronTrigger.from_crontab(expression, timezone="UTC")
    previous: datetime | None = None
    moment = now
    longest = timedelta(0)
    for _ in range(samples):
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        if previous is not None:
            longest = max(longest, fire - previous)
        previous, moment = fire, fire + timedelta(microseconds=1)
    return longest or timedelta(hours=1)


def policy(settings: Settings, *, now: datetime) -> FreshnessPolicy:
    """The thresholds in force: the configured cadence, else the sync cron's."""
    if settings.freshness_cadence_s is not None:
        cadence = timedelta(seconds=settings.freshness_cadence_s)
    else:
        cadence = cron_cadence(settings.sync_cron, now=now)
    return FreshnessPolicy(cadence=cadence, grace=timedelta(seconds=settings.freshness_grace_s))


@dataclass(frozen=True)
class DayFreshness:
    date: date
    confirmed_at: datetime | None
    """When a sync last confirmed this day's data; None when nothing is stored."""
    age: timedelta
    last_status: str | None
    """The status of the latest attempt at this day (recent history), if any."""
    last_error: str | None


@dataclass(frozen=True)
class CompanyFreshness:
    id: uuid.UUID
    service_company_id: str
    name: str
    state: Freshness
    days: tuple[DayFreshness, ...]
    oldest_age: timedelta | None
    """Age of the stalest day of the window; None for a company outside the window's rule."""
    last_success_at: datetime | None

    @property
    def failed_days(self) -> list[date]:
        return [day.date for day in self.days if day.last_status == JobStatus.FAILED]


@dataclass(frozen=True)
class _CompanyFacts:
    id: uuid.UUID
    service_company_id: str
    name: str
    timezone: str
    sync_enabled: bool
    portal_enabled: bool
    created_at: datetime | None


def judge(
    facts: _CompanyFacts,
    days: Sequence[DayFreshness],
    policy: FreshnessPolicy,
) -> Freshness:
    """The rule itself, free of the database so it is easy to read and to test."""
    if not facts.portal_enabled:
        return Freshness.PAUSED
    if not facts.sync_enabled:
        return Freshness.FROZEN
    oldest = max((day.age for day in days), default=timedelta(0))
    if any(day.last_status == JobStatus.FAILED for day in days):
        return Freshness.FAILING
    if oldest > policy.failing_after:
        return Freshness.FAILING
    if oldest > policy.late_after:
        return Freshness.LATE
    return Freshness.ON_TIME


def company_freshness(
    db: Database,
    *,
    now: datetime,
    policy: FreshnessPolicy,
    days_ahead: int,
    company_id: uuid.UUID | None = None,
) -> list[CompanyFreshness]:
    """Every company's freshness (or one company's), in three indexed reads."""
    companies = _companies(db, company_id)
    if not companies:
        return []
    windows = {facts.id: local_days(facts.timezone, now, days_ahead) for facts in companies}
    first_day = min(day for days in windows.values() for day in days)
    confirmed = _confirmed(db, first_day, company_id)
    attempts = _latest_attempts(db, now, first_day, company_id)
    result = []
    for facts in companies:
        days = tuple(
            _day(facts, day, confirmed.get((facts.id, day)), attempts.get((facts.id, day)), now)
            for day in windows[facts.id]
        )
        state = judge(facts, days, policy)
        successes = [day.confirmed_at for day in days if day.confirmed_at is not None]
        result.append(
            CompanyFreshness(
                id=facts.id,
                service_company_id=facts.service_company_id,
                name=facts.name,
                state=state,
                days=days,
                oldest_age=max(day.age for day in days) if days else None,
                last_success_at=max(successes, default=None),
            )
        )
    return result


def configured(
    db: Database, settings: Settings, *, now: datetime, company_id: uuid.UUID | None = None
) -> list[CompanyFreshness]:
    """``company_freshness`` with the thresholds and window the settings give."""
    return company_freshness(
        db,
        now=now,
        policy=policy(settings, now=now),
        days_ahead=settings.days_ahead,
        company_id=company_id,
    )


def summary(rows: Iterable[CompanyFreshness]) -> Counter[Freshness]:
    return Counter(row.state for row in rows)


# The healthy count first, then what needs a look, as people read a summary.
SUMMARY_ORDER = (
    Freshness.ON_TIME,
    Freshness.LATE,
    Freshness.FAILING,
    Freshness.FROZEN,
    Freshness.PAUSED,
)


def summary_line(counts: Counter[Freshness]) -> str:
    """ "41 on time · 2 late · 1 failing": the states present."""
    parts = [f"{counts[state]} {state.value}" for state in SUMMARY_ORDER if counts[state]]
    return " · ".join(parts) if parts else "no companies"


# --- reads -----------------------------------------------------------------------------


def _companies(db: Database, company_id: uuid.UUID | None) -> list[_CompanyFacts]:
    c = COMPANIES.c
    query = select(
        c.id,
        c.service_company_id,
        c.name,
        c.timezone,
        c.sync_enabled,
        c.portal_enabled,
        c.created_at,
    ).order_by(c.name, c.service_company_id)
    if company_id is not None:
        query = query.where(c.id == company_id)
    with db.read() as conn:
        rows = conn.execute(query).all()
    return [_CompanyFacts(*row) for row in rows]


def _confirmed(
    db: Database, first_day: date, company_id: uuid.UUID | None
) -> dict[tuple[uuid.UUID, date], datetime | None]:
    s = SCHEDULES.c
    # A day is confirmed when its content last changed (updated_at) or when a later
    # sync found it unchanged (synced_at), whichever is newer.
    confirmed = type_coerce(
        db.greatest(
            func.coalesce(s.synced_at, s.updated_at), func.coalesce(s.updated_at, s.synced_at)
        ),
        UTCDateTime(),
    )
    query = select(s.company_id, s.date, confirmed.label("confirmed")).where(s.date >= first_day)
    if company_id is not None:
        query = query.where(s.company_id == company_id)
    with db.read() as conn:
        rows = conn.execute(query).all()
    return {(row.company_id, row.date): row.confirmed for row in rows}


@dataclass(frozen=True)
class _Attempt:
    status: str
    error: str | None


def _latest_attempts(
    db: Database, now: datetime, first_day: date, company_id: uuid.UUID | None
) -> dict[tuple[uuid.UUID, date], _Attempt]:
    """The newest schedule job of each company-day queued in the recent window."""
    day = J.params["date"].as_string()
    ranked = select(
        J.company_id,
        day.label("day"),
        J.status,
        J.error_message,
        func.row_number()
        .over(partition_by=(J.company_id, day), order_by=(J.created_at.desc(), J.id.desc()))
        .label("rank"),
    ).where(
        J.created_at >= now - ATTEMPT_WINDOW,
        J.job_type == JobType.SYNC_SCHEDULE,
        J.status != JobStatus.CANCELLED,
    )
    if company_id is not None:
        ranked = ranked.where(J.company_id == company_id)
    subquery = ranked.subquery()
    query = select(
        subquery.c.company_id, subquery.c.day, subquery.c.status, subquery.c.error_message
    )
    query = query.where(subquery.c.rank == 1)
    attempts: dict[tuple[uuid.UUID, date], _Attempt] = {}
    with db.read() as conn:
        for row in conn.execute(query):
            try:
                when = date.fromisoformat(row.day)
            except (TypeError, ValueError):
                continue  # a hand-queued job with an odd date says nothing about a window day
            if when >= first_day:
                attempts[(row.company_id, when)] = _Attempt(row.status, row.error_message)
    return attempts


def _day(
    facts: _CompanyFacts,
    day: date,
    confirmed_at: datetime | None,
    attempt: _Attempt | None,
    now: datetime,
) -> DayFreshness:
    reference = confirmed_at or facts.created_at or now
    return DayFreshness(
        date=day,
        confirmed_at=confirmed_at,
        age=max(timedelta(0), now - reference),
        last_status=attempt.status if attempt else None,
        last_error=attempt.error if attempt and attempt.status == JobStatus.FAILED else None,
    )
