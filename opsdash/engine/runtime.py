"""The Engine: one object that the console, the headless server and the CLI all drive.

It owns the database handle, the blob store, the upstream client, the worker pool and
the scheduler. An upstream served inside this process (the demo's) is handed in by
whoever builds the engine (``opsdash.demo.engine_for``); the engine starts and stops it
but never imports it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select
from sqlmodel import col

from opsdash.config import ConfigurationError, Mode, Settings
from opsdash.datafolder import secure_existing
from opsdash.engine import audit, coordinator, freshness, ledger, queue, retention
from opsdash.engine.alerting.service import AlertService, StorageHealth
from opsdash.engine.auth_users import AuthAdmin
from opsdash.engine.blobs import BlobStore, LocalBlobStore, SupabaseBlobStore
from opsdash.engine.db import TRANSIENT_ERRORS, Database, connect_with, describe_error
from opsdash.engine.freshness import CompanyFreshness
from opsdash.engine.handlers import HandlerContext
from opsdash.engine.models import ACTIVE_STATUSES, BackgroundJob, Company
from opsdash.engine.schema import ensure_schema
from opsdash.engine.sqltypes import utcnow
from opsdash.engine.storage_gate import StorageGate, StorageState
from opsdash.engine.upstream import MaidCentralClient, RateLimiter
from opsdash.engine.worker import PoolSettings, WorkerPool
from opsdash.statelog import StateChangeLog

log = logging.getLogger("opsdash.engine")


class LocalUpstream(Protocol):
    """An upstream this process serves itself, started and stopped with the engine."""

    api_key: str

    def start(self) -> str:
        """Start serving; the base URL."""
        ...

    def stop(self) -> None: ...


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.uses_supabase:
        # Settings refuse a Supabase URL without its key, so both are here.
        assert settings.supabase_url and settings.supabase_service_role_key
        store = SupabaseBlobStore(
            settings.supabase_url,
            settings.supabase_service_role_key,
            settings.blob_bucket,
            connect_timeout_s=settings.storage_connect_timeout_s,
            read_timeout_s=settings.storage_read_timeout_s,
        )
        try:
            store.ensure_bucket()
        except BaseException:
            store.close()
            raise
        return store
    return LocalBlobStore(settings.blob_root)


def open_auth_admin(settings: Settings) -> AuthAdmin | None:
    """Supabase Auth's admin API when a Supabase project is configured; else no Auth users.

    The portal signs users in through Supabase Auth, so with a project URL and its
    service role key the users sync maintains ``auth.users`` too.
    """
    if settings.supabase_url and settings.supabase_service_role_key:
        return AuthAdmin(settings.supabase_url, settings.supabase_service_role_key)
    return None


@dataclass(frozen=True)
class EngineStatus:
    mode: Mode
    database: str
    upstream: str
    blobs: str
    workers_busy: int
    workers_total: int
    paused: bool
    next_sync_at: datetime | None
    last_sync_at: datetime | None
    storage: StorageState = field(default_factory=StorageState)


class Engine:
    """Open it, start it, stop it. Safe to use from any thread."""

    def __init__(self, settings: Settings, *, local_upstream: LocalUpstream | None = None) -> None:
        if settings.starts_demo_upstream and local_upstream is None:
            raise ConfigurationError(
                "demo mode without MAIDCENTRAL_API_URL needs the demo upstream served in this "
                "process: build the engine with opsdash.demo.engine_for(settings)"
            )
        self.settings = settings
        self.local_upstream = local_upstream
        secure_existing(settings.data_dir)
        self.db: Database = connect_with(settings)
        try:
            self.blobs: BlobStore = open_blob_store(settings)
        except Exception:
            self.db.dispose()
            raise
        self.storage_gate = StorageGate(self.blobs)
        self._stop_event = threading.Event()
        self.upstream = self._open_upstream()
        self.auth = open_auth_admin(settings)
        self.context = HandlerContext(
            db=self.db,
            blobs=self.blobs,
            upstream=self.upstream,
            days_ahead=settings.days_ahead,
            max_attempts=settings.max_attempts,
            on_enqueued=self.wake_workers,
            auth=self.auth,
            stopping=self._stop_event,
        )
        self.pool: WorkerPool | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.last_sync_at: datetime | None = None
        self._scheduled_outages = StateChangeLog(log)
        self.alerts = AlertService(self.db, settings, storage_health=self.storage_health)
        ensure_schema(self.db)

    def _open_upstream(self) -> MaidCentralClient:
        settings = self.settings
        if self.local_upstream is not None:
            url, key = self.local_upstream.start(), self.local_upstream.api_key
            log.info("demo mode: demo upstream serving on %s", url)
        else:
            url, key = settings.maidcentral_api_url or "", settings.maidcentral_api_key or ""
        limiter = RateLimiter(settings.upstream_rate_per_minute, settings.upstream_rate_per_hour)
        return MaidCentralClient(
            url,
            key,
            limiter=limiter,
            timeout_s=settings.upstream_timeout_s,
            attempts=settings.upstream_attempts,
            max_backoff_s=settings.upstream_backoff_max_s,
            stop=self._stop_event,
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self, *, workers: int | None = None, scheduler: bool = True) -> None:
        """Start the worker pool and (optionally) the hourly scheduler."""
        concurrency = self.settings.workers if workers is None else workers
        if concurrency > 0 and self.pool is None:
            self.pool = WorkerPool(
                self.context,
                PoolSettings(
                    concurrency=concurrency,
                    poll_interval_s=self.settings.poll_interval_s,
                    lease_s=self.settings.lease_s,
                    retry_base_s=self.settings.retry_base_s,
                ),
                storage_gate=self.storage_gate,
            )
            self.pool.start()
        if (scheduler or self.pool is not None) and self.scheduler is None:
            self.scheduler = self._start_scheduler(coordinate=scheduler)
            if scheduler and self._is_first_run():
                self.sync_now()

    def _start_scheduler(self, *, coordinate: bool) -> BackgroundScheduler:
        """Rescue runs wherever workers run; the sync cron and pruning only when coordinating."""
        scheduler = BackgroundScheduler(timezone="UTC")

        def add(task: Callable[[], object], job_id: str, name: str, trigger: object) -> None:
            scheduler.add_job(
                self._while_reachable(task, name),
                trigger,
                id=job_id,
                name=name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=300,
            )

        def every(seconds: float) -> IntervalTrigger:
            return IntervalTrigger(seconds=seconds, timezone="UTC")

        add(
            self.rescue,
            "rescue",
            "rescue expired leases",
            every(max(0.5, self.settings.lease_s / 2)),
        )
        add(
            self.check_storage,
            "storage-check",
            "check storage is reachable and private",
            every(self.settings.storage_check_interval_s),
        )
        if coordinate:
            cron = CronTrigger.from_crontab(self.settings.sync_cron, timezone="UTC")
            add(self._scheduled_sync, "sync", "hourly sync run", cron)
            add(self.prune, "prune", "prune old jobs", every(3600))
            add(
                self.apply_retention,
                "retention",
                "remove schedule days past retention",
                every(3600),
            )
            add(
                self.watch,
                "watch",
                "close finished runs, evaluate and send alerts",
                every(self.settings.alert_interval_s),
            )
        scheduler.start()
        return scheduler

    def _while_reachable(self, task: Callable[[], object], name: str) -> Callable[[], None]:
        """``task`` as a scheduled job. While the database cannot be reached, its failures are
        logged as an outage (one line when it starts, a summary a minute, one when it ends)
        instead of APScheduler's traceback at every tick. Any other error is a bug and keeps
        its traceback."""

        def run() -> None:
            try:
                task()
            except TRANSIENT_ERRORS as error:
                self._scheduled_outages.failed(name, "%s skipped: %s", name, describe_error(error))
                return
            self._scheduled_outages.succeeded(name)

        return run

    def _is_first_run(self) -> bool:
        with self.db.read() as conn:
            jobs = conn.execute(select(func.count()).select_from(BackgroundJob)).scalar_one()
        return jobs == 0

    def stop(self) -> None:
        """Stop promptly: no new upstream request, the ones in flight cut, running jobs
        released for another process to take at once."""
        self._stop_event.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        cut = self.upstream.cancel_in_flight()
        if cut and self.pool is not None:
            log.info("stopping: cut %d upstream connection(s)", cut)
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        self.upstream.close()
        if self.auth is not None:
            self.auth.close()
        self.blobs.close()
        if self.local_upstream is not None:
            self.local_upstream.stop()
        self.db.dispose()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- actions ---------------------------------------------------------------------

    def wake_workers(self) -> None:
        if self.pool is not None:
            self.pool.wake()

    def _scheduled_sync(self) -> None:
        self.sync(expedite=False)

    def watch(self) -> None:
        """Close the ledger's finished runs, then evaluate and deliver alerts."""
        try:
            ledger.close_finished_runs(self.db)
        except Exception as error:  # a database outage: the alerts tick reports it
            log.debug("closing finished runs failed: %s", error)
        self.alerts.tick()

    def storage_health(self) -> StorageHealth:
        """What the alerts need of storage, from one probe through the storage gate."""
        state = self.storage_gate.check()
        if state.public:
            # Reachable, but exposing the schedules: its own alert, not an outage.
            return StorageHealth(reachable=True, public_bucket=self.settings.blob_bucket)
        return StorageHealth(reachable=state.ok, reason=state.reason or "")

    def sync(
        self,
        *,
        company_id: uuid.UUID | None = None,
        day: date | None = None,
        include_users: bool | None = None,
        expedite: bool = True,
    ) -> coordinator.SyncRun:
        """Queue a sync run (all companies, or one company and/or one day)."""
        narrowed = company_id is not None or day is not None
        run = coordinator.plan_and_enqueue(
            self.db,
            days_ahead=self.settings.days_ahead,
            max_attempts=self.settings.max_attempts,
            company_id=company_id,
            day=day,
            include_users=not narrowed if include_users is None else include_users,
            expedite=expedite,
            # Only the cron's own runs are unhurried; anything expedited was asked for.
            trigger="operator" if expedite else "scheduled",
        )
        self.last_sync_at = datetime.now().astimezone()
        self.wake_workers()
        return run

    def sync_now(self) -> coordinator.SyncRun:
        return self.sync()

    def rescue(self) -> queue.RescueResult:
        result = queue.rescue(self.db, retry_base_s=self.settings.retry_base_s)
        if result.requeued or result.failed:
            log.warning("rescued jobs with expired leases: %s", result)
            self.wake_workers()
        return result

    def prune(self) -> int:
        pruned = queue.prune(self.db, older_than=timedelta(days=self.settings.retention_days))
        kept = timedelta(days=self.settings.ledger_retention_days)
        ledger.prune_runs(self.db, older_than=kept)
        audit.prune_audit(self.db, older_than=kept)
        self.db.optimize()
        if pruned:
            log.info("pruned %d old jobs into job_stats", pruned)
        return pruned

    def check_storage(self) -> StorageState:
        """Is storage reachable, the key accepted and the bucket private? (periodic)"""
        return self.storage_gate.check()

    def apply_retention(self) -> retention.RetentionResult | None:
        """Remove schedule days past ``schedule_retention_days`` (hourly, one process at a time)."""
        return retention.apply(
            self.db, self.blobs, retention_days=self.settings.schedule_retention_days
        )

    def retry(self, job_ids: list[uuid.UUID]) -> int:
        retried = queue.retry(self.db, job_ids)
        self.wake_workers()
        return retried

    def cancel(self, job_ids: list[uuid.UUID]) -> int:
        return queue.cancel(self.db, job_ids)

    def pause(self) -> None:
        if self.pool is not None:
            self.pool.pause()

    def resume(self) -> None:
        if self.pool is not None:
            self.pool.resume()

    def freshness(
        self, *, now: datetime | None = None, company_id: uuid.UUID | None = None
    ) -> list[CompanyFreshness]:
        """Every company's freshness (or one company's), by the configured thresholds."""
        return freshness.configured(
            self.db, self.settings, now=now or utcnow(), company_id=company_id
        )

    def company_by_service_id(self, service_company_id: str) -> Company | None:
        with self.db.session() as session:
            return session.execute(
                select(Company).where(col(Company.service_company_id) == service_company_id)
            ).scalar_one_or_none()

    def active_jobs(self) -> int:
        with self.db.read() as conn:
            return conn.execute(
                select(func.count())
                .select_from(BackgroundJob)
                .where(col(BackgroundJob.status).in_(ACTIVE_STATUSES))
            ).scalar_one()

    def wait_idle(self, timeout_s: float = 600.0, poll_s: float = 0.2) -> bool:
        """Block until no job is pending or running (retries included)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.active_jobs() == 0:
                return True
            time.sleep(poll_s)
        return False

    # --- status ----------------------------------------------------------------------

    @property
    def upstream_description(self) -> str:
        if self.settings.uses_demo_upstream:
            return f"demo upstream {self.upstream.base_url}"
        return f"MaidCentral {self.upstream.base_url}"

    def status(self) -> EngineStatus:
        next_sync = None
        if self.scheduler is not None:
            job = self.scheduler.get_job("sync")
            next_sync = job.next_run_time if job else None
        return EngineStatus(
            mode=self.settings.mode,
            database=self.db.display_url,
            upstream=self.upstream_description,
            blobs=self.blobs.description,
            workers_busy=self.pool.busy if self.pool else 0,
            workers_total=self.pool.settings.concurrency if self.pool else 0,
            paused=self.pool.paused if self.pool else False,
            next_sync_at=next_sync,
            last_sync_at=self.last_sync_at,
            storage=self.storage_gate.state,
        )
