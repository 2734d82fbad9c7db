"""How the console writes times, durations, sizes and statuses (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo

from rich.text import Text

from opsdash.engine.models import JobStatus, JobType

NOTHING = "—"

JOB_TYPE_LABELS = {JobType.SYNC_SCHEDULE: "sched", JobType.SYNC_USERS: "users"}


def age(moment: datetime | None, now: datetime) -> str:
    """Compact elapsed time: 4s, 12m, 3h, 2d."""
    if moment is None:
        return NOTHING
    seconds = max(0, int((now - moment).total_seconds()))
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
    return JOB_TYPE_LABELS.get(job_type, job_type)  # type: ignore[call-overload]


STATUS_THEME_VARIABLES = {
    JobStatus.PENDING: "warning",
    JobStatus.RUNNING: "primary",
    JobStatus.COMPLETED: "success",
    JobStatus.FAILED: "error",
    JobStatus.CANCELLED: "foreground-darken-2",
}


def status_color(status: str, theme_variables: Mapping[str, str]) -> str:
    """The theme's color for a status, so tables read in dark and light themes alike."""
    variable = STATUS_THEME_VARIABLES.get(status, "foreground")  # type: ignore[call-overload]
    return theme_variables.get(variable, "default")


def status_text(status: str, theme_variables: Mapping[str, str]) -> Text:
    return Text(status, style=f"bold {status_color(status, theme_variables)}")


def one_line(text: str | None, limit: int = 200) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
