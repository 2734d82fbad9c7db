"""The freshness rule on fixed clocks, on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from opsdash.engine.db import Database
from opsdash.engine.freshness import (
    Freshness,
    FreshnessPolicy,
    company_freshness,
    cron_cadence,
    summary,
    summary_line,
)
from opsdash.engine.models import BackgroundJob, Company, JobStatus, JobType, ScheduleData

NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
TODAY = date(2026, 11, 28)
POLICY = FreshnessPolicy(cadence=timedelta(hours=1), grace=timedelta(minutes=15))
DAYS = 3


def add(db: Database, *rows: Any) -> None:
    with db.session() as session:
        session.add_all(rows)
        session.commit()


def company(name: str, service_id: str, **values: Any) -> Company:
    values.setdefault("created_at", NOW - timedelta(days=30))
    values.setdefault("timezone", "UTC")
    return Company(name=name, service_company_id=service_id, **values)


def stored(
    owner: Company, day: date, *, changed: datetime, synced: datetime | None
) -> ScheduleData:
    return ScheduleData(
        company_id=owner.id,
        date=day,
        storage_path=f"{owner.service_company_id}/{day}/schedule.json",
        file_size_kb=1.0,
        checksum="0" * 64,
        updated_at=changed,
        synced_at=synced,
    )


def window(
    owner: Company, *, synced: datetime, changed: datetime | None = None
) -> list[ScheduleData]:
    return [
        stored(owner, TODAY + timedelta(days=n), changed=changed or synced, synced=synced)
        for n in range(DAYS)
    ]


def attempt(
    owner: Company, day: date, status: str, *, created: datetime, error: str = ""
) -> BackgroundJob:
    return BackgroundJob(
        job_type=JobType.SYNC_SCHEDULE,
        company_id=owner.id,
        status=status,
        params={"date": day.isoformat(), "company": owner.service_company_id},
        created_at=created,
        scheduled_at=created,
        completed_at=created + timedelta(seconds=2),
        error_message=error or None,
    )


def states(db: Database, now: datetime = NOW) -> dict[str, Freshness]:
    rows = company_freshness(db, now=now, policy=POLICY, days_ahead=DAYS)
    return {row.service_company_id: row.state for row in rows}


def test_each_state_from_the_age_of_stored_days(db: Database) -> None:
    fresh = company("Fresh", "1")
    late = company("Late", "2")
    stale = company("Stale", "3")
    unchanged = company("Unchanged", "4")
    frozen = company("Frozen", "5", sync_enabled=False)
    paused = company("Paused", "6", sync_enabled=False, portal_enabled=False)
    add(db, fresh, late, stale, unchanged, frozen, paused)
    add(
        db,
        *window(fresh, synced=NOW - timedelta(minutes=40)),
        *window(late, synced=NOW - timedelta(minutes=90)),
        *window(stale, synced=NOW - timedelta(hours=3)),
        # Content unchanged for a week, confirmed by a sync ten minutes ago: fresh.
        *window(unchanged, changed=NOW - timedelta(days=7), synced=NOW - timedelta(minutes=10)),
        *window(frozen, synced=NOW - timedelta(days=2)),
    )
    assert states(db) == {
        "1": Freshness.ON_TIME,
        "2": Freshness.LATE,
        "3": Freshness.FAILING,
        "4": Freshness.ON_TIME,
        "5": Freshness.FROZEN,
        "6": Freshness.PAUSED,
    }


def test_one_stale_or_missing_day_makes_the_company_late(db: Database) -> None:
    gap = company("Gap", "1")
    new = company("New", "2", created_at=NOW - timedelta(minutes=5))
    add(db, gap, new)
    rows = window(gap, synced=NOW - timedelta(minutes=5))[:-1]
    add(db, *rows)
    # The missing day counts from when the company was first seen (30 days ago);
    # a company seen 5 minutes ago is not yet due.
    assert states(db) == {"1": Freshness.FAILING, "2": Freshness.ON_TIME}
    gap_row = next(r for r in company_freshness(db, now=NOW, policy=POLICY, days_ahead=DAYS))
    assert [day.confirmed_at is None for day in gap_row.days] == [False, False, True]


def test_a_failed_latest_attempt_makes_the_company_failing_until_a_retry_succeeds(
    db: Database,
) -> None:
    acme = company("Acme", "1")
    add(db, acme, *window(acme, synced=NOW - timedelta(minutes=20)))
    failed_day = TODAY + timedelta(days=1)
    add(
        db,
        attempt(
            acme,
            failed_day,
            JobStatus.FAILED,
            created=NOW - timedelta(minutes=10),
            error="HTTP 500",
        ),
    )
    (row,) = company_freshness(db, now=NOW, policy=POLICY, days_ahead=DAYS)
    assert row.state == Freshness.FAILING
    assert row.failed_days == [failed_day]
    assert row.days[1].last_error == "HTTP 500"

    add(db, attempt(acme, failed_day, JobStatus.COMPLETED, created=NOW - timedelta(minutes=5)))
    assert states(db) == {"1": Freshness.ON_TIME}


def test_ages_and_last_success_are_exact(db: Database) -> None:
    acme = company("Acme", "1")
    add(db, acme)
    add(
        db,
        stored(acme, TODAY, changed=NOW - timedelta(hours=5), synced=NOW - timedelta(minutes=30)),
        stored(acme, TODAY + timedelta(days=1), changed=NOW - timedelta(minutes=50), synced=None),
        stored(acme, TODAY + timedelta(days=2), changed=NOW - timedelta(minutes=7), synced=None),
    )
    (row,) = company_freshness(db, now=NOW, policy=POLICY, days_ahead=DAYS)
    assert [day.age for day in row.days] == [
        timedelta(minutes=30),
        timedelta(minutes=50),
        timedelta(minutes=7),
    ]
    assert row.oldest_age == timedelta(minutes=50)
    assert row.last_success_at == NOW - timedelta(minutes=7)


def test_the_window_follows_the_company_time_zone(db: Database) -> None:
    # 12:30 UTC on the 28th is already the 29th in Kiritimati (UTC+14).
    ahead = company("Ahead", "1", timezone="Pacific/Kiritimati")
    add(db, ahead)
    (row,) = company_freshness(db, now=NOW, policy=POLICY, days_ahead=DAYS)
    assert row.days[0].date == date(2026, 11, 29)


def test_summary_line_counts_states() -> None:
    counts = summary([])
    assert summary_line(counts) == "no companies"
    counts.update([Freshness.ON_TIME] * 41 + [Freshness.LATE] * 2 + [Freshness.FAILING])
    assert summary_line(counts) == "41 on time · 2 late · 1 failing"


@pytest.mark.parametrize(
    ("expression", "cadence"),
    [
        ("0 * * * *", timedelta(hours=1)),
        ("*/15 * * * *", timedelta(minutes=15)),
        ("0 8-18 * * *", timedelta(hours=14)),
    ],
)
def test_cadence_is_the_longest_gap_of_the_cron(expression: str, cadence: timedelta) -> None:
    assert cron_cadence(expression, now=NOW) == cadence
