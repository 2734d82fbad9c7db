"""``opsdash verify``: does storage hold what ``schedule_data`` says it holds?

Every row is compared with its object: there at all, and of the recorded size (one
listing per company); with ``deep``, the SHA-256 of the downloaded bytes against the
recorded checksum. :func:`queue_repairs` puts things right through the normal path: an
object that is there but wrong is removed first, then a resync of the day is queued
(deduplicated), and the sync rewrites whatever its listing finds missing.

Works the same on the local folder and on Supabase Storage.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select

from opsdash.engine import queue
from opsdash.engine.blobs import BlobNotFound, BlobStore, sha256_hex
from opsdash.engine.db import Database
from opsdash.engine.models import Company, ScheduleData, table_of

COMPANIES = table_of(Company)
SCHEDULES = table_of(ScheduleData)

MISSING = "missing"


@dataclass(frozen=True)
class Finding:
    """One company-day whose object differs from its ``schedule_data`` row."""

    company_id: uuid.UUID
    service_company_id: str
    day: date
    path: str
    problem: str
    present: bool  # the object exists (but is not what the row says)


@dataclass
class VerifyReport:
    companies: int = 0
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass(frozen=True)
class _Row:
    company_id: uuid.UUID
    service_company_id: str
    day: date
    path: str
    size_kb: float
    checksum: str


def verify(
    db: Database, blobs: BlobStore, *, service_company_id: str | None = None, deep: bool = False
) -> VerifyReport:
    """Compare every row (of one company, if given) with storage."""
    report = VerifyReport()
    by_company: dict[str, list[_Row]] = defaultdict(list)
    for row in _rows(db, service_company_id):
        by_company[row.service_company_id].append(row)
    for company, company_rows in sorted(by_company.items()):
        report.companies += 1
        sizes = {info.path: info.size for info in blobs.list_blobs(company)}
        for row in company_rows:
            report.checked += 1
            problem, present = _compare(blobs, row, sizes.get(row.path), deep=deep)
            if problem is not None:
                report.findings.append(
                    Finding(row.company_id, company, row.day, row.path, problem, present)
                )
    return report


def _compare(
    blobs: BlobStore, row: _Row, size: int | None, *, deep: bool
) -> tuple[str | None, bool]:
    if size is None:
        return MISSING, False
    # file_size_kb is recorded rounded to 2 decimals: compare the same rounding.
    if abs(round(size / 1024, 2) - row.size_kb) > 0.005:
        return f"size {size} B, recorded {row.size_kb:.2f} KB", True
    if deep:
        try:
            body = blobs.get(row.path)
        except BlobNotFound:
            return MISSING, False
        if sha256_hex(body) != row.checksum:
            return "content differs (SHA-256)", True
    return None, True


def _rows(db: Database, service_company_id: str | None) -> list[_Row]:
    query = (
        select(
            SCHEDULES.c.company_id,
            COMPANIES.c.service_company_id,
            SCHEDULES.c.date,
            SCHEDULES.c.storage_path,
            SCHEDULES.c.file_size_kb,
            SCHEDULES.c.checksum,
        )
        .join(COMPANIES, COMPANIES.c.id == SCHEDULES.c.company_id)
        .order_by(COMPANIES.c.service_company_id, SCHEDULES.c.date)
    )
    if service_company_id is not None:
        query = query.where(COMPANIES.c.service_company_id == service_company_id)
    with db.read() as conn:
        return [_Row(*row) for row in conn.execute(query)]


@dataclass(frozen=True)
class RepairResult:
    removed: int  # objects that were there but wrong, removed so the sync rewrites them
    queued: int  # resyncs newly queued (the others were already pending)


def queue_repairs(
    db: Database, blobs: BlobStore, findings: Sequence[Finding], *, max_attempts: int = 3
) -> RepairResult:
    """Queue a resync of every differing day; the workers do the rest."""
    wrong = [finding.path for finding in findings if finding.present]
    removed = blobs.delete_many(wrong) if wrong else 0
    jobs = [
        queue.schedule_job(
            finding.company_id,
            finding.day.isoformat(),
            max_attempts=max_attempts,
            service_company_id=finding.service_company_id,
        )
        for finding in findings
    ]
    queued = queue.enqueue(db, jobs) if jobs else 0
    if jobs and queued < len(jobs):
        queue.expedite(db, [job.dedup_key for job in jobs])
    return RepairResult(removed=removed, queued=queued)


def queue_resync(
    db: Database,
    company_id: uuid.UUID,
    day: date,
    *,
    service_company_id: str | None = None,
    max_attempts: int = 3,
) -> bool:
    """Queue (or make due now) a resync of one company-day; True when newly queued."""
    job = queue.schedule_job(
        company_id,
        day.isoformat(),
        max_attempts=max_attempts,
        service_company_id=service_company_id,
    )
    if queue.enqueue(db, [job]):
        return True
    queue.expedite(db, [job.dedup_key])
    return False
