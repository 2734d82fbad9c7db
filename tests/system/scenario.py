"""What the fault scenarios share: the system brought to steady state, and the checks."""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from tests.system.harness import ApiLoad, Proc, System
from tests.waiting import wait_until


def bootstrap(system: System, workers: int = 2, concurrency: int = 2) -> list[Proc]:
    """Upstream, workers, a first full sync, then the read API: the system in steady state."""
    system.start_upstream()
    procs = [system.start_worker(concurrency) for _ in range(workers)]
    system.queue_sync()
    system.wait_drained(what="the first sync to finish")
    system.start_server()
    return procs


def assert_nothing_lost(system: System) -> None:
    losses = system.losses()
    assert not losses, losses


def running_pids(system: System) -> dict[int, list[str]]:
    """The processes (by pid) that hold running jobs, and the ids they hold."""
    held: dict[int, list[str]] = {}
    with system.db.read() as conn:
        rows = conn.execute(
            text("SELECT id, locked_by FROM background_jobs WHERE status = 'running'")
        ).all()
    for job_id, locked_by in rows:
        held.setdefault(int(locked_by.split(":")[1]), []).append(str(job_id))
    return held


def wait_for_a_busy_worker(system: System, workers: list[Proc]) -> tuple[Proc, list[str]]:
    """Wait until one of ``workers`` holds running jobs; that worker and the jobs' ids."""
    pids = {worker.pid for worker in workers}
    held = wait_until(
        lambda: {pid: ids for pid, ids in running_pids(system).items() if pid in pids},
        what="a worker process holding running jobs",
        timeout_s=60,
        seen=system.job_counts,
    )
    busy = next(worker for worker in workers if worker.pid in held)
    return busy, held[busy.pid]


def blob_bytes(system: System) -> dict[str, bytes]:
    root = system.data_dir / "blobs"
    return {path: (root / path).read_bytes() for path in system.checksums()}


def outage(
    system: System,
    load: ApiLoad,
    fault: str,
    action: Callable[[], None],
    recoveries: dict[str, float],
) -> None:
    """Run ``action`` (which breaks the database and brings it back); time the recovery."""
    action()
    back = time.monotonic()
    wait_until(
        lambda: load.first_ok_after(back),
        what=f"the API to answer 200 after {fault}",
        timeout_s=120,
        seen=load.by_status,
    )
    recoveries[fault] = load.first_ok_after(back) - back


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; deleting it gives the space back."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    # Unbuffered: a buffered file keeps what a short write left over and raises ENOSPC
    # again when it is closed.
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    with contextlib.suppress(OSError), (disk / "filler-tail").open("wb", buffering=0) as tail:
        while True:  # the last few bytes too
            tail.write(b"\0" * 512)
    return filler


def free(disk: Path) -> None:
    for name in ("filler", "filler-tail"):
        (disk / name).unlink(missing_ok=True)


def failed_messages(system: System) -> list[str]:
    with system.db.read() as conn:
        return [
            str(error)
            for error in conn.execute(
                text("SELECT errors FROM background_jobs WHERE errors IS NOT NULL")
            ).scalars()
        ]
