"""One company: its settings, effective toggles and stored days, with the company's actions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime, tzinfo
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Footer, Static

from opsdash.engine.freshness import CompanyFreshness, DayFreshness
from opsdash.engine.models import JobStatus
from opsdash.engine.queries import CompanyStorage, CompanyToggles, StoredDay
from opsdash.privacy import PRIVACY_TOGGLES, toggle_reading
from opsdash.screens.actions import bindings_for
from opsdash.screens.base import LiveScreen
from opsdash.screens.messages import CompanyLoaded, CompanySnapshot
from opsdash.screens.toggles import toggle_label
from opsdash.screens.widgets.formatting import (
    NOTHING,
    age,
    age_of,
    freshness_text,
    safe_text,
    size_kb,
    timestamp,
)
from opsdash.screens.widgets.live_table import Column, LiveTable
from opsdash.screens.widgets.status_bar import StatusBar

DAY_COLUMNS = (
    Column("date", "date", 10),
    Column("size", "size", 8),
    Column("jobs", "jobs", 4),
    Column("employees", "staff", 5),
    Column("teams", "teams", 5),
    Column("checksum", "checksum", 12),
    Column("status", "status", 7),
    Column("updated", "changed", 8),
    Column("age", "age", 5),
    Column("error", "last error"),
)


def day_cells(
    day: StoredDay | None,
    fresh: DayFreshness | None,
    now: datetime,
    theme_variables: Mapping[str, str],
) -> tuple[Any, ...]:
    """One day of the company: what is stored, and (inside the sync window) how fresh it is."""
    when = day.date if day is not None else fresh.date if fresh is not None else None
    failed = fresh is not None and fresh.last_status == JobStatus.FAILED
    error_style = f"bold {theme_variables.get('error', '')}".strip()
    return (
        when.isoformat() if when else NOTHING,
        size_kb(day.file_size_kb) if day else NOTHING,
        str(day.job_count) if day else NOTHING,
        str(day.employee_count) if day else NOTHING,
        str(day.team_count) if day else NOTHING,
        safe_text(day.checksum[:12]) if day else NOTHING,
        safe_text(day.status) if day else Text("missing", style=error_style),
        f"{age(day.updated_at, now)} ago" if day and day.updated_at else NOTHING,
        age(fresh.confirmed_at, now) if fresh and fresh.confirmed_at else NOTHING,
        safe_text(fresh.last_error or "", error_style, no_wrap=True, overflow="ellipsis")
        if failed and fresh
        else "",
    )


def sync_state(company: CompanyStorage) -> Text:
    """Sync on or off; off with the portal on means technicians see data that no longer moves."""
    if company.sync_enabled:
        return Text("on", style="bold")
    if company.portal_enabled:
        return Text.assemble(
            ("off · data frozen", "bold"),
            (" (the portal still serves the last synced schedules; nothing new arrives)", "dim"),
        )
    return Text("off (not synced, portal off)", style="bold")


def company_summary(
    company: CompanyStorage,
    toggles: CompanyToggles | None,
    zone: tzinfo | None,
    fresh: CompanyFreshness | None = None,
    variables: Mapping[str, str] | None = None,
) -> Table:
    variables = variables or {}
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    grid.add_row("company", safe_text(f"{company.name} ({company.service_company_id})", "bold"))
    grid.add_row("sync", sync_state(company))
    grid.add_row("time zone", safe_text(company.timezone))
    grid.add_row("last synced", timestamp(company.last_synced_at, zone))
    if fresh is not None:
        oldest = f" · stalest day {age_of(fresh.oldest_age)} old" if fresh.oldest_age else ""
        grid.add_row("freshness", Text.assemble(freshness_text(fresh.state, variables), oldest))
    if toggles is not None:
        grid.add_row("toggles", _toggle_summary(toggles))
    return grid


def _toggle_summary(toggles: CompanyToggles) -> Text:
    effective = toggles.effective
    text = Text()
    for name in PRIVACY_TOGGLES:
        if text:
            text.append(" · ")
        on_ = toggle_reading(effective, name)  # as technicians get it, gaps included
        label = toggle_label(name).removeprefix("Display ").lower()
        text.append(label, style="bold" if on_ else "dim strike")
        if name in toggles.overrides:
            text.append("*")
    if toggles.overrides:
        text.append("   (* overridden by an operator)", style="dim")
    return text


class CompanyDetailScreen(LiveScreen):
    ACTION_TARGET = "company_detail"
    BINDINGS = bindings_for(ACTION_TARGET)

    def __init__(self, company_id: uuid.UUID, name: str) -> None:
        super().__init__()
        self.company_id = company_id
        self.company_name = name
        self._days: dict[str, StoredDay] = {}

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield Static(safe_text(self.company_name, "bold"), id="company-summary")
        table = LiveTable(DAY_COLUMNS, id="days-table")
        table.border_title = "stored days"
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#days-table", LiveTable).focus()
        super().on_mount()

    def fetch(self) -> Message:
        reads, now = self.console.reads, self.console.now()
        company = next(
            (row for row in reads.company_storage(now) if row.id == self.company_id), None
        )
        fresh = reads.freshness(now, company_id=self.company_id)
        return CompanyLoaded(
            CompanySnapshot(
                company=company,
                toggles=reads.company_toggles(self.company_id),
                days=reads.stored_days(self.company_id),
                now=now,
                freshness=fresh[0] if fresh else None,
            )
        )

    def on_company_loaded(self, message: CompanyLoaded) -> None:
        snapshot = message.snapshot
        summary = self.query_one("#company-summary", Static)
        if snapshot.company is None:
            summary.update(Text("This company no longer exists.", style="bold"))
            return
        self.company_name = snapshot.company.name
        variables = self.app.theme_variables
        summary.update(
            company_summary(
                snapshot.company,
                snapshot.toggles,
                self.console.display_zone,
                snapshot.freshness,
                variables,
            )
        )
        self._days = {day.date.isoformat(): day for day in snapshot.days}
        window = {
            day.date.isoformat(): day
            for day in (snapshot.freshness.days if snapshot.freshness else ())
        }
        # Newest date first; the window's days that have nothing stored yet show too.
        keys = sorted(self._days.keys() | window.keys(), reverse=True)
        table = self.query_one("#days-table", LiveTable)
        table.show(
            [
                (key, day_cells(self._days.get(key), window.get(key), snapshot.now, variables))
                for key in keys
            ]
        )
        table.border_subtitle = (
            f"{len(snapshot.days)} days · {size_kb(sum(d.file_size_kb for d in snapshot.days))}"
            if snapshot.days
            else "nothing stored yet: press u to sync this company"
        )

    def _highlighted_day(self) -> date | None:
        key = self.query_one("#days-table", LiveTable).highlighted_key
        if key is None:
            self.notify("No stored day selected.", severity="warning")
            return None
        return date.fromisoformat(key)

    def action_resync_company(self) -> None:
        self.console.resync(self.company_id, self.company_name)

    def action_resync_day(self) -> None:
        day = self._highlighted_day()
        if day is not None:
            self.console.resync(self.company_id, self.company_name, day)

    def action_toggle_sync(self) -> None:
        self.console.toggle_sync(self.company_id, self.company_name)

    def action_edit_toggles(self) -> None:
        self.console.edit_toggles(self.company_id)

    def action_preview_day(self) -> None:
        key = self.query_one("#days-table", LiveTable).highlighted_key
        self.console.open_preview(self.company_id, date.fromisoformat(key) if key else None)

    @on(DataTable.RowSelected, "#days-table")
    def _day_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_preview_day()
