"""How each screen looks, frozen on fixed data at 120x36 and 80x24.

The database is built directly with fixed ids and times, the app runs on a
fixed clock in UTC, and the engine's status (which names a temporary database
and a random port) is replaced by a fixed one: nothing in a snapshot depends on
the wall clock or the machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input

from opsdash.app import OpsdashApp
from opsdash.config import Mode
from opsdash.demo.data import DemoWorld
from opsdash.engine.audit import ConsoleKind
from opsdash.engine.blobs import schedule_path, sha256_hex
from opsdash.engine.handlers import map_role, windows_to_iana
from opsdash.engine.models import (
    AlertDelivery,
    BackgroundJob,
    Company,
    JobStat,
    OperatorAudit,
    ScheduleData,
    UserProfile,
)
from opsdash.engine.operators import Operator
from opsdash.engine.runtime import Engine, EngineStatus
from opsdash.engine.transform import build_document, document_counts, serialize_document
from opsdash.screens.base import LiveScreen
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.jobs import JobsScreen
from opsdash.screens.log import LogScreen
from opsdash.screens.messages import LogLine
from opsdash.screens.preview import PreviewScreen
from opsdash.screens.toggles import TogglesScreen
from opsdash.screens.widgets.job_detail import JobDetailPane
from opsdash.screens.widgets.live_table import LiveTable
from tests.conftest import engine_settings
from tests.waiting import settle_until, wait_for_workers

NOW = datetime(2026, 12, 1, 15, 20, tzinfo=UTC)
DAYS = [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)]
SIZES = {"wide": (120, 36), "narrow": (80, 24)}
WORKER = "ops-host:4242:0a1b2c3d"
# The terminal's operator, named (not the OS user) so nothing depends on the machine.
OPS = Operator("ops", read_only=False)

FIXED_STATUS = EngineStatus(
    mode=Mode.DEMO,
    database="sqlite:////var/lib/opsdash/opsdash.db",
    upstream="demo upstream http://127.0.0.1:8765",
    blobs="local folder /var/lib/opsdash/blobs",
    workers_busy=1,
    workers_total=4,
    paused=False,
    next_sync_at=datetime(2026, 12, 1, 16, 0, tzinfo=UTC),
    last_sync_at=None,
)


def fixed_id(kind: int, number: int) -> uuid.UUID:
    return uuid.UUID(int=(kind << 64) | number)


def _companies(world: DemoWorld) -> list[Company]:
    return [
        Company(
            id=fixed_id(1, index),
            service_company_id=str(demo.service_company_id),
            name=demo.name,
            sync_enabled=index != 2,
            feature_toggles=dict(demo.feature_toggles),
            toggle_overrides={"TechDashboard_DisplayCustomerEmails": False} if index == 0 else {},
            timezone=windows_to_iana(demo.time_zone),
            created_at=NOW - timedelta(days=30),
            updated_at=NOW - timedelta(days=1),
        )
        for index, demo in enumerate(world.companies)
    ]


def _profiles(world: DemoWorld, companies: list[Company]) -> list[UserProfile]:
    profiles = []
    for demo, company in zip(world.companies, companies, strict=True):
        for user in demo.users:
            role = map_role([user.role])
            assert role is not None
            profiles.append(
                UserProfile(
                    id=uuid.UUID(user.user_id),
                    company_id=company.id,
                    role=str(role),
                    employee_information_id=user.employee_information_id,
                    email=user.email,
                    full_name=user.full_name,
                    updated_at=NOW - timedelta(hours=2),
                )
            )
    return profiles


def _stored_days(engine: Engine, world: DemoWorld, companies: list[Company]) -> list[ScheduleData]:
    rows = []
    for company in companies[:2]:
        for day_index, day in enumerate(DAYS):
            records = world.jobs_for_day(company.service_company_id, day)
            updated = NOW - timedelta(minutes=20 + 7 * day_index)
            document = build_document(
                records,
                company_id=str(company.id),
                service_company_id=company.service_company_id,
                day=day,
                generated_at=updated,
            )
            body = serialize_document(document)
            path = schedule_path(company.service_company_id, day)
            engine.blobs.put(path, body)
            jobs, employees, teams = document_counts(document)
            rows.append(
                ScheduleData(
                    id=fixed_id(2, len(rows)),
                    company_id=company.id,
                    date=day,
                    storage_path=path,
                    file_size_kb=round(len(body) / 1024, 2),
                    checksum=sha256_hex(body),
                    job_count=jobs,
                    employee_count=employees,
                    team_count=teams,
                    updated_at=updated,
                )
            )
    return rows


def _job(number: int, company: Company | None, day: date | None, **values: Any) -> BackgroundJob:
    kind = "sync_schedule" if company else "sync_users"
    created = values.pop("created_at")
    defaults: dict[str, Any] = {
        "id": fixed_id(3, number),
        "job_type": kind,
        "company_id": company.id if company else None,
        "params": {"date": day.isoformat()} if day else {},
        "dedup_key": f"{kind}:{company.id}:{day}" if company else kind,
        "created_at": created,
        "scheduled_at": created,
        "attempts": 1,
    }
    return BackgroundJob(**(defaults | values))


def _jobs(companies: list[Company]) -> list[BackgroundJob]:
    first, second, third = companies
    run = NOW - timedelta(minutes=20)
    done = {"status": "completed", "locked_by": WORKER}
    jobs = [
        _job(0, None, None, created_at=run, **done, result={"companies": 3, "profiles": 48}),
    ]
    for index, day in enumerate(DAYS):
        for offset, company in enumerate((first, second)):
            number = 1 + index * 2 + offset
            started = run + timedelta(seconds=2 + number)
            jobs.append(
                _job(
                    number,
                    company,
                    day,
                    created_at=run,
                    started_at=started,
                    completed_at=started + timedelta(milliseconds=180 + 10 * number),
                    duration_ms=180 + 10 * number,
                    result={"jobs": 30 + number, "bytes": 31000 + 97 * number, "unchanged": False},
                    **done,
                )
            )
    errors = [
        {
            "attempt": attempt,
            "at": (run + timedelta(seconds=5 * attempt)).isoformat(),
            "worker": WORKER,
            "message": "upstream answered HTTP 500: Internal Server Error",
        }
        for attempt in (1, 2, 3)
    ]
    recent = NOW - timedelta(minutes=2)
    jobs += [
        _job(
            20,
            third,
            DAYS[0],
            created_at=run,
            status="failed",
            attempts=3,
            errors=errors,
            error_message=errors[-1]["message"],
            started_at=run + timedelta(seconds=15),
            completed_at=run + timedelta(seconds=16),
            duration_ms=912,
        ),
        _job(
            21,
            first,
            DAYS[1],
            created_at=recent,
            status="running",
            locked_by=WORKER,
            started_at=recent + timedelta(seconds=1),
            lease_expires_at=recent + timedelta(seconds=61),
        ),
        _job(22, first, DAYS[2], created_at=recent, status="pending", attempts=0),
        _job(23, second, DAYS[0], created_at=recent, status="pending", attempts=0),
        _job(
            24,
            second,
            DAYS[1],
            created_at=recent,
            status="cancelled",
            attempts=0,
            error_message="cancelled",
            completed_at=recent + timedelta(seconds=30),
        ),
    ]
    return jobs


def _job_stats() -> list[JobStat]:
    hour = NOW.replace(minute=0)
    counts = [22, 21, 23, 22, 0, 22, 25, 22, 21, 22, 22, 23]
    return [
        JobStat(
            hour=hour - timedelta(hours=len(counts) - index),
            job_type="sync_schedule",
            status="completed",
            count=count,
            total_duration_ms=count * 210,
            max_duration_ms=400,
        )
        for index, count in enumerate(counts)
    ]


def _alerts_sent() -> list[AlertDelivery]:
    """One alert that went out and one still being retried, for the log screen."""
    sent = NOW - timedelta(minutes=16)
    return [
        AlertDelivery(
            id=uuid.UUID(int=900 + index),
            event=event,
            channel=channel,
            subject=f"[opsdash] ALERT: {subject}",
            body=subject,
            status=status,
            attempts=attempts,
            error=error,
            created_at=sent,
            next_attempt_at=sent,
            sent_at=sent if status == "sent" else None,
        )
        for index, (event, channel, subject, status, attempts, error) in enumerate(
            [
                ("opened", "webhook", "Tidy Nest Services (1003) is failing", "sent", 1, None),
                ("opened", "email", "Tidy Nest Services (1003) is failing", "pending", 2,
                 "SMTPServerDisconnected: Connection unexpectedly closed"),
            ]
        )
    ]  # fmt: skip


def _audit_trail(companies: list[Company]) -> list[OperatorAudit]:
    """Operator actions from both consoles, one of them refused, for the log screen."""
    first = f"{companies[0].name} ({companies[0].service_company_id})"
    return [
        OperatorAudit(
            id=uuid.UUID(int=950 + index),
            at=NOW - timedelta(minutes=minutes),
            operator=operator,
            console=console,
            action=action,
            target=target,
            result=result,
            detail=detail,
        )
        for index, (minutes, operator, console, action, target, result, detail) in enumerate(
            [
                (30, "ops", "terminal", "sync_now", {}, "ok", "22 queued of 22 planned"),
                (12, "viewer", "web", "toggle_sync", {"company": first}, "refused",
                 "read-only operator"),
                (2, "ana", "web", "save_toggles", {"company": first}, "ok", None),
            ]
        )
    ]  # fmt: skip


LOG_LINES = [
    LogLine(1, NOW - timedelta(minutes=20), "INFO", "opsdash.coordinator",
            "sync run planned: 7 jobs, 7 queued in 4 ms"),
    LogLine(2, NOW - timedelta(minutes=19), "INFO", "opsdash.jobs",
            "started sync_schedule 1001/2026-12-01 [00000000] attempt 1/3"),
    LogLine(3, NOW - timedelta(minutes=19), "INFO", "opsdash.jobs",
            "completed sync_schedule 1001/2026-12-01 [00000000] (31 jobs, 31097 bytes, written)"),
    LogLine(4, NOW - timedelta(minutes=18), "WARNING", "opsdash.jobs",
            "retrying sync_schedule 1003/2026-12-01 [00000014] after: upstream answered HTTP 500"),
    LogLine(5, NOW - timedelta(minutes=17), "ERROR", "opsdash.jobs",
            "failed sync_schedule 1003/2026-12-01 [00000014]: upstream answered HTTP 500"),
    LogLine(6, NOW - timedelta(minutes=2), "INFO", "opsdash.companies",
            "feature toggle overrides of company 1001 set to none"),
]  # fmt: skip


@pytest.fixture
def fixed_app(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., OpsdashApp]]:
    settings = engine_settings(sqlite_url, tmp_path / "data", "http://127.0.0.1:9", workers=0)
    engine = Engine(settings)
    world = DemoWorld(companies=3)
    companies = _companies(world)
    with engine.db.session() as session:
        session.add_all(companies)
        session.commit()
        session.add_all(
            [
                *_profiles(world, companies),
                *_stored_days(engine, world, companies),
                *_jobs(companies),
                *_job_stats(),
                *_alerts_sent(),
                *_audit_trail(companies),
            ]
        )
        session.commit()
    monkeypatch.setattr(engine, "status", lambda: FIXED_STATUS)

    def make(
        operator: Operator = OPS,
        console: ConsoleKind = "terminal",
        environment: str | None = None,
    ) -> OpsdashApp:
        engine.settings = engine.settings.model_copy(update={"environment": environment})
        app = OpsdashApp(
            engine, operator=operator, console=console, clock=lambda: NOW, display_zone=UTC
        )
        app.log_lines.extend(LOG_LINES)
        return app

    yield make
    engine.stop()


def _unrendered(app: OpsdashApp, screen_type: type[Screen[Any]]) -> list[str]:
    """What is not yet drawn as the snapshot means it; empty once the screen is ready."""
    missing = []
    screen = app.screen
    if not isinstance(screen, screen_type):
        return [f"the current screen is {type(screen).__name__}, not {screen_type.__name__}"]
    if app.system_status is None:
        missing.append("the header has no status yet")
    if isinstance(screen, LiveScreen) and screen.refreshes == 0:
        missing.append(f"{type(screen).__name__} has not loaded its data")
    for table in screen.query(LiveTable):
        if not table.settled:
            missing.append(f"table #{table.id} has changes not yet laid out")
        if table.row_count == 0:
            missing.append(f"table #{table.id} shows no rows")
    for pane in screen.query(JobDetailPane):
        selected = getattr(screen, "selected_job_id", None)
        if selected is None or pane.shown_job_id != selected:
            missing.append(f"the detail pane shows {pane.shown_job_id}, not the job {selected}")
    if isinstance(screen, PreviewScreen) and screen._result is None:
        missing.append("the preview has no result")
    return missing


Stage = tuple[tuple[str, ...], type[Screen[Any]]]


def when_loaded(*stages: Stage) -> Callable[[Pilot], Awaitable[None]]:
    """For each stage, press its keys, then wait until its screen is current and drawn.

    Fails, saying what is missing, rather than freeze a half-drawn screen.
    """

    async def run_before(pilot: Pilot) -> None:
        app: OpsdashApp = pilot.app  # type: ignore[assignment]
        for keys, screen in stages:
            for key in keys:
                await pilot.press(key)
                await pilot.pause()
            await settle_until(
                pilot,
                lambda screen=screen: not _unrendered(app, screen),
                what=f"{screen.__name__} to be drawn",
                timeout_s=60,  # generous: a loaded CI machine is slow, never wrong
                seen=lambda screen=screen: "; ".join(_unrendered(app, screen)),
            )
        for field in app.screen.query(Input):
            field.cursor_blink = False
        await wait_for_workers(app)
        await pilot.pause()
        # A last look: nothing the pause let in may have undone the drawn state.
        last = stages[-1][1]
        assert not _unrendered(app, last), _unrendered(app, last)

    return run_before


SCREENS: dict[str, list[Stage]] = {
    "jobs": [((), JobsScreen)],
    "companies": [(("2",), CompaniesScreen)],
    "company_detail": [(("2",), CompaniesScreen), (("enter",), CompanyDetailScreen)],
    "preview": [(("3",), PreviewScreen)],
    "log": [(("4",), LogScreen)],
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("screen", SCREENS)
def test_screen_looks_right(fixed_app, snap_compare, screen: str, size: str) -> None:
    assert snap_compare(
        fixed_app(), terminal_size=SIZES[size], run_before=when_loaded(*SCREENS[screen])
    )


def test_read_only_web_console_in_production_looks_right(fixed_app, snap_compare) -> None:
    """The banner names the deployment in red and says read-only; the footer offers no
    action that changes state."""
    app = fixed_app(Operator("viewer", read_only=True), "web", "production")
    assert snap_compare(
        app, terminal_size=SIZES["narrow"], run_before=when_loaded(*SCREENS["jobs"])
    )


def test_toggle_editor_looks_right(fixed_app, snap_compare) -> None:
    assert snap_compare(
        fixed_app(),
        terminal_size=SIZES["narrow"],
        run_before=when_loaded((("2",), CompaniesScreen), (("t",), TogglesScreen)),
    )
