"""Typed messages (and the snapshots they carry) between worker threads and the UI.

Refresh workers run in threads and hand their results over with ``post_message``,
which is thread-safe. Snapshot-style messages override ``can_replace``: when a
newer snapshot of the same kind is already queued, the older one is dropped, so
a busy UI never works through a backlog of stale data.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from textual.message import Message

from opsdash.engine.alerting.outbox import Delivery
from opsdash.engine.audit import AuditEntry
from opsdash.engine.freshness import CompanyFreshness, Freshness
from opsdash.engine.ledger import RunSummary
from opsdash.engine.queries import (
    CompanyChoice,
    CompanyStorage,
    CompanyToggles,
    HourlyThroughput,
    JobDetail,
    JobRow,
    Person,
    RunProgress,
    StorageTotals,
    StoredDay,
    SyncTimes,
)
from opsdash.engine.runtime import EngineStatus

Severity = Literal["information", "warning", "error"]


class _Snapshot(Message, bubble=False):
    """A newer message of the same class supersedes a queued older one."""

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


# --- the system status in the header ----------------------------------------------------


@dataclass(frozen=True)
class SystemStatus:
    engine: EngineStatus
    database_ok: bool
    checked_at: datetime
    sync_times: SyncTimes | None = None
    database_error: str | None = None
    database_ms: float = 0.0
    down_since: datetime | None = None
    freshness: Counter[Freshness] | None = None
    """Companies by freshness state (refreshed less often than the rest)."""


@dataclass
class StatusLoaded(_Snapshot):
    status: SystemStatus


# --- jobs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobsSnapshot:
    rows: list[JobRow]
    counts: dict[str, int]
    throughput: HourlyThroughput
    progress: RunProgress | None
    companies: list[CompanyChoice]
    now: datetime
    selected: JobDetail | None = None


@dataclass
class JobsLoaded(_Snapshot):
    snapshot: JobsSnapshot


@dataclass
class JobDetailLoaded(_Snapshot):
    job_id: uuid.UUID
    detail: JobDetail | None


# --- companies and storage --------------------------------------------------------------


@dataclass(frozen=True)
class CompaniesSnapshot:
    rows: list[CompanyStorage]
    totals: StorageTotals
    now: datetime
    freshness: dict[uuid.UUID, CompanyFreshness] = field(default_factory=dict)


@dataclass
class CompaniesLoaded(_Snapshot):
    snapshot: CompaniesSnapshot


@dataclass(frozen=True)
class CompanySnapshot:
    company: CompanyStorage | None
    toggles: CompanyToggles | None
    days: list[StoredDay]
    now: datetime
    freshness: CompanyFreshness | None = None


@dataclass
class CompanyLoaded(_Snapshot):
    snapshot: CompanySnapshot


# --- technician preview -----------------------------------------------------------------


@dataclass(frozen=True)
class PreviewChoices:
    """What can be chosen, and what is chosen (None where nothing can be)."""

    companies: list[CompanyChoice]
    company_id: uuid.UUID | None = None
    days: list[StoredDay] = field(default_factory=list)
    day: date | None = None
    people: list[Person] = field(default_factory=list)
    person_id: uuid.UUID | None = None
    jobs_per_employee: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PreviewResult:
    """What one technician's portal would receive for one company-day."""

    person: Person
    view: dict[str, Any]
    full_jobs: dict[str, dict[str, Any]]
    """The unfiltered version of each job in the view, by jobId, to name what was left out."""
    total_jobs: int
    toggles: dict[str, Any]
    checksum: str = ""
    """The stored day's checksum: with the person and toggles, what identifies this view."""

    @property
    def key(self) -> tuple[str, Person, str]:
        """A cheap identity: comparing two views of a 6.8 MB day field by field is not."""
        return (self.checksum, self.person, repr(sorted(self.toggles.items())))


@dataclass
class PreviewLoaded(_Snapshot):
    choices: PreviewChoices
    result: PreviewResult | None
    problem: str | None = None


# --- modals and actions -----------------------------------------------------------------


@dataclass
class FailedJobsFound(Message, bubble=False):
    """The failed jobs a "retry all" would retry, counted before asking to confirm."""

    job_ids: list[uuid.UUID]
    description: str


@dataclass
class TogglesReady(Message):
    """A company's toggles, read for the editor."""

    toggles: CompanyToggles


@dataclass
class ActionDone(Message):
    """An operator action finished in a worker: the app shows a toast and refreshes."""

    text: str
    severity: Severity = "information"


# --- log lines --------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    seq: int
    at: datetime
    level: str
    logger: str
    message: str


@dataclass
class HistoryLoaded(_Snapshot):
    runs: list[RunSummary]
    now: datetime


@dataclass
class LogLoaded(_Snapshot):
    """What the log screen reads from the database: alerts sent and operator actions."""

    deliveries: list[Delivery]
    actions: list[AuditEntry]


class LogLinesArrived(Message):
    """New lines are waiting in the log buffer; one queued notice is enough."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LogLinesArrived)
