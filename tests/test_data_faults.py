"""Hostile upstream data and database blips, end to end over real HTTP and real databases."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy
from sqlalchemy import select, text

from opsdash.demo.server import DemoUpstream
from opsdash.engine.db import describe_error
from opsdash.engine.models import BackgroundJob, JobStatus, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings, migrated
from tests.pgcluster import PgCluster
from tests.test_multiprocess import run_users_job_inline
from tests.test_worker_faults import Arrivals
from tests.waiting import wait_until

BAD_DAY_INDEX = 3  # the fourth day of the week carries the bad record
PLACEHOLDER = "__LONE_SURROGATE__"


class MutatingProxy:
    """A real HTTP server in front of the demo upstream that spoils one record of one day
    in every schedule answer that contains it."""

    def __init__(self, target: str, fault: str) -> None:
        self.target = target
        self.fault = fault
        self.bad_day: str | None = None
        self.schedule_calls = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream = httpx.get(
                    f"{proxy.target}{self.path}",
                    headers={"Authorization": self.headers.get("Authorization", "")},
                    timeout=30,
                )
                body = upstream.content
                if self.path.lower().startswith("/api/dr-schedule?"):
                    proxy.schedule_calls += 1
                    body = proxy.spoil(body)
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spoil(self, body: bytes) -> bytes:
        envelope = orjson.loads(body)
        records = envelope["Result"]
        victims = [r for r in records if r["JobDate"].startswith(self.bad_day or "-")]
        if not victims:
            return body
        victim = min(victims, key=lambda r: r["JobInformationId"])
        if self.fault == "unreadable JobDate":
            victim["JobDate"] = "31/31/2026"
        else:
            victim["CustomerInformation"]["CustomerFirstName"] = PLACEHOLDER
        encoded = orjson.dumps(envelope)
        # orjson cannot write a lone surrogate; the upstream's encoder did.
        return encoded.replace(PLACEHOLDER.encode(), b"\\ud800")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("fault", ["unreadable JobDate", "lone surrogate"])
def test_one_bad_record_fails_only_its_day_and_is_not_retried(
    fault: str, sqlite_url: str, tmp_path: Path
) -> None:
    with DemoUpstream(companies=1, api_key="test-key") as upstream:
        proxy = MutatingProxy(upstream.url, fault)
        engine = Engine(engine_settings(sqlite_url, tmp_path / "data", proxy.url))
        try:
            run_users_job_inline(engine)
            with engine.db.session() as session:
                days = sorted(
                    job.params["date"]
                    for job in session.execute(select(BackgroundJob)).scalars()
                    if job.job_type == "sync_schedule"
                )
            proxy.bad_day = days[BAD_DAY_INDEX]
            engine.start(workers=2, scheduler=False)
            assert engine.wait_idle(timeout_s=120)
            with engine.db.session() as session:
                jobs = {
                    job.params["date"]: job
                    for job in session.execute(select(BackgroundJob)).scalars()
                    if job.job_type == "sync_schedule"
                }
                stored = {
                    row.date.isoformat() for row in session.execute(select(ScheduleData)).scalars()
                }
        finally:
            engine.stop()
            proxy.close()
    bad = jobs.pop(proxy.bad_day)
    assert bad.status == JobStatus.FAILED
    assert bad.attempts == 1, "a data error is not retried"
    assert "malformed upstream data" in (bad.error_message or "")
    expected = "unreadable JobDate" if fault == "unreadable JobDate" else "not valid Unicode"
    assert expected in (bad.error_message or "")
    assert all(job.status == JobStatus.COMPLETED and job.attempts == 1 for job in jobs.values())
    assert stored == set(jobs)


def test_a_database_blip_inside_a_handler_is_waited_out_without_spending_an_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = DemoUpstream(companies=1, api_key="test-key")
    arrivals = Arrivals(upstream)
    with upstream, PgCluster.create() as cluster:
        settings = engine_settings(
            migrated(cluster.url), tmp_path / "data", upstream.url, lease_s=60.0
        )
        engine = Engine(settings)
        try:
            run_users_job_inline(engine)
            upstream.faults = upstream.faults.updated({"latency_ms": 1000})
            arrivals.event.clear()
            with caplog.at_level(logging.WARNING, logger="opsdash.db"):
                engine.start(workers=1, scheduler=False)
                assert arrivals.event.wait(60)
                cluster.stop("fast")  # the database restarts while the upstream answers
                wait_until(
                    lambda: "; retrying" in caplog.text,
                    what="the handler to hit the outage",
                    timeout_s=60,
                )
                cluster.start()
                assert engine.wait_idle(timeout_s=120)
            with engine.db.session() as session:
                jobs = [
                    job
                    for job in session.execute(select(BackgroundJob)).scalars()
                    if job.job_type == "sync_schedule"
                ]
            assert len(jobs) == 7
            assert all(job.status == JobStatus.COMPLETED for job in jobs)
            assert all(job.attempts == 1 for job in jobs), [job.errors for job in jobs]
        finally:
            engine.stop()


# --- saying what is wrong with the database --------------------------------------------------


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(
        f"sqlite:///{tmp_path / 'x.db'}", connect_args={"timeout": 0.1}
    )
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x BLOB)"))
    yield engine
    engine.dispose()


def test_a_locked_sqlite_file_is_called_locked(sqlite_file: sqlalchemy.Engine) -> None:
    import sqlite3

    holder = sqlite3.connect(sqlite_file.url.database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught, sqlite_file.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (x'00')"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    described = describe_error(caught.value)
    assert described.startswith("database is locked by another process")
    assert "unreachable" not in described


def test_a_full_disk_is_called_full(sqlite_file: sqlalchemy.Engine) -> None:
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught, sqlite_file.begin() as conn:
        # SQLite's own ceiling on the file size stands in for the disk running out.
        conn.execute(text("PRAGMA max_page_count = 3"))
        conn.execute(text("INSERT INTO t VALUES (randomblob(100000))"))
    described = describe_error(caught.value)
    assert described.startswith("disk full:")


def test_an_unreachable_server_is_called_unreachable() -> None:
    from tests.test_readapi_server import free_port

    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
        connect_args={"connect_timeout": 2},
    )
    with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        engine.connect()
    engine.dispose()
    assert describe_error(caught.value).startswith("database unreachable:")
