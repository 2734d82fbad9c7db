"""Companies & storage: one sortable row per company, with totals; Enter opens its stored days."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Footer, Static

from opsdash.engine import queries
from opsdash.engine.freshness import CompanyFreshness, Freshness
from opsdash.engine.queries import CompanyStorage
from opsdash.screens.actions import bindings_for
from opsdash.screens.base import LiveScreen
from opsdash.screens.company_detail import CompanyDetailScreen
from opsdash.screens.messages import CompaniesLoaded, CompaniesSnapshot
from opsdash.screens.widgets.formatting import (
    NOTHING,
    age,
    freshness_text,
    safe_text,
    size_kb,
    status_color,
)
from opsdash.screens.widgets.live_table import Column, LiveTable
from opsdash.screens.widgets.status_bar import StatusBar

COMPANY_COLUMNS = (
    Column("name", "company", 20),
    Column("service_id", "id", 6),
    Column("sync", "sync", 6),
    Column("freshness", "freshness", 9),
    Column("days", "days", 4),
    Column("size", "size", 8),
    Column("last_sync", "synced", 6),
    Column("latest", "latest jobs", 18),
    Column("timezone", "time zone"),
)

SortKey = Callable[[CompanyStorage, Mapping[uuid.UUID, CompanyFreshness]], Any]


def _by_freshness(row: CompanyStorage, freshness: Mapping[uuid.UUID, CompanyFreshness]) -> Any:
    known = freshness.get(row.id)
    # Worst first; a company whose freshness is unknown sorts last.
    return (known.state.severity if known else len(Freshness), row.name.lower())


SORT_KEYS: Mapping[str, SortKey] = {
    "name": lambda row, _: (row.name.lower(), row.service_company_id),
    "service_id": lambda row, _: row.service_company_id,
    "sync": lambda row, _: (not row.sync_enabled, row.name.lower()),
    "freshness": _by_freshness,
    "days": lambda row, _: row.days_stored,
    "size": lambda row, _: row.total_kb,
    "last_sync": lambda row, _: row.last_synced_at.timestamp() if row.last_synced_at else 0.0,
    "latest": lambda row, _: (-row.latest_jobs.get("failed", 0), row.name.lower()),
    "timezone": lambda row, _: (row.timezone, row.name.lower()),
}
LATEST_ORDER = ("failed", "running", "pending", "completed", "cancelled")


def latest_jobs_text(latest: Mapping[str, int], theme_variables: Mapping[str, str]) -> Text:
    if not latest:
        return Text(NOTHING, style="dim")
    text = Text()
    for status in LATEST_ORDER:
        count = latest.get(status)
        if count:
            if text:
                text.append(" ")
            label = "ok" if status == "completed" else status
            text.append(f"{count} {label}", style=status_color(status, theme_variables))
    return text


def company_cells(
    row: CompanyStorage,
    now: datetime,
    theme_variables: Mapping[str, str],
    freshness: CompanyFreshness | None = None,
) -> tuple[Any, ...]:
    if row.sync_enabled:
        sync = Text("on", style="bold")
    elif row.portal_enabled:
        # Technicians still read this company's schedules, as of the last sync.
        sync = Text("frozen", style="bold")
    else:
        sync = Text("off", style="dim strike")
    return (
        safe_text(row.name, no_wrap=True, overflow="ellipsis"),
        safe_text(row.service_company_id),
        sync,
        freshness_text(freshness.state if freshness else None, theme_variables),
        str(row.days_stored),
        size_kb(row.total_kb),
        age(row.last_synced_at, now) if row.last_synced_at else NOTHING,
        latest_jobs_text(row.latest_jobs, theme_variables),
        safe_text(row.timezone),
    )


class CompaniesScreen(LiveScreen):
    ACTION_TARGET = "companies"
    BINDINGS = bindings_for(ACTION_TARGET)

    def __init__(self) -> None:
        super().__init__()
        # Worst first: a company that needs a look is at the top.
        self.sort_column = "freshness"
        self.sort_reverse = False
        self._rows: dict[str, CompanyStorage] = {}
        self._snapshot: CompaniesSnapshot | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar()
        table = LiveTable(COMPANY_COLUMNS, id="companies-table")
        table.border_title = "companies & storage"
        yield table
        yield Static(id="companies-totals")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#companies-table", LiveTable).focus()
        super().on_mount()

    def fetch(self) -> Message:
        reads, now = self.console.reads, self.console.now()
        rows = reads.company_storage(now)
        fresh = reads.freshness(now)
        return CompaniesLoaded(
            CompaniesSnapshot(
                rows, queries.storage_totals(rows), now, {row.id: row for row in fresh}
            )
        )

    def on_companies_loaded(self, message: CompaniesLoaded) -> None:
        self._snapshot = message.snapshot
        self._show()

    def _show(self) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            return
        variables = self.app.theme_variables
        sort_key, freshness = SORT_KEYS[self.sort_column], snapshot.freshness
        ordered = sorted(
            snapshot.rows, key=lambda row: sort_key(row, freshness), reverse=self.sort_reverse
        )
        self._rows = {str(row.id): row for row in ordered}
        table = self.query_one("#companies-table", LiveTable)
        table.show(
            [
                (key, company_cells(row, snapshot.now, variables, freshness.get(row.id)))
                for key, row in self._rows.items()
            ]
        )
        arrow = "▼" if self.sort_reverse else "▲"
        label = next(c.label for c in COMPANY_COLUMNS if c.key == self.sort_column)
        table.border_subtitle = f"sorted by {label} {arrow}"
        totals = snapshot.totals
        kept = self.console.engine.settings.schedule_retention_days
        text = Text(" total ", style="bold")
        if not snapshot.rows:
            text.append("no companies yet: press s to sync and discover them", style="dim")
        else:
            text.append(
                f"{totals.companies} companies · {totals.days_stored} days stored · "
                f"{size_kb(totals.total_kb)}"
            )
        text.append(f" · retention {kept} days", style="dim")
        self.query_one("#companies-totals", Static).update(text)

    # --- sorting -----------------------------------------------------------------------

    @on(DataTable.HeaderSelected, "#companies-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(str(event.column_key.value))

    def sort_by(self, column: str) -> None:
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, column in ("days", "size")
        self._show()

    def action_next_sort(self) -> None:
        keys = [column.key for column in COMPANY_COLUMNS]
        following = keys[(keys.index(self.sort_column) + 1) % len(keys)]
        self.sort_by(following)

    # --- actions -----------------------------------------------------------------------

    def highlighted(self) -> CompanyStorage | None:
        key = self.query_one("#companies-table", LiveTable).highlighted_key
        row = self._rows.get(key) if key else None
        if row is None:
            self.notify("No company selected.", severity="warning")
        return row

    @on(DataTable.RowSelected, "#companies-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_company()

    def action_open_company(self) -> None:
        row = self.highlighted()
        if row is not None:
            self.app.push_screen(CompanyDetailScreen(row.id, row.name))

    def action_resync_company(self) -> None:
        row = self.highlighted()
        if row is not None:
            self.console.resync(row.id, row.name)

    def action_toggle_sync(self) -> None:
        row = self.highlighted()
        if row is not None:
            self.console.toggle_sync(row.id, row.name)

    def action_edit_toggles(self) -> None:
        row = self.highlighted()
        if row is not None:
            self.console.edit_toggles(row.id)

    def action_preview_company(self) -> None:
        row = self.highlighted()
        if row is not None:
            self.console.open_preview(row.id, None)
