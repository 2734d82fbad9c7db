"""The default screen: counts, throughput, the run in flight, the newest jobs and their detail."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, Select
from textual.worker import get_current_worker

from opsdash.engine import queries
from opsdash.engine.models import JobStatus, JobType
from opsdash.engine.operator_actions import OperatorActions
from opsdash.engine.queries import JobFilter, JobRow
from opsdash.screens.actions import bindings_for
from opsdash.screens.base import LiveScreen
from opsdash.screens.confirm import ConfirmScreen
from opsdash.screens.messages import (
    ActionDone,
    FailedJobsFound,
    JobDetailLoaded,
    JobsLoaded,
    JobsSnapshot,
)
from opsdash.screens.widgets.formatting import (
    NOTHING,
    age,
    company_label,
    duration,
    job_type_label,
    one_line,
    safe_text,
    status_text,
)
from opsdash.screens.widgets.job_detail import JobDetailPane
from opsdash.screens.widgets.live_table import Column, LiveTable
from opsdash.screens.widgets.run_summary import RunSummary
from opsdash.screens.widgets.status_bar import StatusBar

JOB_COLUMNS = (
    Column("type", "type", 5),
    Column("company", "company", 14),
    Column("date", "date", 10),
    Column("status", "status", 9),
    Column("attempts", "att", 3),
    Column("duration", "took", 5),
    Column("age", "age", 3),
    Column("error", "last error"),
)
ANY = "any"
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


def job_cells(row: JobRow, now: Any, theme_variables: Mapping[str, str]) -> tuple[Any, ...]:
    return (
        job_type_label(row.job_type),
        safe_text(row.company_name or NOTHING, no_wrap=True, overflow="ellipsis"),
        safe_text(row.day or NOTHING),
        status_text(row.status, theme_variables),
        f"{row.attempts}/{row.max_attempts}",
        duration(row.duration_ms),
        age(row.created_at, now),
        Text(one_line(row.error_message), no_wrap=True, overflow="ellipsis"),
    )


class JobsScreen(LiveScreen):
    ACTION_TARGET = "jobs"
    BINDINGS = bindings_for(ACTION_TARGET)

    def __init__(self) -> None:
        super().__init__()
        self.job_filter = JobFilter()
        self.selected_job_id: uuid.UUID | None = None
        self._rows: dict[str, JobRow] = {}
        self._companies_shown: list[tuple[Text, str]] = []

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield RunSummary()
        with Horizontal(id="job-filters"):
            yield Select(
                [(str(status), str(status)) for status in JobStatus],
                prompt="status: any",
                compact=True,
                id="filter-status",
            )
            yield Select(
                [(job_type_label(job_type), str(job_type)) for job_type in JobType],
                prompt="type: any",
                compact=True,
                id="filter-type",
            )
            yield Select([], prompt="company: any", compact=True, id="filter-company")
            yield Input(placeholder="search: company, date, error", compact=True, id="search")
        with Horizontal(id="jobs-body"):
            table = LiveTable(JOB_COLUMNS, id="jobs-table")
            table.border_title = "newest jobs"
            yield table
            yield JobDetailPane(id="job-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#jobs-table", LiveTable).focus()
        super().on_mount()

    # --- data --------------------------------------------------------------------------

    def fetch(self) -> Message:
        reads, now = self.console.reads, self.console.now()
        job_filter, selected = self.job_filter, self.selected_job_id
        return JobsLoaded(
            JobsSnapshot(
                rows=reads.jobs_page(job_filter),
                counts=reads.status_counts(now),
                throughput=reads.throughput(now),
                progress=reads.run_progress(now),
                companies=reads.company_choices(),
                now=now,
                selected=reads.job_detail(selected) if selected else None,
            )
        )

    def on_jobs_loaded(self, message: JobsLoaded) -> None:
        snapshot = message.snapshot
        variables = self.app.theme_variables
        self.query_one(RunSummary).show(
            snapshot.counts, snapshot.throughput, snapshot.progress, variables
        )
        self._show_company_choices(snapshot)
        table = self.query_one("#jobs-table", LiveTable)
        self._rows = {str(row.id): row for row in snapshot.rows}
        table.show(
            [(key, job_cells(row, snapshot.now, variables)) for key, row in self._rows.items()]
        )
        table.border_subtitle = self._table_subtitle(len(snapshot.rows))
        if snapshot.selected is not None and snapshot.selected.id == self.selected_job_id:
            self._show_detail(snapshot.selected)
        elif not snapshot.rows:
            self._show_detail(None)
        if self.selected_job_id is None and snapshot.rows:
            self._select(table.highlighted_key)

    def _table_subtitle(self, shown: int) -> str:
        if shown == 0:
            return "no jobs match" if not self.job_filter.is_empty else "no jobs yet: press s"
        limit = queries.JOBS_PAGE_LIMIT
        return f"newest {shown}" + (" (limit)" if shown >= limit else "")

    def _show_company_choices(self, snapshot: JobsSnapshot) -> None:
        options = [
            (company_label(c.name, c.service_company_id), str(c.id)) for c in snapshot.companies
        ]
        if options != self._companies_shown:
            self._companies_shown = options
            select = self.query_one("#filter-company", Select)
            with self.prevent(Select.Changed):
                current = select.value
                select.set_options(options)
                if current in {value for _, value in options}:
                    select.value = current

    def _show_detail(self, detail: queries.JobDetail | None) -> None:
        self.query_one(JobDetailPane).show(
            detail, self.console.display_zone, self.app.theme_variables
        )

    # --- selection and detail -----------------------------------------------------------

    @on(DataTable.RowHighlighted, "#jobs-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._select(event.row_key.value if event.row_key else None)

    def _select(self, key: str | None) -> None:
        job_id = uuid.UUID(key) if key else None
        if job_id == self.selected_job_id:
            return
        self.selected_job_id = job_id
        if job_id is not None:
            self._load_detail(job_id)

    @work(thread=True, exclusive=True, group="job-detail", exit_on_error=False)
    def _load_detail(self, job_id: uuid.UUID) -> None:
        detail = self.console.reads.job_detail(job_id)
        if not get_current_worker().is_cancelled:
            self.post_message(JobDetailLoaded(job_id, detail))

    def on_job_detail_loaded(self, message: JobDetailLoaded) -> None:
        if message.job_id == self.selected_job_id:
            self._show_detail(message.detail)

    # --- filters ------------------------------------------------------------------------

    @on(Select.Changed)
    def _filter_changed(self, event: Select.Changed) -> None:
        self._apply_filters()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        self._apply_filters()

    def _apply_filters(self) -> None:
        def chosen(selector: str) -> str | None:
            value = self.query_one(selector, Select).value
            return value if isinstance(value, str) else None

        company = chosen("#filter-company")
        self.job_filter = JobFilter(
            status=chosen("#filter-status"),
            job_type=chosen("#filter-type"),
            company_id=uuid.UUID(company) if company else None,
            search=self.query_one("#search", Input).value.strip(),
        )
        self.refresh_data()

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_clear_filters(self) -> None:
        with self.prevent(Select.Changed, Input.Changed):
            for select in self.query(Select):
                select.clear()
            self.query_one("#search", Input).value = ""
        self.query_one("#jobs-table", LiveTable).focus()
        self._apply_filters()

    def action_toggle_detail(self) -> None:
        pane = self.query_one(JobDetailPane)
        pane.display = not pane.display

    # --- actions ------------------------------------------------------------------------

    def _highlighted_row(self) -> JobRow | None:
        key = self.query_one("#jobs-table", LiveTable).highlighted_key
        return self._rows.get(key) if key else None

    def action_retry_job(self) -> None:
        row = self._highlighted_row()
        if row is None:
            self.notify("No job selected.", severity="warning")
            return
        if row.status not in RETRYABLE:
            self.notify(f"Only failed or cancelled jobs are retried; this one is {row.status}.")
            return
        label = _job_label(row)

        def retry(actions: OperatorActions) -> ActionDone:
            if actions.retry_job(row.id):
                return ActionDone(f"Retrying {label}.")
            return ActionDone(
                f"{label} was not retried: the same work is already queued or running.",
                "warning",
            )

        self.console.run_operator_action(retry)

    def action_cancel_job(self) -> None:
        row = self._highlighted_row()
        if row is None:
            self.notify("No job selected.", severity="warning")
            return
        if row.status != JobStatus.PENDING:
            self.notify(f"Only pending jobs are cancelled; this one is {row.status}.")
            return
        label = _job_label(row)

        def cancel(actions: OperatorActions) -> ActionDone:
            if actions.cancel_job(row.id):
                return ActionDone(f"Cancelled {label}.")
            return ActionDone(f"{label} had already started; it was not cancelled.", "warning")

        self.console.run_operator_action(cancel)

    def action_retry_failed(self) -> None:
        self._find_failed(self.job_filter)

    @work(thread=True, exclusive=True, group="find-failed", exit_on_error=False)
    def _find_failed(self, job_filter: JobFilter) -> None:
        job_ids = queries.failed_job_ids(self.console.engine.db, job_filter)
        self.post_message(FailedJobsFound(job_ids, _describe_filter(job_filter)))

    def on_failed_jobs_found(self, message: FailedJobsFound) -> None:
        if not message.job_ids:
            self.notify(f"No failed jobs {message.description}.")
            return
        count, job_ids = len(message.job_ids), message.job_ids

        def retry_all(actions: OperatorActions) -> ActionDone:
            retried = actions.retry_failed(job_ids)
            skipped = count - retried
            note = f" ({skipped} skipped: their work is already queued)" if skipped else ""
            return ActionDone(f"Retrying {retried} failed job(s){note}.")

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.console.run_operator_action(retry_all)

        if self.console.operator.read_only:
            # Nothing to confirm: the engine refuses it (and records that it did).
            self.console.run_operator_action(retry_all)
            return

        self.app.push_screen(
            ConfirmScreen(
                f"Retry {count} failed job(s) {message.description}?",
                "Each goes back to pending with its attempts reset.",
                confirm_label=f"Retry {count}",
            ),
            confirmed,
        )


def _job_label(row: JobRow) -> str:
    what = job_type_label(row.job_type)
    where = " ".join(part for part in (row.company_name, row.day) if part)
    return f"{what} job {where}".strip()


def _describe_filter(job_filter: JobFilter) -> str:
    parts = []
    if job_filter.job_type:
        parts.append(f"of type {job_type_label(job_filter.job_type)}")
    if job_filter.company_id:
        parts.append("of the chosen company")
    if job_filter.search:
        parts.append(f"matching “{job_filter.search}”")
    return " ".join(parts) if parts else "in the whole queue"
