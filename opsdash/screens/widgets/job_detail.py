"""The selected job in full: params, result, per-attempt errors, timestamps and worker."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

import orjson
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from opsdash.engine.queries import JobDetail
from opsdash.screens.widgets.formatting import (
    NOTHING,
    duration,
    job_type_label,
    safe_text,
    status_text,
    timestamp,
)


def _json(value: Any) -> Text:
    if value in (None, {}, []):
        return Text(NOTHING, style="dim")
    dumped = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    # JSON escapes C0 controls but writes C1 and bidi controls as they are.
    return safe_text(dumped, multiline=True)


def render_job_detail(
    detail: JobDetail, zone: tzinfo | None, theme_variables: Mapping[str, str]
) -> RenderableType:
    facts = Table.grid(padding=(0, 1))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column()
    company = detail.company_name or (str(detail.company_id) if detail.company_id else NOTHING)
    facts.add_row("job", Text(str(detail.id)))
    facts.add_row("type", safe_text(job_type_label(detail.job_type)))
    facts.add_row("company", safe_text(company))
    facts.add_row("status", status_text(detail.status, theme_variables))
    attempts = f"{detail.attempts} of {detail.max_attempts}"
    if detail.rescue_count:
        attempts += f" (rescued {detail.rescue_count} times)"
    facts.add_row("attempts", attempts)
    times: list[tuple[str, datetime | None]] = [
        ("created", detail.created_at),
        ("scheduled", detail.scheduled_at),
        ("started", detail.started_at),
        ("finished", detail.completed_at),
    ]
    for label, moment in times:
        facts.add_row(label, timestamp(moment, zone))
    facts.add_row("duration", duration(detail.duration_ms))
    facts.add_row("worker", safe_text(detail.locked_by or NOTHING))
    if detail.lease_expires_at is not None:
        facts.add_row("lease until", timestamp(detail.lease_expires_at, zone))
    parts: list[RenderableType] = [facts]
    if detail.error_message:
        parts += [
            Text("\nlast error", style="bold"),
            safe_text(detail.error_message, multiline=True),
        ]
    parts += [Text("\nparams", style="bold"), _json(detail.params)]
    parts += [Text("\nresult", style="bold"), _json(detail.result)]
    parts.append(Text(f"\nerror history ({len(detail.errors)})", style="bold"))
    if detail.errors:
        history = Table(box=None, padding=(0, 1), show_edge=False, expand=True)
        for column in ("#", "at", "worker", "message"):
            history.add_column(column, style="dim" if column != "message" else None)
        for entry in detail.errors:
            history.add_row(
                safe_text(entry.get("attempt", "?")),
                safe_text(_entry_time(entry.get("at"), zone)),
                safe_text(entry.get("worker") or NOTHING),
                safe_text(entry.get("message") or "", multiline=True),
            )
        parts.append(history)
    else:
        parts.append(Text("no failed attempts", style="dim"))
    return Group(*parts)


def _entry_time(value: object, zone: tzinfo | None) -> str:
    try:
        return timestamp(datetime.fromisoformat(str(value)), zone)
    except ValueError:
        return str(value)


class JobDetailPane(VerticalScroll):
    """Scrollable detail of one job; an empty state when nothing is selected."""

    shown_job_id: uuid.UUID | None = None
    """The id of the job shown, None for the empty state (tests wait on it)."""

    def compose(self) -> ComposeResult:
        yield Static(Text("Select a job to see its detail.", style="dim"), id="job-detail-body")

    def show(
        self, detail: JobDetail | None, zone: tzinfo | None, theme_variables: Mapping[str, str]
    ) -> None:
        body = self.query_one("#job-detail-body", Static)
        self.shown_job_id = detail.id if detail is not None else None
        if detail is None:
            body.update(Text("Select a job to see its detail.", style="dim"))
            return
        body.update(render_job_detail(detail, zone, theme_variables))
