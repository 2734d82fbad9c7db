"""Regenerate docs/console.md: plain-text captures of every console screen from a real run.

    .venv/bin/python bench/capture_console.py

Runs the console headless (Textual ``run_test``) at 120x36 and at 80x24, each time on the
embedded default in a fresh temporary data folder: SQLite, local blobs and the built-in
demo upstream. A full sync runs to completion first. Then one demo company answers
HTTP 500 for a sync of its own, so failed jobs show, and a sync run with 1.5 s of
upstream latency is captured in flight. Then every screen is captured, with the
feature-toggle editor and the retry-all confirmation.

The hand-written part of docs/console.md, above the captures, is kept as it is; the
captures are replaced.
"""

from __future__ import annotations

import asyncio
import io
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from rich.console import Console
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from opsdash.app import OpsdashApp
from opsdash.config import Settings
from opsdash.demo import DemoUpstream, engine_for
from opsdash.engine.runtime import Engine
from opsdash.screens.base import LiveScreen
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.confirm import ConfirmScreen
from opsdash.screens.history import HistoryScreen
from opsdash.screens.jobs import JobsScreen
from opsdash.screens.log import LogScreen
from opsdash.screens.preview import PreviewScreen
from opsdash.screens.toggles import TogglesScreen

DOC = Path(__file__).resolve().parents[1] / "docs" / "console.md"
MARKER = "<!-- The captures below are written by bench/capture_console.py; edit the text above. -->"
# Where the generated part of the document starts (the first "## At" heading before the
# marker was there).
GENERATED = re.compile(rf"^(?:{re.escape(MARKER)}|## At )", re.MULTILINE)

WIDE, NARROW = (120, 36), (80, 24)
JOBS_IN_FLIGHT = "Jobs (a sync run in flight)"
RETRY_ALL = "Retry all failed (confirmation)"
COMPANIES = "Companies & storage"
COMPANY_DETAIL = "Company detail (stored days)"
PREVIEW_CARDS = "Technician preview (job cards)"
PREVIEW_JSON = "Technician preview (raw JSON)"
TOGGLES = "Feature-toggle editor"
LOG = "Log"
HISTORY = "History (sync runs)"
# The sections of the document, in order, at each size.
SECTIONS: dict[tuple[int, int], tuple[str, ...]] = {
    WIDE: (
        JOBS_IN_FLIGHT,
        RETRY_ALL,
        COMPANIES,
        COMPANY_DETAIL,
        PREVIEW_CARDS,
        PREVIEW_JSON,
        TOGGLES,
        LOG,
        HISTORY,
    ),
    NARROW: (JOBS_IN_FLIGHT, COMPANIES, PREVIEW_CARDS, TOGGLES),
}

SLOW_UPSTREAM_MS = 1500.0
WAIT_TIMEOUT_S = 120.0

Captures = dict[str, str]


class DemoSettings(Settings):
    """The embedded default, whatever the environment or an ``opsdash.toml`` say."""

    model_config = SettingsConfigDict(toml_file=None)  # merged into Settings' config

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def screen_text(app: App[None]) -> str:
    """The screen, modal dialogs included, as plain text.

    ``App.export_screenshot`` renders the same way but exports SVG.
    """
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    lines = console.export_text().splitlines()
    return "\n".join(line.rstrip() for line in lines).rstrip()


async def wait_for(pilot: Pilot[None], condition: Callable[[], object]) -> None:
    """Let the app run until ``condition()`` holds."""
    loops = int(WAIT_TIMEOUT_S / 0.05)
    for _ in range(loops):
        if condition():
            return
        await pilot.pause(0.05)
    raise TimeoutError(f"timed out waiting for {getattr(condition, '__name__', condition)}")


async def shown(pilot: Pilot[None], screen_type: type[Screen[None]], refreshes: int = 1) -> None:
    """Wait until ``screen_type`` is on top and, if live, has refreshed ``refreshes`` more times."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, screen_type))
    screen = app.screen
    if isinstance(screen, LiveScreen):
        target = screen.refreshes + refreshes
        await wait_for(pilot, lambda: screen.refreshes >= target)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def demo_of(engine: Engine) -> DemoUpstream:
    """The demo upstream the engine serves (``engine_for`` handed it one)."""
    assert isinstance(engine.local_upstream, DemoUpstream)
    return engine.local_upstream


async def add_failed_jobs(pilot: Pilot[None], engine: Engine) -> None:
    """One company answers HTTP 500 to a sync of its own: its jobs fail after their retries."""
    demo = demo_of(engine)
    broken = demo.world.service_company_ids[-1]
    company = engine.company_by_service_id(broken)
    assert company is not None
    demo.faults = demo.faults.updated({"failing_companies": {broken: "500"}})
    engine.sync(company_id=company.id)
    await wait_for(pilot, lambda: engine.active_jobs() == 0)
    demo.faults = demo.faults.updated({"failing_companies": {}})


async def capture_run_in_flight(pilot: Pilot[None], engine: Engine) -> str:
    """Sync now with a slow upstream, and capture the jobs screen while the run goes on."""
    demo = demo_of(engine)
    demo.faults = demo.faults.updated({"latency_ms": SLOW_UPSTREAM_MS})
    await pilot.press("s")
    await wait_for(pilot, lambda: engine.status().workers_busy > 0)
    await shown(pilot, JobsScreen, refreshes=2)
    text = screen_text(pilot.app)
    if "sync run" not in text:
        raise RuntimeError("the sync run finished before it was captured")
    await wait_for(pilot, lambda: engine.active_jobs() == 0)
    demo.faults = demo.faults.updated({"latency_ms": 0.0})
    return text


async def capture_screens(pilot: Pilot[None], engine: Engine) -> Captures:
    app = pilot.app
    captures: Captures = {}
    await add_failed_jobs(pilot, engine)
    captures[JOBS_IN_FLIGHT] = await capture_run_in_flight(pilot, engine)
    await pilot.press("2")
    await shown(pilot, CompaniesScreen)
    captures[COMPANIES] = screen_text(app)
    await pilot.press("enter")
    await shown(pilot, CompanyDetailScreen)
    captures[COMPANY_DETAIL] = screen_text(app)
    await pilot.press("escape", "3")
    await shown(pilot, PreviewScreen)
    captures[PREVIEW_CARDS] = screen_text(app)
    await pilot.press("j")
    await shown(pilot, PreviewScreen, refreshes=0)
    captures[PREVIEW_JSON] = screen_text(app)
    await pilot.press("j", "t")
    await shown(pilot, TogglesScreen)
    captures[TOGGLES] = screen_text(app)
    await pilot.press("escape", "4")
    await shown(pilot, LogScreen)
    captures[LOG] = screen_text(app)
    await pilot.press("5")
    await shown(pilot, HistoryScreen)
    captures[HISTORY] = screen_text(app)
    await pilot.press("1")
    await shown(pilot, JobsScreen)
    await pilot.press("R")
    await shown(pilot, ConfirmScreen)
    captures[RETRY_ALL] = screen_text(app)
    await pilot.press("n")
    return captures


async def capture(size: tuple[int, int]) -> Captures:
    """A real run on the demo data, in a data folder of its own."""
    with tempfile.TemporaryDirectory(prefix="demo-") as folder:
        # Short retry backoff: the failing company's jobs use up their attempts in seconds.
        engine = engine_for(DemoSettings(data_dir=Path(folder), retry_base_s=0.2))
        try:
            engine.start()  # a new database: the first start queues a full sync
            if not engine.wait_idle(timeout_s=WAIT_TIMEOUT_S):
                raise TimeoutError("the first sync did not finish")
            async with OpsdashApp(engine).run_test(size=size) as pilot:
                return await capture_screens(pilot, engine)
        finally:
            engine.stop()


def hand_written_part(doc: str) -> str:
    match = GENERATED.search(doc)
    if match is None:
        raise SystemExit(f"{DOC}: no captures section to replace")
    return doc[: match.start()].rstrip()


def render(prose: str, captures: dict[tuple[int, int], Captures]) -> str:
    parts = [prose + "\n", MARKER]
    for (width, height), titles in SECTIONS.items():
        parts.append(f"## At {width}x{height}")
        for title in titles:
            parts += [f"### {title}", f"```text\n{captures[(width, height)][title]}\n```"]
    return "\n\n".join(parts) + "\n"


def main() -> None:
    prose = hand_written_part(DOC.read_text())
    captures = {size: asyncio.run(capture(size)) for size in SECTIONS}
    DOC.write_text(render(prose, captures))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
