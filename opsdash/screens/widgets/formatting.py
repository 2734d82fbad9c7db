"""How the console writes times, durations, sizes, statuses and upstream text (pure functions).

Every string that came from outside (the upstream's company, customer and employee
names, memos, addresses, error messages, log lines, ids) goes through
:func:`printable` or :func:`safe_text` before it reaches a widget: control characters
(NUL, ESC sequences, the other C0 and C1 controls, bidi overrides, lone surrogates) are
shown as visible escapes instead of being written to the operator's terminal, and a
:class:`~rich.text.Text` is never parsed as markup, so ``[bold]`` stays ``[bold]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any

from rich.text import Text

from opsdash.engine.freshness import Freshness
from opsdash.engine.models import JobStatus, JobType

NOTHING = "—"

# C0 controls (tab and newline are handled apart), DEL and C1, the Unicode line and
# paragraph separators, the bidi marks, embeddings, overrides and isolates (text that
# reads differently from what it is), and lone surrogates (which cannot be encoded).
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_UNSAFE_ON_ONE_LINE = re.compile(_UNSAFE.pattern[:-1] + "\t\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, multiline: bool = False) -> str:
    """``value`` as text that is safe on a terminal: every control character escaped.

    ``ESC[2J`` becomes the six visible characters ``\\x1b[2J``. With ``multiline``,
    newlines and tabs are kept (memos, JSON); otherwise they are escaped too, so a value
    never breaks a table row or a one-line label.
    """
    text = value if isinstance(value, str) else str(value)
    if multiline:
        text = text.replace("\r\n", "\n")
    pattern = _UNSAFE if multiline else _UNSAFE_ON_ONE_LINE
    return pattern.sub(_escape, text)


def safe_text(value: object, style: str = "", *, multiline: bool = False, **options: Any) -> Text:
    """``value`` as a :class:`Text` (never markup), control characters escaped.

    ``options`` are passed to :class:`Text` (``no_wrap``, ``overflow``, ``justify``...).
    """
    return Text(printable(value, multiline=multiline), style=style, **options)


# Keyed by str: job types are StrEnums, and rows carry the plain text.
JOB_TYPE_LABELS: dict[str, str] = {JobType.SYNC_SCHEDULE: "sched", JobType.SYNC_USERS: "users"}


def age(moment: datetime | None, now: datetime) -> str:
    """Compact elapsed time: 4s, 12m, 3h, 2d."""
    return NOTHING if moment is None else age_of(now - moment)


def age_of(elapsed: timedelta | None) -> str:
    """A duration as ``age`` writes it."""
    if elapsed is None:
        return NOTHING
    seconds = max(0, int(elapsed.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def until(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return NOTHING
    if moment <= now:
        return "now"
    return "in " + age(now, moment)


def duration(milliseconds: int | None) -> str:
    if milliseconds is None:
        return NOTHING
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def size_kb(kilobytes: float) -> str:
    if kilobytes >= 1024 * 1024:
        return f"{kilobytes / 1024 / 1024:.2f} GB"
    if kilobytes >= 1024:
        return f"{kilobytes / 1024:.1f} MB"
    return f"{kilobytes:.1f} KB"


def clock(moment: datetime | None, zone: tzinfo | None) -> str:
    """Time of day in the operator's zone (the date too when it is not today's)."""
    if moment is None:
        return NOTHING
    return moment.astimezone(zone).strftime("%H:%M:%S")


def timestamp(moment: datetime | None, zone: tzinfo | None) -> str:
    if moment is None:
        return NOTHING
    local = moment.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "")


def job_type_label(job_type: str) -> str:
    return JOB_TYPE_LABELS.get(job_type, job_type)


STATUS_THEME_VARIABLES: dict[str, str] = {
    JobStatus.PENDING: "warning",
    JobStatus.RUNNING: "primary",
    JobStatus.COMPLETED: "success",
    JobStatus.FAILED: "error",
    JobStatus.CANCELLED: "foreground-darken-2",
}


def status_color(status: str, theme_variables: Mapping[str, str]) -> str:
    """The theme's color for a status, so tables read in dark and light themes alike."""
    variable = STATUS_THEME_VARIABLES.get(status, "foreground")
    return theme_variables.get(variable, "default")


def status_text(status: str, theme_variables: Mapping[str, str]) -> Text:
    return Text(status, style=f"bold {status_color(status, theme_variables)}")


def company_label(name: str, service_company_id: str) -> Text:
    """How a company is named in choosers: ``Name (service id)``, both escaped."""
    return safe_text(f"{name} ({service_company_id})")


def one_line(text: str | None, limit: int = 200) -> str:
    """The text on one line (whitespace runs made one space), escaped, cut at ``limit``."""
    if not text:
        return ""
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


FRESHNESS_THEME_VARIABLES = {
    Freshness.FAILING: "error",
    Freshness.LATE: "warning",
    Freshness.FROZEN: "accent",
    Freshness.PAUSED: "foreground-muted",
    Freshness.ON_TIME: "success",
}


def freshness_text(state: Freshness | None, theme_variables: Mapping[str, str]) -> Text:
    """A company's freshness, coloured by how much it needs a look."""
    if state is None:
        return Text(NOTHING, style="dim")
    color = theme_variables.get(FRESHNESS_THEME_VARIABLES[state], "")
    bold = "bold " if state in (Freshness.FAILING, Freshness.LATE, Freshness.FROZEN) else ""
    return Text(state.value, style=f"{bold}{color}".strip())
