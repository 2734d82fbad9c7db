"""What a job does: ``sync_schedule`` (fetch → transform → blob → metadata) and ``sync_users``.

Handlers never change a job's status; they return one :class:`Outcome` per
job and the worker records it through the queue.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, delete, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col
from tzlocal.windows_tz import win_tz

from opsdash.engine import auth_users, coordinator, jobparams, queue
from opsdash.engine.blobs import (
    SERVICE_COMPANY_ID,
    BlobStore,
    BlobStoreUnavailable,
    InvalidBlobPath,
    content_path,
    first_line,
    is_schedule_file,
    schedule_path,
    sha256_hex,
)
from opsdash.engine.db import Database, patiently
from opsdash.engine.models import (
    BackgroundJob,
    Company,
    JobType,
    Role,
    ScheduleData,
    UserProfile,
    table_of,
)
from opsdash.engine.sqltypes import utcnow
from opsdash.engine.transform import (
    DroppedValues,
    TransformError,
    build_document,
    document_counts,
    duplicate_job_ids,
    serialize_document,
    split_by_date,
)
from opsdash.engine.upstream import MAX_RANGE_DAYS, MaidCentralClient, UpstreamError

log = logging.getLogger("opsdash.handlers")
T = TypeVar("T")

COMPANIES = table_of(Company)
PROFILES = table_of(UserProfile)
SCHEDULES = table_of(ScheduleData)

ROLE_PRECEDENCE = (
    ("administrator", Role.ADMIN),
    ("office", Role.OFFICE),
    ("employee", Role.TECHNICIAN),
)


@dataclass(frozen=True)
class Outcome:
    job: BackgroundJob
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    retryable: bool = True


@dataclass
class HandlerContext:
    db: Database
    blobs: BlobStore
    upstream: MaidCentralClient
    days_ahead: int = 7
    max_attempts: int = 3
    on_enqueued: Callable[[], None] = lambda: None
    # Supabase mode: the users sync also maintains the Auth users (see auth_users.py).
    auth: auth_users.AuthAdmin | None = None
    # Set when the process stops: no new upstream request, no new write.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Whether this attempt of a job was taken over (the worker pool's heartbeat learns it).
    lease_lost: Callable[[BackgroundJob], bool] = lambda _job: False
    # How long a database call inside a handler waits out an outage before giving up.
    db_patience_s: float = 120.0

    def patiently(self, call: Callable[[], T], what: str) -> T:
        return patiently(call, patience_s=self.db_patience_s, stop=self.stopping, what=what)


def run(context: HandlerContext, jobs: Sequence[BackgroundJob]) -> list[Outcome]:
    """Run a claimed batch: one users job, or one company's schedule jobs."""
    if not jobs:
        return []
    kind = jobs[0].job_type
    if kind == JobType.SYNC_USERS:
        return [sync_users(context, job) for job in jobs]
    if kind == JobType.SYNC_SCHEDULE:
        return sync_schedule(context, jobs)
    return [
        Outcome(job, False, error=f"unknown job type {job.job_type!r}", retryable=False)
        for job in jobs
    ]


# --- sync_schedule ---------------------------------------------------------------------

INTERRUPTED = "interrupted: the worker is stopping"
LEASE_LOST = "lease lost: another attempt owns this job now; this one stopped"


def _date_windows(days: Iterable[date]) -> list[tuple[date, date]]:
    """Contiguous request ranges of at most MAX_RANGE_DAYS covering ``days``."""
    windows: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if windows and (day - windows[-1][0]).days < MAX_RANGE_DAYS:
            windows[-1] = (windows[-1][0], day)
        else:
            windows.append((day, day))
    return windows


def sync_schedule(context: HandlerContext, jobs: Sequence[BackgroundJob]) -> list[Outcome]:
    """One upstream call per date window serves all of a company's claimed days.

    A job may cover several days (the original Edge Function's range jobs): it
    gets one outcome, failed if any of its days failed.
    """
    outcomes: list[Outcome] = []
    works: list[tuple[BackgroundJob, jobparams.ScheduleWork]] = []
    for job in jobs:
        try:
            works.append((job, jobparams.schedule_work(job.company_id, job.params)))
        except ValueError as error:
            outcomes.append(Outcome(job, False, error=f"bad job params: {error}", retryable=False))
    if not works:
        return outcomes
    # A claimed batch is one company's: siblings share the head's company_id, and a row
    # without one (queued by the original system) is claimed alone.
    company = context.patiently(lambda: _company_of(context.db, works[0][1]), "loading the company")
    if company is None:
        head = works[0][1]
        missing = (
            "company no longer exists"
            if head.company_id is not None
            else f"unknown company {head.service_company_id!r}"
        )
        return outcomes + [Outcome(job, False, error=missing, retryable=False) for job, _ in works]
    if not (company.sync_enabled and company.portal_enabled):
        skipped = {"skipped": "sync disabled for company"}
        return outcomes + [Outcome(job, True, dict(skipped)) for job, _ in works]

    dated = [(job, day) for job, work in works for day in work.days]
    per_day: list[Outcome] = []
    for start, end in _date_windows(day for _, day in dated):
        window_jobs = [(job, day) for job, day in dated if start <= day <= end]
        per_day += _sync_window(context, company, window_jobs, start, end)
    return outcomes + _one_outcome_per_job(per_day)


def _company_of(db: Database, work: jobparams.ScheduleWork) -> Company | None:
    with db.session() as session:
        if work.company_id is not None:
            return session.get(Company, work.company_id)
        return session.execute(
            select(Company).where(col(Company.service_company_id) == work.service_company_id)
        ).scalar_one_or_none()


def _one_outcome_per_job(per_day: list[Outcome]) -> list[Outcome]:
    by_job: dict[uuid.UUID, list[Outcome]] = {}
    for outcome in per_day:
        by_job.setdefault(outcome.job.id, []).append(outcome)
    merged: list[Outcome] = []
    for parts in by_job.values():
        if len(parts) == 1:
            merged.append(parts[0])
            continue
        job, failed = parts[0].job, [part for part in parts if not part.ok]
        if failed:
            errors = "; ".join(dict.fromkeys(part.error for part in failed))
            retryable = all(part.retryable for part in failed)
            merged.append(Outcome(job, False, error=errors, retryable=retryable))
            continue
        result = {
            "days": len(parts),
            "unchanged": sum(bool(part.result.get("unchanged")) for part in parts),
            "jobs": sum(int(part.result.get("jobs", 0)) for part in parts),
            "bytes": sum(int(part.result.get("bytes", 0)) for part in parts),
        }
        merged.append(Outcome(job, True, result))
    return merged


def _still_ours(
    context: HandlerContext, jobs: Sequence[tuple[BackgroundJob, date]]
) -> tuple[list[tuple[BackgroundJob, date]], list[Outcome]]:
    """The jobs worth more work, and outcomes for those that are not (stopping, taken over)."""
    if context.stopping.is_set():
        return [], [Outcome(job, False, error=INTERRUPTED) for job, _ in jobs]
    live = [(job, day) for job, day in jobs if not context.lease_lost(job)]
    lost = [Outcome(job, False, error=LEASE_LOST) for job, _ in jobs if context.lease_lost(job)]
    return live, lost


def _sync_window(
    context: HandlerContext,
    company: Company,
    jobs: Sequence[tuple[BackgroundJob, date]],
    start: date,
    end: date,
) -> list[Outcome]:
    jobs, outcomes = _still_ours(context, jobs)
    if not jobs:
        return outcomes
    try:
        records = context.upstream.schedule(
            start,
            end,
            company.service_company_id,
            abandon=lambda: all(context.lease_lost(job) for job, _ in jobs),
        )
    except UpstreamError as error:
        failed = [
            Outcome(job, False, error=LEASE_LOST)
            if context.lease_lost(job)
            else Outcome(job, False, error=str(error), retryable=error.retryable)
            for job, _ in jobs
        ]
        return outcomes + failed
    by_day, unplaced = split_by_date(records)
    if unplaced and start != end:
        # A record whose date cannot be read belongs to one day, but which one? Asking
        # day by day finds it: only that day fails, the others are stored.
        log.warning(
            "%s: %s; fetching %s..%s day by day",
            company.service_company_id,
            unplaced[0],
            start,
            end,
        )
        for job, day in jobs:
            outcomes += _sync_window(context, company, [(job, day)], day, day)
        return outcomes
    if unplaced:
        message = f"malformed upstream data for {start}: {'; '.join(unplaced)}"
        return outcomes + [Outcome(job, False, error=message, retryable=False) for job, _ in jobs]

    stored = context.patiently(
        lambda: _stored_metadata(context.db, company.id, [day for _, day in jobs]),
        "reading stored schedule metadata",
    )
    # One listing of the company's documents (one request per 1,000 objects), so an object
    # lost or altered behind opsdash's back is noticed, and rewritten, without one extra
    # request per day. Storage being down here or below raises BlobStoreUnavailable: the
    # worker releases the batch unspent.
    present = (
        {info.path: info.size for info in context.blobs.list_blobs(company.service_company_id)}
        if stored
        else {}
    )
    changed: list[tuple[Outcome, ScheduleData]] = []
    unchanged: list[tuple[BackgroundJob, date]] = []
    for job, day in jobs:
        if context.stopping.is_set() or context.lease_lost(job):
            outcomes.append(Outcome(job, False, error=_why_stopped(context)))
            continue
        outcome, row = _store_day_safely(
            context, company, job, day, by_day.get(day, []), stored.get(day), present
        )
        (changed.append((outcome, row)) if row is not None else outcomes.append(outcome))
        if outcome.ok and outcome.result.get("unchanged") and not outcome.result.get("restored"):
            unchanged.append((job, day))
    _confirm_unchanged(context, company.id, unchanged)
    outcomes += _publish(context, changed, stored)
    done = {outcome.job.id for outcome in outcomes if outcome.ok}
    _sweep_leftovers(context, company, [day for job, day in jobs if job.id in done], present)
    return outcomes


def _why_stopped(context: HandlerContext) -> str:
    return INTERRUPTED if context.stopping.is_set() else LEASE_LOST


def _confirm_unchanged(
    context: HandlerContext, company_id: uuid.UUID, unchanged: list[tuple[BackgroundJob, date]]
) -> None:
    """Record that a sync confirmed the unchanged days (freshness reads ``synced_at``).

    Fenced like ``_publish``: only for jobs this attempt still holds, so a worker resumed
    past its lease does not call its old answer fresh. A failure here loses no data, only
    the confirmation: the day looks older than it is until the next sync, so it is logged
    and the jobs still complete.

    Days, not jobs: a range job queued by the original system covers several.
    """
    if not unchanged:
        return
    db = context.db
    try:
        with db.write() as conn:
            held = queue.still_held(db, conn, [job for job, _ in unchanged])
            days = [day for job, day in unchanged if job.id in held]
            if days:
                conn.execute(
                    update(SCHEDULES)
                    .where(SCHEDULES.c.company_id == company_id, SCHEDULES.c.date.in_(days))
                    .values(synced_at=utcnow())
                )
    except SQLAlchemyError as error:
        log.warning(
            "recording that %d unchanged days were synced failed: %s", len(unchanged), error
        )


def _publish(
    context: HandlerContext,
    changed: list[tuple[Outcome, ScheduleData]],
    stored: dict[date, ScheduleData],
) -> list[Outcome]:
    """Record the new days' metadata, fenced: only for jobs this attempt still holds.

    The lease check and the upsert share one transaction, so a worker that was stopped
    past its lease and resumed publishes nothing. Its blobs are content-addressed, so
    writing them could not overwrite what the newer attempt published; they are removed.
    """
    if not changed:
        return []
    db = context.db

    def publish() -> set[uuid.UUID]:
        with db.write() as conn:
            if db.is_postgres:
                # The superseded versions are deleted once this commits: it must be on disk
                # before the commit returns, whatever the server's default, or a crash could
                # bring back metadata that names a deleted version. LOCAL: this transaction
                # only, so safe through a transaction-mode pooler.
                conn.execute(text("SET LOCAL synchronous_commit = on"))
            held = queue.still_held(db, conn, [outcome.job for outcome, _ in changed])
            rows = [row for outcome, row in changed if outcome.job.id in held]
            if rows:
                _upsert_metadata(db, conn, rows)
            return held

    try:
        held = context.patiently(publish, "recording schedule metadata")
    except Exception as error:
        log.exception("recording schedule metadata failed")
        message = f"recording metadata failed: {type(error).__name__}: {error}"
        for _, row in changed:
            _discard(context, row.storage_path, unless_published=row)
        return [Outcome(outcome.job, False, error=message) for outcome, _ in changed]
    outcomes: list[Outcome] = []
    for outcome, row in changed:
        if outcome.job.id in held:
            outcomes.append(outcome)
            previous = stored.get(row.date)
            if previous is not None and previous.storage_path != row.storage_path:
                _discard(context, previous.storage_path)
        else:
            log.warning(
                "lost the lease of %s before publishing it; its data was dropped",
                row.storage_path,
            )
            _discard(context, row.storage_path, unless_published=row)
            outcomes.append(Outcome(outcome.job, False, error=LEASE_LOST))
    return outcomes


def _sweep_leftovers(
    context: HandlerContext, company: Company, days: list[date], present: dict[str, int]
) -> None:
    """Remove the listed documents of ``days`` that their metadata no longer names.

    A batch cut short (storage down halfway, a crash between writing and publishing) has
    written versions that nobody publishes; the next sync of the day renders a new
    ``generatedAt`` and so a new name, and without this sweep they stay forever. Only what
    the run's listing showed is removed, after the days were published, and never the
    object the metadata names at this moment: a version written since is left for the
    next run. Best effort, like ``_discard``.
    """
    if not days or not present:
        return
    try:
        current = _stored_metadata(context.db, company.id, days)
        leftovers = []
        for day in days:
            published = current.get(day)
            if published is None:
                continue
            folder = published.storage_path.rsplit("/", 1)[0] + "/"
            leftovers += [
                path
                for path in present
                if path.startswith(folder)
                and "/" not in path[len(folder) :]
                and is_schedule_file(path[len(folder) :])
                and path != published.storage_path
            ]
        if leftovers:
            removed = context.blobs.delete_many(leftovers)
            log.info(
                "%s: removed %d unpublished document version(s)",
                company.service_company_id,
                removed,
            )
    except Exception as error:
        log.warning(
            "%s: could not remove unpublished document versions: %s",
            company.service_company_id,
            error,
        )


def _discard(
    context: HandlerContext, path: str, unless_published: ScheduleData | None = None
) -> None:
    """Remove a blob nobody points at (a superseded or never published version).

    Best effort: a leftover file costs disk space, never correctness.
    """
    try:
        if unless_published is not None:
            current = _stored_metadata(
                context.db, unless_published.company_id, [unless_published.date]
            ).get(unless_published.date)
            if current is not None and current.storage_path == path:
                return
        context.blobs.delete(path)
    except Exception as error:
        log.warning("could not remove the unused blob %s: %s", path, error)


def _store_day_safely(
    context: HandlerContext,
    company: Company,
    job: BackgroundJob,
    day: date,
    records: list[dict[str, Any]],
    stored: ScheduleData | None,
    present: dict[str, int],
) -> tuple[Outcome, ScheduleData | None]:
    """A day that cannot be stored fails its job only; the others go on.

    Storage itself being unusable is not the day's fault: that propagates to the worker.
    """
    try:
        return _store_day(context, company, job, day, records, stored, present)
    except BlobStoreUnavailable:
        raise
    except Exception as error:
        reason = f"{type(error).__name__}: {first_line(str(error))}"
        log.warning("storing %s/%s failed: %s", company.service_company_id, day, reason)
        log.debug("storing %s/%s failed", company.service_company_id, day, exc_info=True)
        return Outcome(job, False, error=f"storing {day} failed: {reason}"), None


def _store_day(
    context: HandlerContext,
    company: Company,
    job: BackgroundJob,
    day: date,
    records: list[dict[str, Any]],
    stored: ScheduleData | None,
    present: dict[str, int],
) -> tuple[Outcome, ScheduleData | None]:
    """Write the day's blob if its content changed or the stored object is lost or
    different; returns the metadata row to record."""
    try:
        schedule_path(company.service_company_id, day)  # refuses an id or date that could escape
        document, body, generated_at, dropped = _render(company, day, records, stored)
    except (TransformError, InvalidBlobPath) as error:
        # The same data fails the same way next time: a data error is not retried.
        message = f"malformed upstream data for {day}: {error}"
        return Outcome(job, False, error=message, retryable=False), None

    checksum = sha256_hex(body)
    unchanged = stored is not None and stored.checksum == checksum
    path = stored.storage_path if unchanged and stored else None
    path = path or content_path(company.service_company_id, day, checksum)
    result: dict[str, Any] = {
        "path": path,
        "bytes": len(body),
        "checksum": checksum,
        "jobs": len(document["jobs"]),
        "unchanged": unchanged,
        "dropped_values": dropped.total,
    }
    duplicates = duplicate_job_ids(records)
    if duplicates:
        result["duplicate_jobs"] = duplicates
    if dropped.total:
        # Which fields, so the operator can tell the upstream what it sent; never the values.
        result["dropped_fields"] = dict(sorted(dropped.by_field.items()))
        log.warning(
            "%s/%s: %d upstream value(s) of the wrong type left out (%s)",
            company.service_company_id,
            day,
            dropped.total,
            ", ".join(f"{name}: {count}" for name, count in sorted(dropped.by_field.items())),
        )
    if unchanged:
        if _object_intact(present, path, len(body)):
            return Outcome(job, True, result), None
        # Same content, but the object is gone or not what was written: write it again.
        result.update(unchanged=False, restored=True)
        log.warning("%s was missing or different in storage; rewriting it", path)
    context.blobs.put(path, body)
    jobs_n, employees_n, teams_n = document_counts(document)
    row = ScheduleData(
        company_id=company.id,
        date=day,
        storage_path=path,
        file_size_kb=round(len(body) / 1024, 2),
        checksum=checksum,
        job_count=jobs_n,
        employee_count=employees_n,
        team_count=teams_n,
        status="ready",
        updated_at=generated_at,
        synced_at=utcnow(),
    )
    return Outcome(job, True, result), row


def _object_intact(present: dict[str, int], path: str, size: int) -> bool:
    """The listing shows the object the metadata names, of the size just rendered.

    By its exact name, so another document of the day (a version left over from a late
    write) does not stand in for it; an object replaced or truncated under that name
    shows another size. Bytes changed at the same size are for ``opsdash verify --deep`` to find.
    """
    return present.get(path) == size


def _render(
    company: Company, day: date, records: list[dict[str, Any]], stored: ScheduleData | None
) -> tuple[dict[str, Any], bytes, datetime, DroppedValues]:
    """The document and its bytes; an unchanged day reproduces the stored bytes exactly.

    ``generatedAt`` is the time the content last changed, kept equal to the
    metadata's ``updated_at``, so rendering unchanged data with the stored
    timestamp yields the stored checksum and nothing is rewritten.
    """
    if stored is not None and stored.updated_at is not None:
        document, body, dropped = _serialize(company, day, records, stored.updated_at)
        if sha256_hex(body) == stored.checksum:
            return document, body, stored.updated_at, dropped
    now = utcnow()
    generated_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
    document, body, dropped = _serialize(company, day, records, generated_at)
    return document, body, generated_at, dropped


def _serialize(
    company: Company, day: date, records: list[dict[str, Any]], generated_at: datetime
) -> tuple[dict[str, Any], bytes, DroppedValues]:
    dropped = DroppedValues()
    document = build_document(
        records,
        company_id=str(company.id),
        service_company_id=company.service_company_id,
        day=day,
        generated_at=generated_at,
        dropped=dropped,
    )
    return document, serialize_document(document), dropped


def _stored_metadata(
    db: Database, company_id: uuid.UUID, days: list[date]
) -> dict[date, ScheduleData]:
    with db.session() as session:
        rows = session.execute(
            select(ScheduleData).where(
                SCHEDULES.c.company_id == company_id,
                SCHEDULES.c.date.in_(days),
            )
        ).scalars()
        return {row.date: row for row in rows}


def _upsert_metadata(db: Database, conn: Connection, rows: list[ScheduleData]) -> None:
    values = [row.model_dump() for row in rows]
    insert = db.insert(SCHEDULES).values(values)
    keep = ("id", "company_id", "date")
    updated = {key: insert.excluded[key] for key in values[0] if key not in keep}
    conn.execute(insert.on_conflict_do_update(index_elements=["company_id", "date"], set_=updated))


# --- sync_users ------------------------------------------------------------------------


def windows_to_iana(zone: str | None) -> str:
    """MaidCentral reports Windows zone names ("Eastern Standard Time"); map them to IANA."""
    if not zone:
        return "UTC"
    if zone in win_tz:
        return win_tz[zone]
    if coordinator.company_zone(zone).key == zone:
        return zone  # already an IANA name
    log.warning("unknown upstream time zone %r; using UTC", zone)
    return "UTC"


def map_role(roles: Any) -> Role | None:
    """The highest known role in ``roles``, which must be a list of strings.

    Anything else reads as no role at all (fail closed): an object such as
    ``{"Administrator": false}`` names Administrator among its keys, and reading it
    as a list would make its user an admin of the whole company.
    """
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        return None
    names = {role.strip().lower() for role in roles}
    return next((role for name, role in ROLE_PRECEDENCE if name in names), None)


def _role_problem(roles: Any) -> str:
    if not isinstance(roles, list):
        return f"Roles is {_json_kind(roles)}, not a list of strings"
    if not all(isinstance(role, str) for role in roles):
        return "Roles holds something other than strings"
    return f"no known role in {roles!r}"[:200]


def _json_kind(value: Any) -> str:
    if value is None:
        return "missing"
    return {dict: "an object", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


@dataclass
class _UsersResult:
    companies: int = 0
    new_companies: list[str] = field(default_factory=list)
    profiles: int = 0
    removed_profiles: int = 0
    skipped: list[str] = field(default_factory=list)
    queued: int = 0


def sync_users(context: HandlerContext, job: BackgroundJob) -> Outcome:
    try:
        upstream_companies = context.upstream.users()
    except UpstreamError as error:
        return Outcome(job, False, error=str(error), retryable=error.retryable)

    now = utcnow()
    summary = _UsersResult()
    directory = _read_directory(upstream_companies, now, summary)
    if context.auth is not None:
        return _sync_users_with_auth(context, context.auth, job, directory, now, summary)

    # One transaction for the whole directory: a crash mid-way changes nothing.
    def store() -> None:
        attempt = _UsersResult(skipped=list(summary.skipped))
        with context.db.write() as conn:
            company_ids = _upsert_companies(context.db, conn, directory, now, attempt)
            _replace_profiles(context.db, conn, directory, company_ids, now, attempt)
        summary.__dict__.update(attempt.__dict__)

    context.patiently(store, "storing the users directory")
    if summary.new_companies:
        summary.queued = context.patiently(
            lambda: _queue_new_companies(context, summary.new_companies, job),
            "queueing new companies",
        )
    return Outcome(job, True, summary.__dict__)


def _sync_users_with_auth(
    context: HandlerContext,
    auth: auth_users.AuthAdmin,
    job: BackgroundJob,
    directory: list[_UpstreamCompany],
    now: datetime,
    summary: _UsersResult,
) -> Outcome:
    """Companies, then the Auth users, then the profiles keyed by Auth id.

    No transaction is held open across the admin calls (thousands of them would block
    every SQLite writer); each step is idempotent, so a crash in between is repaired by
    the next run. The Auth listing comes first: without it nothing is changed.
    """
    try:
        listing = auth.list_all()
    except auth_users.AuthAdminError as error:
        message = f"listing Supabase Auth users failed: {error}"
        return Outcome(job, False, error=message, retryable=error.retryable)
    with context.db.write() as conn:
        company_ids = _upsert_companies(context.db, conn, directory, now, summary)
    wanted = [
        auth_users.WantedUser(
            maidcentral_user_id=user["maidcentral_user_id"],
            email=user["email"],
            company_id=company_ids[company.service_id],
            service_company_id=company.service_id,
            role=user["role"],
            employee_information_id=user["employee_information_id"],
        )
        for company in directory
        for user in company.users
    ]
    result = auth_users.reconcile(auth, listing, wanted, _linked_profiles(context.db))
    with context.db.write() as conn:
        _replace_profiles(
            context.db,
            conn,
            directory,
            company_ids,
            now,
            summary,
            profile_ids=result.profile_ids,
            kept=result.kept,
        )
    if summary.new_companies:
        summary.queued = _queue_new_companies(context, summary.new_companies, job)
    if result.aborted:
        return Outcome(job, False, error=f"{result.aborted}; {result.failed} users not in step")
    return Outcome(job, True, {**summary.__dict__, "auth_users": result.summary()})


def _linked_profiles(db: Database) -> dict[uuid.UUID, uuid.UUID]:
    """Upstream UserId → profile id, for every profile."""
    with db.read() as conn:
        rows = conn.execute(select(PROFILES.c.maidcentral_user_id, PROFILES.c.id))
        return {upstream_id: profile_id for upstream_id, profile_id in rows if upstream_id}


@dataclass
class _UpstreamCompany:
    service_id: str
    active: bool
    values: dict[str, Any]
    users: list[dict[str, Any]]


def _read_directory(
    upstream_companies: list[Any], now: datetime, summary: _UsersResult
) -> list[_UpstreamCompany]:
    """Validate the upstream's companies and users; what is unusable is reported, not stored."""
    directory: list[_UpstreamCompany] = []
    seen_users: set[uuid.UUID] = set()
    for raw in upstream_companies:
        if not isinstance(raw, Mapping):
            summary.skipped.append("a company record that is not an object")
            continue
        record = {str(key).lower(): value for key, value in raw.items()}
        service_id = str(record.get("servicecompanyid") or "")
        if not SERVICE_COMPANY_ID.fullmatch(service_id):
            summary.skipped.append(f"company with invalid ServiceCompanyId {service_id!r}")
            continue
        toggles = record.get("featuretoggles")
        values = {
            "name": str(record.get("name") or service_id),
            "timezone": windows_to_iana(record.get("timezoneinfoid")),
            # Only real booleans: bool("false") is True, and a toggle read wrongly as on
            # would show a technician what the company hides. Privacy treats a missing
            # toggle as off.
            "feature_toggles": {k: v for k, v in toggles.items() if isinstance(v, bool)}
            if isinstance(toggles, Mapping)
            else {},
            "updated_at": now,
        }
        users: list[dict[str, Any]] = []
        raw_users = record.get("users")
        for user in raw_users if isinstance(raw_users, list) else []:
            row = _profile_row(user, now)
            if isinstance(row, str):
                summary.skipped.append(row)
            elif row["id"] in seen_users:
                summary.skipped.append(f"user {row['id']} listed in more than one company")
            else:
                seen_users.add(row["id"])
                users.append(row)
        active = record.get("isactive") is True
        directory.append(_UpstreamCompany(service_id, active, values, users))
    return directory


def _upsert_companies(
    db: Database,
    conn: Connection,
    directory: list[_UpstreamCompany],
    now: datetime,
    summary: _UsersResult,
) -> dict[str, uuid.UUID]:
    """Create new companies, refresh known ones; returns service id → company id."""
    service_ids = [company.service_id for company in directory]
    known: dict[str, uuid.UUID] = {}
    for chunk in _chunks(service_ids, 500):
        rows = conn.execute(
            select(COMPANIES.c.service_company_id, COMPANIES.c.id).where(
                COMPANIES.c.service_company_id.in_(chunk)
            )
        )
        known.update({service_id: company_id for service_id, company_id in rows})
    created = [
        {
            "id": uuid.uuid4(),
            "service_company_id": company.service_id,
            "sync_enabled": company.active,
            "portal_enabled": company.active,
            "toggle_overrides": {},
            "created_at": now,
            **company.values,
        }
        for company in directory
        if company.service_id not in known
    ]
    for chunk in _chunks(created, 500):
        conn.execute(COMPANIES.insert(), chunk)
    # Operator state (overrides, enabled flags) is never touched by a sync.
    refreshed = [
        {"known_id": known[company.service_id], **company.values}
        for company in directory
        if company.service_id in known
    ]
    if refreshed:
        conn.execute(
            COMPANIES.update()
            .where(COMPANIES.c.id == bindparam("known_id"))
            .values({key: bindparam(key) for key in refreshed[0] if key != "known_id"}),
            refreshed,
        )
    summary.companies = len(directory)
    summary.new_companies = [row["service_company_id"] for row in created]
    return known | {row["service_company_id"]: row["id"] for row in created}


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _profile_row(user: Any, now: datetime) -> dict[str, Any] | str:
    """A user_profiles row (without its company), or the reason the user was skipped."""
    if not isinstance(user, Mapping):
        return "a user record that is not an object"
    record = {str(key).lower(): value for key, value in user.items()}
    try:
        user_id = uuid.UUID(str(record.get("userid")))
    except ValueError:
        return f"user with invalid UserId {record.get('userid')!r}"
    role = map_role(record.get("roles"))
    if role is None:
        return f"user {user_id} has no role: {_role_problem(record.get('roles'))}"
    employee_id = record.get("employeeinformationid")
    if isinstance(employee_id, bool) or not isinstance(employee_id, str | int | None):
        return f"user {user_id} has an EmployeeInformationId that is not a string or number"
    email = record.get("email")
    full_name = _plain(record.get("fullname")) or " ".join(
        part for part in (_plain(record.get("firstname")), _plain(record.get("lastname"))) if part
    )
    return {
        "id": user_id,
        "maidcentral_user_id": user_id,
        "role": str(role),
        "employee_information_id": str(employee_id) if employee_id not in (None, "") else None,
        "email": email.strip().lower() or None if isinstance(email, str) else None,
        "full_name": full_name or None,
        "updated_at": now,
    }


def _plain(value: Any) -> str | None:
    """Upstream text, never the text of an object or a list."""
    return value.strip() or None if isinstance(value, str) else None


def _replace_profiles(
    db: Database,
    conn: Connection,
    directory: list[_UpstreamCompany],
    company_ids: dict[str, uuid.UUID],
    now: datetime,
    summary: _UsersResult,
    *,
    profile_ids: Mapping[uuid.UUID, uuid.UUID] | None = None,
    kept: Iterable[uuid.UUID] = (),
) -> None:
    """Upsert every listed user; remove the profiles the upstream no longer lists (fail closed).

    ``profile_ids`` (Supabase mode) maps an upstream UserId to its Auth id, the profile's
    id; a user missing from it has no Auth user and gets no profile. Without it the
    profile id is the upstream UserId. ``kept`` are upstream ids whose existing profile
    stays although their Auth call failed this run.
    """
    rows = [
        {**user, "company_id": company_ids[company.service_id]}
        for company in directory
        for user in company.users
    ]
    if profile_ids is not None:
        rows = [
            {**row, "id": profile_ids[row["maidcentral_user_id"]]}
            for row in rows
            if row["maidcentral_user_id"] in profile_ids
        ]
    _unlink_moved_profiles(conn, rows)
    if rows:
        # One statement compiled once and executed for every row (SQLAlchemy batches the
        # rows into multi-row VALUES itself); a literal multi-row VALUES per chunk spent
        # most of a 20,000-user sync compiling SQL.
        insert = db.insert(PROFILES)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["id"],
                set_={key: insert.excluded[key] for key in rows[0] if key != "id"},
            ),
            rows,
        )
    for chunk in _chunks(list(kept), 500):
        conn.execute(
            PROFILES.update()
            .where(PROFILES.c.maidcentral_user_id.in_(chunk))
            .values(updated_at=now)
        )
    # Every profile listed this run was just stamped with ``now``; the rest, including
    # those of companies the upstream no longer lists, lose access (fail closed). An
    # empty directory is far more likely an upstream fault than everyone leaving.
    removed = 0
    if rows or kept:
        removed = conn.execute(
            delete(PROFILES).where(
                or_(PROFILES.c.updated_at.is_(None), PROFILES.c.updated_at < now)
            )
        ).rowcount
    summary.profiles = len(rows)
    summary.removed_profiles = removed


def _unlink_moved_profiles(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Drop a profile whose upstream user now maps to another id (the unique key would clash)."""
    wanted = {row["maidcentral_user_id"]: row["id"] for row in rows}
    moved: list[uuid.UUID] = []
    for chunk in _chunks(list(wanted), 500):
        found = conn.execute(
            select(PROFILES.c.id, PROFILES.c.maidcentral_user_id).where(
                PROFILES.c.maidcentral_user_id.in_(chunk)
            )
        )
        moved += [profile for profile, upstream in found if wanted[upstream] != profile]
    for chunk in _chunks(moved, 500):
        conn.execute(delete(PROFILES).where(PROFILES.c.id.in_(chunk)))


def _queue_new_companies(
    context: HandlerContext, service_ids: list[str], users_job: BackgroundJob
) -> int:
    """Companies seen for the first time get their schedule jobs at once, in the run of the
    users job that found them (the first run of a new deployment syncs every day this way)."""
    with context.db.session() as session:
        companies = [
            company
            for company in session.execute(
                select(Company).where(COMPANIES.c.service_company_id.in_(service_ids))
            ).scalars()
            if company.sync_enabled and company.portal_enabled
        ]
    jobs = coordinator.schedule_jobs_for(
        companies, now=utcnow(), days_ahead=context.days_ahead, max_attempts=context.max_attempts
    )
    run = (users_job.params or {}).get("run")
    if isinstance(run, str):
        jobs = coordinator.in_run(jobs, run)
    queued = queue.enqueue(context.db, jobs)
    if queued:
        context.on_enqueued()
    return queued


__all__ = ["HandlerContext", "Outcome", "map_role", "run", "windows_to_iana"]
