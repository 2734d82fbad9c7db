"""Counts by status, the hourly throughput sparkline, and the progress of the sync run in flight."""

from __future__ import annotations

from collections.abc import Mapping

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Sparkline, Static

from opsdash.engine.models import JobStatus
from opsdash.engine.queries import HourlyThroughput, RunProgress
from opsdash.screens.widgets.formatting import status_color


class RunSummary(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="summary-counts-row"):
            yield Static(id="summary-counts")
            yield Label("jobs/h", id="summary-spark-label")
            yield Sparkline([], id="summary-spark")
        with Horizontal(id="summary-progress-row"):
            yield Static(id="summary-progress-label")
            yield ProgressBar(total=None, show_eta=False, id="summary-progress")

    def show(
        self,
        counts: Mapping[str, int],
        throughput: HourlyThroughput,
        progress: RunProgress | None,
        theme_variables: Mapping[str, str],
    ) -> None:
        self.query_one("#summary-counts", Static).update(_counts(counts, theme_variables))
        spark = self.query_one("#summary-spark", Sparkline)
        spark.data = list(throughput.finished)
        spark.tooltip = (
            f"finished jobs per hour, last {len(throughput.hours)} hours "
            f"(peak {max(throughput.finished, default=0)}, failed {sum(throughput.failed)})"
        )
        label = self.query_one("#summary-progress-label", Static)
        bar = self.query_one("#summary-progress", ProgressBar)
        if progress is None:
            label.update(Text("no sync run in flight", style="dim"))
            bar.display = False
            return
        bar.display = True
        bar.update(total=max(progress.total, 1), progress=progress.done)
        text = Text(f"sync run {progress.done}/{progress.total} done")
        text.append(f" · {progress.running} running")
        if progress.failed:
            text.append(f" · {progress.failed} failed", style=f"bold {theme_variables['error']}")
        label.update(text)


def _counts(counts: Mapping[str, int], theme_variables: Mapping[str, str]) -> Text:
    text = Text()
    for status in JobStatus:
        if text:
            text.append("  ")
        text.append(f"{status} ", style=status_color(status, theme_variables))
        text.append(str(counts.get(status, 0)), style="bold")
    return text
