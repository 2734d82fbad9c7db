"""Fixtures of the fault suite: one own Postgres cluster, a fresh database per scenario,
and the summary table printed at the end of the run."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.cluster import OwnPostgres, own_postgres, postgres_binaries_present
from tests.system.harness import System, running_system


@dataclass
class ScenarioRow:
    scenario: str
    jobs: int
    faults: str
    jobs_lost: int
    partial_blobs: int
    answers: str
    recovery: str


SUMMARY: list[ScenarioRow] = []


def record(
    scenario: str,
    system: System,
    *,
    faults: str,
    answers: dict[str, int] | None = None,
    recovery_s: float | None = None,
) -> None:
    """Add a scenario's line to the table printed at the end of the run."""
    losses = system.losses()
    shown = ", ".join(f"{status}: {n}" for status, n in sorted((answers or {}).items()))
    SUMMARY.append(
        ScenarioRow(
            scenario=scenario,
            jobs=sum(system.job_counts().values()),
            faults=faults,
            jobs_lost=losses.jobs_lost,
            partial_blobs=len(losses.bad_blobs) + len(losses.temp_files),
            answers=shown or "-",
            recovery="-" if recovery_s is None else f"{recovery_s:.1f} s",
        )
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARY:
        return
    headers = (
        "scenario",
        "jobs",
        "faults injected",
        "jobs lost",
        "partial blobs",
        "API answers by status",
        "recovery",
    )
    rows = [
        (
            r.scenario,
            str(r.jobs),
            r.faults,
            str(r.jobs_lost),
            str(r.partial_blobs),
            r.answers,
            r.recovery,
        )
        for r in SUMMARY
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    terminalreporter.section("whole-system fault suite")
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        terminalreporter.write_line(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        )


@pytest.fixture(scope="session")
def cluster() -> Iterator[OwnPostgres]:
    if not postgres_binaries_present():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    with own_postgres() as running:
        yield running


@pytest.fixture
def system(cluster: OwnPostgres, tmp_path: Path) -> Iterator[System]:
    """The whole system on a fresh database of the suite's own cluster."""
    if not cluster.accepts_connections():  # a scenario before stopped or froze it
        cluster.thaw()
        cluster.start()
        cluster.wait_ready()
    url = cluster.create_database(f"system_{secrets.token_hex(4)}")
    with running_system(tmp_path, url) as running:
        yield running


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mount_point`` for the duration; skip where not allowed."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


@pytest.fixture
def embedded_system(tmp_path: Path) -> Iterator[System]:
    """The embedded mode (SQLite) with its blob store and its SQLite file each on a small disk."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command: a full disk cannot be simulated here")
    with (
        small_disk(tmp_path / "data" / "blobs", "8m"),
        small_disk(tmp_path / "db", "8m") as db_dir,
        running_system(tmp_path, f"sqlite:///{db_dir / 'opsdash.db'}") as running,
    ):
        yield running
