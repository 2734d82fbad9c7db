"""The console's read queries and operator writes on companies, on SQLite and Postgres."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from opsdash import privacy
from opsdash.engine import companies, queries
from opsdash.engine.db import Database
from opsdash.engine.models import (
    BackgroundJob,
    Company,
    JobStat,
    JobStatus,
    JobType,
    ScheduleData,
    UserProfile,
)
from opsdash.engine.queries import JobFilter

NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)


def add(db: Database, *rows: Any) -> None:
    with db.session() as session:
        session.add_all(rows)
        session.commit()


def company(name: str, service_id: str, **values: Any) -> Company:
    return Company(name=name, service_company_id=service_id, **values)


def job(
    owner: Company | None,
    day: str | None = None,
    *,
    status: str = JobStatus.COMPLETED,
    created: datetime = NOW,
    completed: datetime | None = None,
    error: str | None = None,
    **values: Any,
) -> BackgroundJob:
    kind = JobType.SYNC_SCHEDULE if owner is not None else JobType.SYNC_USERS
    key = f"{kind}:{owner.id}:{day}" if owner is not None else str(kind)
    finished = status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
    return BackgroundJob(
        job_type=kind,
        company_id=owner.id if owner is not None else None,
        status=status,
        params={"date": day} if day else {},
        dedup_key=key,
        created_at=created,
        scheduled_at=created,
        completed_at=completed or (created + timedelta(seconds=2) if finished else None),
        error_message=error,
        **values,
    )


@pytest.fixture
def two_companies(db: Database) -> tuple[Company, Company]:
    acme = company("Acme Cleaning", "1001", timezone="America/New_York")
    bright = company("Bright Homes", "1002", sync_enabled=False)
    add(db, acme, bright)
    return acme, bright


# --- jobs ------------------------------------------------------------------------------


def test_jobs_page_is_newest_first_and_limited(db: Database, two_companies) -> None:
    acme, _ = two_companies
    add(
        db,
        *[job(acme, f"2026-12-{d:02d}", created=NOW - timedelta(minutes=d)) for d in range(1, 11)],
    )
    page = queries.jobs_page(db, limit=4)
    assert [row.day for row in page] == ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
    assert page[0].company_name == "Acme Cleaning"
    assert page[0].created_at == NOW - timedelta(minutes=1)


def test_jobs_page_filters_by_status_type_company_and_search(db: Database, two_companies) -> None:
    acme, bright = two_companies
    add(
        db,
        job(None, created=NOW - timedelta(minutes=5)),
        job(acme, "2026-12-01", status=JobStatus.FAILED, error="HTTP 500 from upstream"),
        job(acme, "2026-12-02", status=JobStatus.PENDING),
        job(bright, "2026-12-01"),
    )

    def days(job_filter: JobFilter) -> set[tuple[str | None, str]]:
        return {(row.day, row.status) for row in queries.jobs_page(db, job_filter)}

    assert days(JobFilter(status=JobStatus.FAILED)) == {("2026-12-01", "failed")}
    assert days(JobFilter(job_type=JobType.SYNC_USERS)) == {(None, "completed")}
    assert days(JobFilter(company_id=bright.id)) == {("2026-12-01", "completed")}
    assert days(JobFilter(search="bright")) == {("2026-12-01", "completed")}
    assert days(JobFilter(search="http 500")) == {("2026-12-01", "failed")}
    assert days(JobFilter(search="2026-12-02")) == {("2026-12-02", "pending")}
    assert days(JobFilter(search="no such thing")) == set()


def test_job_detail_has_the_error_history(db: Database, two_companies) -> None:
    acme, _ = two_companies
    history = [{"attempt": 1, "at": NOW.isoformat(), "worker": "w1", "message": "boom"}]
    failed = job(acme, "2026-12-01", status=JobStatus.FAILED, errors=history, attempts=1)
    add(db, failed)
    detail = queries.job_detail(db, failed.id)
    assert detail is not None
    assert detail.company_name == "Acme Cleaning"
    assert detail.errors == history
    assert detail.params == {"date": "2026-12-01"}
    assert queries.job_detail(db, uuid.uuid4()) is None


def test_failed_job_ids_match_the_filter_but_only_failed(db: Database, two_companies) -> None:
    acme, bright = two_companies
    acme_failed = job(acme, "2026-12-01", status=JobStatus.FAILED)
    bright_failed = job(bright, "2026-12-01", status=JobStatus.FAILED)
    add(db, acme_failed, bright_failed, job(acme, "2026-12-02"))
    assert set(queries.failed_job_ids(db)) == {acme_failed.id, bright_failed.id}
    assert queries.failed_job_ids(db, JobFilter(search="Acme")) == [acme_failed.id]
    assert queries.failed_job_ids(db, JobFilter(status=JobStatus.COMPLETED)) != []


# --- counts, throughput, progress ------------------------------------------------------


def test_status_counts_keep_old_active_jobs_and_drop_old_finished_ones(
    db: Database, two_companies
) -> None:
    acme, _ = two_companies
    long_ago = NOW - timedelta(days=3)
    add(
        db,
        job(acme, "2026-12-01", status=JobStatus.PENDING, created=long_ago),
        job(acme, "2026-12-02", created=long_ago),
        job(acme, "2026-12-03"),
        job(acme, "2026-12-04", status=JobStatus.FAILED),
    )
    counts = queries.status_counts(db, now=NOW)
    assert counts == {"pending": 1, "running": 0, "completed": 1, "failed": 1, "cancelled": 0}


def test_throughput_adds_rolled_up_stats_to_live_jobs(db: Database, two_companies) -> None:
    acme, _ = two_companies
    hour = NOW.replace(minute=0)
    add(
        db,
        JobStat(
            hour=hour - timedelta(hours=2), job_type="sync_schedule", status="completed", count=5
        ),
        JobStat(hour=hour - timedelta(hours=2), job_type="sync_schedule", status="failed", count=1),
        JobStat(
            hour=hour - timedelta(hours=30), job_type="sync_schedule", status="completed", count=9
        ),
        job(acme, "2026-12-01", created=NOW - timedelta(minutes=20)),
        job(acme, "2026-12-02", status=JobStatus.FAILED, created=NOW - timedelta(minutes=20)),
        job(acme, "2026-12-03", status=JobStatus.PENDING),
    )
    result = queries.throughput(db, now=NOW, hours=6)
    assert result.hours[-1] == hour
    assert len(result.finished) == 6
    assert result.finished == [0, 0, 0, 6, 0, 2]
    assert result.failed == [0, 0, 0, 1, 0, 1]


def test_run_progress_counts_the_run_in_flight(db: Database, two_companies) -> None:
    acme, _ = two_companies
    assert queries.run_progress(db, now=NOW) is None
    start = NOW - timedelta(minutes=1)
    add(
        db,
        job(acme, "2026-11-01", created=NOW - timedelta(hours=2)),  # an earlier run
        job(acme, "2026-12-01", status=JobStatus.PENDING, created=start),
        job(acme, "2026-12-02", status=JobStatus.RUNNING, created=start),
        job(acme, "2026-12-03", created=start),
        job(acme, "2026-12-04", status=JobStatus.FAILED, created=start),
    )
    progress = queries.run_progress(db, now=NOW)
    assert progress is not None
    assert (progress.total, progress.done, progress.failed, progress.running) == (4, 2, 1, 1)
    assert progress.pending == 1


def test_counts_since_follow_the_jobs_created_since(db: Database, two_companies) -> None:
    acme, _ = two_companies
    start = NOW - timedelta(minutes=1)
    assert queries.counts_since(db, start) == {}
    add(
        db,
        job(acme, "2026-11-01", created=NOW - timedelta(hours=2)),  # before: not counted
        job(acme, "2026-12-01", status=JobStatus.PENDING, created=start),
        job(acme, "2026-12-02", created=start),
        job(acme, "2026-12-03", created=NOW),
        job(acme, "2026-12-04", status=JobStatus.FAILED, created=NOW),
    )
    assert queries.counts_since(db, start) == {"pending": 1, "completed": 2, "failed": 1}


def test_sync_times_come_from_the_database(db: Database, two_companies) -> None:
    acme, _ = two_companies
    assert queries.sync_times(db, now=NOW) == queries.SyncTimes(None, None, None)
    add(
        db,
        job(acme, "2026-12-01", created=NOW - timedelta(minutes=10)),
        job(acme, "2026-12-02", status=JobStatus.PENDING, created=NOW - timedelta(minutes=5)),
    )
    times = queries.sync_times(db, now=NOW)
    assert times.last_queued_at == NOW - timedelta(minutes=5)
    assert times.last_finished_at == NOW - timedelta(minutes=10) + timedelta(seconds=2)
    assert times.next_due_at == NOW - timedelta(minutes=5)
    queries.ping(db)


# --- companies and storage -------------------------------------------------------------


def stored(owner: Company, day: date, kb: float, **values: Any) -> ScheduleData:
    return ScheduleData(
        company_id=owner.id,
        date=day,
        storage_path=f"{owner.service_company_id}/{day}/schedule.json",
        file_size_kb=kb,
        checksum="ab" * 32,
        job_count=30,
        employee_count=8,
        team_count=3,
        updated_at=NOW - timedelta(hours=1),
        **values,
    )


def test_company_storage_rows_and_totals(db: Database, two_companies) -> None:
    acme, _ = two_companies
    add(
        db,
        stored(acme, date(2026, 12, 1), 40.5),
        stored(acme, date(2026, 12, 2), 50.25),
        # The older attempt of 12-01 failed, the newer one completed: only the newer counts.
        job(acme, "2026-12-01", status=JobStatus.FAILED, created=NOW - timedelta(hours=1)),
        job(acme, "2026-12-01", created=NOW - timedelta(minutes=5)),
        job(acme, "2026-12-02", status=JobStatus.PENDING, created=NOW - timedelta(minutes=5)),
        job(acme, "2026-11-01", status=JobStatus.FAILED, created=NOW - timedelta(days=3)),
    )
    rows = {row.service_company_id: row for row in queries.company_storage(db, now=NOW)}
    assert list(rows) == ["1001", "1002"]
    assert rows["1001"].days_stored == 2
    assert rows["1001"].total_kb == pytest.approx(90.75)
    assert rows["1001"].latest_jobs == {"completed": 1, "pending": 1}
    assert rows["1001"].last_synced_at == NOW - timedelta(minutes=5) + timedelta(seconds=2)
    assert rows["1001"].timezone == "America/New_York"
    assert rows["1002"].days_stored == 0 and rows["1002"].latest_jobs == {}
    assert rows["1002"].sync_enabled is False
    totals = queries.storage_totals(list(rows.values()))
    assert totals == queries.StorageTotals(companies=2, days_stored=2, total_kb=90.75)


def test_stored_days_newest_first_and_bounded(db: Database, two_companies) -> None:
    acme, bright = two_companies
    add(db, *[stored(acme, date(2026, 12, d), 10 + d) for d in range(1, 6)])
    days = queries.stored_days(db, acme.id, limit=3)
    assert [day.date.day for day in days] == [5, 4, 3]
    assert days[0].storage_path == "1001/2026-12-05/schedule.json"
    assert [day.file_size_kb for day in days] == [15, 14, 13]
    assert queries.stored_days(db, bright.id) == []


def test_technicians_are_listed_by_name(db: Database, two_companies) -> None:
    acme, bright = two_companies

    def profile(owner: Company, role: str, name: str, employee: str | None) -> UserProfile:
        return UserProfile(
            id=uuid.uuid4(),
            company_id=owner.id,
            role=role,
            full_name=name,
            employee_information_id=employee,
        )

    add(
        db,
        profile(acme, "technician", "Zoe Tech", "20"),
        profile(acme, "technician", "Adam Tech", "10"),
        profile(acme, "office", "Olive Office", None),
        profile(bright, "technician", "Other Company", "30"),
    )
    people = queries.technicians(db, acme.id)
    assert [(p.label, p.employee_information_id) for p in people] == [
        ("Adam Tech", "10"),
        ("Zoe Tech", "20"),
    ]


def test_company_choices_by_name(db: Database, two_companies) -> None:
    assert [c.name for c in queries.company_choices(db)] == ["Acme Cleaning", "Bright Homes"]


def test_company_id_of_a_service_company_id(db: Database, two_companies) -> None:
    acme, bright = two_companies
    assert queries.company_id_of(db, "1001") == acme.id
    assert queries.company_id_of(db, "1002") == bright.id
    assert queries.company_id_of(db, "9999") is None


# --- operator writes on companies ------------------------------------------------------


def test_toggle_sync_enabled_flips_and_reports_the_new_value(db: Database, two_companies) -> None:
    acme, _ = two_companies
    assert companies.toggle_sync_enabled(db, acme.id) is False
    assert companies.toggle_sync_enabled(db, acme.id) is True
    companies.set_sync_enabled(db, acme.id, False)
    assert queries.company_storage(db, now=NOW)[0].sync_enabled is False
    with pytest.raises(companies.UnknownCompany):
        companies.toggle_sync_enabled(db, uuid.uuid4())


def test_toggle_overrides_are_saved_and_layered_over_upstream(db: Database) -> None:
    upstream = {"TechDashboard_DisplayBillRate": True, "TechDashboard_HideDiscounts": True}
    owner = company("Acme", "1001", feature_toggles=upstream)
    add(db, owner)
    wanted = {
        "TechDashboard_DisplayBillRate": False,  # differs: an override
        "TechDashboard_HideDiscounts": True,  # same as upstream: no override
        "TechDashboard_DisplayCustomerEmails": False,  # missing upstream reads off: no override
        "TechDashboard_DisplayRoomRate": True,  # missing upstream, wanted on: an override
    }
    overrides = companies.overrides_for(upstream, wanted)
    assert overrides == {
        "TechDashboard_DisplayBillRate": False,
        "TechDashboard_DisplayRoomRate": True,
    }
    overrides.pop("TechDashboard_DisplayRoomRate")
    companies.set_toggle_overrides(db, owner.id, overrides)
    toggles = queries.company_toggles(db, owner.id)
    assert toggles is not None
    assert toggles.overrides == {"TechDashboard_DisplayBillRate": False}
    assert toggles.effective["TechDashboard_DisplayBillRate"] is False
    assert toggles.effective["TechDashboard_HideDiscounts"] is True
    with db.session() as session:
        assert session.get(Company, owner.id).effective_toggles() == toggles.effective
    companies.set_toggle_overrides(db, owner.id, {})
    assert queries.company_toggles(db, owner.id).overrides == {}
    assert queries.company_toggles(db, uuid.uuid4()) is None
    with pytest.raises(companies.UnknownCompany):
        companies.set_toggle_overrides(db, uuid.uuid4(), {})


# --- bounded: the refresh queries walk indexes, never the whole jobs table ----------------


def test_refresh_queries_never_scan_the_whole_jobs_table(db: Database, two_companies) -> None:
    acme, _ = two_companies
    add(db, job(acme, "2026-12-01"), stored(acme, date(2026, 12, 1), 10))
    statements: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "background_jobs" in statement:
            statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        queries.jobs_page(db)
        queries.jobs_page(db, JobFilter(status="failed", search="acme"))
        queries.status_counts(db, now=NOW)
        queries.throughput(db, now=NOW)
        queries.run_progress(db, now=NOW)
        queries.counts_since(db, NOW - timedelta(minutes=1))
        queries.sync_times(db, now=NOW)
        queries.company_storage(db, now=NOW)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert len(statements) >= 10
    with db.engine.connect() as conn:
        if db.is_postgres:
            # On a tiny table Postgres prefers a sequential scan; forbidding it shows
            # whether an index could serve the query at all.
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            if db.is_postgres:
                plan = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars().all()
                full_scans = [line for line in plan if "Seq Scan on background_jobs" in line]
                assert not full_scans, f"{statement}\n" + "\n".join(plan)
                continue
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            details = [row[-1] for row in plan]
            full_scans = [d for d in details if re.fullmatch(r"SCAN background_jobs( AS \w+)?", d)]
            assert not full_scans, f"{statement}\n{details}"


def test_discounts_can_be_shown_when_the_upstream_omits_the_hide_toggle() -> None:
    """A missing HideDiscounts reads as hidden; switching it off must actually show them."""
    upstream: dict[str, object] = {}
    assert privacy.toggle_reading(upstream, privacy.HIDE_DISCOUNTS) is True
    overrides = companies.overrides_for(upstream, {privacy.HIDE_DISCOUNTS: False})
    assert overrides == {privacy.HIDE_DISCOUNTS: False}
    effective = {**upstream, **overrides}
    assert privacy.toggle_reading(effective, privacy.HIDE_DISCOUNTS) is False
    job = {
        "jobId": "1",
        "discounts": [{"description": "x", "amount": 5}],
        "employeeSchedules": [{"EmployeeInformationId": "E1"}],
    }
    document = {"companyId": "c", "jobs": [job], "employees": [], "teams": []}

    def technician_view(toggles: dict[str, object]) -> dict:
        return privacy.schedule_view(
            document, role="technician", employee_id="E1", toggles=toggles, company_id="c"
        )

    assert "discounts" not in technician_view(upstream)["jobs"][0]
    assert technician_view(effective)["jobs"][0]["discounts"]
