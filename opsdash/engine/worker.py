"""The worker pool: threads that claim jobs, run their handler and record the outcome."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from opsdash.engine import handlers, queue
from opsdash.engine.blobs import BlobStoreUnavailable
from opsdash.engine.db import describe_error
from opsdash.engine.handlers import HandlerContext, Outcome
from opsdash.engine.models import BackgroundJob, JobStatus
from opsdash.engine.storage_gate import StorageGate
from opsdash.statelog import StateChangeLog

log = logging.getLogger("opsdash.jobs")

Runner = Callable[[HandlerContext, Sequence[BackgroundJob]], list[Outcome]]


@dataclass(frozen=True)
class PoolSettings:
    concurrency: int = 4
    poll_interval_s: float = 2.0
    lease_s: float = 60.0
    retry_base_s: float = 10.0
    # How long an outcome is retried against an unreachable database before the
    # lease is left to expire and rescue re-runs the (idempotent) job.
    record_patience_s: float = 120.0


def _describe(job: BackgroundJob) -> str:
    # Rows queued by the original system may carry params as a JSON string.
    params = job.params if isinstance(job.params, Mapping) else {}
    day = params.get("date")
    target = f" {params.get('company') or job.company_id}/{day}" if day else ""
    return f"{job.job_type}{target} [{str(job.id)[:8]}]"


class WorkerPool:
    """N worker threads plus one heartbeat thread.

    Wakes at once when this process enqueues (``wake``), otherwise polls.
    ``stop`` lets running batches finish, then releases whatever is still held,
    so a clean shutdown never leaves a job ``running``.
    """

    def __init__(
        self,
        context: HandlerContext,
        settings: PoolSettings,
        runner: Runner = handlers.run,
        *,
        storage_gate: StorageGate | None = None,
    ) -> None:
        self.context = context
        self.settings = settings
        self._runner = runner
        # While storage is unusable, workers wait here instead of claiming.
        self._storage_gate = storage_gate
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._wake_pending = False
        self._paused = threading.Event()
        self._held: dict[str, list[BackgroundJob]] = {}
        self._held_lock = threading.Lock()
        # During an outage every claim and heartbeat fails: one line when it starts,
        # a summary now and then, one line when it ends.
        self._outages = StateChangeLog(log)
        # (job id, attempt) of held jobs whose lease the heartbeat found taken over.
        self._lost: set[tuple[uuid.UUID, int]] = set()
        self._threads: list[threading.Thread] = []
        context.lease_lost = self.lease_lost

    # --- control ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._threads)

    @property
    def busy(self) -> int:
        with self._held_lock:
            return sum(1 for jobs in self._held.values() if jobs)

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def start(self) -> None:
        if self._threads:
            return
        for index in range(self.settings.concurrency):
            worker_id = queue.new_worker_id()
            thread = threading.Thread(
                target=self._work, args=(worker_id,), name=f"opsdash-worker-{index}", daemon=True
            )
            self._threads.append(thread)
        heartbeat = threading.Thread(target=self._heartbeat, name="opsdash-heartbeat", daemon=True)
        self._threads.append(heartbeat)
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake_pending = True
            self._wake.notify_all()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self.wake()

    def lease_lost(self, job: BackgroundJob) -> bool:
        with self._held_lock:
            return (job.id, job.attempts) in self._lost

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self.wake()
        self._release_held()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            log.warning("stopped without waiting for %s", ", ".join(stuck))
        self._threads.clear()

    # --- threads ---------------------------------------------------------------------

    def _sleep(self) -> None:
        with self._wake:
            if not self._wake_pending:
                self._wake.wait(self.settings.poll_interval_s)
            self._wake_pending = False

    def _work(self, worker_id: str) -> None:
        while not self._stopping.is_set():
            if self._paused.is_set():
                self._sleep()
                continue
            if self._storage_gate is not None and not self._storage_gate.wait_ready(self._stopping):
                continue
            try:
                batch = queue.claim(self.context.db, worker_id, lease_s=self.settings.lease_s)
            except SQLAlchemyError as error:
                self._outages.failed("claim", "claims failing: %s", describe_error(error))
                self._stopping.wait(self.settings.poll_interval_s)
                continue
            self._outages.succeeded("claim")
            if not batch:
                self._sleep()
                continue
            self._run_batch(worker_id, batch)

    def _shutting_down(self) -> bool:
        # The process's stop (the handlers' ``stopping``) is set before the pool is told:
        # an outcome that arrives in between is an interruption too, not a real attempt.
        return self._stopping.is_set() or self.context.stopping.is_set()

    def _run_batch(self, worker_id: str, batch: list[BackgroundJob]) -> None:
        with self._held_lock:
            if self._shutting_down():
                batch_to_release = batch
            else:
                batch_to_release = []
                self._held[worker_id] = batch
        if batch_to_release:
            # Claimed as the process began to stop: hand it straight back.
            self._patiently(self._release, worker_id, batch_to_release)
            return
        for job in batch:
            log.info("started %s attempt %d/%d", _describe(job), job.attempts, job.max_attempts)
        try:
            outcomes = self._runner(self.context, batch)
        except BlobStoreUnavailable as error:
            self._release_for_storage(worker_id, batch, error)
            return
        except Exception as error:
            log.exception("handler crashed on %s", _describe(batch[0]))
            message = f"internal error: {type(error).__name__}: {error}"
            outcomes = [Outcome(job, False, error=message) for job in batch]
        missing = {job.id for job in batch} - {outcome.job.id for outcome in outcomes}
        outcomes += [
            Outcome(job, False, error="handler returned no outcome")
            for job in batch
            if job.id in missing
        ]
        successes = [outcome for outcome in outcomes if outcome.ok]
        if successes:
            self._patiently(self._record_successes, worker_id, successes)
        failures = [outcome for outcome in outcomes if not outcome.ok]
        if failures:
            self._patiently(self._record_failures, worker_id, failures)
        with self._held_lock:
            self._held.pop(worker_id, None)
            self._lost -= {(job.id, job.attempts) for job in batch}

    def _release(self, worker_id: str, jobs: list[BackgroundJob]) -> None:
        queue.release(self.context.db, jobs, worker_id)

    def _release_for_storage(
        self, worker_id: str, batch: list[BackgroundJob], error: BlobStoreUnavailable
    ) -> None:
        """Storage failed under the batch: not the jobs' fault, so no attempt is spent.

        The batch goes back to pending as it was, and the workers wait for storage
        before claiming again.
        """
        log.warning(
            "storage unusable during %s (%d job%s), released without spending an attempt: %s",
            _describe(batch[0]),
            len(batch),
            "" if len(batch) == 1 else "s",
            error,
        )
        if self._storage_gate is not None:
            self._storage_gate.report(error)
        self._patiently(self._release, worker_id, batch)
        with self._held_lock:
            self._held.pop(worker_id, None)
            self._lost -= {(job.id, job.attempts) for job in batch}

    def _patiently(self, record: Callable[[str, Any], None], worker_id: str, what: Any) -> None:
        """Write an outcome, riding out a short database outage."""
        retrying = Retrying(
            retry=retry_if_exception_type(SQLAlchemyError),
            stop=stop_after_delay(self.settings.record_patience_s),
            wait=wait_exponential(multiplier=0.2, max=5),
            reraise=True,
        )
        try:
            retrying(record, worker_id, what)
        except SQLAlchemyError:
            log.error("could not record an outcome of %s; rescue will re-run it", worker_id)

    def _record_successes(self, worker_id: str, outcomes: list[Outcome]) -> None:
        done = [(outcome.job, outcome.result) for outcome in outcomes]
        completed = set(queue.complete_many(self.context.db, done, worker_id))
        for outcome in outcomes:
            if outcome.job.id in completed:
                log.info("completed %s %s", _describe(outcome.job), _summary(outcome.result))
            else:
                log.warning("lost the lease of %s; its result was dropped", _describe(outcome.job))

    def _record_failures(self, worker_id: str, outcomes: list[Outcome]) -> None:
        db = self.context.db
        lost = [o for o in outcomes if o.error == handlers.LEASE_LOST]
        for outcome in lost:
            log.warning("stopped working on %s: its lease was lost", _describe(outcome.job))
        outcomes = [o for o in outcomes if o.error != handlers.LEASE_LOST]
        if not outcomes:
            return
        if self._shutting_down():
            # Interrupted by shutdown (e.g. waiting on the rate limiter): not a real attempt.
            queue.release(db, [outcome.job for outcome in outcomes], worker_id)
            return
        # One backoff for the whole batch, recorded in one transaction: its days come
        # due together and are fetched again with one upstream call, not one call each.
        attempt = max(outcome.job.attempts for outcome in outcomes)
        statuses = queue.fail_many(
            db,
            [queue.Failure(o.job, o.error, o.retryable) for o in outcomes],
            worker_id,
            retry_base_s=self.settings.retry_base_s,
            delay_s=queue.backoff_delay_s(attempt, self.settings.retry_base_s),
        )
        for outcome, status in zip(outcomes, statuses, strict=True):
            job = outcome.job
            if status == JobStatus.PENDING:
                log.warning("retrying %s after: %s", _describe(job), outcome.error)
            elif status == JobStatus.FAILED:
                log.error("failed %s: %s", _describe(job), outcome.error)
            else:
                log.warning("lost the lease of %s; its failure was dropped", _describe(job))

    def _heartbeat(self) -> None:
        interval = max(0.2, self.settings.lease_s / 3)
        while not self._stopping.wait(interval):
            with self._held_lock:
                held = {worker: [job.id for job in jobs] for worker, jobs in self._held.items()}
            for worker_id, job_ids in held.items():
                self._renew(worker_id, job_ids)

    def _renew(self, worker_id: str, job_ids: list[uuid.UUID]) -> None:
        try:
            ours = queue.heartbeat(
                self.context.db, worker_id, job_ids, lease_s=self.settings.lease_s
            )
        except SQLAlchemyError as error:
            self._outages.failed("heartbeat", "heartbeats failing: %s", describe_error(error))
            return
        self._outages.succeeded("heartbeat")
        if len(ours) == len(job_ids):
            return
        with self._held_lock:
            for job in self._held.get(worker_id, []):
                if job.id not in ours and (job.id, job.attempts) not in self._lost:
                    self._lost.add((job.id, job.attempts))
                    log.warning("lease of %s was taken over; stopping work on it", _describe(job))

    def _release_held(self) -> None:
        with self._held_lock:
            held = list(self._held.items())
            self._held.clear()
        for worker_id, jobs in held:
            try:
                released = queue.release(self.context.db, jobs, worker_id)
                log.info("released %d unfinished job(s) of %s on shutdown", released, worker_id)
            except SQLAlchemyError as error:
                log.error(
                    "could not release jobs of %s (%s); rescue will requeue them",
                    worker_id,
                    describe_error(error),
                )


def _summary(result: dict | None) -> str:
    if not result:
        return ""
    if "bytes" in result:
        state = "unchanged" if result.get("unchanged") else "written"
        return f"({result.get('jobs')} jobs, {result['bytes']} bytes, {state})"
    return "(" + ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, int)) + ")"
