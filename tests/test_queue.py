"""Every queue transition, on SQLite and Postgres."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from opsdash.engine import queue
from opsdash.engine.db import Database
from opsdash.engine.models import BackgroundJob, Company, JobStat, JobStatus, JobType
from tests.conftest import count_rows

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LEASE = 30.0


def add_company(db: Database, service_id: str = "1001") -> Company:
    company = Company(service_company_id=service_id, name=f"Company {service_id}")
    with db.session() as session:
        session.add(company)
        session.commit()
    return company


def load(db: Database, job_id: uuid.UUID) -> BackgroundJob:
    with db.session() as session:
        job = session.get(BackgroundJob, job_id)
        assert job is not None
        return job


def week(company: Company, start: int = 1) -> list[queue.NewJob]:
    return [queue.schedule_job(company.id, f"2026-12-{day:02d}") for day in range(start, start + 7)]


def test_enqueue_is_idempotent_while_pending(db: Database) -> None:
    company = add_company(db)
    run = [queue.users_job(), *week(company)]
    assert queue.enqueue(db, run, now=T0) == 8
    assert queue.enqueue(db, run, now=T0) == 0
    assert count_rows(db, "background_jobs") == 8


def test_enqueue_again_after_completion_adds_new_jobs(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    assert queue.complete(db, job, worker, {"users": 3}, now=T0)
    assert queue.enqueue(db, [queue.users_job()], now=T0) == 1


def test_claim_takes_due_jobs_only_and_marks_them_running(db: Database) -> None:
    later = queue.NewJob(JobType.SYNC_USERS, "later", scheduled_at=T0 + timedelta(minutes=5))
    queue.enqueue(db, [later], now=T0)
    worker = queue.new_worker_id()
    assert queue.claim(db, worker, lease_s=LEASE, now=T0) == []
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0 + timedelta(minutes=5))
    assert job.status == JobStatus.RUNNING
    assert job.attempts == 1
    assert job.locked_by == worker
    assert job.lease_expires_at == T0 + timedelta(minutes=5, seconds=LEASE)


def test_claim_coalesces_a_companys_schedule_jobs(db: Database) -> None:
    first, second = add_company(db, "1001"), add_company(db, "1002")
    queue.enqueue(db, [*week(first), *week(second)], now=T0)
    worker = queue.new_worker_id()
    batch = queue.claim(db, worker, lease_s=LEASE, now=T0)
    assert len(batch) == 7
    assert len({job.company_id for job in batch}) == 1
    other = queue.claim(db, worker, lease_s=LEASE, now=T0)
    assert len(other) == 7
    assert {job.company_id for job in other} != {job.company_id for job in batch}
    assert queue.claim(db, worker, lease_s=LEASE, now=T0) == []


def _race_to_claim(db: Database, racers: int) -> list[list[BackgroundJob]]:
    """``racers`` threads released together on a barrier claim until nothing is due."""
    barrier = threading.Barrier(racers)
    taken: list[list[BackgroundJob]] = [[] for _ in range(racers)]
    errors: list[BaseException] = []

    def race(index: int) -> None:
        worker = queue.new_worker_id()
        try:
            barrier.wait(timeout=30)
            while batch := queue.claim(db, worker, lease_s=LEASE, now=T0):
                taken[index].extend(batch)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=race, args=(index,)) for index in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return taken


def test_two_workers_never_claim_the_same_job(db: Database) -> None:
    """Workers released together on a barrier, round after round, race for the same rows:
    ``FOR UPDATE SKIP LOCKED`` (Postgres) or the immediate transaction (SQLite) must hand
    every job to exactly one of them, and every due job to someone."""
    rounds, racers = 20, 4
    companies = [add_company(db, f"{2001 + index}") for index in range(3)]
    overlapped = 0
    for number in range(rounds):
        users = [queue.NewJob(JobType.SYNC_USERS, f"round{number}-users{i}") for i in range(6)]
        days = [
            queue.schedule_job(company.id, f"2027-{1 + number // 28:02d}-{1 + number % 28:02d}")
            for company in companies
        ]
        queue.enqueue(db, [*users, *days], now=T0)
        taken = _race_to_claim(db, racers)
        ids = [job.id for jobs in taken for job in jobs]
        assert len(ids) == len(set(ids)), f"round {number}: a job was claimed twice"
        assert len(ids) == len(users) + len(days), f"round {number}: a due job was left"
        overlapped += sum(1 for jobs in taken if jobs) > 1
    # The race must really have been run in parallel, or it proved nothing.
    assert overlapped > 0, "no round had two workers claiming at once"


def test_heartbeat_renews_only_own_running_jobs(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    later = T0 + timedelta(seconds=20)
    assert queue.heartbeat(db, worker, [job.id], lease_s=LEASE, now=later) == {job.id}
    assert load(db, job.id).lease_expires_at == later + timedelta(seconds=LEASE)
    assert queue.heartbeat(db, "someone-else", [job.id], lease_s=LEASE, now=later) == set()


def test_complete_records_result_and_duration(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    assert queue.complete(db, job, worker, {"profiles": 12}, now=T0 + timedelta(seconds=2))
    stored = load(db, job.id)
    assert stored.status == JobStatus.COMPLETED
    assert stored.result == {"profiles": 12}
    assert stored.duration_ms == 2000
    assert stored.completed_at == T0 + timedelta(seconds=2)


def test_fail_retries_with_backoff_then_fails_for_good(db: Database) -> None:
    queue.enqueue(db, [queue.users_job(max_attempts=3)], now=T0)
    worker = queue.new_worker_id()
    now = T0
    for attempt in (1, 2):
        [job] = queue.claim(db, worker, lease_s=LEASE, now=now)
        assert job.attempts == attempt
        status = queue.fail(db, job, worker, f"boom {attempt}", retry_base_s=10, now=now)
        assert status == JobStatus.PENDING
        stored = load(db, job.id)
        delay = (stored.scheduled_at - now).total_seconds()
        ceiling = 10 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling
        assert queue.claim(db, worker, lease_s=LEASE, now=now) == []  # not due during backoff
        now = stored.scheduled_at
    [job] = queue.claim(db, worker, lease_s=LEASE, now=now)
    assert queue.fail(db, job, worker, "boom 3", retry_base_s=10, now=now) == JobStatus.FAILED
    stored = load(db, job.id)
    assert stored.status == JobStatus.FAILED
    assert stored.error_message == "boom 3"
    assert [entry["message"] for entry in stored.errors] == ["boom 1", "boom 2", "boom 3"]
    assert [entry["attempt"] for entry in stored.errors] == [1, 2, 3]
    assert all(entry["worker"] == worker for entry in stored.errors)


def test_final_error_skips_retries(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    status = queue.fail(db, job, worker, "bad data", retry_base_s=10, retryable=False, now=T0)
    assert status == JobStatus.FAILED


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [queue.backoff_delay_s(n, 10, rng) for n in range(1, 12)]
    assert 5 <= delays[0] <= 10
    assert 20 <= delays[2] <= 40
    assert max(delays) <= queue.MAX_BACKOFF_S


def test_release_returns_job_without_counting_the_attempt(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    assert queue.release(db, [job], worker) == 1
    stored = load(db, job.id)
    assert (stored.status, stored.attempts, stored.locked_by) == (JobStatus.PENDING, 0, None)


def test_cancel_only_touches_pending_jobs(db: Database) -> None:
    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, k) for k in ("a", "b")], now=T0)
    worker = queue.new_worker_id()
    [running] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    with db.session() as session:
        pending = session.exec(
            select(BackgroundJob).where(BackgroundJob.status == JobStatus.PENDING)
        ).one()[0]
    assert queue.cancel(db, [running.id, pending.id], now=T0) == 1
    assert load(db, pending.id).status == JobStatus.CANCELLED
    assert load(db, running.id).status == JobStatus.RUNNING


def test_retry_resets_failed_job_and_skips_duplicates_of_active_work(db: Database) -> None:
    queue.enqueue(db, [queue.users_job(max_attempts=1)], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    queue.fail(db, job, worker, "boom", retry_base_s=1, now=T0)
    assert queue.retry(db, [job.id], now=T0) == 1
    stored = load(db, job.id)
    assert (stored.status, stored.attempts) == (JobStatus.PENDING, 0)
    assert stored.errors  # history kept
    [again] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    queue.fail(db, again, worker, "boom", retry_base_s=1, now=T0)
    queue.enqueue(db, [queue.users_job()], now=T0)  # a fresh job for the same work
    assert queue.retry(db, [job.id], now=T0) == 0


def test_rescue_requeues_expired_lease_and_fences_the_old_worker(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    dead, alive = queue.new_worker_id(), queue.new_worker_id()
    [stale] = queue.claim(db, dead, lease_s=LEASE, now=T0)
    assert queue.rescue(db, now=T0 + timedelta(seconds=LEASE - 1)) == queue.RescueResult()
    after = T0 + timedelta(seconds=LEASE + 1)
    assert queue.rescue(db, retry_base_s=10, now=after) == queue.RescueResult(requeued=1)
    rescued = load(db, stale.id)
    assert (rescued.status, rescued.rescue_count) == (JobStatus.PENDING, 1)
    assert "lease expired" in rescued.errors[-1]["message"]
    # Retried with the job's backoff (10 s · 2^0 · [0.5, 1)), not at once.
    assert after + timedelta(seconds=5) <= rescued.scheduled_at < after + timedelta(seconds=10)
    assert queue.claim(db, alive, lease_s=LEASE, now=after) == []
    after = rescued.scheduled_at
    [fresh] = queue.claim(db, alive, lease_s=LEASE, now=after)
    assert fresh.attempts == 2
    # The dead worker wakes up: it can neither complete nor fail the newer attempt.
    assert not queue.complete(db, stale, dead, {"late": True}, now=after)
    assert queue.fail(db, stale, dead, "late", retry_base_s=1, now=after) is None
    assert queue.heartbeat(db, dead, [stale.id], lease_s=LEASE, now=after) == set()
    assert queue.complete(db, fresh, alive, {"ok": True}, now=after)
    assert load(db, stale.id).result == {"ok": True}


def test_rescue_works_in_bounded_batches(db: Database) -> None:
    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, f"k{i}") for i in range(25)], now=T0)
    worker = queue.new_worker_id()
    claimed = 0
    while batch := queue.claim(db, worker, lease_s=LEASE, now=T0):
        claimed += len(batch)
    assert claimed == 25
    after = T0 + timedelta(seconds=LEASE + 1)
    assert queue.rescue(db, now=after, batch=10) == queue.RescueResult(requeued=25)
    assert count_rows(db, "background_jobs", "status = 'running'") == 0
    assert count_rows(db, "background_jobs", "rescue_count = 1") == 25


def test_rescued_job_backs_off_more_with_each_attempt(db: Database) -> None:
    # A job that kills its worker every time must not crash-loop through its attempts.
    queue.enqueue(db, [queue.users_job(max_attempts=5)], now=T0)
    now = T0
    delays = []
    for _ in range(3):
        [job] = queue.claim(db, queue.new_worker_id(), lease_s=LEASE, now=now)
        now += timedelta(seconds=LEASE + 1)
        queue.rescue(db, retry_base_s=10, now=now, rng=random.Random(7))
        due = load(db, job.id).scheduled_at
        delays.append((due - now).total_seconds())
        now = due
    assert delays[0] < delays[1] < delays[2]
    assert 5 <= delays[0] < 10 and 20 <= delays[2] < 40


def test_rescue_runs_in_one_process_at_a_time(pg_db: Database) -> None:
    queue.enqueue(pg_db, [queue.users_job()], now=T0)
    queue.claim(pg_db, queue.new_worker_id(), lease_s=LEASE, now=T0)
    after = T0 + timedelta(seconds=LEASE + 1)
    with pg_db.write() as other:
        assert pg_db.try_lock(other, "opsdash:rescue")  # another process is rescuing
        assert queue.rescue(pg_db, now=after) == queue.RescueResult()
    assert queue.rescue(pg_db, now=after) == queue.RescueResult(requeued=1)


def test_still_held_fences_a_taken_over_attempt(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    dead, alive = queue.new_worker_id(), queue.new_worker_id()
    [stale] = queue.claim(db, dead, lease_s=LEASE, now=T0)
    with db.write() as conn:
        assert queue.still_held(db, conn, [stale]) == {stale.id}
    after = T0 + timedelta(seconds=LEASE + 1)
    queue.rescue(db, retry_base_s=0, now=after)
    [fresh] = queue.claim(db, alive, lease_s=LEASE, now=after)
    with db.write() as conn:
        assert queue.still_held(db, conn, [stale]) == set()
        assert queue.still_held(db, conn, [fresh]) == {fresh.id}


def test_rescue_fails_job_whose_attempts_are_spent(db: Database) -> None:
    queue.enqueue(db, [queue.users_job(max_attempts=1)], now=T0)
    [job] = queue.claim(db, queue.new_worker_id(), lease_s=LEASE, now=T0)
    assert queue.rescue(db, now=T0 + timedelta(minutes=5)) == queue.RescueResult(failed=1)
    assert load(db, job.id).status == JobStatus.FAILED


def test_expedite_makes_backed_off_jobs_due(db: Database) -> None:
    job = queue.NewJob(JobType.SYNC_USERS, "sync_users", scheduled_at=T0 + timedelta(hours=1))
    queue.enqueue(db, [job], now=T0)
    assert queue.expedite(db, ["sync_users"], now=T0) == 1
    assert len(queue.claim(db, queue.new_worker_id(), lease_s=LEASE, now=T0)) == 1


def test_prune_rolls_up_into_job_stats(db: Database) -> None:
    old = T0 - timedelta(days=30)
    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, f"k{i}") for i in range(3)], now=old)
    worker = queue.new_worker_id()
    for index in range(3):
        [job] = queue.claim(db, worker, lease_s=LEASE, now=old)
        finished = old + timedelta(seconds=index + 1)
        if index < 2:
            queue.complete(db, job, worker, {}, now=finished)
        else:
            queue.fail(db, job, worker, "x", retry_base_s=1, retryable=False, now=finished)
    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, "recent")], now=T0)
    assert queue.prune(db, older_than=timedelta(days=14), now=T0) == 3
    assert count_rows(db, "background_jobs") == 1
    with db.session() as session:
        stats = {
            (s.status, s.count, s.max_duration_ms) for s in session.exec(select(JobStat)).scalars()
        }
    assert stats == {("completed", 2, 2000), ("failed", 1, 3000)}
    # A second roll-up into the same hour adds to it.
    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, "again")], now=old)
    [job] = queue.claim(db, worker, lease_s=LEASE, now=old)
    queue.complete(db, job, worker, {}, now=old + timedelta(seconds=5))
    assert queue.prune(db, older_than=timedelta(days=14), now=T0) == 1
    with db.session() as session:
        completed = session.get(
            JobStat, (old.replace(minute=0, second=0), "sync_users", "completed")
        )
    assert completed is not None
    assert (completed.count, completed.max_duration_ms) == (3, 5000)


def test_operator_reset_by_hand_is_picked_up_again(db: Database) -> None:
    """The third operator query of docs/contracts.md resets failed jobs with plain SQL."""
    queue.enqueue(db, [queue.users_job(max_attempts=1)], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    queue.fail(db, job, worker, "boom", retry_base_s=1, now=T0)
    with db.write() as conn:
        conn.execute(
            update(BackgroundJob.__table__)
            .where(BackgroundJob.__table__.c.status == "failed")
            .values(status="pending", attempts=0)
        )
    [again] = queue.claim(db, worker, lease_s=LEASE, now=T0 + timedelta(seconds=1))
    assert again.id == job.id and again.attempts == 1


@pytest.mark.parametrize("bad", [datetime(2026, 1, 1)])
def test_naive_datetimes_are_refused(db: Database, bad: datetime) -> None:
    with pytest.raises(Exception, match="naive"):
        queue.enqueue(db, [queue.users_job()], now=bad.replace(tzinfo=None))


def test_optimize_gathers_planner_statistics(db: Database) -> None:
    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, f"k{i}") for i in range(50)], now=T0)
    db.optimize()
    if not db.is_postgres:
        with db.read() as conn:
            analysed = conn.exec_driver_sql("SELECT COUNT(*) FROM sqlite_stat1").scalar()
        assert analysed > 0


def test_hand_reset_never_collides_with_other_jobs_for_the_same_work(db: Database) -> None:
    """Two failed runs of one company-day, plus a pending one, then the contracts' reset query."""
    company = add_company(db)
    worker = queue.new_worker_id()
    for _ in range(2):
        queue.enqueue(db, [queue.schedule_job(company.id, "2026-12-01", max_attempts=1)], now=T0)
        [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
        queue.fail(db, job, worker, "boom", retry_base_s=1, now=T0)
    queue.enqueue(db, [queue.schedule_job(company.id, "2026-12-01")], now=T0)
    with db.write() as conn:
        reset = conn.execute(
            update(BackgroundJob.__table__)
            .where(BackgroundJob.__table__.c.status == "failed")
            .values(status="pending", attempts=0)
        )
    assert reset.rowcount == 2
    assert count_rows(db, "background_jobs", "status = 'pending'") == 3


def test_retry_restores_the_dedup_key(db: Database) -> None:
    company = add_company(db)
    queue.enqueue(db, [queue.schedule_job(company.id, "2026-12-01", max_attempts=1)], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    queue.fail(db, job, worker, "boom", retry_base_s=1, now=T0)
    assert load(db, job.id).dedup_key is None
    assert queue.retry(db, [job.id], now=T0) == 1
    assert load(db, job.id).dedup_key == f"sync_schedule:{company.id}:2026-12-01"
    assert queue.enqueue(db, [queue.schedule_job(company.id, "2026-12-01")], now=T0) == 0


def test_fail_with_a_given_delay(db: Database) -> None:
    queue.enqueue(db, [queue.users_job()], now=T0)
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=LEASE, now=T0)
    queue.fail(db, job, worker, "boom", retry_base_s=10, delay_s=42, now=T0)
    assert load(db, job.id).scheduled_at == T0 + timedelta(seconds=42)


def test_complete_many_reports_only_the_jobs_still_owned(db: Database) -> None:
    company = add_company(db)
    queue.enqueue(db, week(company), now=T0)
    dead, alive = queue.new_worker_id(), queue.new_worker_id()
    batch = queue.claim(db, dead, lease_s=LEASE, now=T0)
    assert len(batch) == 7
    with db.write() as conn:  # one day's lease expired and another worker took it over
        conn.execute(
            update(BackgroundJob.__table__)
            .where(BackgroundJob.__table__.c.id == batch[0].id)
            .values(locked_by=alive)
        )
    done = [(job, {"n": index}) for index, job in enumerate(batch)]
    owned = queue.complete_many(db, done, dead, now=T0 + timedelta(seconds=1))
    assert set(owned) == {job.id for job in batch[1:]}
    assert load(db, batch[0].id).status == JobStatus.RUNNING
    assert load(db, batch[3].id).result == {"n": 3}
