"""The run ledger: what each sync run did, kept for months after its jobs are pruned.

The coordinator records a run when it queues one and tags the jobs it queued
with the run's id (``params.run``). A run is closed once none of its jobs is
pending or running: its figures are then summed from its jobs and written to
its ledger row, so they outlive the 14-day pruning of jobs.

Upstream calls are counted as claimed batches: the handler fetches a claimed
company's days with one request per batch, so the distinct (company, claim
time) pairs of a run's schedule jobs plus its users jobs are the calls that
succeeded; a retried batch counts once per claim that finished it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, case, delete, distinct, func, insert, select, update
from sqlalchemy.sql.functions import coalesce

from opsdash.engine.db import Database
from opsdash.engine.models import (
    ACTIVE_STATUSES,
    BackgroundJob,
    JobStatus,
    JobType,
    SyncRunRecord,
    table_of,
)
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.ledger")

RUNS = table_of(SyncRunRecord)
J = table_of(BackgroundJob).c
R = RUNS.c

# A run's jobs are created with it; this slack keeps the lookup on the created_at index.
CREATED_SLACK = timedelta(minutes=5)
HISTORY_LIMIT = 200


@dataclass(frozen=True)
class RunSummary:
    id: uuid.UUID
    trigger: str
    scope: str
    queued_at: datetime
    finished_at: datetime | None
    planned: int
    queued: int
    companies: int
    days_done: int
    days_failed: int
    days_unchanged: int
    upstream_calls: int
    bytes_written: int

    @property
    def took(self) -> timedelta | None:
        return self.finished_at - self.queued_at if self.finished_at else None


def record_run(
    db: Database,
    run_id: uuid.UUID,
    *,
    trigger: str,
    scope: str,
    planned: int,
    queued: int,
    queued_at: datetime,
) -> None:
    with db.write() as conn:
        conn.execute(
            insert(RUNS).values(
                id=run_id,
                trigger=trigger,
                scope=scope,
                queued_at=queued_at,
                planned=planned,
                queued=queued,
            )
        )


def close_finished_runs(db: Database, *, now: datetime | None = None) -> int:
    """Close every open run none of whose jobs is still active; returns how many closed."""
    now = now or utcnow()
    with db.read() as conn:
        open_runs = conn.execute(
            select(R.id, R.queued_at).where(R.finished_at.is_(None)).order_by(R.queued_at)
        ).all()
    closed = 0
    for run_id, queued_at in open_runs:
        figures = _figures(db, run_id, queued_at)
        if figures is None:
            continue
        with db.write() as conn:
            # Conditional, so two coordinators closing the same run write it once.
            closed += conn.execute(
                update(RUNS)
                .where(R.id == run_id, R.finished_at.is_(None))
                .values(finished_at=figures.pop("finished_at") or now, **figures)
            ).rowcount
    return closed


def _figures(db: Database, run_id: uuid.UUID, queued_at: datetime) -> dict[str, object] | None:
    """A run's totals from its jobs, or None while any of them is still active."""
    tagged = (J.params["run"].as_string() == str(run_id), J.created_at >= queued_at - CREATED_SLACK)
    schedule = J.job_type == JobType.SYNC_SCHEDULE
    unchanged = J.result["unchanged"].as_boolean()
    done = (J.status == JobStatus.COMPLETED) & schedule
    with db.read() as conn:
        row = conn.execute(
            select(
                func.count().filter(J.status.in_(ACTIVE_STATUSES)).label("active"),
                func.count(distinct(J.company_id)).label("companies"),
                func.count().filter(done).label("done"),
                func.count().filter((J.status == JobStatus.FAILED) & schedule).label("failed"),
                func.count().filter(done & unchanged).label("unchanged"),
                coalesce(
                    func.sum(
                        case(
                            (done & ~coalesce(unchanged, False), J.result["bytes"].as_integer()),
                            else_=0,
                        )
                    ),
                    0,
                ).label("bytes"),
                func.max(J.completed_at).label("finished_at"),
            ).where(*tagged)
        ).one()
        if row.active:
            return None
        batches = conn.execute(
            select(func.count()).select_from(
                select(J.company_id, J.started_at)
                .where(*tagged, schedule, J.started_at.is_not(None))
                .distinct()
                .subquery()
            )
        ).scalar_one()
        users = conn.execute(
            select(func.count()).where(
                *tagged, J.job_type == JobType.SYNC_USERS, J.status == JobStatus.COMPLETED
            )
        ).scalar_one()
    return {
        "companies": row.companies,
        "days_done": row.done,
        "days_failed": row.failed,
        "days_unchanged": row.unchanged,
        "bytes_written": int(row.bytes or 0),
        "upstream_calls": batches + users,
        "finished_at": row.finished_at,
    }


def prune_runs(db: Database, *, older_than: timedelta, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - older_than
    with db.write() as conn:
        return conn.execute(delete(RUNS).where(R.queued_at < cutoff)).rowcount


def history(db: Database, *, limit: int = HISTORY_LIMIT) -> list[RunSummary]:
    """The newest runs first."""
    with db.read() as conn:
        rows = conn.execute(select(RUNS).order_by(R.queued_at.desc()).limit(limit)).all()
    return [_summary(row) for row in rows]


def _summary(row: Row[Any]) -> RunSummary:
    values = row._mapping
    return RunSummary(**{name: values[name] for name in RunSummary.__dataclass_fields__})
