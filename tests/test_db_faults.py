"""Postgres crashes and freezes, on a cluster of the test's own (never the shared server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine import queue
from opsdash.engine.db import DbTimeouts, connect, create_schema
from opsdash.engine.models import Company, JobStatus
from opsdash.engine.runtime import Engine
from opsdash.readapi.server import read_api_timeouts
from tests.conftest import engine_settings, migrated
from tests.pgcluster import PgCluster, available
from tests.test_readapi_server import free_port
from tests.waiting import answers_ok, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="needs initdb and a postgres user"),
]

REPO = Path(__file__).resolve().parents[1]


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as error:
        return time.monotonic() - started, error
    return time.monotonic() - started, None


def cli_env(url: str, data_dir: Path, upstream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSDASH_", "DATABASE_"))}
    env.update(
        {
            "DATABASE_URL": url,
            "OPSDASH_DEMO": "1",  # the test's demo upstream, named by MAIDCENTRAL_API_URL
            "OPSDASH_DATA_DIR": str(data_dir),
            "MAIDCENTRAL_API_URL": upstream,
            "MAIDCENTRAL_API_KEY": "test-key",
        }
    )
    return env


def test_what_sync_reported_as_queued_and_claimed_survives_a_server_crash(
    tmp_path: Path,
) -> None:
    # The WAL writer flushes only every 10 s here: a commit that does not wait for its
    # own flush is lost by a crash right after it, as it was with synchronous_commit=off.
    with PgCluster.create(wal_writer_delay="10s") as cluster:
        db = connect(cluster.url)
        create_schema(db)
        with db.session() as session:
            for number in range(40):
                session.add(Company(service_company_id=f"{2000 + number}", name=f"C{number}"))
            session.commit()
        db.dispose()
        with DemoUpstream(companies=1, api_key="test-key") as upstream:
            sync = subprocess.run(
                [sys.executable, "-m", "opsdash", "sync"],
                env=cli_env(cluster.url, tmp_path / "data", upstream.url),
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert sync.returncode == 0, sync.stderr
        assert "queued 281 of 281 planned jobs" in sync.stdout
        db = connect(cluster.url)
        worker = queue.new_worker_id()
        claimed = queue.claim(db, worker, lease_s=60)
        db.dispose()
        assert claimed

        cluster.crash()
        cluster.start()

        db = connect(cluster.url)
        try:
            with db.read() as conn:
                queued = conn.execute(text("SELECT COUNT(*) FROM background_jobs")).scalar()
                running = conn.execute(
                    text("SELECT COUNT(*) FROM background_jobs WHERE locked_by = :me"),
                    {"me": worker},
                ).scalar()
            assert queued == 281
            assert running == len(claimed)
        finally:
            db.dispose()


def test_a_superseded_version_is_deleted_only_once_its_replacement_is_durable(
    tmp_path: Path,
) -> None:
    # A server that acknowledges a commit before its WAL is written (synchronous_commit off)
    # and whose WAL writer is stopped: a crash loses every commit since. The engine deletes
    # a day's previous version right after publishing the new one, so that publish must be
    # on disk first, whatever the server's default, or the crash brings back metadata that
    # names the deleted version.
    with PgCluster.create(synchronous_commit="off") as cluster:
        migrated(cluster.url)
        with DemoUpstream(companies=1, api_key="test-key") as upstream:
            engine = Engine(engine_settings(cluster.url, tmp_path / "data", upstream.url))
            try:
                engine.start(scheduler=False)
                engine.sync()
                assert engine.wait_idle(timeout_s=60)
                cluster.execute("CHECKPOINT")  # the first versions are on disk
                first = stored_paths(cluster)
                os.kill(cluster.server_process("walwriter"), signal.SIGSTOP)
                upstream.faults = upstream.faults.updated({"revision": 1})
                engine.sync()
                assert engine.wait_idle(timeout_s=60)
            finally:
                engine.stop()
        cluster.kill()
        cluster.start()

        paths = stored_paths(cluster)
        assert len(paths) == 7 and set(paths).isdisjoint(first), "the new versions were lost"
        blobs = tmp_path / "data" / "blobs"
        missing = [path for path in paths if not (blobs / path).is_file()]
        assert missing == [], "metadata names versions that were deleted"


def stored_paths(cluster: PgCluster) -> list[str]:
    return [row[0] for row in cluster.execute("SELECT storage_path FROM schedule_data")]


def test_a_frozen_database_gives_errors_within_seconds(pg_cluster: PgCluster) -> None:
    db = connect(pg_cluster.url, timeouts=DbTimeouts(connect_s=2, statement_s=2, pool_s=2))
    create_schema(db)
    queue.enqueue(db, [queue.users_job()])
    # A connection checked out before the freeze, waiting on a reply that never comes.
    held = db.engine.connect()
    held.execute(text("SELECT 1"))
    try:
        with pg_cluster.frozen():
            took, error = timed(lambda: held.execute(text("SELECT 1")))
            assert isinstance(error, OperationalError), error
            assert "did not answer within 3 s" in str(error)
            assert took < 5
            # A pooled connection: the ping gives up, then a new connection times out.
            took, error = timed(lambda: queue.claim(db, queue.new_worker_id(), lease_s=60))
            assert isinstance(error, OperationalError), error
            assert took < 6
        # Thawed: the pool recovers by itself.
        held.close()
        assert queue.claim(db, queue.new_worker_id(), lease_s=60)
        with db.read() as conn:
            assert conn.execute(text("SELECT status FROM background_jobs")).scalar() == (
                JobStatus.RUNNING
            )
    finally:
        db.dispose()


def test_a_read_api_query_in_flight_when_the_database_froze_fails_in_seconds(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    # The engine's default statement limit (30 s) covers pipelined batches; a read API
    # request caught by the freeze must not wait that long (a client gives up after 10 s).
    settings = Settings(database_url=pg_cluster.url, data_dir=tmp_path / "data", demo=True)
    assert settings.db_statement_timeout_s == 30
    db = connect(pg_cluster.url, timeouts=read_api_timeouts(settings))
    held = db.engine.connect()
    held.execute(text("SELECT 1"))
    try:
        with pg_cluster.frozen():
            took, error = timed(lambda: held.execute(text("SELECT 1")))
        assert isinstance(error, OperationalError), error
        assert "did not answer within 6 s" in str(error)
        assert took < 8
    finally:
        held.close()
        db.dispose()


def test_readyz_answers_503_within_seconds_while_the_database_is_frozen(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    port = free_port()
    migrated(pg_cluster.url)  # a serving process refuses an unmigrated Postgres
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSDASH_", "DATABASE_"))}
    env.update(
        {
            "DATABASE_URL": pg_cluster.url,
            "OPSDASH_DEMO": "1",  # no upstream is needed; the demo stands in for one
            "OPSDASH_DATA_DIR": str(tmp_path / "data"),
            "OPSDASH_DB_STATEMENT_TIMEOUT_S": "2",
            "OPSDASH_DB_CONNECT_TIMEOUT_S": "2",
            "OPSDASH_DB_POOL_TIMEOUT_S": "2",
        }
    )
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "opsdash", "--serve", "--no-engine", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: answers_ok(f"{base}/readyz", timeout_s=1) or server.poll() is not None,
            what="the server to become ready",
            timeout_s=90,
        )
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        with pg_cluster.frozen():
            for _ in range(3):
                started = time.monotonic()
                answer = httpx.get(f"{base}/readyz", timeout=30)
                assert answer.status_code == 503, answer.text
                assert time.monotonic() - started < 10  # a client's usual timeout
        ready = httpx.get(f"{base}/readyz", timeout=15)
        assert ready.status_code == 200, ready.text
    finally:
        server.terminate()
        server.wait(timeout=30)
