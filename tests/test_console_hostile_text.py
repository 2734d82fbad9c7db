"""Upstream text never reaches the operator's terminal raw.

A demo upstream whose company, technician, customer and memo carry NUL, an ``ESC[2J``
sequence and Rich markup is synced by the real engine over HTTP; the console is then
driven through every screen, and what the compositor would write to the terminal is
checked: no control character, the escapes visible instead, the markup shown as typed.
"""

from __future__ import annotations

import dataclasses
import logging
import unicodedata
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets._toast import Toast

from opsdash.app import OpsdashApp
from opsdash.demo.data import DemoCompany, DemoWorld
from opsdash.demo.server import DemoUpstream
from opsdash.engine.runtime import Engine
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.jobs import JobsScreen
from opsdash.screens.log import LogScreen
from opsdash.screens.preview import PreviewScreen
from opsdash.screens.widgets.formatting import one_line, printable, safe_text
from tests.conftest import engine_settings
from tests.test_console_actions import WIDE, highlight, make_app, toasts, wait_for

pytestmark = pytest.mark.anyio

# Hostile characters in the middle: the engine trims leading and trailing whitespace.
HOSTILE = "Evil\x00Co \x1b[2J [bold]markup[/] \x9b31m end"
SHOWN = r"Evil\x00Co \x1b[2J [bold]markup[/] \x9b31m end"
MARK = "[bold]markup[/]"  # short enough not to be wrapped in a narrow pane


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the helper ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\x00b", r"a\x00b"),
        ("clear\x1b[2Jscreen", r"clear\x1b[2Jscreen"),
        ("csi\x9b2J", r"csi\x9b2J"),
        ("bell\x07 del\x7f", r"bell\x07 del\x7f"),
        ("two\nlines\tand tab\r", r"two\x0alines\x09and tab\x0d"),
        ("evil\u202etxt.exe", r"evil\u202etxt.exe"),
        ("lone \udc80 surrogate", r"lone \udc80 surrogate"),
        ("plain Zoë, 東京 and [bold]", "plain Zoë, 東京 and [bold]"),
    ],
)
def test_printable_escapes_every_control_character(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_multiline_keeps_lines_and_tabs_but_not_escapes() -> None:
    assert printable("one\r\ntwo\tx\x1b[0m", multiline=True) == "one\ntwo\tx\\x1b[0m"


def test_safe_text_is_never_markup() -> None:
    text = safe_text("[bold]x[/] [@click=app.quit]y[/]", "dim")
    assert isinstance(text, Text)
    assert text.plain == "[bold]x[/] [@click=app.quit]y[/]"
    assert text.spans == [] and str(text.style) == "dim"


def test_one_line_escapes_after_flattening() -> None:
    assert one_line("upstream said:\n  \x1b[2J gone") == r"upstream said: \x1b[2J gone"


# --- the console against a hostile upstream -------------------------------------------------


class HostileWorld(DemoWorld):
    """The demo world with hostile text in its first company's name, people and jobs."""

    def __init__(self) -> None:
        super().__init__(companies=1)
        self.companies = tuple(_hostile_company(c) for c in self.companies)
        self._by_id = {str(c.service_company_id): c for c in self.companies}

    def jobs_for_day(
        self, service_company_id: str | int, day: date, revision: int = 0
    ) -> list[dict[str, Any]]:
        jobs = super().jobs_for_day(service_company_id, day, revision)
        for job in jobs:
            job["CustomerInformation"]["CustomerFirstName"] = HOSTILE
            job["HomeInformation"]["HomeAddress1"] = HOSTILE
            job["NotesAndMemos"]["HomeSpecialInstructions"] = HOSTILE
            job["ServiceSet"]["ServiceSetDescription"] = HOSTILE
        return jobs


def _hostile_company(company: DemoCompany) -> DemoCompany:
    team, *others = company.teams
    first, *rest = team.technicians
    team = dataclasses.replace(
        team, technicians=(dataclasses.replace(first, first_name=HOSTILE), *rest)
    )
    return dataclasses.replace(company, name=HOSTILE, teams=(team, *others))


@pytest.fixture
def hostile_engine(tmp_path: Path, sqlite_url: str) -> Iterator[Engine]:
    upstream = DemoUpstream(world=HostileWorld(), api_key="test-key")
    upstream.start()
    engine = Engine(engine_settings(sqlite_url, tmp_path / "data", upstream.url))
    engine.start(scheduler=False)
    try:
        engine.sync()
        assert engine.wait_idle(timeout_s=60)
        yield engine
    finally:
        engine.stop()
        upstream.stop()


def terminal_text(app: OpsdashApp) -> str:
    """What the compositor writes to the terminal for the current screen, styles aside."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def rendered_toasts(app: OpsdashApp) -> list[str]:
    """The toasts on screen, as their widgets render them (unwrapped)."""
    return [toast.render().plain for toast in app.screen.query(Toast)]


def assert_no_control_characters(app: OpsdashApp, where: str) -> str:
    screen = terminal_text(app)
    controls = {
        f"U+{ord(c):04X}" for c in screen if c != "\n" and unicodedata.category(c) in ("Cc", "Cs")
    }
    assert not controls, f"{where}: control characters reached the terminal: {controls}"
    return screen


async def shows(pilot: Pilot, text: str) -> None:
    app: OpsdashApp = pilot.app  # type: ignore[assignment]
    try:
        await wait_for(pilot, lambda: text in terminal_text(app))
    except AssertionError:
        raise AssertionError(
            f"{text!r} never shown; toasts {toasts(app)}; the screen:\n{terminal_text(app)}"
        ) from None


async def test_every_screen_shows_hostile_upstream_text_escaped(hostile_engine: Engine) -> None:
    app = make_app(hostile_engine)
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        # Jobs: the company column, and the selected job's detail with the name in full.
        assert isinstance(app.screen, JobsScreen)
        await shows(pilot, "Evil\\x00Co \\x…")
        await shows(pilot, MARK)
        await shows(pilot, "\\x1b[2J")
        assert_no_control_characters(app, "jobs")

        # Companies, then the company's stored days, and a toast naming the company.
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, CompaniesScreen))
        await shows(pilot, "Evil\\x00Co")
        assert_no_control_characters(app, "companies")
        company_key = next(iter(app.screen._rows))  # type: ignore[attr-defined]
        await highlight(pilot, "#companies-table", company_key)
        await pilot.press("u")
        await shows(pilot, "Resync queued for")  # wrapped to the toast's width
        assert rendered_toasts(app)[0].startswith(f"Resync queued for {SHOWN}")
        assert_no_control_characters(app, "toast")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompanyDetailScreen))
        await shows(pilot, "stored days")
        await shows(pilot, SHOWN)
        assert_no_control_characters(app, "company detail")

        # The technician preview: choosers, summary, job cards, raw JSON.
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, PreviewScreen))
        preview = app.screen
        assert isinstance(preview, PreviewScreen)
        await wait_for(pilot, lambda: preview._result is not None)

        def person() -> object:
            return preview._result.person if preview._result else None

        while HOSTILE not in getattr(person(), "label", HOSTILE):
            before = person()
            await pilot.press("n")
            await wait_for(pilot, lambda before=before: person() not in (None, before))
        await shows(pilot, SHOWN)  # a job card's customer line
        screen = assert_no_control_characters(app, "preview")
        # the company chooser, the technician chooser, the summary, the cards
        assert screen.count("Evil\\x00Co") >= 4
        await pilot.press("j")
        await shows(pilot, '"customerName"')
        await shows(pilot, "\\u001b[2J [bold]markup[/] \\x9b31m")  # JSON's escape, then ours
        assert_no_control_characters(app, "raw JSON")

        # The log screen: an engine line carrying upstream text.
        logging.getLogger("opsdash.jobs").warning("upstream said: %s", HOSTILE)
        await pilot.press("4")
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen))
        await shows(pilot, "upstream said: Evil\\x00Co \\x1b[2J [bold]markup[/]")
        assert_no_control_characters(app, "log")
