"""Freshness, alerts and the run ledger in the console: Pilot against a real engine (SQLite,
the demo upstream over HTTP) and a real webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from opsdash.demo.server import DemoUpstream
from opsdash.engine.models import BackgroundJob, JobStatus, JobType, ScheduleData
from opsdash.engine.runtime import Engine
from opsdash.engine.sqltypes import utcnow
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.history import HistoryScreen
from opsdash.screens.log import LogScreen
from tests.alert_receivers import WebhookReceiver
from tests.conftest import engine_settings
from tests.test_console_actions import (
    DAYS,
    WIDE,
    company,
    make_app,
    table,
    text_of,
    wait_for,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def stale_engine(
    tmp_path: Path, sqlite_url: str, demo_upstream: DemoUpstream, webhook: WebhookReceiver
) -> Iterator[Engine]:
    """Synced, then one company's days made three hours old and one of its days failed."""
    settings = engine_settings(
        sqlite_url, tmp_path / "data", demo_upstream.url, alert_webhook_url=webhook.url
    )
    engine = Engine(settings)
    engine.start(scheduler=False)
    engine.sync()
    assert engine.wait_idle(timeout_s=60)
    stale = company(engine, 0)
    long_ago = utcnow() - timedelta(hours=3)
    today = engine.freshness(company_id=stale.id)[0].days[0].date
    with engine.db.write() as conn:
        conn.execute(
            update(ScheduleData)
            .where(ScheduleData.company_id == stale.id)  # type: ignore[arg-type]
            .values(updated_at=long_ago, synced_at=long_ago)
        )
    with engine.db.session() as session:
        session.add(
            BackgroundJob(
                job_type=JobType.SYNC_SCHEDULE,
                company_id=stale.id,
                status=JobStatus.FAILED,
                params={"date": today.isoformat()},
                attempts=3,
                error_message="HTTP 500 from MaidCentral",
                completed_at=utcnow(),
            )
        )
        session.commit()
    yield engine
    engine.stop()


async def test_a_stale_company_is_failing_first_with_its_day_ages_and_error(
    stale_engine: Engine,
) -> None:
    stale = company(stale_engine, 0)
    app = make_app(stale_engine)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("2")
        assert isinstance(app.screen, CompaniesScreen)
        companies = table(app, "#companies-table")
        await wait_for(pilot, lambda: companies.row_count == 3)
        # Worst first by default: the failing company is the first row.
        await wait_for(pilot, lambda: "failing" in str(companies.get_row_at(0)))
        assert companies.get_row_at(0)[0].plain == stale.name
        assert all("on time" in str(companies.get_row_at(n)) for n in (1, 2))
        await wait_for(
            pilot,
            lambda: "2 on time · 1 failing" in text_of(app.screen.query_one("#status-where")),
        )

        await pilot.press("enter")
        assert isinstance(app.screen, CompanyDetailScreen)
        days = table(app, "#days-table")
        await wait_for(pilot, lambda: days.row_count >= DAYS)
        summary = app.screen.query_one("#company-summary")
        await wait_for(pilot, lambda: "failing" in text_of(summary))
        assert "stalest day 3h old" in text_of(summary)
        rows = [days.get_row_at(index) for index in range(days.row_count)]
        errors = [str(row[-1]) for row in rows if "HTTP 500" in str(row[-1])]
        assert errors == ["HTTP 500 from MaidCentral"]
        assert {str(row[-2]) for row in rows[:DAYS]} == {"3h"}


async def test_the_log_screen_lists_alerts_sent(
    stale_engine: Engine, webhook: WebhookReceiver
) -> None:
    stale_engine.watch()  # one round of the alert loop, as the scheduler runs it
    assert webhook.bodies, "the stale company raised no alert"
    app = make_app(stale_engine)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("4")
        assert isinstance(app.screen, LogScreen)
        alerts = table(app, "#alerts-table")
        await wait_for(pilot, lambda: alerts.row_count == len(webhook.bodies))
        subjects = " ".join(str(alerts.get_row_at(n)) for n in range(alerts.row_count))
        assert "is failing" in subjects and "sent" in subjects


async def test_the_history_screen_shows_each_run(stale_engine: Engine) -> None:
    stale_engine.sync()
    assert stale_engine.wait_idle(timeout_s=60)
    stale_engine.watch()
    app = make_app(stale_engine)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("5")
        assert isinstance(app.screen, HistoryScreen)
        runs = table(app, "#history-table")
        await wait_for(pilot, lambda: runs.row_count == 2)
        newest = [str(cell) for cell in runs.get_row_at(0)]
        assert newest[1] == "operator" and newest[-1] == "all companies"
        assert newest[4] == str(3 * DAYS)  # every day of the three demo companies
        summary = app.screen.query_one("#history-summary")
        await wait_for(pilot, lambda: "2 runs shown" in text_of(summary))
