"""Workers under real faults: stopped past their lease, stopped by signals, interrupted.

Worker processes are real ``opsdash worker`` / ``opsdash sync --wait`` processes; the
upstream is the demo server over loopback HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.demo.server import DemoReply, DemoRequest, DemoUpstream
from opsdash.engine import queue
from opsdash.engine.models import BackgroundJob, JobStatus, ScheduleData
from opsdash.engine.runtime import Engine
from opsdash.engine.sqltypes import utcnow
from opsdash.engine.worker import PoolSettings, WorkerPool
from tests.conftest import engine_settings, migrated
from tests.test_multiprocess import job_counts, run_users_job_inline, worker_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


class Arrivals:
    """Counts schedule requests as they reach the demo upstream (before any latency)."""

    def __init__(self, upstream: DemoUpstream) -> None:
        self.count = 0
        self.event = threading.Event()
        self._handle = upstream.handle
        upstream.handle = self._on_request  # type: ignore[method-assign]

    def _on_request(self, request: DemoRequest) -> DemoReply | None:
        if request.path.rstrip("/").lower() == "/api/dr-schedule":
            self.count += 1
            self.event.set()
        return self._handle(request)


@contextlib.contextmanager
def companies_known(
    db_url: str, tmp_path: Path, companies: int, **overrides: object
) -> Iterator[tuple[DemoUpstream, Arrivals, Engine]]:
    """A demo upstream of ``companies`` and an engine on ``db_url`` whose users sync has run,
    so the companies and their schedule jobs are in the database; no worker is started."""
    upstream = DemoUpstream(companies=companies, api_key="test-key")
    arrivals = Arrivals(upstream)
    with upstream:
        settings = engine_settings(migrated(db_url), tmp_path / "data", upstream.url, **overrides)
        engine = Engine(settings)
        try:
            run_users_job_inline(engine)
            yield upstream, arrivals, engine
        finally:
            engine.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, *args: str, env: dict[str, str] | None = None):
        log = (tmp_path / f"process-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "opsdash", *args],
            env={**worker_env(settings), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        process.log_path = Path(log.name)  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()


def log_of(process: subprocess.Popen[bytes]) -> str:
    return process.log_path.read_text()  # type: ignore[attr-defined]


def stored(engine: Engine) -> dict[object, tuple[str, str]]:
    with engine.db.session() as session:
        rows = session.execute(select(ScheduleData)).scalars()
        return {row.date: (row.storage_path, row.checksum) for row in rows}


def all_jobs(engine: Engine) -> list[BackgroundJob]:
    with engine.db.session() as session:
        return list(session.execute(select(BackgroundJob)).scalars())


def test_a_worker_stopped_past_its_lease_cannot_overwrite_the_newer_data(
    db_url: str, tmp_path: Path, spawn
) -> None:
    with companies_known(db_url, tmp_path, 1, lease_s=2.0) as (upstream, arrivals, engine):
        settings = engine.settings
        # The stale worker's request is answered with revision 0, slowly.
        upstream.faults = upstream.faults.updated({"latency_ms": 1500})
        arrivals.event.clear()
        stale = spawn(settings, "worker", "--concurrency", "1")
        assert arrivals.event.wait(60), "the stale worker never asked the upstream"
        os.kill(stale.pid, signal.SIGSTOP)
        # Meanwhile the schedule changes and another worker rescues and syncs the week.
        upstream.faults = upstream.faults.updated({"latency_ms": 0, "revision": 1})
        rescuer = spawn(settings, "worker", "--concurrency", "1")
        wait_until(
            lambda: job_counts(engine).keys() == {"completed"}, what="the rescue", timeout_s=90
        )
        published = stored(engine)
        assert len(published) == 7

        os.kill(stale.pid, signal.SIGCONT)  # it resumes with last week's answer
        wait_until(
            lambda: "its lease was lost" in log_of(stale), what="the stale worker", timeout_s=60
        )
        for process in (stale, rescuer):
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log_of(process)[-2000:]

        assert stored(engine) == published
        for path, checksum in published.values():
            assert hashlib.sha256(engine.blobs.get(path)).hexdigest() == checksum
        # What the stale worker wrote is gone again; only the published files remain.
        files = {info.path for info in engine.blobs.list_blobs()}
        assert files == {path for path, _ in published.values()}
        schedule_jobs = [j for j in all_jobs(engine) if j.job_type == "sync_schedule"]
        assert all(j.status == JobStatus.COMPLETED for j in schedule_jobs)
        assert all(j.attempts == 2 and j.rescue_count == 1 for j in schedule_jobs)


def test_a_heartbeat_that_finds_the_lease_lost_stops_the_work(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with companies_known(db_url, tmp_path, 1, lease_s=1.0) as (upstream, arrivals, engine):
        upstream.faults = upstream.faults.updated({"latency_ms": 2000})
        arrivals.event.clear()
        pool = WorkerPool(engine.context, PoolSettings(concurrency=1, lease_s=1.0))
        pool.start()
        assert arrivals.event.wait(30)
        # Another process takes the week over while the request is in flight.
        later = utcnow() + timedelta(minutes=5)
        assert queue.rescue(engine.db, now=later, retry_base_s=0).requeued == 7
        thief = queue.new_worker_id()
        assert len(queue.claim(engine.db, thief, lease_s=3600, now=later)) == 7
        with caplog.at_level(logging.WARNING, logger="opsdash.jobs"):
            wait_until(
                lambda: "its lease was lost" in caplog.text,
                what="the worker to stop",
                timeout_s=30,
            )
        assert "was taken over; stopping work on it" in caplog.text
        pool.stop()
        assert stored(engine) == {}
        assert engine.blobs.list_blobs() == []
        assert arrivals.count == 1
        running = [j for j in all_jobs(engine) if j.status == JobStatus.RUNNING]
        assert len(running) == 7 and {j.locked_by for j in running} == {thief}


def test_sigterm_with_a_hanging_upstream_exits_in_seconds_and_releases_the_jobs(
    pg_url: str, tmp_path: Path, spawn
) -> None:
    with companies_known(pg_url, tmp_path, 3, lease_s=30.0) as (upstream, arrivals, engine):
        settings = engine.settings
        upstream.faults = upstream.faults.updated({"timeout_rate": 1.0, "hang_s": 120})
        arrivals.event.clear()
        worker = spawn(settings, "worker", "--concurrency", "2")
        wait_until(lambda: arrivals.count >= 2, what="two hanging requests", timeout_s=60)
        sent = arrivals.count
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log_of(worker)[-2000:]
        took = time.monotonic() - started
        assert took < 5, f"shutdown took {took:.1f}s"
        assert arrivals.count == sent, "no upstream request may go out after SIGTERM"
        counts = job_counts(engine)
        assert counts.get("running", 0) == 0
        assert counts["pending"] == 21
        assert all(j.attempts == 0 for j in all_jobs(engine) if j.status == "pending")


def test_a_second_signal_exits_at_once(sqlite_url: str, tmp_path: Path, spawn) -> None:
    with companies_known(sqlite_url, tmp_path, 1, lease_s=30.0) as (upstream, arrivals, engine):
        settings = engine.settings
        upstream.faults = upstream.faults.updated({"timeout_rate": 1.0, "hang_s": 120})
        arrivals.event.clear()
        worker = spawn(settings, "worker", "--concurrency", "1")
        assert arrivals.event.wait(60)
        # Another process holds the SQLite write lock: releasing the jobs has to wait.
        locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=30)
        locker.isolation_level = None
        locker.execute("BEGIN IMMEDIATE")
        try:
            worker.send_signal(signal.SIGTERM)
            wait_until(
                lambda: "stopping: releasing" in log_of(worker),
                what="the first stop",
                timeout_s=30,
            )
            started = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 128 + signal.SIGTERM
            assert time.monotonic() - started < 3
            assert "second signal: exiting at once" in log_of(worker)
        finally:
            locker.execute("ROLLBACK")
            locker.close()


def test_an_interrupted_sync_wait_exits_non_zero_and_says_so(
    sqlite_url: str, tmp_path: Path, spawn
) -> None:
    with companies_known(sqlite_url, tmp_path, 2) as (upstream, arrivals, engine):
        upstream.faults = upstream.faults.updated({"timeout_rate": 1.0, "hang_s": 120})
        arrivals.event.clear()
        sync = spawn(engine.settings, "sync", "--wait")
        assert arrivals.event.wait(60), log_of(sync)
        started = time.monotonic()
        sync.send_signal(signal.SIGINT)
        assert sync.wait(timeout=30) == 130, log_of(sync)[-2000:]
        assert time.monotonic() - started < 5
        output = log_of(sync)
        assert "interrupted:" in output and "done:" not in output
        assert "pending" in output


def test_a_worker_resumed_after_sigstop_still_stops_on_sigterm(
    sqlite_url: str, tmp_path: Path, spawn
) -> None:
    # Right after SIGCONT the kernel often hands the next signal to a thread other than
    # the main one, which then has to notice it by itself: it must not sleep untimed.
    with DemoUpstream(companies=1, api_key="test-key") as upstream:
        settings = engine_settings(
            sqlite_url, tmp_path / "data", upstream.url, poll_interval_s=0.05, lease_s=1.0
        )
        for _ in range(3):
            worker = spawn(settings, "worker", "--concurrency", "4")
            wait_until(
                lambda worker=worker: "Ctrl-C to stop" in log_of(worker),
                what="the worker to start",
            )
            worker.send_signal(signal.SIGSTOP)
            worker.send_signal(signal.SIGCONT)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=15) == 0, log_of(worker)[-2000:]
