"""The console driven like an operator would: Pilot against a real engine, SQLite, demo upstream.

Every action of issue 4 is pressed here and its effect is awaited in the tables
and in the database. Waits are on conditions (the app keeps running while we
poll), never fixed sleeps.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from textual.command import CommandList, CommandPalette
from textual.content import Content
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Input, Static, Switch

from opsdash.app import OpsdashApp, run_console
from opsdash.demo.server import DemoUpstream
from opsdash.engine import queries
from opsdash.engine.models import BackgroundJob, Company, JobStatus, ScheduleData
from opsdash.engine.runtime import Engine
from opsdash.privacy import (
    ALWAYS_HIDDEN_JOB_FIELDS,
    DISPLAY_BILL_RATE,
    DISPLAY_CUSTOMER_EMAILS,
    HIDE_DISCOUNTS,
    schedule_view,
)
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.confirm import ConfirmScreen
from opsdash.screens.jobs import JobsScreen
from opsdash.screens.log import LogScreen
from opsdash.screens.preview import PreviewScreen
from opsdash.screens.toggles import TogglesScreen
from opsdash.screens.widgets.live_table import LiveTable
from tests.conftest import engine_settings
from tests.waiting import settle_until as wait_for
from tests.waiting import wait_until

DAYS = 7
WIDE, NARROW = (120, 36), (80, 24)

# Pilot tests are coroutines; anyio (installed with httpx) runs them on asyncio.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def console_engine(
    tmp_path: Path, sqlite_url: str, demo_upstream: DemoUpstream
) -> Iterator[Engine]:
    engine = Engine(engine_settings(sqlite_url, tmp_path / "data", demo_upstream.url))
    engine.start(scheduler=False)
    yield engine
    engine.stop()


@pytest.fixture
def synced_engine(console_engine: Engine) -> Engine:
    console_engine.sync()
    assert console_engine.wait_idle(timeout_s=30)
    return console_engine


def make_app(engine: Engine) -> OpsdashApp:
    app = OpsdashApp(engine, poll_interval_s=0.3)
    # A toast disappears after a few seconds; on a busy machine a poll can come later than
    # that. Every toast is recorded as it is raised, so no wait can miss one.
    shown: list[str] = []
    notify = app.notify

    def recorded(message: str, *args: Any, **kwargs: Any) -> None:
        shown.append(str(message))
        notify(message, *args, **kwargs)

    app.notify = recorded  # type: ignore[method-assign]
    app.toasts_shown = shown  # type: ignore[attr-defined]
    return app


def text_of(widget: Widget) -> str:
    """What a Static shows, as plain text (Rich renderables rendered at a wide width)."""
    content = widget.content if isinstance(widget, Static) else widget.render()
    if isinstance(content, str):
        return content
    if isinstance(content, Content | Text):
        return content.plain
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(content)
    return console.export_text()


def jobs_in_db(engine: Engine) -> list[BackgroundJob]:
    with engine.db.session() as session:
        return list(session.execute(select(BackgroundJob)).scalars())


def company(engine: Engine, index: int = 0) -> Company:
    with engine.db.session() as session:
        return list(session.execute(select(Company).order_by(Company.name)).scalars())[index]


def table(app: OpsdashApp, selector: str) -> LiveTable:
    return app.screen.query_one(selector, LiveTable)


def confirm_shown(app: OpsdashApp) -> bool:
    """The confirmation is up and composed (pushing a screen and composing it are two steps)."""
    return isinstance(app.screen, ConfirmScreen) and bool(app.screen.query("#confirm-question"))


def toasts(app: OpsdashApp) -> list[str]:
    """Every toast the app has raised so far (see ``make_app``)."""
    recorded = getattr(app, "toasts_shown", None)
    if recorded is not None:
        return list(recorded)
    return [str(notification.message) for notification in app._notifications]


async def highlight(pilot: Pilot, selector: str, key: str) -> None:
    live = table(pilot.app, selector)  # type: ignore[arg-type]
    live.move_cursor(row=live.get_row_index(key))
    await wait_for(pilot, lambda: live.highlighted_key == key)


# --- jobs screen ------------------------------------------------------------------------


async def test_jobs_table_counts_and_detail_show_the_synced_run(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    async with app.run_test(size=WIDE) as pilot:
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == 3 * DAYS + 1)
        await wait_for(pilot, lambda: screen.selected_job_id is not None)
        counts = text_of(screen.query_one("#summary-counts"))
        assert f"completed {3 * DAYS + 1}" in counts
        detail = screen.query_one("#job-detail-body")
        await wait_for(pilot, lambda: str(screen.selected_job_id) in text_of(detail))
        await wait_for(pilot, lambda: app.system_status is not None)
        status = text_of(screen.query_one("#status-where"))
        assert (
            "sqlite" in status and synced_engine.upstream.base_url.removeprefix("http://") in status
        )


async def test_sync_now_key_queues_a_run_that_completes(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == 3 * DAYS + 1)
        await pilot.press("s")
        await wait_for(pilot, lambda: any("Sync run queued" in t for t in toasts(app)))
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == 2 * (3 * DAYS + 1))
        await wait_for(pilot, lambda: all(j.status == "completed" for j in jobs_in_db(app.engine)))


async def test_search_and_status_filter_narrow_the_table(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 0)
    async with app.run_test(size=WIDE) as pilot:
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == 3 * DAYS + 1)
        await pilot.press("slash", *target.name[:6])
        assert screen.query_one("#search", Input).has_focus
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == DAYS)
        assert {row.company_id for row in screen._rows.values()} == {target.id}
        await pilot.press("escape")
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == 3 * DAYS + 1)
        screen.query_one("#filter-status").value = "failed"  # type: ignore[attr-defined]
        await wait_for(pilot, lambda: table(app, "#jobs-table").row_count == 0)
        assert "no jobs match" in str(table(app, "#jobs-table").border_subtitle)


async def fail_company(pilot: Pilot, engine: Engine, demo: DemoUpstream, target: Company) -> None:
    demo.faults.failing_companies = {target.service_company_id: "500"}
    engine.sync(company_id=target.id)
    await wait_for(
        pilot,
        lambda: sum(j.status == "failed" for j in jobs_in_db(engine)) == DAYS,
        timeout_s=30,
    )
    demo.faults.failing_companies = {}


async def test_retry_key_runs_a_failed_job_again(
    synced_engine: Engine, demo_upstream: DemoUpstream
) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 1)
    async with app.run_test(size=NARROW) as pilot:
        await fail_company(pilot, synced_engine, demo_upstream, target)
        failed = next(j for j in jobs_in_db(synced_engine) if j.status == "failed")
        assert len(failed.errors) == failed.max_attempts
        shown = lambda: app.screen._rows.get(str(failed.id))  # noqa: E731
        await wait_for(pilot, lambda: shown() is not None and shown().status == "failed")
        await highlight(pilot, "#jobs-table", str(failed.id))
        await pilot.press("r")
        await wait_for(pilot, lambda: any("Retrying" in t for t in toasts(app)))

        def rerun_completed() -> bool:
            job = next(j for j in jobs_in_db(synced_engine) if j.id == failed.id)
            return job.status == "completed"

        await wait_for(pilot, rerun_completed)
        await wait_for(pilot, lambda: "completed" in str(app.screen._rows[str(failed.id)].status))
        still_failed = [j for j in jobs_in_db(synced_engine) if j.status == "failed"]
        assert len(still_failed) == DAYS - 1


async def test_retry_all_failed_asks_first_and_retries_only_on_yes(
    synced_engine: Engine, demo_upstream: DemoUpstream
) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 2)
    async with app.run_test(size=WIDE) as pilot:
        await fail_company(pilot, synced_engine, demo_upstream, target)
        await pilot.press("R")
        await wait_for(pilot, lambda: confirm_shown(app))
        assert f"Retry {DAYS} failed" in text_of(app.screen.query_one("#confirm-question"))
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen))
        assert sum(j.status == "failed" for j in jobs_in_db(synced_engine)) == DAYS

        await pilot.press("R")
        await wait_for(pilot, lambda: confirm_shown(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: any(f"Retrying {DAYS} failed" in t for t in toasts(app)))
        await wait_for(
            pilot, lambda: all(j.status == "completed" for j in jobs_in_db(synced_engine))
        )


async def test_pause_then_cancel_a_pending_job_then_resume(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 0)
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("p")
        await wait_for(pilot, lambda: synced_engine.status().paused)
        await wait_for(pilot, lambda: "PAUSED" in text_of(app.screen.query_one("#status-health")))
        synced_engine.sync(company_id=target.id)
        pending = [j for j in jobs_in_db(synced_engine) if j.status == "pending"]
        assert len(pending) == DAYS
        victim = pending[0]
        shown = lambda: app.screen._rows.get(str(victim.id))  # noqa: E731
        await wait_for(pilot, lambda: shown() is not None and shown().status == "pending")
        await highlight(pilot, "#jobs-table", str(victim.id))
        await pilot.press("c")
        await wait_for(pilot, lambda: any("Cancelled" in t for t in toasts(app)))
        await wait_for(pilot, lambda: app.screen._rows[str(victim.id)].status == "cancelled")

        await pilot.press("p")
        await wait_for(pilot, lambda: not synced_engine.status().paused)
        statuses = lambda: {j.id: j.status for j in jobs_in_db(synced_engine)}  # noqa: E731
        await wait_for(
            pilot,
            lambda: all(
                status == "completed" for jid, status in statuses().items() if jid != victim.id
            ),
        )
        assert statuses()[victim.id] == JobStatus.CANCELLED


# --- companies & storage ------------------------------------------------------------------


async def test_resync_key_on_a_company_updates_its_storage_row(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 1)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, CompaniesScreen))
        screen = app.screen
        await wait_for(pilot, lambda: str(target.id) in screen._rows)
        before = screen._rows[str(target.id)].last_synced_at
        await highlight(pilot, "#companies-table", str(target.id))
        await pilot.press("u")
        await wait_for(pilot, lambda: any("Resync queued" in t for t in toasts(app)))
        await wait_for(
            pilot, lambda: (screen._rows[str(target.id)].last_synced_at or before) > before
        )
        row = screen._rows[str(target.id)]
        assert row.latest_jobs == {"completed": DAYS}
        assert row.days_stored == DAYS
        mine = [j for j in jobs_in_db(synced_engine) if j.company_id == target.id]
        assert len(mine) == 2 * DAYS


async def test_company_detail_lists_days_and_resyncs_the_selected_day(
    synced_engine: Engine,
) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 0)
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: str(target.id) in getattr(app.screen, "_rows", {}))
        await highlight(pilot, "#companies-table", str(target.id))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompanyDetailScreen))
        await wait_for(pilot, lambda: table(app, "#days-table").row_count == DAYS)
        day = sorted(app.screen._days)[2]
        await highlight(pilot, "#days-table", day)
        await pilot.press("d")
        await wait_for(pilot, lambda: any(f"{target.name} {day}" in t for t in toasts(app)))

        def day_jobs() -> list[BackgroundJob]:
            return [
                j
                for j in jobs_in_db(synced_engine)
                if j.company_id == target.id and j.params.get("date") == day
            ]

        await wait_for(pilot, lambda: len(day_jobs()) == 2)
        await wait_for(pilot, lambda: all(j.status == "completed" for j in day_jobs()))
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, CompaniesScreen))


async def test_sync_toggle_key_switches_a_company_off_and_on(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 2)
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: str(target.id) in getattr(app.screen, "_rows", {}))
        screen = app.screen
        await highlight(pilot, "#companies-table", str(target.id))
        await pilot.press("e")
        await wait_for(pilot, lambda: not screen._rows[str(target.id)].sync_enabled)
        assert any(f"Sync turned off for {target.name}" in t for t in toasts(app))
        run = synced_engine.sync(company_id=target.id)
        assert run.planned == 0  # the engine honours the switch
        # The portal still serves its schedules: the console says they no longer move.
        live = table(app, "#companies-table")
        row = live.get_row_index(str(target.id))
        await wait_for(pilot, lambda: "frozen" in str(live.get_row_at(row)[2]))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompanyDetailScreen))
        summary = app.screen.query_one("#company-summary")
        await wait_for(pilot, lambda: "data frozen" in text_of(summary))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("e")
        await wait_for(pilot, lambda: screen._rows[str(target.id)].sync_enabled)


# --- technician preview and the toggle editor ---------------------------------------------


async def open_preview(pilot: Pilot, target: Company) -> PreviewScreen:
    app: OpsdashApp = pilot.app  # type: ignore[assignment]
    app.open_preview(target.id, None)
    await wait_for(pilot, lambda: isinstance(app.screen, PreviewScreen))
    screen = app.screen
    assert isinstance(screen, PreviewScreen)
    await wait_for(pilot, lambda: screen._result is not None and screen.company_id == target.id)
    return screen


async def test_preview_shows_a_technician_only_their_jobs_and_no_hidden_field(
    synced_engine: Engine,
) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 0)
    async with app.run_test(size=WIDE) as pilot:
        screen = await open_preview(pilot, target)
        result = screen._result
        assert result is not None and result.person.role == "technician"
        employee = result.person.employee_information_id
        jobs = result.view["jobs"]
        assert 0 < len(jobs) < result.total_jobs
        toggles = result.toggles
        for job in jobs:
            assert employee in {e["EmployeeInformationId"] for e in job["employeeSchedules"]}
            assert not set(job) & ALWAYS_HIDDEN_JOB_FIELDS
            if toggles.get(DISPLAY_BILL_RATE) is not True:
                assert "billRate" not in job
        cards = screen.query(".job-card")
        assert len(cards) == len(jobs)
        full_jobs = [result.full_jobs[str(job["jobId"])] for job in jobs]
        with_secrets = [i for i, job in enumerate(full_jobs) if job.get("accessInformation")]
        assert with_secrets, "the demo data has access codes on some jobs"
        card = text_of(cards[with_secrets[0]])
        assert "access hidden" in " ".join(card.split())
        assert full_jobs[with_secrets[0]]["accessInformation"] not in card

        await pilot.press("j")
        raw = screen.query_one("#preview-json")
        await wait_for(pilot, lambda: raw.display)
        assert '"internalMemo"' not in text_of(raw)

        before = result.person.id
        await pilot.press("n")
        await wait_for(
            pilot, lambda: screen._result is not None and screen._result.person.id != before
        )


async def test_toggle_editor_saves_overrides_and_the_preview_changes_at_once(
    synced_engine: Engine,
) -> None:
    app = make_app(synced_engine)
    target = company(synced_engine, 0)
    async with app.run_test(size=NARROW) as pilot:
        screen = await open_preview(pilot, target)
        shows_bill_rate = screen._result.toggles.get(DISPLAY_BILL_RATE) is True  # type: ignore[union-attr]
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TogglesScreen))
        switch = app.screen.query_one(f"#toggle-{DISPLAY_BILL_RATE}", Switch)
        assert switch.value is shows_bill_rate
        await pilot.click(switch)
        await wait_for(pilot, lambda: switch.value is not shows_bill_rate)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("Feature toggles" in t for t in toasts(app)))

        def bill_rate_shown() -> bool:
            result = screen._result
            return result is not None and all("billRate" in job for job in result.view["jobs"])

        await wait_for(pilot, lambda: bill_rate_shown() is not shows_bill_rate)
        stored = queries.company_toggles(synced_engine.db, target.id)
        assert stored is not None
        assert stored.overrides == {DISPLAY_BILL_RATE: not shows_bill_rate}


async def next_technician(pilot: Pilot, screen: PreviewScreen) -> None:
    before = screen._result.person.id  # type: ignore[union-attr]
    await pilot.press("n")
    await wait_for(pilot, lambda: screen._result is not None and screen._result.person.id != before)


async def test_follow_upstream_stores_no_override_and_the_technician_view_hides_discounts(
    synced_engine: Engine,
) -> None:
    """An upstream silent on HideDiscounts means hidden; "Follow upstream" must keep it so."""
    target = company(synced_engine, 0)
    upstream = {DISPLAY_BILL_RATE: True}  # silent on HIDE_DISCOUNTS and the contact toggles
    with synced_engine.db.write_session() as session:
        row = session.get(Company, target.id)
        assert row is not None
        row.feature_toggles = upstream
        row.toggle_overrides = {HIDE_DISCOUNTS: False, DISPLAY_CUSTOMER_EMAILS: True}
    app = make_app(synced_engine)
    async with app.run_test(size=NARROW) as pilot:
        screen = await open_preview(pilot, target)

        def shown_discounts() -> bool:
            result = screen._result
            return result is not None and any("discounts" in job for job in result.view["jobs"])

        def discounted_job_shown() -> bool:
            result = screen._result
            return result is not None and any(job.get("discounts") for job in result.view["jobs"])

        # A technician with a discounted job, so that hiding discounts is visible at all.
        for _ in range(40):
            if discounted_job_shown():
                break
            await next_technician(pilot, screen)
        assert discounted_job_shown(), "no technician of the demo company has a discounted job"
        person = screen._result.person  # type: ignore[union-attr]

        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TogglesScreen))
        hide = app.screen.query_one(f"#toggle-{HIDE_DISCOUNTS}", Switch)
        assert hide.value is False  # the override shows discounts today
        await pilot.click("#toggles-reset")
        await wait_for(pilot, lambda: hide.value is True)  # a silent upstream reads as hidden
        assert app.screen.query_one(f"#toggle-{DISPLAY_CUSTOMER_EMAILS}", Switch).value is False
        assert app.screen.query_one(f"#toggle-{DISPLAY_BILL_RATE}", Switch).value is True
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("0 override(s)" in t for t in toasts(app)))
        await wait_for(pilot, lambda: screen._result is not None and not shown_discounts())
        assert screen._result.person.id == person.id  # type: ignore[union-attr]

    stored = queries.company_toggles(synced_engine.db, target.id)
    assert stored is not None and stored.overrides == {}, "follow the upstream is stored as {}"
    # What the read API serves that technician now: the same rule, from the database.
    with synced_engine.db.session() as session:
        row = session.get(Company, target.id)
        assert row is not None
        toggles = row.effective_toggles()
        day = session.execute(
            select(ScheduleData).where(ScheduleData.company_id == target.id)
        ).scalars()
        documents = [orjson.loads(synced_engine.blobs.get(d.storage_path)) for d in day]
    views = [
        schedule_view(
            document,
            role="technician",
            employee_id=person.employee_information_id,
            toggles=toggles,
            company_id=str(target.id),
        )
        for document in documents
    ]
    jobs = [job for view in views for job in view["jobs"]]
    assert jobs and all("discounts" not in job and "billRate" in job for job in jobs)
    assert all("email" not in job.get("contactInfo", {}) for job in jobs)


# --- log, palette, outage, quit -------------------------------------------------------------


async def test_log_screen_lists_engine_lines_newest_first(console_engine: Engine) -> None:
    app = make_app(console_engine)
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen))
        await pilot.press("s")
        await wait_for(pilot, lambda: console_engine.active_jobs() == 0 and len(app.log_lines) > 20)
        live = table(app, "#log-table")
        await wait_for(pilot, lambda: live.row_count == len(app.log_lines))
        newest = max(line.seq for line in app.log_lines)
        live.move_cursor(row=0)
        await wait_for(pilot, lambda: live.highlighted_key == str(newest))
        messages = " ".join(line.message for line in app.log_lines)
        assert "sync run planned" in messages and "completed sync_schedule" in messages


async def test_command_palette_runs_an_action(synced_engine: Engine) -> None:
    app = make_app(synced_engine)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"sync now")
        commands = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 0)
        assert "Sync now" in str(commands.get_option_at_index(0).prompt)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: any("Sync run queued" in t for t in toasts(app)))


async def test_database_outage_shows_a_banner_and_recovers(
    synced_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(synced_engine)
    real_ping = queries.ping

    def unreachable(_db: object) -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: app.system_status is not None)
        banner = app.screen.query_one("#status-banner")
        assert not banner.display
        monkeypatch.setattr(queries, "ping", unreachable)
        await wait_for(pilot, lambda: banner.display)
        assert "Database unreachable" in text_of(banner)
        assert "down" in text_of(app.screen.query_one("#status-health"))
        monkeypatch.setattr(queries, "ping", real_ping)
        await wait_for(pilot, lambda: not banner.display)
        assert any("reachable again" in t for t in toasts(app))


async def test_a_hanging_database_shows_as_slow_and_clears(
    synced_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(synced_engine)
    real_ping, answer = queries.ping, threading.Event()

    def hanging(db: object) -> None:
        answer.wait(timeout=20)
        real_ping(db)  # type: ignore[arg-type]

    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: app.system_status is not None)
        banner = app.screen.query_one("#status-banner")
        monkeypatch.setattr(queries, "ping", hanging)
        await wait_for(pilot, lambda: banner.display)
        assert "Database slow" in text_of(banner)
        answer.set()
        monkeypatch.setattr(queries, "ping", real_ping)
        await wait_for(pilot, lambda: not banner.display)


def test_quitting_stops_the_engine_and_leaves_no_job_running(
    tmp_path: Path, sqlite_url: str, demo_upstream: DemoUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_console starts the engine, and on quit (mid-sync here) stops it cleanly."""
    demo_upstream.faults.latency_ms = 500  # each upstream call keeps its job running a while
    seen: dict[str, object] = {}

    def quit_during_a_sync(app: OpsdashApp) -> None:
        engine = app.engine
        seen["workers"] = engine.status().workers_total
        seen["scheduler"] = engine.scheduler is not None
        seen["db"] = engine.db
        # Quit once the first-run sync has a job running (an event, not a guessed time).
        wait_until(
            lambda: any(j.status == JobStatus.RUNNING for j in jobs_in_db(engine)),
            what="the first-run sync to have a job running",
            timeout_s=30,
            poll_s=0.01,
        )
        seen["active"] = engine.active_jobs()

    monkeypatch.setattr(OpsdashApp, "run", quit_during_a_sync)
    settings = engine_settings(sqlite_url, tmp_path / "data", demo_upstream.url)
    assert run_console(settings) == 0
    assert seen["workers"] == settings.workers and seen["scheduler"] is True
    assert seen["active"], "the test meant to quit while jobs were active"
    reopened = Engine(settings)
    try:
        running = [j for j in jobs_in_db(reopened) if j.status == JobStatus.RUNNING]
        assert running == []
    finally:
        reopened.stop()
