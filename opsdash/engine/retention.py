"""Retention: schedule days older than the retention period leave storage and ``schedule_data``.

Without it storage grows by one object per company-day forever. A day expires when it is
more than ``retention_days`` before the company's own local today. The hourly maintenance
removes expired days in batches (one bulk remove per batch, then one delete of their
rows), in one process at a time (:meth:`Database.exclusive`), and counts what it did in
the log and in :data:`STATS`, which ``/metrics`` reports.

Objects go before rows: a crash in between leaves rows whose objects are gone, and the
next run removes them again, harmlessly. The other order could leave objects that no
row points to, which nothing would ever remove.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import delete, select

from opsdash.engine.blobs import BlobStore
from opsdash.engine.coordinator import company_zone
from opsdash.engine.db import Database
from opsdash.engine.models import Company, ScheduleData, table_of
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.retention")

COMPANIES = table_of(Company)
SCHEDULES = table_of(ScheduleData)
LOCK_NAME = "retention"
BATCH = 500
_IDS_PER_QUERY = 500


@dataclass(frozen=True)
class RetentionResult:
    removed_days: int
    removed_objects: int
    took_ms: float


@dataclass
class RetentionStats:
    """What this process's retention runs did (counters never go down)."""

    runs: int = 0
    skipped: int = 0
    removed_days: int = 0
    removed_objects: int = 0
    last_run_at: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, result: RetentionResult | None, now: datetime) -> None:
        with self._lock:
            if result is None:
                self.skipped += 1
                return
            self.runs += 1
            self.removed_days += result.removed_days
            self.removed_objects += result.removed_objects
            self.last_run_at = now


STATS = RetentionStats()


def cutoff(timezone: str | None, now: datetime, retention_days: int) -> date:
    """The first day kept: ``retention_days`` before the company's local today."""
    return now.astimezone(company_zone(timezone)).date() - timedelta(days=retention_days)


def apply(
    db: Database,
    blobs: BlobStore,
    *,
    retention_days: int,
    now: datetime | None = None,
    batch: int = BATCH,
    stats: RetentionStats = STATS,
) -> RetentionResult | None:
    """Remove every expired day; None when another process is doing it right now."""
    now = now or utcnow()
    with db.exclusive(LOCK_NAME) as mine:
        if not mine:
            log.info("retention: another process is applying it; skipped")
            stats.record(None, now)
            return None
        started = time.perf_counter()
        removed_days = removed_objects = 0
        for first_kept, company_ids in _companies_by_cutoff(db, now, retention_days).items():
            for ids in _chunks(company_ids, _IDS_PER_QUERY):
                while True:
                    rows = _expired(db, ids, first_kept, batch)
                    if not rows:
                        break
                    removed_objects += blobs.delete_many([path for _, path in rows])
                    removed_days += _forget(db, [row_id for row_id, _ in rows])
                    if len(rows) < batch:
                        break
        result = RetentionResult(
            removed_days, removed_objects, (time.perf_counter() - started) * 1000
        )
    stats.record(result, now)
    if removed_days:
        log.info(
            "retention: removed %d days (%d objects) older than %d days in %.0f ms",
            removed_days,
            removed_objects,
            retention_days,
            result.took_ms,
        )
    return result


def _companies_by_cutoff(
    db: Database, now: datetime, retention_days: int
) -> dict[date, list[uuid.UUID]]:
    """Companies grouped by their first kept day (a handful of groups: one per offset)."""
    groups: dict[date, list[uuid.UUID]] = defaultdict(list)
    with db.read() as conn:
        for company_id, timezone in conn.execute(select(COMPANIES.c.id, COMPANIES.c.timezone)):
            groups[cutoff(timezone, now, retention_days)].append(company_id)
    return groups


def _expired(
    db: Database, company_ids: list[uuid.UUID], first_kept: date, limit: int
) -> list[tuple[uuid.UUID, str]]:
    query = (
        select(SCHEDULES.c.id, SCHEDULES.c.storage_path)
        .where(SCHEDULES.c.company_id.in_(company_ids), SCHEDULES.c.date < first_kept)
        .order_by(SCHEDULES.c.date, SCHEDULES.c.id)
        .limit(limit)
    )
    with db.read() as conn:
        return [(row_id, path) for row_id, path in conn.execute(query)]


def _forget(db: Database, row_ids: list[uuid.UUID]) -> int:
    with db.write() as conn:
        return conn.execute(delete(SCHEDULES).where(SCHEDULES.c.id.in_(row_ids))).rowcount


def _chunks(items: list[uuid.UUID], size: int) -> Iterable[list[uuid.UUID]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
