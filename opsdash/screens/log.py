"""The engine's recent log lines (jobs started, finished, failed; runs queued), newest first."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from opsdash.screens.messages import LogLine
from opsdash.screens.widgets.formatting import clock, safe_text
from opsdash.screens.widgets.live_table import Column, LiveTable
from opsdash.screens.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from opsdash.app import OpsdashApp

LOG_COLUMNS = (
    Column("time", "time", 8),
    Column("level", "level", 7),
    Column("source", "source", 11),
    Column("message", "message"),
)
LEVEL_THEME_VARIABLES = {"ERROR": "error", "CRITICAL": "error", "WARNING": "warning"}


def log_cells(
    line: LogLine, zone: tzinfo | None, theme_variables: Mapping[str, str]
) -> tuple[Any, ...]:
    variable = LEVEL_THEME_VARIABLES.get(line.level)
    style = f"bold {theme_variables[variable]}" if variable else "dim"
    return (
        clock(line.at, zone),
        Text(line.level.lower(), style=style),
        safe_text(line.logger.removeprefix("opsdash.")),
        safe_text(line.message, no_wrap=True, overflow="ellipsis"),
    )


class LogScreen(Screen[None]):
    BINDINGS = [Binding("w", "toggle_problems", "Warnings only")]

    def __init__(self) -> None:
        super().__init__()
        self.problems_only = False

    @property
    def console(self) -> OpsdashApp:
        return cast("OpsdashApp", self.app)

    def compose(self) -> ComposeResult:
        yield StatusBar()
        table = LiveTable(LOG_COLUMNS, id="log-table")
        table.border_title = "engine log, newest first"
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LiveTable).focus()
        self.show_lines()

    def on_screen_resume(self) -> None:
        self.query_one(StatusBar).show_latest()
        self.show_lines()

    def show_lines(self) -> None:
        lines = list(self.console.log_lines)
        if self.problems_only:
            lines = [line for line in lines if logging.getLevelName(line.level) >= logging.WARNING]
        zone, variables = self.console.display_zone, self.app.theme_variables
        table = self.query_one(LiveTable)
        table.show([(str(line.seq), log_cells(line, zone, variables)) for line in reversed(lines)])
        shown = "warnings and errors" if self.problems_only else "all lines"
        table.border_subtitle = f"{len(lines)} lines · {shown}" if lines else "no log lines yet"

    def action_toggle_problems(self) -> None:
        self.problems_only = not self.problems_only
        self.show_lines()
