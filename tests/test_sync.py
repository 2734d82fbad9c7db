"""The engine end to end: coordinator → queue → workers → demo upstream over HTTP → blobs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, date, datetime

import orjson
import psycopg
import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.engine import coordinator
from opsdash.engine.models import BackgroundJob, Company, JobStatus, ScheduleData, UserProfile
from opsdash.engine.runtime import Engine
from tests.conftest import count_rows
from tests.waiting import wait_until

DAYS = 7


def stored_rows(engine: Engine) -> list[ScheduleData]:
    with engine.db.session() as session:
        return list(session.execute(select(ScheduleData)).scalars())


def jobs(engine: Engine) -> list[BackgroundJob]:
    with engine.db.session() as session:
        return list(session.execute(select(BackgroundJob)).scalars())


def run_to_idle(engine: Engine) -> None:
    engine.start(scheduler=False)
    assert engine.wait_idle(timeout_s=60), "sync did not finish"


def test_first_sync_stores_every_company_day_with_one_call_per_company(engine: Engine) -> None:
    engine.sync()
    run_to_idle(engine)
    rows = stored_rows(engine)
    assert len(rows) == 3 * DAYS
    assert all(job.status == JobStatus.COMPLETED for job in jobs(engine))
    assert engine.upstream.calls == 3 + 1
    for row in rows:
        body = engine.blobs.get(row.storage_path)
        assert hashlib.sha256(body).hexdigest() == row.checksum
        document = orjson.loads(body)
        assert len(document["jobs"]) == row.job_count
        assert 20 <= row.job_count <= 60
        assert row.file_size_kb == round(len(body) / 1024, 2)
    assert count_rows(engine.db, "user_profiles") > 0
    with engine.db.session() as session:
        zones = {c.timezone for c in session.execute(select(Company)).scalars()}
        roles = {p.role for p in session.execute(select(UserProfile)).scalars()}
    assert zones == {"America/New_York", "America/Los_Angeles", "America/Chicago"}
    assert roles == {"admin", "office", "technician"}


def test_unchanged_day_is_not_rewritten_and_changed_day_is(engine: Engine, demo_upstream) -> None:
    engine.sync()
    run_to_idle(engine)
    before = {row.storage_path: (row.checksum, row.updated_at) for row in stored_rows(engine)}
    paths_before = {(row.company_id, row.date): row.storage_path for row in stored_rows(engine)}
    engine.sync()
    assert engine.wait_idle(timeout_s=60)
    unchanged = [
        job.result["unchanged"] for job in jobs(engine) if "unchanged" in (job.result or {})
    ]
    assert unchanged.count(True) == 3 * DAYS
    assert {r.storage_path: (r.checksum, r.updated_at) for r in stored_rows(engine)} == before

    demo_upstream.faults.revision = 1
    engine.sync()
    assert engine.wait_idle(timeout_s=60)
    after = {(row.company_id, row.date): row for row in stored_rows(engine)}
    changed = [key for key, row in after.items() if row.storage_path != paths_before.get(key)]
    assert changed, "a new upstream revision should change some documents"
    # Content-addressed: a changed day is a new file; the superseded one is removed.
    for key in changed:
        assert engine.blobs.get(after[key].storage_path)
    stored = {info.path for info in engine.blobs.list_blobs()}
    assert stored == {r.storage_path for r in after.values()}


def test_failing_company_does_not_affect_the_others(engine: Engine, demo_upstream) -> None:
    engine.sync()
    run_to_idle(engine)
    broken = demo_upstream.world.service_company_ids[1]
    demo_upstream.faults.failing_companies = {broken: "500"}
    demo_upstream.faults.revision = 1
    engine.sync()
    assert engine.wait_idle(timeout_s=60)
    with engine.db.session() as session:
        company = session.execute(
            select(Company).where(Company.service_company_id == broken)
        ).scalar_one()
    latest = [job for job in jobs(engine) if job.attempts > 0 and job.result is None]
    failed = [job for job in latest if job.status == JobStatus.FAILED]
    assert failed and all(job.company_id == company.id for job in failed)
    assert all(len(job.errors) == 3 for job in failed)
    assert all("HTTP 500" in job.error_message for job in failed)
    # The other companies synced their new revision.
    healthy = [job for job in jobs(engine) if job.company_id not in (None, company.id)]
    assert all(job.status == JobStatus.COMPLETED for job in healthy)


@pytest.fixture
def impatient_engine(settings: Settings) -> Iterator[Engine]:
    """An engine whose upstream requests give up after 0.3 s (the faults below hang 1 s)."""
    running = Engine(settings.model_copy(update={"upstream_timeout_s": 0.3}))
    yield running
    running.stop()


@pytest.mark.parametrize("fault", ["timeout", "malformed", "unsuccessful", "429"])
def test_persistent_fault_fails_with_a_clear_message_and_no_blob(
    impatient_engine: Engine, demo_upstream, fault: str
) -> None:
    engine = impatient_engine
    demo_upstream.faults.hang_s = 1.0
    demo_upstream.faults.retry_after_s = 0
    broken = demo_upstream.world.service_company_ids[0]
    demo_upstream.faults.failing_companies = {broken: fault}
    engine.sync()
    run_to_idle(engine)
    with engine.db.session() as session:
        company = session.execute(
            select(Company).where(Company.service_company_id == broken)
        ).scalar_one()
    failed = [job for job in jobs(engine) if job.status == JobStatus.FAILED]
    assert len(failed) == DAYS
    assert {job.company_id for job in failed} == {company.id}
    expected = {
        "timeout": "timed out",
        "malformed": "not valid JSON",
        "unsuccessful": "upstream reported failure",
        "429": "HTTP 429",
    }[fault]
    assert all(expected in job.error_message for job in failed)
    assert engine.blobs.list_blobs(broken) == []
    assert len(stored_rows(engine)) == 2 * DAYS


def test_random_faults_are_retried_to_completion(engine: Engine, demo_upstream) -> None:
    demo_upstream.faults.error_rate = 0.3
    demo_upstream.faults.malformed_rate = 0.1
    demo_upstream.faults.rate_limit_rate = 0.1
    demo_upstream.faults.retry_after_s = 0
    engine.sync()
    run_to_idle(engine)
    assert len(stored_rows(engine)) == 3 * DAYS
    assert all(job.status == JobStatus.COMPLETED for job in jobs(engine))
    retried = [job for job in jobs(engine) if job.errors]
    assert retried or demo_upstream.stats()["requests"] > 3 + 1, "no fault was injected"


FIXED_INSTANT = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)  # 01:30 in LA, 22:30 in Auckland


@pytest.mark.parametrize(
    ("zone", "first_day"),
    [
        ("America/Los_Angeles", date(2026, 3, 10)),
        ("UTC", date(2026, 3, 10)),
        ("Pacific/Auckland", date(2026, 3, 10)),
    ],
)
def test_coordinator_uses_each_companys_local_date(zone: str, first_day: date) -> None:
    days = coordinator.local_days(zone, FIXED_INSTANT, DAYS)
    assert days[0] == first_day
    assert len(days) == DAYS


@pytest.mark.parametrize(
    ("instant", "zone", "first_day"),
    [
        (datetime(2026, 3, 10, 3, 0, tzinfo=UTC), "America/Los_Angeles", date(2026, 3, 9)),
        (datetime(2026, 3, 10, 3, 0, tzinfo=UTC), "UTC", date(2026, 3, 10)),
        (datetime(2026, 3, 10, 12, 0, tzinfo=UTC), "Pacific/Auckland", date(2026, 3, 11)),
        (datetime(2026, 3, 10, 12, 0, tzinfo=UTC), "America/Los_Angeles", date(2026, 3, 10)),
    ],
)
def test_local_today_differs_from_utc_today(instant: datetime, zone: str, first_day: date) -> None:
    assert coordinator.local_days(zone, instant, DAYS)[0] == first_day


def test_sync_run_queues_users_plus_seven_days_per_enabled_company(engine: Engine) -> None:
    engine.sync()
    run_to_idle(engine)
    engine.pause()
    with engine.db.session() as session:
        first = session.execute(select(Company).order_by(Company.service_company_id)).scalars()
        company = first.first()
        assert company is not None
        company.sync_enabled = False
        session.add(company)
        session.commit()
    run = coordinator.plan_and_enqueue(engine.db, days_ahead=DAYS)
    assert run.planned == 1 + 2 * DAYS
    assert run.queued == run.planned
    assert coordinator.plan_and_enqueue(engine.db, days_ahead=DAYS).queued == 0


def test_clean_shutdown_releases_running_jobs(settings, demo_upstream) -> None:
    # The client waits longer than the test lives, and the upstream answers only when the
    # test stops it: the upstream call cannot end before the stop, whatever the machine's load.
    engine = Engine(settings.model_copy(update={"upstream_timeout_s": 300.0}))
    try:
        engine.sync()
        engine.start(scheduler=False)
        assert engine.wait_idle(timeout_s=60)
        demo_upstream.faults.latency_ms = 600_000
        engine.sync()
        wait_until(
            lambda: any(job.status == JobStatus.RUNNING for job in jobs(engine)),
            what="a job to be running",
        )
        pool = engine.pool
        assert pool is not None
        threads = list(pool._threads)
        pool.stop(timeout_s=0.1)  # does not wait for the hanging upstream call
        engine.pool = None
        states = {job.status for job in jobs(engine)}
        assert JobStatus.RUNNING not in states
        released = [job for job in jobs(engine) if job.status == JobStatus.PENDING]
        assert released and all(job.attempts == 0 and job.locked_by is None for job in released)
        demo_upstream.stop()  # ends the hang; the worker's late outcome is fenced out
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{thread.name} still runs after the upstream stopped"
        assert {job.status for job in jobs(engine)} == {JobStatus.COMPLETED, JobStatus.PENDING}
    finally:
        engine.stop()


@pytest.mark.postgres
def test_sync_survives_the_database_dropping_every_connection(
    pg_url: str, tmp_path, demo_upstream
) -> None:
    from sqlalchemy import text

    from tests.conftest import engine_settings

    demo_upstream.faults.latency_ms = 200
    app_name = f"opsdash_drop_{tmp_path.name}"[:60]
    url = f"{pg_url}&application_name={app_name}"
    running = Engine(engine_settings(url, tmp_path / "data", demo_upstream.url))
    try:
        running.sync()
        running.start(scheduler=False)
        wait_until(
            lambda: any(job.status == JobStatus.COMPLETED for job in jobs(running)),
            what="a first job to complete",
        )
        # Only this engine's connections: other test runs may share the server.
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            killed = c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app_name,),
            ).fetchall()
        assert killed
        assert running.wait_idle(timeout_s=60)
        with running.db.read() as conn:
            statuses = set(
                conn.execute(text("SELECT DISTINCT status FROM background_jobs")).scalars()
            )
        assert statuses == {"completed"}
        assert len(stored_rows(running)) == 3 * DAYS
    finally:
        running.stop()


def test_a_failed_batch_comes_due_together(engine: Engine, demo_upstream) -> None:
    broken = demo_upstream.world.service_company_ids[0]
    demo_upstream.faults.failing_companies = {broken: "500"}
    engine.sync()
    engine.start(scheduler=False)
    assert engine.wait_idle(timeout_s=60)
    with engine.db.session() as session:
        company = session.execute(
            select(Company).where(Company.service_company_id == broken)
        ).scalar_one()
    failed = [job for job in jobs(engine) if job.company_id == company.id]
    # Every attempt of the company's 7 days went out as one upstream call.
    assert len(failed) == DAYS
    assert demo_upstream.stats()["companies"][broken] == 3 * engine.settings.upstream_attempts
