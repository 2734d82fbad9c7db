"""Every key of the console in one registry, which drives the bindings, the footer and the
command palette (harlequin's ``actions.py`` is the model).

A ``ConsoleAction`` names its target (``app``, or the ``ACTION_TARGET`` of the screen
whose ``action_…`` method runs it), the action, its key, the description the footer and
the palette show, whether the footer shows it, and whether it changes state. A class
declares ``BINDINGS = bindings_for(ACTION_TARGET)``; the palette lists the same entries
(``screens/commands.py``). For a read-only operator, ``hide_state_changing`` leaves the
actions that change state out of the footer and the palette lists none of them; their
keys stay bound, so a press reaches the engine's refusal (``engine/operator_actions.py``),
which is audited and shown, rather than doing nothing without a word.

The screens, their number keys and their stylesheets are listed once in
``screens/catalog.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from textual._context import NoActiveAppError
from textual.binding import Binding, BindingType
from textual.dom import DOMNode

APP = "app"


@dataclass(frozen=True)
class ConsoleAction:
    target: str
    """``app``, or the ``ACTION_TARGET`` of the screen that owns the action."""
    action: str
    """The Textual action string: ``retry_job`` runs ``action_retry_job`` on the target."""
    key: str
    description: str
    show: bool = True
    """In the footer (every action is in the command palette either way)."""
    changes_state: bool = False
    """Goes through ``engine/operator_actions.py``: refused for a read-only operator."""
    key_display: str | None = None

    def binding(self) -> Binding:
        return Binding(
            self.key,
            self.action,
            self.description,
            show=self.show,
            key_display=self.key_display,
        )


CONSOLE_ACTIONS: tuple[ConsoleAction, ...] = (
    # Everywhere (the app); the number keys that switch screens come from the catalog.
    ConsoleAction(APP, "sync_now", "s", "Sync now", changes_state=True),
    ConsoleAction(APP, "toggle_pause", "p", "Pause/resume", changes_state=True),
    ConsoleAction(APP, "quit", "q", "Quit"),
    # Jobs.
    ConsoleAction("jobs", "retry_job", "r", "Retry", changes_state=True),
    ConsoleAction("jobs", "retry_failed", "R", "Retry all failed", changes_state=True),
    ConsoleAction("jobs", "cancel_job", "c", "Cancel", changes_state=True),
    ConsoleAction("jobs", "focus_search", "slash", "Search"),
    ConsoleAction("jobs", "clear_filters", "escape", "Clear filters", show=False),
    ConsoleAction("jobs", "toggle_detail", "d", "Detail", show=False),
    # Companies & storage.
    ConsoleAction("companies", "open_company", "enter", "Stored days"),
    ConsoleAction("companies", "resync_company", "u", "Resync", changes_state=True),
    ConsoleAction("companies", "toggle_sync", "e", "Sync on/off", changes_state=True),
    # Opening the editor only shows the toggles; saving them is the change.
    ConsoleAction("companies", "edit_toggles", "t", "Toggles"),
    ConsoleAction("companies", "preview_company", "v", "Preview"),
    ConsoleAction("companies", "next_sort", "o", "Sort"),
    # One company.
    ConsoleAction("company_detail", "app.pop_screen", "escape,backspace", "Back"),
    ConsoleAction("company_detail", "resync_company", "u", "Resync all days", changes_state=True),
    ConsoleAction("company_detail", "resync_day", "d", "Resync day", changes_state=True),
    ConsoleAction("company_detail", "toggle_sync", "e", "Sync on/off", changes_state=True),
    ConsoleAction("company_detail", "edit_toggles", "t", "Toggles"),
    ConsoleAction("company_detail", "preview_day", "v", "Preview day"),
    # Technician preview; the page keys are named in its summary when a day has more pages.
    ConsoleAction("preview", "toggle_json", "j", "Raw JSON"),
    ConsoleAction("preview", "edit_toggles", "t", "Toggles"),
    ConsoleAction("preview", "next_person", "n", "Next technician"),
    ConsoleAction("preview", "next_page", "right_square_bracket", "Next jobs", show=False),
    ConsoleAction("preview", "previous_page", "left_square_bracket", "Previous jobs", show=False),
    # Log.
    ConsoleAction("log", "toggle_problems", "w", "Warnings only"),
    # The toggle editor and the confirmation (modal screens).
    ConsoleAction("toggles", "cancel", "escape", "Cancel"),
    ConsoleAction("toggles", "save", "ctrl+s", "Save", changes_state=True),
    ConsoleAction("confirm", "answer(True)", "y", "Yes"),
    ConsoleAction("confirm", "answer(False)", "n,escape", "No"),
)

STATE_CHANGING = frozenset(action.action for action in CONSOLE_ACTIONS if action.changes_state)


def actions_for(target: str) -> tuple[ConsoleAction, ...]:
    return tuple(action for action in CONSOLE_ACTIONS if action.target == target)


def bindings_for(target: str) -> list[BindingType]:
    return [action.binding() for action in actions_for(target)]


def allowed(actions: Iterable[ConsoleAction], *, read_only: bool) -> list[ConsoleAction]:
    """What the operator may do: everything, or for a read-only one what changes nothing."""
    return [action for action in actions if not (read_only and action.changes_state)]


def hide_state_changing(node: DOMNode) -> None:
    """Take the node's state-changing keys out of its footer (a read-only operator's console).

    Textual gives every node its own copy of the class's bindings (``DOMNode._bindings``,
    a new dict per instance), so this changes this console's footer only; the keys stay
    bound (see the module docstring).
    """
    bindings = node._bindings
    for key, key_bindings in list(bindings.key_to_bindings.items()):
        bindings.key_to_bindings[key] = [
            replace(binding, show=False) if binding.action in STATE_CHANGING else binding
            for binding in key_bindings
        ]


def follow_operator(node: DOMNode) -> None:
    """Fit a screen's footer to the app's operator (call from the screen's ``__init__``)."""
    try:
        operator = getattr(node.app, "operator", None)
    except NoActiveAppError:  # built outside a running app: nothing to fit
        return
    if operator is not None and operator.read_only:
        hide_state_changing(node)
