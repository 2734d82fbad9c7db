"""A yes/no question before a destructive or bulk action."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from opsdash.screens.actions import bindings_for
from opsdash.screens.widgets.formatting import safe_text


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True when the operator confirms, False otherwise."""

    ACTION_TARGET = "confirm"
    BINDINGS = bindings_for(ACTION_TARGET)

    def __init__(self, question: str, detail: str = "", *, confirm_label: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-dialog", classes="dialog"):
            yield Label(safe_text(self.question), id="confirm-question")
            if self.detail:
                yield Static(safe_text(self.detail, multiline=True), id="confirm-detail")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="warning", id="confirm-yes")
                yield Button("Cancel (n)", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
