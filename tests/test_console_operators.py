"""Who the console acts as: a read-only operator's keys for state-changing actions are
refused by the engine (and the refusal audited), and the footer and the palette do not
offer them; the terminal's console keeps full rights; ``OPSDASH_OPERATOR`` picks the
operator and their role from the ``operators`` table. Pilot against a real engine."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import func, select
from textual.command import CommandList, CommandPalette
from textual.widgets import Static
from textual.widgets._footer import FooterKey

from opsdash.app import OpsdashApp, run_console
from opsdash.demo.server import DemoUpstream
from opsdash.engine import audit
from opsdash.engine.audit import AuditEntry
from opsdash.engine.models import BackgroundJob, Company
from opsdash.engine.operators import (
    TERMINAL_OPERATOR,
    Operator,
    add_operator,
    set_disabled,
)
from opsdash.engine.runtime import Engine
from opsdash.screens.actions import STATE_CHANGING
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.toggles import TogglesScreen
from opsdash.screens.widgets.live_table import LiveTable
from tests.conftest import engine_settings
from tests.waiting import settle_until as wait_for

VIEWER = Operator("viewer", read_only=True)
NARROW = (80, 24)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def synced_engine(tmp_path: Path, sqlite_url: str, demo_upstream: DemoUpstream) -> Iterator[Engine]:
    engine = Engine(engine_settings(sqlite_url, tmp_path / "data", demo_upstream.url))
    engine.start(scheduler=False)
    engine.sync()
    assert engine.wait_idle(timeout_s=30)
    yield engine
    engine.stop()


def make_app(engine: Engine, operator: Operator = VIEWER, console: Any = "web") -> OpsdashApp:
    app = OpsdashApp(engine, operator=operator, console=console, poll_interval_s=0.3)
    shown: list[str] = []
    notify = app.notify

    def recorded(message: str, *args: Any, **kwargs: Any) -> None:
        shown.append(str(message))
        notify(message, *args, **kwargs)

    app.notify = recorded  # type: ignore[method-assign]
    app.toasts_shown = shown  # type: ignore[attr-defined]
    return app


def toasts(app: OpsdashApp) -> list[str]:
    return list(app.toasts_shown)  # type: ignore[attr-defined]


def footer_actions(app: OpsdashApp) -> set[str]:
    return {key.action for key in app.screen.query(FooterKey)}


def audited(engine: Engine) -> list[AuditEntry]:
    return list(reversed(audit.recent(engine.db)))


def job_count(engine: Engine) -> int:
    with engine.db.read() as conn:
        return conn.execute(select(func.count()).select_from(BackgroundJob)).scalar_one()


def plain(widget: Static) -> str:
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


async def palette_names(pilot: Any, query: str) -> list[str]:
    app = pilot.app
    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
    await pilot.press(*query)
    commands = app.screen.query_one(CommandList)
    await wait_for(pilot, lambda: commands.option_count > 0)
    names = [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]
    await pilot.press("escape")
    await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette))
    return names


async def test_a_read_only_operator_presses_sync_now_and_is_refused(
    synced_engine: Engine,
) -> None:
    app = make_app(synced_engine)
    before = job_count(synced_engine)
    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query(FooterKey)))
        identity = app.screen.query_one("#status-identity", Static)
        assert identity.display and "read-only" in plain(identity)
        assert "viewer" in plain(identity)

        shown = footer_actions(app)
        assert shown & STATE_CHANGING == set(), shown
        assert {"focus_search", "quit"} <= shown
        names = await palette_names(pilot, "sync")
        assert not any("Sync now" in name for name in names), names

        await pilot.press("s")
        await wait_for(pilot, lambda: any("Not allowed" in t for t in toasts(app)))
        assert "viewer is a read-only operator: sync now refused" in toasts(app)[-1]
    assert job_count(synced_engine) == before
    (entry,) = audited(synced_engine)
    assert (entry.operator, entry.console, entry.action, entry.result) == (
        "viewer",
        "web",
        "sync_now",
        "refused",
    )


async def test_a_read_only_operator_cannot_switch_a_company_off_or_save_its_toggles(
    synced_engine: Engine,
) -> None:
    app = make_app(synced_engine)
    async with app.run_test(size=NARROW) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, CompaniesScreen))
        screen = app.screen
        table = screen.query_one("#companies-table", LiveTable)
        await wait_for(pilot, lambda: table.row_count == 3 and table.highlighted_key is not None)
        target = screen._rows[str(table.highlighted_key)]  # type: ignore[attr-defined]
        assert footer_actions(app) & STATE_CHANGING == set()
        assert {"edit_toggles", "preview_company", "next_sort"} <= footer_actions(app)

        await pilot.press("e")
        await wait_for(pilot, lambda: any("toggle sync refused" in t for t in toasts(app)))

        await pilot.press("t")  # looking at the toggles is allowed; saving them is not
        await wait_for(pilot, lambda: isinstance(app.screen, TogglesScreen))
        assert app.screen.query_one("#toggles-save").disabled
        assert "save" not in footer_actions(app)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("save toggles refused" in t for t in toasts(app)))

    with synced_engine.db.session() as session:
        company = session.get(Company, target.id)
        assert company is not None and company.sync_enabled and company.toggle_overrides == {}
    assert [(e.action, e.result) for e in audited(synced_engine)] == [
        ("toggle_sync", "refused"),
        ("save_toggles", "refused"),
    ]
    assert audited(synced_engine)[0].target["company"].startswith(target.name)


async def test_the_terminal_console_acts_and_is_audited(synced_engine: Engine) -> None:
    app = make_app(synced_engine, TERMINAL_OPERATOR, "terminal")
    before = job_count(synced_engine)
    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: "sync_now" in footer_actions(app))
        assert not app.screen.query_one("#status-identity", Static).display
        await pilot.press("s")
        await wait_for(pilot, lambda: any("Sync run queued" in t for t in toasts(app)))
    assert job_count(synced_engine) > before
    (entry,) = audited(synced_engine)
    assert (entry.operator, entry.console, entry.action, entry.result) == (
        TERMINAL_OPERATOR.name,
        "terminal",
        "sync_now",
        "ok",
    )


# --- OPSDASH_OPERATOR: the browser console's server names the operator -------------------


def test_a_browser_console_hosts_no_workers_or_scheduler_and_a_terminal_console_does(
    tmp_path: Path,
    sqlite_url: str,
    demo_upstream: DemoUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`opsdash web` hosts the one engine; each open page would otherwise add another."""
    hosted: list[tuple[str, bool, bool]] = []

    def capture(app: OpsdashApp) -> None:
        engine = app.engine
        hosted.append((app.console_kind, engine.pool is not None, engine.scheduler is not None))

    monkeypatch.setattr(OpsdashApp, "run", capture)

    def settings(**overrides: object) -> Any:
        return engine_settings(
            sqlite_url, tmp_path / "data", demo_upstream.url, workers=2, **overrides
        )

    engine = Engine(settings())
    add_operator(engine.db, "viewer", "pw", read_only=True)
    engine.stop()

    assert run_console(settings(operator="viewer", console="web")) == 0
    assert run_console(settings()) == 0
    assert hosted == [("web", False, False), ("terminal", True, True)]


def test_the_console_takes_the_named_operators_role_and_refuses_an_unknown_or_disabled_one(
    tmp_path: Path,
    sqlite_url: str,
    demo_upstream: DemoUpstream,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started: list[tuple[Operator, str]] = []

    def capture(app: OpsdashApp) -> None:
        started.append((app.operator, app.console_kind))

    monkeypatch.setattr(OpsdashApp, "run", capture)

    def settings(**overrides: object) -> Any:
        return engine_settings(
            sqlite_url, tmp_path / "data", demo_upstream.url, workers=0, **overrides
        )

    engine = Engine(settings())
    add_operator(engine.db, "viewer", "pw", read_only=True)
    add_operator(engine.db, "ana", "pw")
    set_disabled(engine.db, "ana", True)
    engine.stop()

    assert run_console(settings(operator="viewer", console="web")) == 0
    assert started == [(VIEWER, "web")]

    for name in ("nobody", "ana"):
        assert run_console(settings(operator=name, console="web")) == 2
        assert f"no enabled operator named {name!r}" in capsys.readouterr().err
    assert run_console(settings(console="web")) == 2
    assert "OPSDASH_CONSOLE=web needs OPSDASH_OPERATOR" in capsys.readouterr().err
    assert len(started) == 1

    assert run_console(settings()) == 0
    assert started[-1] == (TERMINAL_OPERATOR, "terminal")


# --- the registry and the screen list are consistent ---------------------------------------


def test_every_registered_action_runs_a_method_of_its_target() -> None:
    from opsdash.screens.actions import APP, CONSOLE_ACTIONS
    from opsdash.screens.catalog import SCREEN_LIST, app_actions
    from opsdash.screens.company_detail import CompanyDetailScreen
    from opsdash.screens.confirm import ConfirmScreen

    owners: dict[str, type] = {APP: OpsdashApp}
    for cls in (*(entry.screen for entry in SCREEN_LIST), CompanyDetailScreen):
        owners[cls.ACTION_TARGET] = cls  # type: ignore[attr-defined]
    owners.update({"toggles": TogglesScreen, "confirm": ConfirmScreen})
    for action in (*CONSOLE_ACTIONS, *app_actions()):
        namespace, _, call = action.action.rpartition(".")
        owner = OpsdashApp if namespace == "app" else owners[action.target]
        name = call.split("(")[0]
        assert hasattr(owner, f"action_{name}"), f"{action} runs nothing on {owner.__name__}"
    by_action: dict[str, bool] = {}
    for action in CONSOLE_ACTIONS:
        assert by_action.setdefault(action.action, action.changes_state) == action.changes_state


def test_every_screen_in_the_list_has_a_mode_a_key_and_a_stylesheet() -> None:
    from opsdash.screens.catalog import SCREEN_LIST, stylesheets

    assert list(OpsdashApp.MODES) == [entry.name for entry in SCREEN_LIST]
    keys = {binding.key: binding.action for binding in OpsdashApp.BINDINGS}  # type: ignore[union-attr]
    for entry in SCREEN_LIST:
        assert keys[entry.key] == f"switch_mode('{entry.name}')"
    assert all(Path(path).is_file() for path in stylesheets())
