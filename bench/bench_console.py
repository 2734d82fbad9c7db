"""Console benchmark: the refresh queries over 200,000 jobs, then the console itself.

    .venv/bin/python bench/bench_console.py [--rows 200000] [--backend sqlite|postgres|both]

Seeds ``--rows`` background jobs (hourly sync runs of 150 companies x 7 days, the newest
run still in flight), the companies, their stored days (``schedule_data``) and 90 days of
hourly ``job_stats`` into a temporary SQLite file and/or an isolated schema on the
PostgreSQL server on 127.0.0.1:5432 (dropped afterwards), with bulk inserts.
Times every query a console refresh runs (median of several runs after a warm-up).
Then, against the SQLite database and in a fresh process, runs the console headless
(Textual ``run_test``), visits every screen, and reports how long its refreshes took and
the process's peak RSS. Prints the figures as tables.

    .venv/bin/python bench/bench_console.py --large-day

Syncs a demo day of 2,500 jobs (all on the technician the preview opens with) and opens
the technician preview on it: time to first render, the longest UI stall, job cards
mounted, key latency, and UI stalls during later refreshes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from backends import postgres_url
from sqlalchemy import Table, insert
from textual.message import Message
from textual.pilot import Pilot

from opsdash.app import OpsdashApp
from opsdash.config import Settings
from opsdash.demo.crowded import CrowdedDayWorld
from opsdash.demo.data import DemoWorld
from opsdash.demo.server import DemoUpstream
from opsdash.engine import queries
from opsdash.engine.blobs import LocalBlobStore, schedule_path
from opsdash.engine.db import Database, connect, create_schema
from opsdash.engine.handlers import map_role
from opsdash.engine.models import (
    BackgroundJob,
    Company,
    JobStat,
    JobStatus,
    JobType,
    ScheduleData,
    UserProfile,
    table_of,
)
from opsdash.engine.queries import JobFilter
from opsdash.engine.runtime import Engine
from opsdash.engine.transform import build_document, document_counts, serialize_document
from opsdash.screens.base import LiveScreen
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.confirm import ConfirmScreen
from opsdash.screens.jobs import JobsScreen
from opsdash.screens.log import LogScreen
from opsdash.screens.preview import PreviewScreen
from opsdash.screens.toggles import TogglesScreen

COMPANIES = 150
DAYS_AHEAD = 7
SCHEDULE_JOBS = COMPANIES * DAYS_AHEAD
RUN_SIZE = 1 + SCHEDULE_JOBS  # an hourly sync run: the users job and one job per company-day
FAILED_SHARE, CANCELLED_SHARE = 0.02, 0.01
STATS_DAYS = 90
INSERT_BATCH = 10_000
QUERY_RUNS = 7
ZONES = ("America/New_York", "America/Chicago", "America/Los_Angeles", "UTC")
WORKER_ID = "bench:1:00000000"
SEARCH_TERM = "Company 042"
# What one sync run left behind, as pruning rolls it up into job_stats.
HOURLY_OUTCOMES = (
    (JobType.SYNC_SCHEDULE, JobStatus.FAILED, round(SCHEDULE_JOBS * FAILED_SHARE)),
    (JobType.SYNC_SCHEDULE, JobStatus.CANCELLED, round(SCHEDULE_JOBS * CANCELLED_SHARE)),
    (
        JobType.SYNC_SCHEDULE,
        JobStatus.COMPLETED,
        SCHEDULE_JOBS - round(SCHEDULE_JOBS * (FAILED_SHARE + CANCELLED_SHARE)),
    ),
    (JobType.SYNC_USERS, JobStatus.COMPLETED, 1),
)

APP_SIZE = (120, 36)
POLL_INTERVAL_S = 1.0  # the console's default
REFRESHES_PER_SCREEN = 4
SCREEN_TIMEOUT_S = 60.0

JOBS_TABLE = table_of(BackgroundJob)
COMPANIES_TABLE = table_of(Company)
STATS_TABLE = table_of(JobStat)
SCHEDULES_TABLE = table_of(ScheduleData)
PROFILES_TABLE = table_of(UserProfile)


# --- seeding ------------------------------------------------------------------------------

Document = tuple[dict[str, Any], bytes]  # a schedule document and its stored bytes


@dataclass(frozen=True)
class SeedCounts:
    jobs: int
    companies: int
    stored_days: int
    stats: int
    seconds: float


def new_id(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def company_rows(now: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """Company 000 takes the demo company's toggles: the preview shows its documents."""
    toggles = DemoWorld(companies=1).companies[0].feature_toggles
    return [
        {
            "id": new_id(rng),
            "service_company_id": str(5000 + index),
            "name": f"Company {index:03d}",
            "sync_enabled": True,
            "portal_enabled": True,
            "feature_toggles": dict(toggles),
            "toggle_overrides": {},
            "timezone": ZONES[index % len(ZONES)],
            "created_at": now - timedelta(days=STATS_DAYS + 30),
            "updated_at": now,
        }
        for index in range(COMPANIES)
    ]


def job_row(
    job_type: JobType,
    company: dict[str, Any] | None,
    params: dict[str, Any],
    dedup_key: str,
    created: datetime,
    rng: random.Random,
) -> dict[str, Any]:
    """A pending job as the coordinator queues it (every job of a run shares ``created_at``)."""
    return {
        "id": new_id(rng),
        "job_type": str(job_type),
        "company_id": company["id"] if company else None,
        "status": str(JobStatus.PENDING),
        "params": params,
        "result": None,
        "error_message": None,
        "attempts": 0,
        "max_attempts": 3,
        "scheduled_at": created,
        "started_at": None,
        "completed_at": None,
        "duration_ms": None,
        "created_at": created,
        "locked_by": None,
        "lease_expires_at": None,
        "dedup_key": dedup_key,
        "errors": [],
        "rescue_count": 0,
    }


def schedule_job_row(
    company: dict[str, Any], day: date, created: datetime, rng: random.Random
) -> dict[str, Any]:
    params = {"date": day.isoformat(), "company": company["service_company_id"]}
    dedup_key = f"sync_schedule:{company['id']}:{params['date']}"
    return job_row(JobType.SYNC_SCHEDULE, company, params, dedup_key, created, rng)


def finish(job: dict[str, Any], started: datetime, rng: random.Random) -> None:
    """Mostly completed; some failed after three attempts, a few cancelled before starting."""
    roll = rng.random()
    if roll < CANCELLED_SHARE:
        job.update(status=str(JobStatus.CANCELLED))
        return
    duration_ms = rng.randint(300, 2500)
    completed = started + timedelta(milliseconds=duration_ms)
    job.update(
        started_at=started,
        completed_at=completed,
        duration_ms=duration_ms,
        locked_by=WORKER_ID,
        attempts=1,
    )
    if roll < CANCELLED_SHARE + FAILED_SHARE:
        message = "upstream answered HTTP 500"
        errors = [
            {"attempt": n, "at": completed.isoformat(), "worker": WORKER_ID, "message": message}
            for n in (1, 2, 3)
        ]
        job.update(status=str(JobStatus.FAILED), attempts=3, error_message=message, errors=errors)
        return
    day = job["params"].get("date", "users")
    job.update(
        status=str(JobStatus.COMPLETED),
        result={
            "path": f"{job['params'].get('company', '')}/{day}/schedule.json",
            "bytes": rng.randint(20_000, 60_000),
            "checksum": f"{rng.getrandbits(256):064x}",
            "jobs": rng.randint(10, 60),
            "unchanged": rng.random() < 0.8,
        },
    )


def run_jobs(
    companies: Sequence[dict[str, Any]],
    created: datetime,
    now: datetime,
    rng: random.Random,
    *,
    in_flight: bool,
) -> list[dict[str, Any]]:
    """One sync run. In flight: 40% done, four running, the rest pending."""
    jobs = [job_row(JobType.SYNC_USERS, None, {}, "sync_users", created, rng)]
    for company in companies:
        for offset in range(DAYS_AHEAD):
            day = created.date() + timedelta(days=offset)
            jobs.append(schedule_job_row(company, day, created, rng))
    done = int(len(jobs) * 0.4) if in_flight else len(jobs)
    span_s = 110.0 if not in_flight else (now - created).total_seconds()
    for index, job in enumerate(jobs[:done]):
        finish(job, created + timedelta(seconds=span_s * index / len(jobs)), rng)
    if in_flight:
        for job in jobs[done : done + 4]:
            job.update(
                status=str(JobStatus.RUNNING),
                attempts=1,
                started_at=now - timedelta(seconds=1),
                locked_by=WORKER_ID,
                lease_expires_at=now + timedelta(seconds=60),
            )
    return jobs


def job_rows(
    companies: Sequence[dict[str, Any]], count: int, now: datetime, rng: random.Random
) -> list[dict[str, Any]]:
    """Hourly runs, newest first, until ``count`` jobs; the newest began two minutes ago."""
    newest = now - timedelta(minutes=2)
    rows: list[dict[str, Any]] = []
    hour = 0
    while len(rows) < count:
        created = newest - timedelta(hours=hour)
        rows.extend(run_jobs(companies, created, now, rng, in_flight=hour == 0))
        hour += 1
    return rows[:count]


def preview_documents(
    company: dict[str, Any], days: Sequence[date], now: datetime
) -> dict[date, Document]:
    """Real schedule documents (the demo company's jobs) for the company the preview opens."""
    world = DemoWorld(companies=1)
    demo_id = world.service_company_ids[0]
    documents: dict[date, Document] = {}
    for day in days:
        document = build_document(
            world.jobs_for_day(demo_id, day),
            company_id=str(company["id"]),
            service_company_id=company["service_company_id"],
            day=day,
            generated_at=now,
        )
        documents[day] = (document, serialize_document(document))
    return documents


def stored_day_rows(
    companies: Sequence[dict[str, Any]],
    days: Sequence[date],
    documents: dict[date, Document],
    now: datetime,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """One stored day per company-day synced so far; Company 000's match real documents."""
    rows = []
    for company in companies:
        for day in days:
            if company is companies[0]:
                document, body = documents[day]
                jobs, employees, teams = document_counts(document)
                kb, checksum = round(len(body) / 1024, 2), hashlib.sha256(body).hexdigest()
            else:
                jobs, employees, teams = rng.randint(10, 60), rng.randint(5, 20), rng.randint(2, 6)
                kb, checksum = round(rng.uniform(15, 60), 2), f"{rng.getrandbits(256):064x}"
            rows.append(
                {
                    "id": new_id(rng),
                    "company_id": company["id"],
                    "date": day,
                    "storage_path": schedule_path(company["service_company_id"], day),
                    "file_size_kb": kb,
                    "checksum": checksum,
                    "job_count": jobs,
                    "employee_count": employees,
                    "team_count": teams,
                    "status": "ready",
                    "updated_at": now,
                }
            )
    return rows


def profile_rows(company: dict[str, Any], now: datetime) -> list[dict[str, Any]]:
    """The demo company's people, so the preview has technicians to impersonate."""
    people = DemoWorld(companies=1).companies[0].users
    return [
        {
            "id": uuid.UUID(person.user_id),
            "company_id": company["id"],
            "role": str(map_role([person.role])),
            "employee_information_id": person.employee_information_id,
            "email": person.email.lower(),
            "full_name": person.full_name,
            "updated_at": now,
        }
        for person in people
    ]


def stat_rows(before: datetime) -> list[dict[str, Any]]:
    """Hourly roll-ups of pruned jobs for the ``STATS_DAYS`` before the oldest stored job."""
    first = before.replace(minute=0, second=0, microsecond=0) - timedelta(days=STATS_DAYS)
    rows = []
    for hour in range(STATS_DAYS * 24):
        moment = first + timedelta(hours=hour)
        for job_type, status, count in HOURLY_OUTCOMES:
            rows.append(
                {
                    "hour": moment,
                    "job_type": str(job_type),
                    "status": str(status),
                    "count": count,
                    "total_duration_ms": count * 900,
                    "max_duration_ms": 2500,
                }
            )
    return rows


def bulk_insert(db: Database, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        with db.write() as conn:
            conn.execute(insert(table), rows[start : start + INSERT_BATCH])


def seed(db: Database, jobs: int, blob_root: Path | None = None) -> SeedCounts:
    """Fill an empty database; with ``blob_root``, also write the previewed documents."""
    started = time.perf_counter()
    rng, now = random.Random(0), datetime.now(UTC)
    create_schema(db)
    companies = company_rows(now, rng)
    job_list = job_rows(companies, jobs, now, rng)
    oldest = min(job["created_at"] for job in job_list)
    first_day = oldest.date()
    span = (now.date() - first_day).days + DAYS_AHEAD
    days = [first_day + timedelta(days=n) for n in range(span)]
    documents = preview_documents(companies[0], days, now)
    stored = stored_day_rows(companies, days, documents, now, rng)
    stats = stat_rows(oldest)
    bulk_insert(db, COMPANIES_TABLE, companies)
    bulk_insert(db, PROFILES_TABLE, profile_rows(companies[0], now))
    bulk_insert(db, SCHEDULES_TABLE, stored)
    bulk_insert(db, STATS_TABLE, stats)
    bulk_insert(db, JOBS_TABLE, job_list)
    if db.is_postgres:
        # Autovacuum would analyse the new rows soon; without statistics the first plans
        # are guesses. SQLite is left alone: the engine never runs ANALYZE there.
        with db.write() as conn:
            conn.exec_driver_sql("ANALYZE")
    if blob_root is not None:
        store = LocalBlobStore(blob_root)
        for day, (_, body) in documents.items():
            store.put(schedule_path(companies[0]["service_company_id"], day), body)
    return SeedCounts(
        jobs=len(job_list),
        companies=len(companies),
        stored_days=len(stored),
        stats=len(stats),
        seconds=time.perf_counter() - started,
    )


# --- the refresh queries ------------------------------------------------------------------


Probe = tuple[str, Callable[[], object]]


def probes(db: Database, now: datetime) -> list[Probe]:
    """Every query a console refresh runs, alone and grouped as each screen runs them."""
    choices = queries.company_choices(db)
    company = next(c for c in choices if c.name == SEARCH_TERM).id
    newest_job = queries.jobs_page(db, limit=1)[0].id

    def jobs_screen() -> None:
        queries.jobs_page(db)
        queries.status_counts(db, now=now)
        queries.throughput(db, now=now)
        queries.run_progress(db, now=now)
        queries.company_choices(db)
        queries.job_detail(db, newest_job)

    def company_detail_screen() -> None:
        queries.company_storage(db, now=now)
        queries.company_toggles(db, company)
        queries.stored_days(db, company)

    def preview_screen() -> None:
        queries.company_choices(db)
        queries.stored_days(db, company)
        queries.technicians(db, company)
        queries.company_toggles(db, company)

    def header() -> None:
        queries.ping(db)
        queries.sync_times(db, now=now)

    def page(**narrowing: Any) -> Callable[[], object]:
        return lambda: queries.jobs_page(db, JobFilter(**narrowing))

    return [
        ("jobs_page, no filter", page()),
        ("jobs_page, status failed", page(status="failed")),
        ("jobs_page, one company", page(company_id=company)),
        (f"jobs_page, search '{SEARCH_TERM}'", page(search=SEARCH_TERM)),
        ("jobs_page, search without match", page(search="no such text")),
        ("job_detail", lambda: queries.job_detail(db, newest_job)),
        ("status_counts", lambda: queries.status_counts(db, now=now)),
        ("throughput (24 h)", lambda: queries.throughput(db, now=now)),
        ("run_progress", lambda: queries.run_progress(db, now=now)),
        ("sync_times", lambda: queries.sync_times(db, now=now)),
        ("company_choices", lambda: queries.company_choices(db)),
        ("company_storage", lambda: queries.company_storage(db, now=now)),
        ("stored_days", lambda: queries.stored_days(db, company)),
        ("technicians", lambda: queries.technicians(db, company)),
        ("failed_job_ids (retry all)", lambda: queries.failed_job_ids(db)),
        ("= jobs screen refresh", jobs_screen),
        ("= companies screen refresh", lambda: queries.company_storage(db, now=now)),
        ("= company detail refresh", company_detail_screen),
        ("= preview refresh (without the blob)", preview_screen),
        ("= header status refresh", header),
    ]


def median_ms(run: Callable[[], object], runs: int = QUERY_RUNS) -> float:
    run()  # warm-up: connection pool, statement cache, page cache
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def time_queries(db: Database) -> dict[str, float]:
    return {label: median_ms(run) for label, run in probes(db, datetime.now(UTC))}


# --- backends -----------------------------------------------------------------------------


@dataclass
class BackendResult:
    seed: SeedCounts
    query_ms: dict[str, float]


def bench_backend(url: str, jobs: int, blob_root: Path | None = None) -> BackendResult:
    db = connect(url)
    try:
        counts = seed(db, jobs, blob_root)
        return BackendResult(counts, time_queries(db))
    finally:
        db.dispose()


# --- the console, in a process of its own -------------------------------------------------


class RefreshTimes:
    """Times each screen refresh: its queries (worker thread) and until its data is shown.

    Installed by wrapping ``refresh_job`` (what the refresh worker runs) and the
    ``on_*_loaded`` handler of each live screen, which is why the console runs in a
    process of its own. A refresh is filed under ``screen``, the part of the visit under
    way when it started; none is recorded while ``screen`` is empty, nor one superseded
    by a newer refresh (its data is never shown).
    """

    def __init__(self, screen: str = "") -> None:
        self.screen = screen
        self.fetch_ms: dict[str, list[float]] = defaultdict(list)
        self.shown_ms: dict[str, list[float]] = defaultdict(list)
        # id(message) -> (message, screen, started, fetch ms); the message is kept so its
        # id is not reused while it waits to be handled.
        self._fetched: dict[int, tuple[Message, str, float, float]] = {}

    def install(self) -> None:
        handlers: dict[type[LiveScreen], str] = {
            JobsScreen: "on_jobs_loaded",
            CompaniesScreen: "on_companies_loaded",
            CompanyDetailScreen: "on_company_loaded",
            PreviewScreen: "on_preview_loaded",
        }
        for screen_class, handler in handlers.items():
            self._wrap_fetch(screen_class)
            self._wrap_handler(screen_class, handler)

    def _wrap_fetch(self, screen_class: type[LiveScreen]) -> None:
        original = screen_class.refresh_job

        def refresh_job(screen: LiveScreen) -> Callable[[], Message | None]:
            job = original(screen)

            def timed() -> Message | None:
                label, started = self.screen, time.perf_counter()
                message = job()
                if label and message is not None:
                    fetch_ms = (time.perf_counter() - started) * 1000
                    self._fetched[id(message)] = (message, label, started, fetch_ms)
                return message

            return timed

        screen_class.refresh_job = refresh_job  # type: ignore[method-assign]

    def _wrap_handler(self, screen_class: type[LiveScreen], name: str) -> None:
        original = getattr(screen_class, name)

        def handler(screen: LiveScreen, message: Message) -> None:
            original(screen, message)
            fetched = self._fetched.pop(id(message), None)
            if fetched is not None:
                _, label, started, fetch_ms = fetched
                self.fetch_ms[label].append(fetch_ms)
                self.shown_ms[label].append((time.perf_counter() - started) * 1000)

        setattr(screen_class, name, handler)

    def shown(self, screen: str) -> int:
        return len(self.shown_ms.get(screen, ()))


async def wait_for(pilot: Pilot[None], condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + SCREEN_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the console did not get there in {SCREEN_TIMEOUT_S:.0f} s")
        await pilot.pause(0.05)


async def measure(pilot: Pilot[None], times: RefreshTimes, screen: str, *keys: str) -> None:
    """Press ``keys`` to reach the screen, then stay until it has shown fresh data a few times.

    Refreshes started outside these windows (during modals, say) are not counted.
    """
    times.screen = screen
    await pilot.press(*keys)
    await wait_for(pilot, lambda: times.shown(screen) >= REFRESHES_PER_SCREEN)
    times.screen = ""


async def visit_every_screen(pilot: Pilot[None], times: RefreshTimes) -> None:
    app = pilot.app
    typed = ("space" if character == " " else character for character in SEARCH_TERM)
    await measure(pilot, times, "jobs")
    await pilot.press("slash", *typed)  # each keystroke refreshes; only the whole term counts
    await measure(pilot, times, f"jobs, search '{SEARCH_TERM}'")
    await pilot.press("escape", "R")  # clear the search; retry all failed asks first
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    await pilot.press("n")
    await measure(pilot, times, "companies & storage", "2")
    await measure(pilot, times, "company detail", "enter")
    await measure(pilot, times, "technician preview", "escape", "3")
    await pilot.press("t")
    await wait_for(pilot, lambda: isinstance(app.screen, TogglesScreen))
    await pilot.press("escape", "4")
    await wait_for(pilot, lambda: isinstance(app.screen, LogScreen))
    await pilot.press("1")
    await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen))


async def drive_console(settings: Settings) -> RefreshTimes:
    times = RefreshTimes(screen="jobs")  # the jobs screen refreshes as soon as it is mounted
    times.install()
    # Not started: no worker or scheduler competes with the refreshes, and nothing syncs.
    engine = Engine(settings)
    try:
        app = OpsdashApp(engine, poll_interval_s=POLL_INTERVAL_S)
        async with app.run_test(size=APP_SIZE) as pilot:
            await visit_every_screen(pilot, times)
    finally:
        engine.stop()
    return times


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM) in MB.

    Not ``ru_maxrss``: Linux carries the forking parent's peak into it across exec, and
    the parent holds the seeded rows.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure_console(database_url: str, data_dir: str) -> dict[str, Any]:
    """Run in a fresh process, so the peak RSS is the console's and not the seeding's."""
    settings = Settings(
        data_dir=Path(data_dir),
        database_url=database_url,
        demo=True,
        # Never called: the engine is not started. Set so no demo upstream is started.
        maidcentral_api_url="http://127.0.0.1:9",
        maidcentral_api_key="unused",
    )
    times = asyncio.run(drive_console(settings))
    return {
        "fetch_ms": dict(times.fetch_ms),
        "shown_ms": dict(times.shown_ms),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_console_process(database_url: str, data_dir: Path) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_console, database_url, str(data_dir)).result()


# --- a crowded day in the technician preview ---------------------------------------------

CROWDED_JOBS = 2500
KEY_PRESSES = 20


def sync_crowded_day(data_dir: Path) -> tuple[str, date, float]:
    """Sync a demo world with one 2,500-job day into SQLite; (url, day, stored KB)."""
    day = datetime.now(UTC).date() + timedelta(days=2)
    world = CrowdedDayWorld(day, jobs=CROWDED_JOBS)
    upstream = DemoUpstream(world=world, api_key="bench-key")
    upstream.start()
    url = f"sqlite:///{data_dir / 'crowded.db'}"
    settings = Settings(
        data_dir=data_dir,
        database_url=url,
        demo=True,  # the bench's own demo upstream (or none called), local blobs
        maidcentral_api_url=upstream.url,
        maidcentral_api_key="bench-key",
        upstream_rate_per_minute=100_000,
        upstream_rate_per_hour=1_000_000,
    )
    engine = Engine(settings)
    try:
        engine.start(scheduler=False)
        engine.sync()
        if not engine.wait_idle(timeout_s=300):
            raise TimeoutError("the crowded day did not sync in 300 s")
        company_id = queries.company_choices(engine.db)[0].id
        stored = next(d for d in queries.stored_days(engine.db, company_id) if d.date == day)
    finally:
        engine.stop()
        upstream.stop()
    return url, day, stored.file_size_kb


async def drive_crowded_preview(settings: Settings, day: date) -> dict[str, float]:
    """Open the preview on the crowded day; time the first render, keys, and UI stalls."""
    engine = Engine(settings)  # not started: nothing competes with the console
    figures: dict[str, float] = {}
    try:
        app = OpsdashApp(engine, poll_interval_s=POLL_INTERVAL_S)
        async with app.run_test(size=APP_SIZE) as pilot:
            ticks: list[float] = []
            app.set_interval(0.02, lambda: ticks.append(time.perf_counter()))
            await wait_for(pilot, lambda: app.system_status is not None)
            company_id = queries.company_choices(engine.db)[0].id
            started = time.perf_counter()
            ticks.append(started)
            app.open_preview(company_id, day)

            def rendered() -> bool:
                screen = app.screen
                result = getattr(screen, "_result", None)
                return (
                    result is not None
                    and len(result.view.get("jobs") or []) == CROWDED_JOBS
                    and len(screen.query(".job-card")) > 0
                )

            await wait_for(pilot, rendered)
            await pilot.pause()
            figures["first_render_ms"] = (time.perf_counter() - started) * 1000
            figures["cards_mounted"] = len(app.screen.query(".job-card"))
            figures["load_stall_ms"] = max(b - a for a, b in itertools.pairwise(ticks)) * 1000
            latencies = []
            for _ in range(KEY_PRESSES):
                pressed = time.perf_counter()
                await pilot.press("down")
                latencies.append((time.perf_counter() - pressed) * 1000)
            figures["key_median_ms"] = statistics.median(latencies)
            figures["key_max_ms"] = max(latencies)
            # A few refreshes of the unchanged day: do they stall the UI?
            ticks.clear()
            ticks.append(time.perf_counter())
            refreshes = getattr(app.screen, "refreshes", 0)
            await wait_for(pilot, lambda: getattr(app.screen, "refreshes", 0) >= refreshes + 2)
            figures["refresh_stall_ms"] = max(b - a for a, b in itertools.pairwise(ticks)) * 1000
    finally:
        engine.stop()
    return figures


def measure_crowded_preview(database_url: str, data_dir: str, day: str) -> dict[str, float]:
    settings = Settings(
        data_dir=Path(data_dir),
        database_url=database_url,
        demo=True,  # the bench's own demo upstream (or none called), local blobs
        maidcentral_api_url="http://127.0.0.1:9",
        maidcentral_api_key="unused",
    )
    figures = asyncio.run(drive_crowded_preview(settings, date.fromisoformat(day)))
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def bench_crowded_preview() -> None:
    with tempfile.TemporaryDirectory(prefix="opsdash-bench-") as folder:
        print("syncing a 2,500-job day…", file=sys.stderr)
        url, day, kb = sync_crowded_day(Path(folder))
        print("running the console on it…", file=sys.stderr)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            figures = pool.submit(measure_crowded_preview, url, folder, day.isoformat()).result()
    width, height = APP_SIZE
    print(
        f"\n== technician preview of a {CROWDED_JOBS:,}-job day ({kb / 1024:.1f} MB stored), "
        f"{width}x{height} =="
    )
    print(f"first render (open → cards shown)   {figures['first_render_ms']:8.0f} ms")
    print(f"longest UI stall while loading      {figures['load_stall_ms']:8.0f} ms")
    print(f"job cards mounted                   {figures['cards_mounted']:8.0f}")
    print(
        f"key press (scroll), median / max    {figures['key_median_ms']:8.1f} / "
        f"{figures['key_max_ms']:.1f} ms"
    )
    print(f"longest UI stall over 2 refreshes   {figures['refresh_stall_ms']:8.0f} ms")
    print(f"peak RSS of the console process     {figures['peak_rss_mb']:8.0f} MB")


# --- report -------------------------------------------------------------------------------


def print_seeding(results: dict[str, BackendResult]) -> None:
    print("\n== seeding (bulk inserts) ==")
    for name, result in results.items():
        counts = result.seed
        print(
            f"{name:9} {counts.jobs:,} jobs, {counts.companies} companies, "
            f"{counts.stored_days:,} stored days, {counts.stats:,} job_stats rows "
            f"in {counts.seconds:.1f} s"
        )


def print_queries(results: dict[str, BackendResult]) -> None:
    names = list(results)
    print(f"\n== refresh queries: median of {QUERY_RUNS} runs, ms ==")
    print(f"{'query':42}" + "".join(f"{name:>10}" for name in names))
    for label in next(iter(results.values())).query_ms:
        cells = "".join(f"{results[name].query_ms[label]:10.1f}" for name in names)
        print(f"{label:42}{cells}")


def print_console(figures: dict[str, Any], jobs: int) -> None:
    width, height = APP_SIZE
    print(
        f"\n== console on SQLite ({jobs:,} jobs), {width}x{height}, "
        f"poll interval {POLL_INTERVAL_S:g} s, ms =="
    )
    print("'queries' is the refresh's fetch in its worker; 'shown' runs until the screen shows it")
    header = ("screen", "refreshes", "queries med", "max", "shown med", "max")
    print(f"{header[0]:34}" + "".join(f"{h:>12}" for h in header[1:]))
    for screen, shown in figures["shown_ms"].items():
        fetched = figures["fetch_ms"][screen]
        cells = (
            f"{len(shown):12d}"
            f"{statistics.median(fetched):12.1f}{max(fetched):12.1f}"
            f"{statistics.median(shown):12.1f}{max(shown):12.1f}"
        )
        print(f"{screen:34}{cells}")
    everything = [ms for shown in figures["shown_ms"].values() for ms in shown]
    print(
        f"{'all screens':34}{len(everything):12d}{'':24}"
        f"{statistics.median(everything):12.1f}{max(everything):12.1f}"
    )
    print(f"peak RSS of the console process: {figures['peak_rss_mb']:.0f} MB")


# --- main ---------------------------------------------------------------------------------


def row_count(text: str) -> int:
    value = int(text)
    if value < RUN_SIZE:
        raise argparse.ArgumentTypeError(f"at least one sync run: {RUN_SIZE} jobs")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=row_count, default=200_000, help="background jobs to seed")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--large-day",
        action="store_true",
        help="only the technician preview of a 2,500-job day",
    )
    args = parser.parse_args()
    if args.large_day:
        bench_crowded_preview()
        return
    results: dict[str, BackendResult] = {}
    console: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="opsdash-bench-") as folder:
        data_dir = Path(folder)
        sqlite_url = f"sqlite:///{data_dir / 'opsdash.db'}"
        if args.backend in ("sqlite", "both"):
            print("seeding and timing SQLite…", file=sys.stderr)
            results["sqlite"] = bench_backend(sqlite_url, args.rows, data_dir / "blobs")
        if args.backend in ("postgres", "both"):
            print("seeding and timing Postgres…", file=sys.stderr)
            with postgres_url() as url:
                results["postgres"] = bench_backend(url, args.rows)
        if "sqlite" in results:
            print("running the console…", file=sys.stderr)
            console = run_console_process(sqlite_url, data_dir)
    print_seeding(results)
    print_queries(results)
    if console is not None:
        print_console(console, results["sqlite"].seed.jobs)


if __name__ == "__main__":
    main()
