"""The engine's recent log lines (jobs started, finished, failed; runs queued), newest first;
the operators' actions from every console (the audit trail: who, when, what, the result);
and the alerts sent from any opsdash process on this database."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer

from opsdash.engine.alerting.outbox import Delivery
from opsdash.engine.audit import AuditEntry
from opsdash.screens.actions import bindings_for
from opsdash.screens.base import LiveScreen
from opsdash.screens.messages import LogLine, LogLoaded
from opsdash.screens.widgets.formatting import clock, safe_text
from opsdash.screens.widgets.live_table import Column, LiveTable
from opsdash.screens.widgets.status_bar import StatusBar

ALERTS_SHOWN = 50
ACTIONS_SHOWN = 50
LOG_COLUMNS = (
    Column("time", "time", 8),
    Column("level", "level", 7),
    Column("source", "source", 11),
    Column("message", "message"),
)
LEVEL_THEME_VARIABLES = {"ERROR": "error", "CRITICAL": "error", "WARNING": "warning"}
ALERT_COLUMNS = (
    Column("time", "time", 8),
    Column("event", "event", 9),
    Column("channel", "channel", 7),
    Column("status", "status", 11),
    Column("subject", "alert"),
)
DELIVERY_THEME_VARIABLES = {"failed": "error", "pending": "warning", "sending": "warning"}
ACTION_COLUMNS = (
    Column("time", "time", 8),
    Column("operator", "who", 10),
    # Before the action: on a narrow terminal the outcome must still be in view.
    Column("result", "result", 7),
    Column("action", "action", 14),
    Column("target", "on"),
)
RESULT_THEME_VARIABLES = {"refused": "warning", "failed": "error"}


def action_target(entry: AuditEntry) -> str:
    """What the action was on, for a person: the company and day, the job, or a count."""
    target = entry.target
    parts = [str(target[key]) for key in ("company", "day", "job") if key in target]
    if not parts and "jobs" in target:
        parts.append(f"{target['jobs']} jobs")
    if not parts and "company_id" in target:
        parts.append(str(target["company_id"]))
    text = " ".join(parts) or "all"
    return f"{text} ({entry.detail})" if entry.detail else text


def action_cells(
    entry: AuditEntry, zone: tzinfo | None, theme_variables: Mapping[str, str]
) -> tuple[Any, ...]:
    variable = RESULT_THEME_VARIABLES.get(entry.result)
    who = entry.operator if entry.console == "terminal" else f"{entry.operator}@{entry.console}"
    return (
        clock(entry.at, zone),
        safe_text(who, no_wrap=True, overflow="ellipsis"),
        Text(entry.result, style=f"bold {theme_variables[variable]}" if variable else "dim"),
        safe_text(entry.action.replace("_", " ")),
        safe_text(action_target(entry), no_wrap=True, overflow="ellipsis"),
    )


def alert_cells(
    delivery: Delivery, zone: tzinfo | None, theme_variables: Mapping[str, str]
) -> tuple[Any, ...]:
    variable = DELIVERY_THEME_VARIABLES.get(delivery.status)
    status = delivery.status if delivery.status != "pending" else f"retry {delivery.attempts}"
    return (
        clock(delivery.sent_at or delivery.created_at, zone),
        delivery.event,
        delivery.channel,
        Text(status, style=f"bold {theme_variables[variable]}" if variable else "dim"),
        safe_text(
            delivery.subject.removeprefix("[opsdash] ")
            + (f" ({delivery.error})" if delivery.error and delivery.status != "sent" else ""),
            no_wrap=True,
            overflow="ellipsis",
        ),
    )


def log_cells(
    line: LogLine, zone: tzinfo | None, theme_variables: Mapping[str, str]
) -> tuple[Any, ...]:
    variable = LEVEL_THEME_VARIABLES.get(line.level)
    style = f"bold {theme_variables[variable]}" if variable else "dim"
    return (
        clock(line.at, zone),
        Text(line.level.lower(), style=style),
        safe_text(line.logger.removeprefix("opsdash.")),
        safe_text(line.message, no_wrap=True, overflow="ellipsis"),
    )


class LogScreen(LiveScreen):
    ACTION_TARGET = "log"
    BINDINGS = bindings_for(ACTION_TARGET)
    POLL_FACTOR = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.problems_only = False

    def compose(self) -> ComposeResult:
        yield StatusBar()
        table = LiveTable(LOG_COLUMNS, id="log-table")
        table.border_title = "engine log, newest first"
        yield table
        with Horizontal(id="log-lower"):
            actions = LiveTable(ACTION_COLUMNS, id="actions-table")
            actions.border_title = "operator actions"
            yield actions
            alerts = LiveTable(ALERT_COLUMNS, id="alerts-table")
            alerts.border_title = "alerts sent"
            yield alerts
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#log-table", LiveTable).focus()
        self.show_lines()
        super().on_mount()

    def on_screen_resume(self) -> None:
        self.show_lines()
        super().on_screen_resume()

    def fetch(self) -> Message:
        reads = self.console.reads
        return LogLoaded(reads.recent_alerts(ALERTS_SHOWN), reads.recent_actions(ACTIONS_SHOWN))

    def on_log_loaded(self, message: LogLoaded) -> None:
        zone, variables = self.console.display_zone, self.app.theme_variables
        actions = self.query_one("#actions-table", LiveTable)
        actions.show(
            [(str(entry.id), action_cells(entry, zone, variables)) for entry in message.actions]
        )
        kept = self.console.engine.settings.ledger_retention_days
        actions.border_subtitle = (
            f"newest {len(message.actions)} · kept {kept} days" if message.actions else "none yet"
        )
        table = self.query_one("#alerts-table", LiveTable)
        table.show([(str(d.id), alert_cells(d, zone, variables)) for d in message.deliveries])
        configured = self.console.engine.alerts.enabled
        if message.deliveries:
            table.border_subtitle = f"newest {len(message.deliveries)}"
        elif configured:
            table.border_subtitle = "none sent yet"
        else:
            table.border_subtitle = "no channel configured (OPSDASH_ALERT_WEBHOOK_URL, …)"

    def show_lines(self) -> None:
        lines = list(self.console.log_lines)
        if self.problems_only:
            lines = [line for line in lines if logging.getLevelName(line.level) >= logging.WARNING]
        zone, variables = self.console.display_zone, self.app.theme_variables
        table = self.query_one("#log-table", LiveTable)
        table.show([(str(line.seq), log_cells(line, zone, variables)) for line in reversed(lines)])
        shown = "warnings and errors" if self.problems_only else "all lines"
        table.border_subtitle = f"{len(lines)} lines · {shown}" if lines else "no log lines yet"

    def action_toggle_problems(self) -> None:
        self.problems_only = not self.problems_only
        self.show_lines()
