"""Scenarios whose fixes are finished but not yet on main (`wip/issue-10-engine-faults.mbox`):
a worker stopped past its lease must be fenced out, a frozen database must give 503 within
seconds, and SIGTERM must release running jobs at once. Each is marked xfail, not strict:
without the fix the outcome depends on timing (the stopped worker may wake after the
rescuer's write or before it), so an occasional pass must not fail the suite. The marks go
when the series lands."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import bindparam, text

from tests.system.cluster import OwnPostgres
from tests.system.conftest import record
from tests.system.harness import System
from tests.system.scenario import (
    assert_nothing_lost,
    blob_bytes,
    bootstrap,
    outage,
    running_pids,
)
from tests.waiting import wait_until

# Each scenario bounds its own waits; the whole suite stays under 10 minutes on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(600)]


@pytest.mark.xfail(
    strict=False,
    reason="needs fenced publishing (branch faults: a worker whose lease was taken over must "
    "not rewrite the blob), not on main yet",
)
def test_3_sigstop_past_the_lease_then_sigcont(system: System) -> None:
    system.companies = 4
    system.lease_s = 3.0
    system.extra_env = {"OPSDASH_UPSTREAM_TIMEOUT_S": "20"}
    workers = bootstrap(system, concurrency=1)
    load = system.start_load()
    system.faults(latency_ms=5000, revision=1)  # the paused worker is mid-call, revision 1
    system.queue_sync()
    held = wait_until(
        lambda: {
            p: ids for p, ids in running_pids(system).items() if p in {w.pid for w in workers}
        },
        what="a worker process holding running jobs",
        timeout_s=60,
        seen=system.job_counts,
    )
    victim = next(w for w in workers if w.pid in held)
    victim.signal(signal.SIGSTOP)
    stopped_jobs = held[victim.pid]
    system.faults(latency_ms=0, revision=2)  # the rescuer fetches newer content

    def rescued_and_done() -> bool:
        with system.db.read() as conn:
            rows = conn.execute(
                text(
                    "SELECT status, locked_by FROM background_jobs WHERE CAST(id AS TEXT) IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": stopped_jobs},
            ).all()
        return all(s == "completed" and f":{victim.pid}:" not in (by or "") for s, by in rows)

    wait_until(
        rescued_and_done,
        what="another worker to rescue and finish the paused worker's jobs",
        timeout_s=120,
        seen=system.job_counts,
    )
    system.wait_drained()
    settled_sums, settled_blobs = system.checksums(), blob_bytes(system)
    victim.signal(signal.SIGCONT)
    # A clean stop finishes the batch it was in: by its exit, every late write was tried.
    assert victim.terminate(timeout_s=60) == 0, victim.log_tail()
    answers = load.stop()
    record(
        "3 SIGSTOP past lease",
        system,
        faults="SIGSTOP 1 worker, SIGCONT after rescue",
        answers=answers,
    )

    assert system.checksums() == settled_sums, "a fenced-out worker changed metadata"
    assert blob_bytes(system) == settled_blobs, "a fenced-out worker rewrote a blob"
    assert_nothing_lost(system)
    assert answers and set(answers) <= {"200", "304"}, answers


@pytest.mark.xfail(
    strict=False,
    reason="needs bounded database waits (branch faults: connect and statement timeouts, a "
    "bounded wait for a pooled connection), not on main yet",
)
def test_4b_database_frozen_40_s(system: System, cluster: OwnPostgres) -> None:
    system.companies = 10
    bootstrap(system)
    load = system.start_load()
    system.faults(latency_ms=200, revision=1)
    system.queue_sync()
    recoveries: dict[str, float] = {}
    frozen_from = time.monotonic()

    def frozen_for_40_s() -> None:
        cluster.freeze()
        try:
            time.sleep(40)  # the freeze lasts 40 s: long past any client's patience
        finally:
            cluster.thaw()

    outage(system, load, "SIGSTOP 40 s", frozen_for_40_s, recoveries)
    system.faults(latency_ms=0)
    system.wait_drained(timeout_s=240, what="the sync to complete after the freeze")
    answers = load.stop()
    during = load.by_status(since=frozen_from)
    record(
        "4b Postgres frozen 40 s",
        system,
        faults="SIGSTOP of every Postgres process 40 s",
        answers=answers,
        recovery_s=recoveries["SIGSTOP 40 s"],
    )

    assert "500" not in answers, answers
    assert "timeout" not in during, f"requests hung while the database was frozen: {during}"
    assert during["503"] > 0, during
    assert set(system.job_counts()) <= {"completed", "failed"}, system.job_counts()
    assert_nothing_lost(system)


@pytest.mark.xfail(
    strict=False,
    reason="needs prompt shutdown (branch faults: in-flight upstream requests cut and jobs "
    "released on SIGTERM), not on main yet",
)
def test_8_sigterm_releases_running_jobs_at_once(system: System) -> None:
    system.companies = 4
    system.lease_s = 120.0  # far past the bound below: a release may not wait for the lease
    system.extra_env = {"OPSDASH_UPSTREAM_TIMEOUT_S": "120"}
    [worker] = bootstrap(system, workers=1)
    server = system.procs[-1]
    system.faults(latency_ms=100_000, revision=1)  # every upstream call hangs mid-job
    system.queue_sync()
    wait_until(
        lambda: {worker.pid, server.pid} <= set(running_pids(system)),
        what="both the worker and the server to hold running jobs",
        timeout_s=60,
        seen=lambda: running_pids(system),
    )
    held = running_pids(system)
    bound_s = 10.0
    started = time.monotonic()
    codes = {"worker": worker.terminate(timeout_s=60), "serve": server.terminate(timeout_s=60)}
    took = time.monotonic() - started
    record(
        "8 SIGTERM mid-job", system, faults="SIGTERM worker and --serve mid-call", recovery_s=took
    )
    assert codes == {"worker": 0, "serve": 0}, worker.log_tail() + server.log_tail()
    assert took < bound_s, f"stopping took {took:.1f} s"
    assert running_pids(system) == {}, "a stopped process left jobs running until their lease"
    with system.db.read() as conn:
        released = conn.execute(
            text(
                "SELECT status, attempts FROM background_jobs WHERE CAST(id AS TEXT) IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": [job for ids in held.values() for job in ids]},
        ).all()
    assert all(status == "pending" for status, _ in released), released
    system.faults(latency_ms=0)
    system.start_worker()
    system.wait_drained(what="a fresh worker to finish the released jobs")
    assert_nothing_lost(system)
