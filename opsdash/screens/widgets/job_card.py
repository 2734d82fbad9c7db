"""A technician's job as a readable card, with the fields their view leaves out marked hidden."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from opsdash.privacy import (
    ALWAYS_HIDDEN_JOB_FIELDS,
    RATE_FIELD_TOGGLES,
    TECHNICIAN_JOB_FIELDS,
)
from opsdash.screens.widgets.formatting import printable, safe_text

HIDDEN = "hidden"

RATE_FIELDS = (
    ("billRate", "bill"),
    ("feeSplitRate", "fee split"),
    ("addOnRate", "add-on"),
    ("roomRate", "room"),
)
CONTACT_FIELDS = (("phone", "phone"), ("email", "email"))
# Fields shown on their own line when present, or marked hidden when the view removed them.
NOTE_FIELDS = (
    ("instructions", "instructions"),
    ("accessInformation", "access"),
    ("internalMemo", "memo"),
)
# Every field of a full job: what the privacy view may show a technician, what its
# toggles can remove, and what it always removes.
CARD_FIELDS = (
    TECHNICIAN_JOB_FIELDS
    | RATE_FIELD_TOGGLES.keys()
    | {"contactInfo", "discounts"}
    | ALWAYS_HIDDEN_JOB_FIELDS
)


def _hidden_marker() -> Text:
    return Text(HIDDEN, style="dim italic strike")


def _money(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else printable(value)


def _rates(job: Mapping[str, Any], hidden: set[str]) -> Text:
    text = Text()
    for field, label in RATE_FIELDS:
        if field not in job and field not in hidden:
            continue
        if text:
            text.append("  ")
        text.append(f"{label} ", style="dim")
        text.append_text(_hidden_marker() if field in hidden else Text(_money(job[field])))
    return text


def _contact(job: Mapping[str, Any], hidden: set[str]) -> Text:
    contact = job.get("contactInfo")
    contact = contact if isinstance(contact, Mapping) else {}
    text = Text()
    for field, label in CONTACT_FIELDS:
        concealed = "contactInfo" in hidden or f"contactInfo.{field}" in hidden
        if field not in contact and not concealed:
            continue
        if text:
            text.append("  ")
        text.append(f"{label} ", style="dim")
        text.append_text(_hidden_marker() if concealed else safe_text(contact[field] or "—"))
    return text


def _discounts(job: Mapping[str, Any], hidden: set[str]) -> Text | None:
    if "discounts" in hidden:
        return _hidden_marker()
    discounts = job.get("discounts")
    if not discounts:
        return None
    parts = [
        f"{entry.get('description', 'discount')} {_money(entry.get('amount', ''))}".strip()
        for entry in discounts
        if isinstance(entry, Mapping)
    ]
    return safe_text(", ".join(parts))


def _crew(job: Mapping[str, Any]) -> str:
    names = [
        " ".join(str(entry.get(key) or "") for key in ("FirstName", "LastName")).strip()
        for entry in job.get("employeeSchedules") or []
        if isinstance(entry, Mapping)
    ]
    return printable(", ".join(name for name in names if name))


def render_job_card(job: Mapping[str, Any], hidden_fields: Sequence[str]) -> RenderableType:
    """The job as the technician gets it; ``hidden_fields`` are shown as hidden, not left out."""
    hidden = set(hidden_fields)
    title = Text()
    times = f"{job.get('startTime') or '?'}-{job.get('endTime') or '?'}"
    title.append(printable(times), style="bold")
    title.append(f"  {printable(job.get('serviceType') or 'job')}", style="bold")
    title.append(f"  #{printable(job.get('jobId', '?'))}", style="dim")
    if job.get("status"):
        title.append(f"  {printable(job['status'])}", style="dim")
    lines: list[RenderableType] = [title]
    customer = safe_text(job.get("customerName") or "—")
    if job.get("address"):
        customer.append(f" · {printable(job['address'])}", style="dim")
    lines.append(customer)
    details = Table.grid(padding=(0, 1))
    details.add_column(no_wrap=True)
    details.add_column()
    for label, value in _detail_rows(job, hidden):
        details.add_row(Text(label, style="dim"), value)
    lines.append(details)
    extra = sorted(
        field
        for field in hidden
        if field.split(".")[0] not in CARD_FIELDS and field != "contactInfo"
    )
    if extra:
        lines.append(Text.assemble(("also hidden ", "dim"), printable(", ".join(extra))))
    return Group(*lines)


def _detail_rows(job: Mapping[str, Any], hidden: set[str]) -> list[tuple[str, Text]]:
    rows: list[tuple[str, Text]] = []
    crew = _crew(job)
    if crew:
        rows.append(("crew", Text(crew)))
    rates = _rates(job, hidden)
    if rates:
        rows.append(("rates", rates))
    contact = _contact(job, hidden)
    if contact:
        rows.append(("contact", contact))
    discounts = _discounts(job, hidden)
    if discounts is not None:
        rows.append(("discounts", discounts))
    for field, label in NOTE_FIELDS:
        if field in hidden:
            rows.append((label, _hidden_marker()))
        elif job.get(field):
            rows.append((label, safe_text(" ".join(str(job[field]).split()))))
    return rows
