"""The console's screens, listed once: this list makes the app's modes, the number keys
that switch between them, the stylesheets (``CSS_PATH``), the links in the header and the
palette's "Show …" commands.

A new screen: a module in ``opsdash/screens/`` and an entry here (and its ``.tcss``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from textual.binding import BindingType
from textual.screen import Screen

from opsdash.screens.actions import APP, ConsoleAction, actions_for
from opsdash.screens.companies import CompaniesScreen
from opsdash.screens.history import HistoryScreen
from opsdash.screens.jobs import JobsScreen
from opsdash.screens.log import LogScreen
from opsdash.screens.preview import PreviewScreen

STYLES = Path(__file__).resolve().parent.parent / "styles"


@dataclass(frozen=True)
class ScreenEntry:
    name: str
    """The mode's name."""
    key: str
    label: str
    """In the header's links."""
    palette: str
    """The palette's command that shows it."""
    screen: type[Screen[None]]
    stylesheet: str

    def switch(self) -> ConsoleAction:
        return ConsoleAction(APP, f"switch_mode('{self.name}')", self.key, self.palette, show=False)


SCREEN_LIST: tuple[ScreenEntry, ...] = (
    ScreenEntry("jobs", "1", "Jobs", "Show jobs", JobsScreen, "jobs.tcss"),
    ScreenEntry(
        "companies",
        "2",
        "Companies",
        "Show companies & storage",
        CompaniesScreen,
        # The company detail screen, opened from this one, shares its stylesheet.
        "companies.tcss",
    ),
    ScreenEntry(
        "preview", "3", "Preview", "Show technician preview", PreviewScreen, "preview.tcss"
    ),
    ScreenEntry(
        "log", "4", "Log", "Show engine log, operator actions and alerts", LogScreen, "log.tcss"
    ),
    ScreenEntry("history", "5", "History", "Show sync run history", HistoryScreen, "history.tcss"),
)
DEFAULT_SCREEN = SCREEN_LIST[0].name


def modes() -> dict[str, str | Callable[[], Screen[Any]]]:
    return {entry.name: entry.screen for entry in SCREEN_LIST}


def stylesheets() -> list[str | PurePath]:
    """The shared look first, then each screen's, then the modal dialogs'."""
    screens = [STYLES / entry.stylesheet for entry in SCREEN_LIST]
    return [STYLES / "app.tcss", *screens, STYLES / "modals.tcss"]


def app_actions() -> tuple[ConsoleAction, ...]:
    """The app's own keys: a number key per screen, then the rest."""
    return (*(entry.switch() for entry in SCREEN_LIST), *actions_for(APP))


def app_bindings() -> list[BindingType]:
    return [action.binding() for action in app_actions()]
