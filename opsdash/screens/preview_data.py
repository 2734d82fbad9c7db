"""What the technician preview reads, off the UI thread: its request, and stored days parsed once.

The preview's refresh runs in a worker thread every few seconds. It is handed an
immutable :class:`PreviewRequest` captured on the UI thread (never the screen's own
attributes, which the operator changes meanwhile). A stored day is read from storage
and parsed once per checksum (:class:`DayCache`): a 2,500-job day is 6.8 MB of JSON,
and re-reading it on every refresh is what froze the console. The technician's view of
a day is cached the same way, so an unchanged day costs the refresh four small queries
(shared between browser consoles, through :class:`~opsdash.shared_reads.ConsoleReads`).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, TypeVar

import orjson

from opsdash.engine.blobs import BlobNotFound, BlobStore
from opsdash.engine.queries import Person, StoredDay
from opsdash.privacy import schedule_view
from opsdash.screens.messages import PreviewChoices, PreviewLoaded, PreviewResult
from opsdash.shared_reads import ConsoleReads

DAYS_KEPT = 4
VIEWS_KEPT = 16

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class PreviewRequest:
    """What the operator chose when the refresh started (None: let the preview choose)."""

    company_id: uuid.UUID | None = None
    day: date | None = None
    person_id: uuid.UUID | None = None


@dataclass(frozen=True)
class ParsedDay:
    """A stored day's document, parsed, with what the choosers need from it."""

    checksum: str
    document: dict[str, Any]
    jobs_per_employee: dict[str, int]


class _Lru(Generic[K, V]):
    """A small thread-safe least-recently-used map that makes each missing value once.

    Refreshes are exclusive thread workers, and Textual cannot stop a thread it cancels: a
    slow first read of a big day is still running when the next refresh asks for the same
    day. That second caller waits for the first one's value instead of reading it again.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[K, threading.Lock] = {}

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:  # outside the map's lock: reading a blob may take a while
            with self._lock:
                if key in self._items:  # made by the caller this one waited for
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._done_making(key, making)
                raise
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
                self._done_making(key, making)
        return value

    def _done_making(self, key: K, making: threading.Lock) -> None:
        if self._making.get(key) is making:
            del self._making[key]

    def __len__(self) -> int:
        return len(self._items)


class DayCache:
    """Stored days parsed once per checksum, and technician views once per (day, person, toggles).

    A day whose checksum moved is a new key: the next refresh reads the new blob.
    """

    def __init__(self, days: int = DAYS_KEPT, views: int = VIEWS_KEPT) -> None:
        self._days: _Lru[tuple[str, str], ParsedDay] = _Lru(days)
        self._views: _Lru[Hashable, PreviewResult] = _Lru(views)
        self.reads = 0
        """How many times a blob was read and parsed (tests and the benchmark check it)."""

    def day(self, blobs: BlobStore, stored: StoredDay) -> ParsedDay:
        def read() -> ParsedDay:
            self.reads += 1
            document = orjson.loads(blobs.get(stored.storage_path))
            return ParsedDay(stored.checksum, document, employee_ids_on_jobs(document))

        return self._days.get_or_make((stored.storage_path, stored.checksum), read)

    def view(
        self, day: ParsedDay, person: Person, toggles: dict[str, Any], company_id: uuid.UUID
    ) -> PreviewResult:
        key = (day.checksum, person, company_id, orjson.dumps(toggles, option=orjson.OPT_SORT_KEYS))
        return self._views.get_or_make(
            key, lambda: technician_preview(day, person, toggles, company_id)
        )


def employee_ids_on_jobs(document: Mapping[str, Any]) -> dict[str, int]:
    """How many jobs each employee is scheduled on, by EmployeeInformationId."""
    counts: dict[str, int] = {}
    for job in document.get("jobs") or []:
        ids = {
            str(entry.get("EmployeeInformationId")) for entry in job.get("employeeSchedules") or []
        }
        for employee in ids:
            counts[employee] = counts.get(employee, 0) + 1
    return counts


def default_day(days: list[StoredDay], today: date) -> date | None:
    """The first stored day from today on, else the newest one."""
    upcoming = sorted(day.date for day in days if day.date >= today)
    if upcoming:
        return upcoming[0]
    return days[0].date if days else None


def default_person(people: Iterable[Person], jobs_per_employee: Mapping[str, int]) -> Person | None:
    """The first technician who has work that day (else the first one)."""
    people = list(people)
    busy = (p for p in people if jobs_per_employee.get(p.employee_information_id or "", 0) > 0)
    return next(busy, people[0] if people else None)


def technician_preview(
    day: ParsedDay, person: Person, toggles: dict[str, Any], company_id: uuid.UUID
) -> PreviewResult:
    """The technician's view of the day, by the read API's own privacy function."""
    document = day.document
    view = schedule_view(
        document,
        role=person.role,
        employee_id=person.employee_information_id,
        toggles=toggles,
        company_id=str(company_id),
    )
    shown = {str(job.get("jobId")) for job in view.get("jobs") or []}
    full_jobs = {
        str(job.get("jobId")): job
        for job in document.get("jobs") or []
        if str(job.get("jobId")) in shown
    }
    return PreviewResult(
        person=person,
        view=view,
        full_jobs=full_jobs,
        total_jobs=len(document.get("jobs") or []),
        toggles=toggles,
        checksum=day.checksum,
    )


def load_preview(
    reads: ConsoleReads, blobs: BlobStore, request: PreviewRequest, today: date, cache: DayCache
) -> PreviewLoaded:
    """Everything the preview shows for ``request`` (runs in a worker thread). Its queries
    go through the console's reads, which browser consoles share."""
    companies = reads.company_choices()
    company_id = request.company_id
    if company_id not in {company.id for company in companies}:
        company_id = companies[0].id if companies else None
    if company_id is None:
        return PreviewLoaded(PreviewChoices(companies), None, "No companies yet.")
    days = reads.stored_days(company_id)
    day = request.day if request.day in {d.date for d in days} else default_day(days, today)
    people = reads.technicians(company_id)
    stored = next((d for d in days if d.date == day), None)
    parsed: ParsedDay | None = None
    problem = None
    if stored is None:
        problem = "Nothing stored for this company yet: resync it from the companies screen."
    else:
        try:
            parsed = cache.day(blobs, stored)
        except BlobNotFound:
            problem = f"The stored document {stored.storage_path} is missing from storage."
    jobs_per_employee = parsed.jobs_per_employee if parsed else {}
    person = next((p for p in people if p.id == request.person_id), None)
    person = person or default_person(people, jobs_per_employee)
    choices = PreviewChoices(
        companies=companies,
        company_id=company_id,
        days=days,
        day=day,
        people=people,
        person_id=person.id if person else None,
        jobs_per_employee=jobs_per_employee,
    )
    if parsed is None:
        return PreviewLoaded(choices, None, problem)
    if person is None:
        return PreviewLoaded(choices, None, "This company has no technicians.")
    toggles = reads.company_toggles(company_id)
    effective = toggles.effective if toggles else {}
    return PreviewLoaded(choices, cache.view(parsed, person, effective, company_id))
