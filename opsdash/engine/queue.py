"""The job queue: the only module that changes a job's status.

Transitions (each a function here, each with a test):

    pending  --claim-->      running
    running  --complete-->   completed
    running  --fail-->       pending (backoff) | failed (attempts spent)
    running  --release-->    pending (clean shutdown; the attempt is not counted)
    running  --rescue-->     pending | failed  (lease expired: the worker died)
    pending  --cancel-->     cancelled
    failed | cancelled --retry--> pending (attempts reset)

Every change of a running job is fenced by ``locked_by`` and ``attempts``, so
a worker whose lease was taken over cannot overwrite the newer attempt.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, or_, select, update

from opsdash.engine.db import Database
from opsdash.engine.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    BackgroundJob,
    JobStat,
    JobStatus,
    JobType,
    table_of,
)
from opsdash.engine.sqltypes import utc_hour, utcnow

JOBS = table_of(BackgroundJob)
STATS = table_of(JobStat)
C = JOBS.c

# A company's whole sync window fits in one coalesced claim.
MAX_COALESCED_JOBS = 62
MAX_CLAIM_TRIES = 4
MAX_BACKOFF_S = 15 * 60
ERROR_MESSAGE_LIMIT = 2000
# A failed or cancelled job lets go of its dedup key, so the operators' hand reset
# (``UPDATE … SET status = 'pending' WHERE status = 'failed'``) can never collide with
# another job for the same work; ``retry`` derives the key again.
_FINISHED_KEY = {"dedup_key": None}


def new_worker_id() -> str:
    """host:pid:nonce, so a restarted worker never inherits a dead one's identity."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class NewJob:
    job_type: JobType
    dedup_key: str
    company_id: uuid.UUID | None = None
    params: dict[str, Any] = field(default_factory=dict)
    scheduled_at: datetime | None = None
    max_attempts: int = 3


def dedup_key_for(job_type: str, company_id: uuid.UUID | None, params: dict[str, Any]) -> str:
    """The unit of work a job does: at most one active job per key."""
    if job_type == JobType.SYNC_SCHEDULE:
        return f"sync_schedule:{company_id}:{params.get('date')}"
    return str(job_type)


def schedule_job(
    company_id: uuid.UUID,
    day: str,
    *,
    max_attempts: int = 3,
    service_company_id: str | None = None,
) -> NewJob:
    # The service company id only makes logs and the console readable; the handler
    # always works from company_id.
    params = {"date": day}
    if service_company_id:
        params["company"] = service_company_id
    return NewJob(
        job_type=JobType.SYNC_SCHEDULE,
        dedup_key=dedup_key_for(JobType.SYNC_SCHEDULE, company_id, params),
        company_id=company_id,
        params=params,
        max_attempts=max_attempts,
    )


def users_job(*, max_attempts: int = 3) -> NewJob:
    key = dedup_key_for(JobType.SYNC_USERS, None, {})
    return NewJob(job_type=JobType.SYNC_USERS, dedup_key=key, max_attempts=max_attempts)


def _job(row: Any) -> BackgroundJob:
    return BackgroundJob(**row._mapping)


def _truncate(message: str) -> str:
    return message if len(message) <= ERROR_MESSAGE_LIMIT else message[:ERROR_MESSAGE_LIMIT] + "…"


# --- enqueue ---------------------------------------------------------------------------


def enqueue(db: Database, jobs: Sequence[NewJob], *, now: datetime | None = None) -> int:
    """Queue jobs in one statement; a job whose dedup key is already active is skipped.

    Returns how many jobs were added (0 when an identical run is still pending).
    """
    now = now or utcnow()
    if now.tzinfo is None or any(j.scheduled_at and j.scheduled_at.tzinfo is None for j in jobs):
        raise ValueError("naive datetime given where UTC is required")
    rows = [
        (
            job.job_type,
            job.company_id,
            job.params,
            job.dedup_key,
            job.max_attempts,
            job.scheduled_at,
        )
        for job in jobs
    ]
    with db.write() as conn:
        return db.insert_jobs_skip_duplicates(conn, rows, now)


def expedite(db: Database, dedup_keys: Sequence[str], *, now: datetime | None = None) -> int:
    """Make already-pending jobs due now (an operator's "sync now" during a backoff)."""
    if not dedup_keys:
        return 0
    now = now or utcnow()
    with db.write() as conn:
        result = conn.execute(
            update(JOBS)
            .where(C.status == JobStatus.PENDING, C.dedup_key.in_(dedup_keys), C.scheduled_at > now)
            .values(scheduled_at=now)
        )
        return result.rowcount


# --- claim and heartbeat ---------------------------------------------------------------


def _due(now: datetime) -> Any:
    return and_(C.status == JobStatus.PENDING, C.scheduled_at <= now)


def _claim_values(worker_id: str, now: datetime, lease_s: float) -> dict[str, Any]:
    return {
        "status": JobStatus.RUNNING,
        "locked_by": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "started_at": now,
        "completed_at": None,
        "attempts": C.attempts + 1,
    }


class _CompanyBusy(Exception):
    def __init__(self, company_id: uuid.UUID) -> None:
        self.company_id = company_id


def claim(
    db: Database, worker_id: str, *, lease_s: float, now: datetime | None = None
) -> list[BackgroundJob]:
    """Claim the next due job; for a schedule job, also that company's other due schedule jobs.

    Coalescing lets one upstream call serve a company's whole date range.
    Returns [] when nothing is due.
    """
    now = now or utcnow()
    busy: list[uuid.UUID] = []
    for _ in range(MAX_CLAIM_TRIES):
        try:
            return _claim_once(db, worker_id, lease_s, now, busy)
        except _CompanyBusy as conflict:
            busy.append(conflict.company_id)
    return []


def _claim_once(
    db: Database, worker_id: str, lease_s: float, now: datetime, busy: list[uuid.UUID]
) -> list[BackgroundJob]:
    values = _claim_values(worker_id, now, lease_s)
    due = select(C.id).where(_due(now))
    if busy:
        due = due.where(or_(C.company_id.is_(None), C.company_id.not_in(busy)))
    head_id = db.lock_skip_locked(due.order_by(C.scheduled_at, C.id).limit(1)).scalar_subquery()
    with db.write() as conn:
        head = conn.execute(
            update(JOBS).where(C.id == head_id).values(values).returning(*JOBS.c)
        ).first()
        if head is None:
            return []
        claimed = [_job(head)]
        if head.job_type == JobType.SYNC_SCHEDULE and head.company_id is not None:
            # Another worker in the middle of claiming this company holds the lock:
            # taking one of its days would split its single upstream call in two.
            if not db.try_lock_company(conn, head.company_id):
                raise _CompanyBusy(head.company_id)  # rolls back our claim of the head
            claimed += _claim_company_siblings(db, conn, head.company_id, values, now)
    return claimed


def _claim_company_siblings(
    db: Database, conn: Connection, company_id: uuid.UUID, values: dict[str, Any], now: datetime
) -> list[BackgroundJob]:
    # Waiting (not skipping) here: a day locked right now belongs to a worker that
    # is about to find the company busy and let go of it.
    sibling_ids = db.lock_rows(
        select(C.id)
        .where(_due(now), C.company_id == company_id, C.job_type == JobType.SYNC_SCHEDULE)
        .order_by(C.scheduled_at)
        .limit(MAX_COALESCED_JOBS - 1)
    )
    rows = conn.execute(
        update(JOBS)
        .where(C.id.in_(sibling_ids.scalar_subquery()))
        .values(values)
        .returning(*JOBS.c)
    )
    return [_job(row) for row in rows]


def heartbeat(
    db: Database,
    worker_id: str,
    job_ids: Iterable[uuid.UUID],
    *,
    lease_s: float,
    now: datetime | None = None,
) -> set[uuid.UUID]:
    """Renew the lease of this worker's running jobs; returns the ids that are still ours.

    A job missing from the answer was rescued (or released) meanwhile: the worker must
    stop working on it, since another attempt owns it now.
    """
    ids = list(job_ids)
    if not ids:
        return set()
    now = now or utcnow()
    with db.write() as conn:
        renewed = conn.execute(
            update(JOBS)
            .where(C.id.in_(ids), C.locked_by == worker_id, C.status == JobStatus.RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
            .returning(C.id)
        ).scalars()
        return set(renewed)


def still_held(db: Database, conn: Connection, jobs: Sequence[BackgroundJob]) -> set[uuid.UUID]:
    """The jobs whose attempt this worker still owns, locked until ``conn`` commits.

    The fence for effects outside the job row: a caller publishes a job's results in
    the same transaction, only for the ids returned, so a worker whose lease was taken
    over (stopped past its lease, then resumed) publishes nothing. The row lock keeps
    rescue away until the transaction ends. Changes no status.
    """
    if not jobs:
        return set()
    rows = conn.execute(
        db.lock_rows(
            select(C.id, C.attempts, C.locked_by).where(
                C.id.in_([job.id for job in jobs]), C.status == JobStatus.RUNNING
            )
        )
    ).all()
    current = {row.id: (row.attempts, row.locked_by) for row in rows}
    return {job.id for job in jobs if current.get(job.id) == (job.attempts, job.locked_by)}


# --- outcomes of a running job -----------------------------------------------------------


def _fenced(job: BackgroundJob, worker_id: str) -> Any:
    return and_(
        C.id == job.id,
        C.locked_by == worker_id,
        C.attempts == job.attempts,
        C.status == JobStatus.RUNNING,
    )


def _duration_ms(job: BackgroundJob, now: datetime) -> int | None:
    if job.started_at is None:
        return None
    return max(0, int((now - job.started_at).total_seconds() * 1000))


def complete(
    db: Database,
    job: BackgroundJob,
    worker_id: str,
    result: dict[str, Any] | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    """running → completed. False when the lease was lost (someone else owns the job now)."""
    return complete_many(db, [(job, result)], worker_id, now=now) == [job.id]


def complete_many(
    db: Database,
    done: Sequence[tuple[BackgroundJob, dict[str, Any] | None]],
    worker_id: str,
    *,
    now: datetime | None = None,
) -> list[uuid.UUID]:
    """Complete a batch in one transaction; returns the ids this worker still owned.

    One statement executed for every job (a single pipelined round trip on
    Postgres); only when some job's lease was lost does it look up which.
    """
    now = now or utcnow()
    if not done:
        return []
    statement = (
        update(JOBS)
        .where(
            C.id == bindparam("job_id"),
            C.locked_by == worker_id,
            C.attempts == bindparam("attempt"),
            C.status == JobStatus.RUNNING,
        )
        .values(
            status=JobStatus.COMPLETED,
            result=bindparam("job_result", type_=C.result.type),
            error_message=None,
            completed_at=now,
            duration_ms=bindparam("duration"),
            lease_expires_at=None,
        )
    )
    rows = [
        {
            "job_id": job.id,
            "attempt": job.attempts,
            "job_result": result or {},
            "duration": _duration_ms(job, now),
        }
        for job, result in done
    ]
    ids = [job.id for job, _ in done]
    with db.write() as conn:
        completed = conn.execute(statement, rows).rowcount
        if completed == len(done):
            return ids
        mine = conn.execute(
            select(C.id).where(
                C.id.in_(ids), C.status == JobStatus.COMPLETED, C.completed_at == now
            )
        ).scalars()
        return list(mine)


def backoff_delay_s(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter on the upper half: base·2^(n-1)·[0.5, 1)."""
    rng = rng or random.Random()
    ceiling = min(MAX_BACKOFF_S, base_s * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + rng.random() / 2)


def _error_entry(job: BackgroundJob, worker: str | None, message: str, now: datetime) -> dict:
    return {"attempt": job.attempts, "at": now.isoformat(), "worker": worker, "message": message}


@dataclass(frozen=True)
class Failure:
    job: BackgroundJob
    message: str
    retryable: bool = True


def fail(
    db: Database,
    job: BackgroundJob,
    worker_id: str,
    message: str,
    *,
    retry_base_s: float,
    retryable: bool = True,
    delay_s: float | None = None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> JobStatus | None:
    """running → pending with backoff, or → failed when attempts are spent or the error is final.

    Returns the new status, or None when the lease was lost.
    """
    [status] = fail_many(
        db,
        [Failure(job, message, retryable)],
        worker_id,
        retry_base_s=retry_base_s,
        delay_s=delay_s,
        now=now,
        rng=rng,
    )
    return status


def fail_many(
    db: Database,
    failures: Sequence[Failure],
    worker_id: str,
    *,
    retry_base_s: float,
    delay_s: float | None = None,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> list[JobStatus | None]:
    """``fail`` for a batch, in one transaction.

    With ``delay_s`` every retried job gets the same backoff, and since they
    become due in the same commit, they are claimed (and fetched upstream)
    together again instead of one day at a time.
    """
    now = now or utcnow()
    statuses: list[JobStatus | None] = []
    with db.write() as conn:
        for failure in failures:
            values, new_status = _failure_values(
                failure, worker_id, retry_base_s, delay_s, now, rng
            )
            outcome = conn.execute(
                update(JOBS).where(_fenced(failure.job, worker_id)).values(values)
            )
            statuses.append(new_status if outcome.rowcount == 1 else None)
    return statuses


def _failure_values(
    failure: Failure,
    worker_id: str,
    retry_base_s: float,
    delay_s: float | None,
    now: datetime,
    rng: random.Random | None,
) -> tuple[dict[str, Any], JobStatus]:
    job = failure.job
    message = _truncate(failure.message)
    values: dict[str, Any] = {
        "errors": [*(job.errors or []), _error_entry(job, worker_id, message, now)],
        "error_message": message,
        "lease_expires_at": None,
        "duration_ms": _duration_ms(job, now),
    }
    if not failure.retryable or job.attempts >= job.max_attempts:
        return values | {"status": JobStatus.FAILED, "completed_at": now, **_FINISHED_KEY}, (
            JobStatus.FAILED
        )
    delay = delay_s if delay_s is not None else backoff_delay_s(job.attempts, retry_base_s, rng)
    values |= {"status": JobStatus.PENDING, "scheduled_at": now + timedelta(seconds=delay)}
    return values, JobStatus.PENDING


def release(db: Database, jobs: Sequence[BackgroundJob], worker_id: str) -> int:
    """running → pending on a clean shutdown; the interrupted attempt is not counted."""
    released = 0
    with db.write() as conn:
        for job in jobs:
            outcome = conn.execute(
                update(JOBS)
                .where(_fenced(job, worker_id))
                .values(
                    status=JobStatus.PENDING,
                    attempts=C.attempts - 1,
                    locked_by=None,
                    lease_expires_at=None,
                    started_at=None,
                )
            )
            released += outcome.rowcount
    return released


# --- operator actions ------------------------------------------------------------------


def cancel(db: Database, job_ids: Sequence[uuid.UUID], *, now: datetime | None = None) -> int:
    """pending → cancelled. Running jobs are left to finish; returns how many were cancelled."""
    if not job_ids:
        return 0
    now = now or utcnow()
    with db.write() as conn:
        outcome = conn.execute(
            update(JOBS)
            .where(C.id.in_(job_ids), C.status == JobStatus.PENDING)
            .values(
                status=JobStatus.CANCELLED,
                completed_at=now,
                error_message="cancelled",
                **_FINISHED_KEY,
            )
        )
        return outcome.rowcount


def retry(db: Database, job_ids: Sequence[uuid.UUID], *, now: datetime | None = None) -> int:
    """failed | cancelled → pending with attempts reset, due now.

    A job whose unit of work already has an active job is left alone, since
    that active job will do the same work.
    """
    if not job_ids:
        return 0
    now = now or utcnow()
    retried = 0
    with db.write() as conn:
        candidates = conn.execute(
            select(C.id, C.job_type, C.company_id, C.params).where(
                C.id.in_(job_ids), C.status.in_([JobStatus.FAILED, JobStatus.CANCELLED])
            )
        ).all()
        keys = {
            row.id: dedup_key_for(row.job_type, row.company_id, row.params or {})
            for row in candidates
        }
        active_keys = set(
            conn.execute(
                select(C.dedup_key).where(
                    C.dedup_key.in_(set(keys.values())), C.status.in_(ACTIVE_STATUSES)
                )
            ).scalars()
        )
        for row in candidates:
            if keys[row.id] in active_keys:
                continue
            active_keys.add(keys[row.id])
            retried += conn.execute(
                update(JOBS)
                .where(C.id == row.id)
                .values(
                    status=JobStatus.PENDING,
                    attempts=0,
                    scheduled_at=now,
                    completed_at=None,
                    locked_by=None,
                    lease_expires_at=None,
                    dedup_key=keys[row.id],
                )
            ).rowcount
    return retried


# --- maintenance -----------------------------------------------------------------------


@dataclass(frozen=True)
class RescueResult:
    requeued: int = 0
    failed: int = 0


RESCUE_BATCH = 500
_RESCUE_LOCK = "opsdash:rescue"


def rescue(
    db: Database,
    *,
    retry_base_s: float = 10.0,
    now: datetime | None = None,
    batch: int = RESCUE_BATCH,
    rng: random.Random | None = None,
) -> RescueResult:
    """Expired leases (a dead or hung worker): back to pending with the job's backoff,
    or failed if attempts are spent.

    Works in batches of ``batch`` rows: one locked select and one statement executed for
    the batch. Runs in one process at a time: the database decides (a transaction-level
    advisory lock on Postgres, the write lock on SQLite); a process that finds it taken
    leaves the work to the holder. The backoff keeps a job that kills its worker from
    crash-looping through its attempts.
    """
    now = now or utcnow()
    total = RescueResult()
    while True:
        with db.write() as conn:
            if not db.try_lock(conn, _RESCUE_LOCK):
                return total
            expired = conn.execute(
                db.lock_skip_locked(
                    select(JOBS)
                    .where(C.status == JobStatus.RUNNING, C.lease_expires_at < now)
                    .order_by(C.lease_expires_at)
                    .limit(batch)
                )
            ).all()
            if not expired:
                return total
            rows = [_rescue_values(_job(row), retry_base_s, now, rng) for row in expired]
            conn.execute(_RESCUE_STATEMENT, rows)
        failed = sum(1 for row in rows if row["new_status"] == JobStatus.FAILED)
        total = RescueResult(total.requeued + len(rows) - failed, total.failed + failed)
        if len(expired) < batch:
            return total


_RESCUE_STATEMENT = (
    update(JOBS)
    .where(
        C.id == bindparam("job_id"),
        C.locked_by == bindparam("dead_worker"),
        C.attempts == bindparam("attempt"),
        C.status == JobStatus.RUNNING,
    )
    .values(
        status=bindparam("new_status"),
        errors=bindparam("new_errors", type_=C.errors.type),
        error_message=bindparam("message"),
        rescue_count=C.rescue_count + 1,
        locked_by=None,
        lease_expires_at=None,
        scheduled_at=bindparam("due"),
        completed_at=bindparam("finished_at"),
        dedup_key=bindparam("new_dedup_key"),
    )
)


def _rescue_values(
    job: BackgroundJob, retry_base_s: float, now: datetime, rng: random.Random | None
) -> dict[str, Any]:
    message = f"lease expired: worker {job.locked_by} stopped heartbeating"
    spent = job.attempts >= job.max_attempts
    return {
        "job_id": job.id,
        "dead_worker": job.locked_by,
        "attempt": job.attempts,
        "new_status": JobStatus.FAILED if spent else JobStatus.PENDING,
        "new_errors": [*(job.errors or []), _error_entry(job, job.locked_by, message, now)],
        "message": message,
        "due": now + timedelta(seconds=backoff_delay_s(job.attempts, retry_base_s, rng)),
        "finished_at": now if spent else None,
        "new_dedup_key": None if spent else job.dedup_key,
    }


def prune(
    db: Database, *, older_than: timedelta, now: datetime | None = None, batch: int = 5000
) -> int:
    """Delete finished jobs older than ``older_than``, rolling them into ``job_stats`` first."""
    cutoff = (now or utcnow()) - older_than
    pruned = 0
    while True:
        with db.write() as conn:
            rows = conn.execute(
                select(C.id, C.job_type, C.status, C.duration_ms, C.completed_at, C.created_at)
                .where(C.status.in_(FINISHED_STATUSES), C.created_at < cutoff)
                .limit(batch)
            ).all()
            if not rows:
                return pruned
            _roll_up(db, conn, rows)
            conn.execute(delete(JOBS).where(C.id.in_([row.id for row in rows])))
            pruned += len(rows)


def _roll_up(db: Database, conn: Connection, rows: Sequence[Any]) -> None:
    buckets: dict[tuple[datetime, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        bucket = buckets[(utc_hour(row.completed_at or row.created_at), row.job_type, row.status)]
        duration = row.duration_ms or 0
        bucket[0] += 1
        bucket[1] += duration
        bucket[2] = max(bucket[2], duration)
    for (hour, job_type, status), (count, total, longest) in buckets.items():
        insert = db.insert(STATS).values(
            hour=hour,
            job_type=job_type,
            status=status,
            count=count,
            total_duration_ms=total,
            max_duration_ms=longest,
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["hour", "job_type", "status"],
                set_={
                    "count": STATS.c.count + insert.excluded.count,
                    "total_duration_ms": STATS.c.total_duration_ms
                    + insert.excluded.total_duration_ms,
                    "max_duration_ms": db.greatest(
                        STATS.c.max_duration_ms, insert.excluded.max_duration_ms
                    ),
                },
            )
        )
