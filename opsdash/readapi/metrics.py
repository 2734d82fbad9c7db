"""Prometheus metrics, written by hand (the text format is small and stable).

Request counters and a latency histogram live in a flat array of uint64
counters per process. With several uvicorn workers each process maps its own
file in a shared folder, and ``/metrics`` — whichever worker answers — sums all
of them, so a scrape sees the whole server. A process only ever writes its own
file, so no locks are needed; a worker that is replaced leaves its file behind
and its counts stay in the totals (counters never go backwards).

Job counts by state come from the database at scrape time.
"""

from __future__ import annotations

import mmap
import os
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlmodel import col

from opsdash.engine.db import Database
from opsdash.engine.freshness import CompanyFreshness, Freshness
from opsdash.engine.models import BackgroundJob, JobStatus, JobType
from opsdash.engine.retention import STATS, RetentionStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OTHER = "other"
# Latency bucket bounds in seconds (the implicit last bucket is +Inf).
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
STATUSES: tuple[int, ...] = (200, 204, 304, 400, 401, 403, 404, 405, 413, 422, 429, 500, 503)
# Per (route, status) slot: count, total nanoseconds, one counter per bucket, +Inf.
_SLOT = 2 + len(BUCKETS) + 1


class RequestMetrics:
    """Request counts and latency by route and status, shared across worker processes."""

    def __init__(
        self, routes: Sequence[str], shared_dir: Path | None = None, worker_id: str | None = None
    ) -> None:
        self.routes = (*routes, OTHER)
        self.statuses = (*(str(status) for status in STATUSES), OTHER)
        self._route_index = {route: index for index, route in enumerate(self.routes)}
        self._status_index = {status: index for index, status in enumerate(STATUSES)}
        self._size = len(self.routes) * len(self.statuses) * _SLOT
        self.shared_dir = shared_dir
        self.worker_id = worker_id or str(os.getpid())
        self._counters = self._allocate()

    def _allocate(self) -> memoryview:
        if self.shared_dir is None:
            return memoryview(bytearray(self._size * 8)).cast("Q")
        # One file per process, mapped shared so the other workers read live values.
        path = self.shared_dir / f"requests-{self.worker_id}.bin"
        with path.open("wb") as file:
            file.truncate(self._size * 8)
        with path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), self._size * 8)
        return memoryview(self._map).cast("Q")

    def route_label(self, path: str) -> str:
        return path if path in self._route_index else OTHER

    def observe(self, route: str, status: int, seconds: float) -> None:
        route_index = self._route_index.get(route, len(self.routes) - 1)
        status_index = self._status_index.get(status, len(self.statuses) - 1)
        base = (route_index * len(self.statuses) + status_index) * _SLOT
        counters = self._counters
        counters[base] += 1
        counters[base + 1] += int(seconds * 1e9)
        bucket = 0
        while bucket < len(BUCKETS) and seconds > BUCKETS[bucket]:
            bucket += 1
        counters[base + 2 + bucket] += 1

    def totals(self) -> array[int]:
        """The counters summed over every process sharing the folder."""
        if self.shared_dir is None:
            return array("Q", self._counters)
        total = array("Q", bytes(self._size * 8))
        for file in self.shared_dir.glob("requests-*.bin"):
            counts = array("Q")
            counts.frombytes(file.read_bytes()[: self._size * 8])
            for index, value in enumerate(counts):
                if value:
                    total[index] += value
        return total

    def render(self) -> list[str]:
        totals = self.totals()
        count_lines = [
            "# HELP opsdash_http_requests_total HTTP requests answered, by route and status.",
            "# TYPE opsdash_http_requests_total counter",
        ]
        histogram_lines = [
            "# HELP opsdash_http_request_duration_seconds Time to answer, by route and status.",
            "# TYPE opsdash_http_request_duration_seconds histogram",
        ]
        for route_index, route in enumerate(self.routes):
            for status_index, status in enumerate(self.statuses):
                base = (route_index * len(self.statuses) + status_index) * _SLOT
                count = totals[base]
                if not count:
                    continue
                labels = f'route="{_escape(route)}",status="{status}"'
                count_lines.append(f"opsdash_http_requests_total{{{labels}}} {count}")
                cumulative = 0
                for bucket, bound in enumerate((*BUCKETS, float("inf"))):
                    cumulative += totals[base + 2 + bucket]
                    edge = "+Inf" if bound == float("inf") else repr(bound)
                    histogram_lines.append(
                        f'opsdash_http_request_duration_seconds_bucket{{{labels},le="{edge}"}} '
                        f"{cumulative}"
                    )
                histogram_lines.append(
                    f"opsdash_http_request_duration_seconds_sum{{{labels}}} "
                    f"{totals[base + 1] / 1e9:.6f}"
                )
                histogram_lines.append(
                    f"opsdash_http_request_duration_seconds_count{{{labels}}} {count}"
                )
        return count_lines + histogram_lines


def job_counts(db: Database) -> dict[tuple[str, str], int]:
    """(job type, state) → number of jobs, with every known pair present (zero if none)."""
    counts = {(str(kind), str(state)): 0 for kind in JobType for state in JobStatus}
    kind, state = col(BackgroundJob.job_type), col(BackgroundJob.status)
    query = select(kind, state, func.count()).group_by(kind, state)
    with db.read() as conn:
        for job_type, status, count in conn.execute(query):
            counts[(job_type, status)] = count
    return counts


def render_job_counts(counts: dict[tuple[str, str], int] | None) -> list[str]:
    """The job gauges, or ``opsdash_database_up 0`` when the database did not answer."""
    lines = [
        "# HELP opsdash_database_up Whether the database answered this scrape.",
        "# TYPE opsdash_database_up gauge",
        f"opsdash_database_up {0 if counts is None else 1}",
    ]
    if counts is None:
        return lines
    lines += [
        "# HELP opsdash_background_jobs Background jobs in the database, by type and state.",
        "# TYPE opsdash_background_jobs gauge",
    ]
    lines += [
        f'opsdash_background_jobs{{job_type="{_escape(kind)}",state="{_escape(state)}"}} {count}'
        for (kind, state), count in sorted(counts.items())
    ]
    return lines


def render_retention(stats: RetentionStats = STATS) -> list[str]:
    """What this process's hourly retention removed (the engine runs beside the API)."""
    counters = (
        ("runs", "Retention runs completed.", stats.runs),
        ("skipped", "Retention runs skipped: another process held the turn.", stats.skipped),
        ("removed_days", "Schedule days removed past the retention period.", stats.removed_days),
        ("removed_objects", "Storage objects removed by retention.", stats.removed_objects),
    )
    lines: list[str] = []
    for name, help_text, value in counters:
        metric = f"opsdash_retention_{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter", f"{metric} {value}"]
    return lines


def render_freshness(rows: Sequence[CompanyFreshness] | None) -> list[str]:
    """Per company (label ``company``, the service company id): data age, state, last success."""
    if rows is None:
        return []
    states = ", ".join(
        f"{state.gauge} {state.value}" for state in sorted(Freshness, key=lambda s: s.gauge)
    )
    age = [
        "# HELP opsdash_company_data_age_seconds "
        "Age of the stalest day in the company's sync window.",
        "# TYPE opsdash_company_data_age_seconds gauge",
    ]
    state = [
        f"# HELP opsdash_company_freshness_state The company's freshness: {states}.",
        "# TYPE opsdash_company_freshness_state gauge",
    ]
    success = [
        "# HELP opsdash_company_last_success_timestamp_seconds When a sync last confirmed "
        "any day of the company's window (Unix time).",
        "# TYPE opsdash_company_last_success_timestamp_seconds gauge",
    ]
    for row in rows:
        label = f'{{company="{_escape(row.service_company_id)}"}}'
        if row.oldest_age is not None:
            age.append(
                f"opsdash_company_data_age_seconds{label} {row.oldest_age.total_seconds():.0f}"
            )
        state.append(f"opsdash_company_freshness_state{label} {row.state.gauge}")
        if row.last_success_at is not None:
            success.append(
                f"opsdash_company_last_success_timestamp_seconds{label} "
                f"{row.last_success_at.timestamp():.3f}"
            )
    return age + state + success


def exposition(sections: Iterable[list[str]]) -> str:
    return "\n".join(line for section in sections for line in section) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
