"""The run ledger: every sync run of the last months, with what it did and how long it took."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, Label, Sparkline, Static

from opsdash.engine.ledger import RunSummary
from opsdash.screens.base import LiveScreen
from opsdash.screens.messages import HistoryLoaded
from opsdash.screens.widgets.formatting import NOTHING, age_of, clock, size_kb
from opsdash.screens.widgets.live_table import Column, LiveTable
from opsdash.screens.widgets.status_bar import StatusBar

RUN_COLUMNS = (
    Column("queued", "queued", 11),
    Column("trigger", "trigger", 8),
    Column("took", "took", 5),
    Column("companies", "cos", 4),
    Column("done", "done", 5),
    Column("failed", "failed", 6),
    Column("unchanged", "same", 5),
    Column("calls", "calls", 5),
    Column("written", "written", 9),
    Column("scope", "scope"),
)
# The sparkline draws this many runs, oldest on the left.
SPARK_RUNS = 60


def run_cells(
    run: RunSummary, zone: tzinfo | None, theme_variables: Mapping[str, str]
) -> tuple[Any, ...]:
    error = f"bold {theme_variables.get('error', '')}".strip()
    return (
        clock(run.queued_at, zone),
        run.trigger,
        age_of(run.took) if run.took is not None else Text("running", style="bold"),
        str(run.companies) if run.finished_at else NOTHING,
        str(run.days_done) if run.finished_at else NOTHING,
        Text(str(run.days_failed), style=error) if run.days_failed else "0",
        str(run.days_unchanged) if run.finished_at else NOTHING,
        str(run.upstream_calls) if run.finished_at else NOTHING,
        size_kb(run.bytes_written / 1024) if run.finished_at else NOTHING,
        Text(run.scope, no_wrap=True, overflow="ellipsis"),
    )


def history_summary(runs: Sequence[RunSummary], now: datetime) -> Text:
    if not runs:
        return Text("no sync run recorded yet: press s to sync now", style="dim")
    finished = [run for run in runs if run.took is not None]
    text = Text(f"{len(runs)} runs shown", style="bold")
    if finished:
        latest = finished[0]
        text.append(f" · last finished run took {age_of(latest.took)}")
        text.append(f", {latest.days_done} days, {latest.days_failed} failed")
        slowest = max(run.took for run in finished if run.took is not None)
        text.append(f" · slowest {age_of(slowest)}", style="dim")
    oldest = runs[-1].queued_at
    text.append(f" · back to {age_of(now - oldest)} ago", style="dim")
    return text


class HistoryScreen(LiveScreen):
    ACTION_TARGET = "history"
    POLL_FACTOR = 5.0

    def compose(self) -> ComposeResult:
        yield StatusBar()
        yield Static(id="history-summary")
        with Horizontal(id="history-spark-row"):
            yield Label("days per run", id="history-spark-label")
            yield Sparkline([], id="history-spark")
        table = LiveTable(RUN_COLUMNS, id="history-table")
        table.border_title = "sync runs, newest first"
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#history-table", LiveTable).focus()
        super().on_mount()

    def fetch(self) -> Message:
        return HistoryLoaded(self.console.reads.run_history(), self.console.now())

    def on_history_loaded(self, message: HistoryLoaded) -> None:
        runs, zone = message.runs, self.console.display_zone
        variables = self.app.theme_variables
        self.query_one("#history-summary", Static).update(history_summary(runs, message.now))
        finished = [run for run in runs if run.finished_at is not None][:SPARK_RUNS]
        spark = self.query_one("#history-spark", Sparkline)
        spark.data = [run.days_done for run in reversed(finished)]
        spark.tooltip = f"days synced per run, the last {len(finished)} finished runs"
        table = self.query_one("#history-table", LiveTable)
        table.show([(str(run.id), run_cells(run, zone, variables)) for run in runs])
        table.border_subtitle = f"kept {self.console.engine.settings.ledger_retention_days} days"
