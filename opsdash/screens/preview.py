"""Technician preview: exactly what one technician's portal would receive for one company-day.

The view comes from :func:`opsdash.privacy.schedule_view`, the function the read
API serves, applied to the stored blob with the company's effective toggles.
Fields the view leaves out are shown as hidden, so the operator sees what the
toggles remove; ``j`` switches to the raw JSON the portal gets.

A day can hold thousands of jobs: the screen shows one page of them at a time
(``]`` and ``[`` turn pages), so a large day mounts a bounded number of cards, and
the day is parsed once per checksum in the worker (:mod:`opsdash.screens.preview_data`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import date
from functools import partial
from typing import Any

from rich.highlighter import JSONHighlighter
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Select, Static

from opsdash.engine.queries import Person
from opsdash.privacy import (
    ALWAYS_HIDDEN_JOB_FIELDS,
    CONTACT_FIELD_TOGGLES,
    RATE_FIELD_TOGGLES,
    TechnicianFields,
    hidden_job_fields,
)
from opsdash.screens.actions import bindings_for
from opsdash.screens.base import LiveScreen
from opsdash.screens.messages import PreviewChoices, PreviewLoaded, PreviewResult
from opsdash.screens.preview_data import DayCache, PreviewRequest, load_preview
from opsdash.screens.widgets.formatting import company_label, printable, safe_text
from opsdash.screens.widgets.job_card import render_job_card
from opsdash.screens.widgets.status_bar import StatusBar

JOBS_PER_PAGE = 40
"""Job cards mounted at once: enough to scroll through, few enough to stay quick."""


def page_bounds(total: int, page: int, per_page: int = JOBS_PER_PAGE) -> tuple[int, int, int]:
    """(page, first, end) with ``page`` clamped to the pages that ``total`` jobs fill."""
    last_page = max(0, (total - 1) // per_page)
    page = min(max(page, 0), last_page)
    first = page * per_page
    return page, first, min(first + per_page, total)


class PreviewScreen(LiveScreen):
    # The stored day changes at most once per sync; no need to re-read the blob every second.
    POLL_FACTOR = 5.0
    ACTION_TARGET = "preview"
    BINDINGS = bindings_for(ACTION_TARGET)

    def __init__(self) -> None:
        super().__init__()
        self.company_id: uuid.UUID | None = None
        self.day: date | None = None
        self.person_id: uuid.UUID | None = None
        self.raw_json = False
        self.page = 0
        self.day_cache = DayCache()
        self._choices: PreviewChoices | None = None
        self._result: PreviewResult | None = None
        self._problem: str | None = None
        self._shown_options: dict[str, list[tuple[Text, str]]] = {}
        self._shown_key: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar()
        with Horizontal(id="preview-choosers"):
            yield Select([], prompt="company", compact=True, id="preview-company")
            yield Select([], prompt="date", compact=True, id="preview-day")
            yield Select([], prompt="technician", compact=True, id="preview-person")
        yield Static(id="preview-summary")
        with VerticalScroll(id="preview-body"):
            yield Vertical(id="preview-cards")
            yield Static(id="preview-json")
        yield Footer()

    def on_screen_resume(self) -> None:
        self._take_request()
        super().on_screen_resume()

    def on_mount(self) -> None:
        self._take_request()
        super().on_mount()

    def _take_request(self) -> None:
        request = self.console.take_preview_request()
        if request is not None:
            self.company_id, self.day = request
            self.person_id, self.page = None, 0

    # --- data (worker thread) -----------------------------------------------------------

    def refresh_job(self) -> Callable[[], Message | None]:
        # Captured here, on the UI thread: the worker never reads what the operator changes.
        return partial(self.fetch_for, PreviewRequest(self.company_id, self.day, self.person_id))

    def fetch_for(self, request: PreviewRequest) -> Message:
        """Read the preview of ``request`` (runs in a worker thread: no widgets here)."""
        console = self.console
        today = console.now().date()
        return load_preview(console.reads, console.engine.blobs, request, today, self.day_cache)

    # --- showing it (UI thread) ---------------------------------------------------------

    def on_preview_loaded(self, message: PreviewLoaded) -> None:
        choices = message.choices
        self._choices, self._result, self._problem = choices, message.result, message.problem
        self.company_id, self.day, self.person_id = (
            choices.company_id,
            choices.day,
            choices.person_id,
        )
        self._show_choices(choices)
        self._show_result()

    def _show_choices(self, choices: PreviewChoices) -> None:
        self._set_options(
            "#preview-company",
            [(company_label(c.name, c.service_company_id), str(c.id)) for c in choices.companies],
            choices.company_id,
        )
        self._set_options(
            "#preview-day",
            [
                (Text(f"{d.date.isoformat()} · {d.job_count} jobs"), d.date.isoformat())
                for d in choices.days
            ],
            choices.day.isoformat() if choices.day else None,
        )
        self._set_options(
            "#preview-person",
            [(_person_label(p, choices.jobs_per_employee), str(p.id)) for p in choices.people],
            choices.person_id,
        )

    def _set_options(self, selector: str, options: list[tuple[Text, str]], value: object) -> None:
        select = self.query_one(selector, Select)
        with self.prevent(Select.Changed):
            if self._shown_options.get(selector) != options:
                self._shown_options[selector] = options
                select.set_options(options)
            wanted = str(value) if value is not None else None
            if wanted is None:
                select.clear()
            elif select.value != wanted:
                select.value = wanted

    def _show_result(self) -> None:
        result, problem = self._result, self._problem
        jobs: list[dict[str, Any]] = (result.view.get("jobs") or []) if result else []
        self.page, first, end = page_bounds(len(jobs), self.page)
        shown = (result.key if result else None, problem, self.raw_json, self.page)
        if shown == self._shown_key:
            return  # unchanged: keep the operator's scroll position
        self._shown_key = shown
        summary = self.query_one("#preview-summary", Static)
        cards = self.query_one("#preview-cards", Vertical)
        raw = self.query_one("#preview-json", Static)
        cards.remove_children()
        raw.display = self.raw_json and result is not None
        cards.display = not raw.display
        self.query_one("#preview-body", VerticalScroll).scroll_home(animate=False)
        if result is None:
            summary.update(
                safe_text(problem or "Choose a company, a date and a technician.", "bold")
            )
            cards.mount(Static(Text("Nothing to preview.", style="dim"), classes="empty"))
            return
        summary.update(_summary(result, first, end))
        window = jobs[first:end]
        if self.raw_json:
            raw.update(_raw_json({**result.view, "jobs": window}))
            return
        if not jobs:
            message = Text("This technician has no jobs on this day.", style="dim")
            cards.mount(Static(message, classes="empty"))
            return
        cards.mount_all(
            Static(render_job_card(job, self._hidden_fields(result, job)), classes="job-card")
            for job in window
        )

    @staticmethod
    def _hidden_fields(result: PreviewResult, job: Mapping[str, Any]) -> list[str]:
        full = result.full_jobs.get(str(job.get("jobId")), job)
        return hidden_job_fields(full, role=result.person.role, toggles=result.toggles)

    # --- choosing -----------------------------------------------------------------------

    @on(Select.Changed, "#preview-company")
    def _company_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.company_id, self.day, self.person_id = uuid.UUID(event.value), None, None
            self.page = 0
            self.refresh_data()

    @on(Select.Changed, "#preview-day")
    def _day_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.day, self.page = date.fromisoformat(event.value), 0
            self.refresh_data()

    @on(Select.Changed, "#preview-person")
    def _person_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.person_id, self.page = uuid.UUID(event.value), 0
            self.refresh_data()

    def action_toggle_json(self) -> None:
        self.raw_json = not self.raw_json
        if self._choices is not None:
            self._show_result()

    def action_next_page(self) -> None:
        self._turn_page(+1)

    def action_previous_page(self) -> None:
        self._turn_page(-1)

    def _turn_page(self, step: int) -> None:
        if self._result is None:
            return
        jobs = len(self._result.view.get("jobs") or [])
        page, _, _ = page_bounds(jobs, self.page + step)
        if page == self.page:
            self.notify("No more jobs that way.")
            return
        self.page = page
        self._show_result()

    def action_edit_toggles(self) -> None:
        if self.company_id is None:
            self.notify("Choose a company first.", severity="warning")
            return
        self.console.edit_toggles(self.company_id)

    def action_next_person(self) -> None:
        people = self._choices.people if self._choices else []
        if not people:
            return
        ids = [person.id for person in people]
        index = ids.index(self.person_id) if self.person_id in ids else -1
        self.person_id, self.page = ids[(index + 1) % len(ids)], 0
        self.refresh_data()


def _person_label(person: Person, jobs_per_employee: Mapping[str, int]) -> Text:
    jobs = jobs_per_employee.get(person.employee_information_id or "", 0)
    return safe_text(f"{person.label} · {jobs} job{'s' if jobs != 1 else ''}")


def hidden_by_toggles(toggles: Mapping[str, Any]) -> list[str]:
    """The optional job fields the toggles keep from technicians, as privacy.py reads them."""
    fields = TechnicianFields.from_toggles(toggles)
    hidden = [field for field in RATE_FIELD_TOGGLES if field not in fields.job_fields]
    hidden += [field for field in CONTACT_FIELD_TOGGLES if field not in fields.contact_fields]
    if "discounts" not in fields.job_fields:
        hidden.append("discounts")
    return hidden


def _summary(result: PreviewResult, first: int, end: int) -> Text:
    person, shown = result.person, len(result.view.get("jobs") or [])
    text = Text()
    text.append(printable(person.label), style="bold")
    employee = printable(person.employee_information_id or "none")
    text.append(f" (employee {employee})", style="dim")
    text.append(f" receives {shown} of {result.total_jobs} jobs. ")
    if shown > end - first:
        text.append(f"Showing {first + 1} to {end} ([ and ] turn pages). ", style="bold")
    hidden = hidden_by_toggles(result.toggles)
    text.append("Toggles hide: ", style="dim")
    text.append(", ".join(hidden) if hidden else "nothing")
    text.append(". Always hidden: ", style="dim")
    text.append(", ".join(sorted(ALWAYS_HIDDEN_JOB_FIELDS)) + ".")
    return text


def _raw_json(view: Mapping[str, Any]) -> Text:
    """The view as the portal gets it, indented and highlighted, control characters escaped.

    JSON escapes the C0 controls itself but writes C1 and bidi controls as they are.
    """
    dumped = json.dumps(view, indent=2, ensure_ascii=False, default=str)
    text = safe_text(dumped, multiline=True)
    JSONHighlighter().highlight(text)
    return text
