"""The feature-toggle editor: one switch per toggle, saved as the company's overrides.

The modal only decides; the caller writes the result to ``toggle_overrides`` off
the UI thread. Dismisses with the overrides to save, or None when cancelled. Every
switch shows a toggle as the privacy view reads it (``privacy.toggle_reading``), and
the overrides saved are the fewest that produce the switches (``privacy.overrides_for``):
after "Follow upstream" that is ``{}``, so the company follows the upstream again.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static, Switch

from opsdash.engine.queries import CompanyToggles
from opsdash.privacy import PRIVACY_TOGGLES, overrides_for, toggle_reading, upstream_readings
from opsdash.screens.actions import bindings_for, follow_operator
from opsdash.screens.widgets.formatting import safe_text

TOGGLE_PREFIX = "TechDashboard_"


def toggle_label(name: str) -> str:
    """``TechDashboard_DisplayBillRate`` → ``Display bill rate``."""
    words = re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", name.removeprefix(TOGGLE_PREFIX))
    sentence = " ".join(word.lower() for word in words) or name
    return sentence[:1].upper() + sentence[1:]


def toggle_names(toggles: CompanyToggles) -> list[str]:
    """The privacy toggles first (always offered), then any other the upstream reports."""
    others = sorted((set(toggles.upstream) | set(toggles.overrides)) - set(PRIVACY_TOGGLES))
    return [*PRIVACY_TOGGLES, *others]


def _switch_id(name: str) -> str:
    return "toggle-" + re.sub(r"[^A-Za-z0-9_-]", "_", name)


class TogglesScreen(ModalScreen[dict[str, bool] | None]):
    ACTION_TARGET = "toggles"
    BINDINGS = bindings_for(ACTION_TARGET)

    def __init__(self, toggles: CompanyToggles, *, read_only: bool = False) -> None:
        super().__init__()
        self.toggles = toggles
        self.names = toggle_names(toggles)
        self.read_only = read_only
        """Shown, not editable: the buttons that change something are off (ctrl+s still
        reaches the engine, which refuses it)."""
        follow_operator(self)

    def compose(self) -> ComposeResult:
        effective = self.toggles.effective
        with Vertical(id="toggles-dialog", classes="dialog"):
            yield Label(
                safe_text(
                    f"Feature toggles · {self.toggles.name} ({self.toggles.service_company_id})"
                ),
                id="toggles-title",
            )
            yield Static(
                "Read-only: you can see these toggles, not change them."
                if self.read_only
                else "On/off as technicians get them. A switch that differs from the upstream "
                "is saved as an override; a sync never erases it.",
                id="toggles-help",
            )
            with VerticalScroll(id="toggles-list"):
                for name in self.names:
                    with Horizontal(classes="toggle-row"):
                        yield Switch(
                            value=toggle_reading(effective, name),
                            id=_switch_id(name),
                            name=name,
                        )
                        yield Label(safe_text(toggle_label(name)), classes="toggle-name")
                        yield Static(self._upstream_note(name), classes="toggle-upstream")
            with Horizontal(classes="dialog-buttons"):
                yield Button(
                    "Save (ctrl+s)", variant="primary", id="toggles-save", disabled=self.read_only
                )
                yield Button("Follow upstream", id="toggles-reset", disabled=self.read_only)
                yield Button("Cancel (esc)", id="toggles-cancel")

    def _upstream_note(self, name: str) -> Text:
        upstream = self.toggles.upstream.get(name)
        if isinstance(upstream, bool):
            shown = "on" if upstream else "off"
        else:
            shown = f"unset (reads {'on' if toggle_reading({}, name) else 'off'})"
        note = Text(f"upstream {shown}", style="dim")
        if name in self.toggles.overrides:
            note.append(" · overridden", style="bold")
        return note

    def wanted(self) -> dict[str, bool]:
        return {name: self.query_one(f"#{_switch_id(name)}", Switch).value for name in self.names}

    def action_save(self) -> None:
        self.dismiss(overrides_for(self.toggles.upstream, self.wanted()))

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#toggles-save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#toggles-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(Button.Pressed, "#toggles-reset")
    def _reset_pressed(self) -> None:
        # The upstream's values read by the same rule as the view: a gap in
        # HideDiscounts reads as hidden, not as "not True".
        for name, reading in upstream_readings(self.toggles.upstream, self.names).items():
            self.query_one(f"#{_switch_id(name)}", Switch).value = reading
