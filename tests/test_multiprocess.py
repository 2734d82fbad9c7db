"""Worker processes against Postgres: a shared drain, and a worker killed mid-job."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine import handlers, queue
from opsdash.engine.models import BackgroundJob, JobStatus, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def worker_env(settings: Settings) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_"))
    }
    env.update(
        {
            "DATABASE_URL": settings.effective_database_url,
            "OPSDASH_DEMO": "1",  # a shared demo upstream, named by MAIDCENTRAL_API_URL
            "OPSDASH_DATA_DIR": str(settings.data_dir),
            "MAIDCENTRAL_API_URL": settings.maidcentral_api_url or "",
            "MAIDCENTRAL_API_KEY": settings.maidcentral_api_key or "",
            "OPSDASH_LEASE_S": str(settings.lease_s),
            "OPSDASH_POLL_INTERVAL_S": "0.2",
            "OPSDASH_RETRY_BASE_S": "0.1",
            "OPSDASH_UPSTREAM_RATE_PER_MINUTE": "100000",
            "OPSDASH_UPSTREAM_RATE_PER_HOUR": "1000000",
            "OPSDASH_DAYS_AHEAD": str(settings.days_ahead),
        }
    )
    return env


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[[Settings, int], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def spawn(settings: Settings, concurrency: int) -> subprocess.Popen[bytes]:
        # A file, not a pipe: a chatty worker must never block on a full pipe.
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "opsdash", "worker", "--concurrency", str(concurrency)],
            env=worker_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        process.log_path = log.name  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def job_counts(engine: Engine) -> dict[str, int]:
    with engine.db.read() as conn:
        rows = conn.execute(
            select(BackgroundJob.status, func.count()).group_by(BackgroundJob.status)
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def run_users_job_inline(engine: Engine) -> None:
    """Discover the companies; the users job queues their schedule jobs."""
    engine.sync()
    worker = queue.new_worker_id()
    [job] = queue.claim(engine.db, worker, lease_s=60)
    [outcome] = handlers.run(engine.context, [job])
    assert outcome.ok, outcome.error
    assert queue.complete(engine.db, job, worker, outcome.result)


def test_two_worker_processes_drain_2000_jobs_exactly_once(
    pg_url: str, tmp_path: Path, spawn_worker
) -> None:
    with DemoUpstream(companies=100, api_key="test-key") as upstream:
        settings = engine_settings(pg_url, tmp_path / "data", upstream.url, days_ahead=20)
        engine = Engine(settings)
        try:
            run_users_job_inline(engine)
            assert job_counts(engine)[JobStatus.PENDING] == 2000
            workers = [spawn_worker(settings, 3), spawn_worker(settings, 3)]
            wait_until(
                lambda: job_counts(engine).keys() == {"completed"}, timeout_s=240, what="the drain"
            )
            for process in workers:
                process.send_signal(signal.SIGTERM)
                output = Path(process.log_path).read_text()[-2000:]
                assert process.wait(timeout=30) == 0, output
            with engine.db.session() as session:
                jobs = list(session.execute(select(BackgroundJob)).scalars())
                stored = session.execute(select(func.count()).select_from(ScheduleData)).scalar()
            schedule_jobs = [job for job in jobs if job.job_type == "sync_schedule"]
            assert len(schedule_jobs) == 2000
            assert all(job.status == JobStatus.COMPLETED for job in jobs)
            assert all(job.attempts == 1 and job.rescue_count == 0 for job in schedule_jobs)
            assert stored == 2000
            pids = {job.locked_by.split(":")[1] for job in schedule_jobs if job.locked_by}
            assert len(pids) == 2, "both processes should have taken work"
            assert upstream.stats()["endpoints"]["dr-schedule"] == 100
        finally:
            engine.stop()


def test_killed_worker_is_rescued_and_the_blob_is_whole(
    pg_url: str, tmp_path: Path, spawn_worker
) -> None:
    with DemoUpstream(companies=1, api_key="test-key") as upstream:
        settings = engine_settings(pg_url, tmp_path / "data", upstream.url, lease_s=2.0)
        engine = Engine(settings)
        try:
            run_users_job_inline(engine)
            upstream.faults.latency_ms = 60_000  # the worker hangs mid-job, as if stuck
            doomed = spawn_worker(settings, 1)
            wait_until(
                lambda: job_counts(engine).get("running", 0) > 0, timeout_s=30, what="a running job"
            )
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            upstream.faults.latency_ms = 0
            rescuer = spawn_worker(settings, 1)
            wait_until(
                lambda: job_counts(engine).keys() == {"completed"}, timeout_s=60, what="the rescue"
            )
            rescuer.send_signal(signal.SIGTERM)
            assert rescuer.wait(timeout=30) == 0
            with engine.db.session() as session:
                jobs = list(session.execute(select(BackgroundJob)).scalars())
                rows = list(session.execute(select(ScheduleData)).scalars())
            rescued = [job for job in jobs if job.rescue_count]
            assert rescued and all(job.attempts == 2 for job in rescued)
            assert all("lease expired" in job.errors[0]["message"] for job in rescued)
            assert len(rows) == 7
            for row in rows:
                body = engine.blobs.get(row.storage_path)
                assert hashlib.sha256(body).hexdigest() == row.checksum
                assert len(orjson.loads(body)["jobs"]) == row.job_count
            leftovers = list(Path(settings.blob_root).rglob(".tmp-*"))
            assert leftovers == []
        finally:
            engine.stop()
