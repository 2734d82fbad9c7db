"""An outage is logged as state changes, not once per request.

Unit tests of :class:`StateChangeLog`, then a real outage: Postgres behind the loopback
proxy of the console outage test, the engine's workers claiming through it and the read
API served by uvicorn over it. The proxy is cut, hundreds of requests fail (503) and the
workers' claims fail many times, and the log holds a bounded number of lines; when the
proxy is restored, one line says each part recovered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from opsdash.demo.server import DemoUpstream
from opsdash.engine.models import Company, ScheduleData, UserProfile
from opsdash.engine.runtime import Engine
from opsdash.readapi.app import SCHEDULE_PATH, create_app
from opsdash.readapi.tokens import mint_token
from opsdash.statelog import StateChangeLog
from tests.conftest import PostgresSchemas, engine_settings, migrated
from tests.test_console_outage import POSTGRES, TcpProxy
from tests.test_readapi import serving

OUTAGE_REQUESTS = 300


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="opsdash")
    return caplog


def messages(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(prefix) and record.levelno >= logging.WARNING
    ]


# --- the helper ---------------------------------------------------------------------------


def test_a_failure_is_logged_once_then_summarised_then_recovered(lines) -> None:
    clock = Clock()
    outages = StateChangeLog(logging.getLogger("opsdash.test"), summary_every_s=60, clock=clock)
    for second in range(150):
        clock.now = 1000.0 + second
        for _ in range(10):  # ten failing requests a second
            outages.failed("database", "database unreachable: %s", "connection refused")
    assert outages.is_failing("database")
    clock.now = 1150.0
    outages.succeeded("database")
    outages.succeeded("database")  # already recovered: nothing more
    logged = messages(lines, "opsdash.test")
    assert logged[0] == "database unreachable: connection refused"
    assert logged[1].startswith("database still failing after 60 s: 600 more failures")
    assert logged[2].startswith("database still failing after 120 s: 600 more failures")
    assert logged[3] == "database recovered after 150.0 s (1500 failures)"
    assert len(logged) == 4
    assert not outages.is_failing("database")


def test_keys_are_independent_and_a_new_outage_is_logged_again(lines) -> None:
    outages = StateChangeLog(logging.getLogger("opsdash.test"), clock=Clock())
    outages.failed("database", "db down")
    outages.failed("storage", "storage down")
    outages.succeeded("database")
    outages.failed("database", "db down again")
    assert messages(lines, "opsdash.test") == [
        "db down",
        "storage down",
        "database recovered after 0.0 s (1 failure)",
        "db down again",
    ]


def test_many_threads_failing_at_once_log_one_line(lines) -> None:
    outages = StateChangeLog(logging.getLogger("opsdash.test"))
    start = threading.Barrier(8)

    def fail() -> None:
        start.wait()
        for _ in range(500):
            outages.failed("claim", "claims failing")

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert messages(lines, "opsdash.test") == ["claims failing"]


# --- a real outage under the read API and the workers ----------------------------------------


@pytest.fixture
def proxied(
    pg_schemas: PostgresSchemas, tmp_path: Path, demo_upstream: DemoUpstream
) -> Iterator[tuple[Engine, TcpProxy]]:
    proxy = TcpProxy(POSTGRES)
    direct = migrated(pg_schemas.new_url())
    url = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    engine = Engine(engine_settings(url, tmp_path / "data", demo_upstream.url))
    engine.start(scheduler=False)
    try:
        engine.sync()
        assert engine.wait_idle(timeout_s=60)
        yield engine, proxy
    finally:
        engine.stop()


def wait_until(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    event = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        event.wait(0.05)
    raise AssertionError(f"timed out waiting for {condition}")


@pytest.mark.postgres
def test_an_outage_logs_a_bounded_number_of_lines(proxied, lines) -> None:
    engine, proxy = proxied
    with engine.db.session() as session:
        company = session.execute(select(Company).order_by(Company.name)).scalars().first()
        assert company is not None
        admin = (
            session.execute(
                select(UserProfile).where(
                    UserProfile.company_id == company.id, UserProfile.role == "admin"
                )
            )
            .scalars()
            .first()
        )
        day = (
            session.execute(select(ScheduleData.date).where(ScheduleData.company_id == company.id))
            .scalars()
            .first()
        )
    assert admin is not None and admin.email and day is not None
    token = mint_token(engine.settings, engine.db, admin.email, timedelta(hours=1))
    app = create_app(engine.settings, engine.db, engine.blobs)
    pool = engine.pool
    assert pool is not None
    headers = {"Authorization": f"Bearer {token}"}
    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=20) as client:
        assert client.get(SCHEDULE_PATH, params={"date": str(day)}, headers=headers).is_success
        lines.clear()

        proxy.cut()
        statuses: dict[int, int] = {}
        for number in range(OUTAGE_REQUESTS):
            # Days never asked for, and the readiness check: each one asks the database.
            if number % 3:
                other = day + timedelta(days=100 + number)
                response = client.get(SCHEDULE_PATH, params={"date": str(other)}, headers=headers)
            else:
                response = client.get("/readyz")
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert statuses == {503: OUTAGE_REQUESTS}
        # The workers keep polling meanwhile; wait for many failed claims.
        wait_until(lambda: pool._outages._failing.get("claim", None) is not None)
        wait_until(lambda: pool._outages._failing["claim"].failures >= 30)
        # The scheduled rescue (every lease / 2) fails too: one line, no traceback.
        wait_until(lambda: engine._scheduled_outages.is_failing("rescue expired leases"))

        read_api = messages(lines, "opsdash.readapi")
        jobs = messages(lines, "opsdash.jobs")
        assert len(read_api) <= 2, read_api  # the database outage starts; maybe storage too
        assert any(line.startswith("database unreachable") for line in read_api)
        # One line, naming the kind of trouble (describe_error), not just the exception type.
        assert len(jobs) == 1 and jobs[0].startswith("claims failing: database unreachable: "), jobs
        rescues = [line for line in messages(lines, "opsdash.engine") if "rescue" in line]
        assert len(rescues) == 1, rescues
        assert rescues[0].startswith("rescue expired leases skipped"), rescues

        proxy.restore()
        wait_until(
            lambda: client.get("/readyz").status_code == 200,
        )
        wait_until(lambda: any("claim recovered" in line for line in messages(lines, "opsdash")))
        wait_until(
            lambda: any(
                line.startswith("rescue expired leases recovered after")
                for line in messages(lines, "opsdash.engine")
            )
        )
        assert any(
            line.startswith("database recovered after")
            for line in messages(lines, "opsdash.readapi")
        )
        total = len(messages(lines, "opsdash"))
        assert total <= 8, messages(lines, "opsdash")
        tracebacks = [record for record in lines.records if record.exc_info]
        assert not tracebacks, [record.getMessage() for record in tracebacks]
        engine.sync()  # and the engine works again
        assert engine.wait_idle(timeout_s=60)
