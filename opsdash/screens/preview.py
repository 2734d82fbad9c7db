"""Technician preview: exactly what one technician's portal would receive for one company-day.

The view comes from :func:`opsdash.privacy.schedule_view`, the function the read
API serves, applied to the stored blob with the company's effective toggles.
Fields the view leaves out are shown as hidden, so the operator sees what the
toggles remove; ``j`` switches to the raw JSON the portal gets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import orjson
from rich.json import JSON
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Select, Static

from opsdash.engine import queries
from opsdash.engine.blobs import BlobNotFound
from opsdash.engine.queries import Person, StoredDay
from opsdash.privacy import (
    ALWAYS_HIDDEN_JOB_FIELDS,
    CONTACT_FIELD_TOGGLES,
    RATE_FIELD_TOGGLES,
    TechnicianFields,
    hidden_job_fields,
    schedule_view,
)
from opsdash.screens.base import LiveScreen
from opsdash.screens.messages import PreviewChoices, PreviewLoaded, PreviewResult
from opsdash.screens.widgets.job_card import render_job_card
from opsdash.screens.widgets.status_bar import StatusBar


def employee_ids_on_jobs(document: Mapping[str, Any]) -> dict[str, int]:
    """How many jobs each employee is scheduled on, by EmployeeInformationId."""
    counts: dict[str, int] = {}
    for job in document.get("jobs") or []:
        ids = {
            str(entry.get("EmployeeInformationId")) for entry in job.get("employeeSchedules") or []
        }
        for employee in ids:
            counts[employee] = counts.get(employee, 0) + 1
    return counts


def default_day(days: list[StoredDay], today: date) -> date | None:
    """The first stored day from today on, else the newest one."""
    upcoming = sorted(day.date for day in days if day.date >= today)
    if upcoming:
        return upcoming[0]
    return days[0].date if days else None


def default_person(people: Iterable[Person], jobs_per_employee: Mapping[str, int]) -> Person | None:
    """The first technician who has work that day (else the first one)."""
    people = list(people)
    busy = (p for p in people if jobs_per_employee.get(p.employee_information_id or "", 0) > 0)
    return next(busy, people[0] if people else None)


class PreviewScreen(LiveScreen):
    # The stored day changes at most once per sync; no need to re-read the blob every second.
    POLL_FACTOR = 5.0
    BINDINGS = [
        Binding("j", "toggle_json", "Raw JSON"),
        Binding("t", "edit_toggles", "Toggles"),
        Binding("n", "next_person", "Next technician"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.company_id: uuid.UUID | None = None
        self.day: date | None = None
        self.person_id: uuid.UUID | None = None
        self.raw_json = False
        self._choices: PreviewChoices | None = None
        self._result: PreviewResult | None = None
        self._problem: str | None = None
        self._shown_options: dict[str, list[tuple[str, str]]] = {}
        self._shown_result: tuple[PreviewResult | None, str | None, bool] | None = None

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
        request = self.console.take_preview_request()
        if request is not None:
            self.company_id, self.day = request
            self.person_id = None
        super().on_screen_resume()

    def on_mount(self) -> None:
        request = self.console.take_preview_request()
        if request is not None:
            self.company_id, self.day = request
        super().on_mount()

    # --- data (worker thread) -----------------------------------------------------------

    def fetch(self) -> Message:
        engine, now = self.console.engine, self.console.now()
        db = engine.db
        companies = queries.company_choices(db)
        company_id = self.company_id
        if company_id not in {company.id for company in companies}:
            company_id = companies[0].id if companies else None
        if company_id is None:
            return PreviewLoaded(PreviewChoices(companies), None, "No companies yet.")
        days = queries.stored_days(db, company_id)
        day = self.day if self.day in {d.date for d in days} else default_day(days, now.date())
        people = queries.technicians(db, company_id)
        stored = next((d for d in days if d.date == day), None)
        document: dict[str, Any] | None = None
        problem = None
        if stored is None:
            problem = "Nothing stored for this company yet: resync it from the companies screen."
        else:
            try:
                document = orjson.loads(engine.blobs.get(stored.storage_path))
            except BlobNotFound:
                problem = f"The stored document {stored.storage_path} is missing from storage."
        jobs_per_employee = employee_ids_on_jobs(document) if document else {}
        person = next((p for p in people if p.id == self.person_id), None)
        person = person or default_person(people, jobs_per_employee)
        choices = PreviewChoices(
            companies=companies,
            company_id=company_id,
            days=days,
            day=day,
            people=people,
            person_id=person.id if person else None,
            jobs_per_employee=jobs_per_employee,
        )
        if document is None:
            return PreviewLoaded(choices, None, problem)
        if person is None:
            return PreviewLoaded(choices, None, "This company has no technicians.")
        toggles = queries.company_toggles(db, company_id)
        effective = toggles.effective if toggles else {}
        return PreviewLoaded(choices, technician_preview(document, person, effective, company_id))

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
        self._show_result(message.result, message.problem)

    def _show_choices(self, choices: PreviewChoices) -> None:
        self._set_options(
            "#preview-company",
            [(f"{c.name} ({c.service_company_id})", str(c.id)) for c in choices.companies],
            choices.company_id,
        )
        self._set_options(
            "#preview-day",
            [
                (f"{d.date.isoformat()} · {d.job_count} jobs", d.date.isoformat())
                for d in choices.days
            ],
            choices.day.isoformat() if choices.day else None,
        )
        self._set_options(
            "#preview-person",
            [(_person_label(p, choices.jobs_per_employee), str(p.id)) for p in choices.people],
            choices.person_id,
        )

    def _set_options(self, selector: str, options: list[tuple[str, str]], value: object) -> None:
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

    def _show_result(self, result: PreviewResult | None, problem: str | None) -> None:
        shown = (result, problem, self.raw_json)
        if shown == self._shown_result:
            return  # unchanged: keep the operator's scroll position
        self._shown_result = shown
        summary = self.query_one("#preview-summary", Static)
        cards = self.query_one("#preview-cards", Vertical)
        raw = self.query_one("#preview-json", Static)
        cards.remove_children()
        raw.display = self.raw_json and result is not None
        cards.display = not raw.display
        if result is None:
            summary.update(Text(problem or "Choose a company, a date and a technician.", "bold"))
            cards.mount(Static(Text("Nothing to preview.", style="dim"), classes="empty"))
            return
        summary.update(_summary(result))
        if self.raw_json:
            raw.update(JSON.from_data(result.view, indent=2))
            return
        jobs = result.view.get("jobs") or []
        if not jobs:
            message = Text("This technician has no jobs on this day.", style="dim")
            cards.mount(Static(message, classes="empty"))
            return
        cards.mount_all(
            Static(render_job_card(job, self._hidden_fields(result, job)), classes="job-card")
            for job in jobs
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
            self.refresh_data()

    @on(Select.Changed, "#preview-day")
    def _day_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.day = date.fromisoformat(event.value)
            self.refresh_data()

    @on(Select.Changed, "#preview-person")
    def _person_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.person_id = uuid.UUID(event.value)
            self.refresh_data()

    def action_toggle_json(self) -> None:
        self.raw_json = not self.raw_json
        if self._choices is not None:
            self._show_result(self._result, self._problem)

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
        self.person_id = ids[(index + 1) % len(ids)]
        self.refresh_data()


def technician_preview(
    document: Mapping[str, Any], person: Person, toggles: dict[str, Any], company_id: uuid.UUID
) -> PreviewResult:
    """The technician's view of ``document``, by the read API's own privacy function."""
    view = schedule_view(
        document,
        role=person.role,
        employee_id=person.employee_information_id,
        toggles=toggles,
        company_id=str(company_id),
    )
    shown = {str(job.get("jobId")) for job in view.get("jobs") or []}
    full_jobs = {
        str(job.get("jobId")): job
        for job in document.get("jobs") or []
        if str(job.get("jobId")) in shown
    }
    return PreviewResult(
        person=person,
        view=view,
        full_jobs=full_jobs,
        total_jobs=len(document.get("jobs") or []),
        toggles=toggles,
    )


def _person_label(person: Person, jobs_per_employee: Mapping[str, int]) -> str:
    jobs = jobs_per_employee.get(person.employee_information_id or "", 0)
    return f"{person.label} · {jobs} job{'s' if jobs != 1 else ''}"


def hidden_by_toggles(toggles: Mapping[str, Any]) -> list[str]:
    """The optional job fields the toggles keep from technicians, as privacy.py reads them."""
    fields = TechnicianFields.from_toggles(toggles)
    hidden = [field for field in RATE_FIELD_TOGGLES if field not in fields.job_fields]
    hidden += [field for field in CONTACT_FIELD_TOGGLES if field not in fields.contact_fields]
    if "discounts" not in fields.job_fields:
        hidden.append("discounts")
    return hidden


def _summary(result: PreviewResult) -> Text:
    person, shown = result.person, len(result.view.get("jobs") or [])
    text = Text()
    text.append(person.label, style="bold")
    text.append(f" (employee {person.employee_information_id or 'none'})", style="dim")
    text.append(f" receives {shown} of {result.total_jobs} jobs. ")
    hidden = hidden_by_toggles(result.toggles)
    text.append("Toggles hide: ", style="dim")
    text.append(", ".join(hidden) if hidden else "nothing")
    text.append(". Always hidden: ", style="dim")
    text.append(", ".join(sorted(ALWAYS_HIDDEN_JOB_FIELDS)) + ".")
    return text
