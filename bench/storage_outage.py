"""A storage outage in the middle of a sync, measured: does every job still complete?

    .venv/bin/python bench/storage_outage.py [--outage-s 60] [--companies 6] [--workers 4]

The engine syncs the demo upstream into the Supabase Storage stand-in (storage3 over
loopback HTTP, SQLite queue). Once the first company's days are stored, the stand-in is
stopped for ``--outage-s`` seconds, then restarted on the same port. Prints how the sync
ended, the attempts spent, the log lines the outage caused and how long the engine took
to resume. docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine.models import BackgroundJob
from opsdash.engine.runtime import Engine
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.supabase_storage_server import SupabaseStorageStandIn

BUCKET = "schedule-data"


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--companies", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    args = parser.parse_args()

    counter = Counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    logging.getLogger().addHandler(counter)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # One Supabase project: Auth (the users sync maintains its users) and storage on one URL;
    # the outage stops the whole project server and restarts it on the same port.
    storage = SupabaseStorageStandIn("bench-jwt-secret-with-at-least-32-bytes!")
    project = SupabaseAuthStandIn("bench-jwt-secret-with-at-least-32-bytes!", storage=storage)
    project.start()
    upstream = DemoUpstream(companies=args.companies, api_key="bench")
    upstream.faults.latency_ms = args.latency_ms
    upstream.start()
    data = Path(tempfile.mkdtemp(prefix="opsdash-outage-"))
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'opsdash.db'}",
        maidcentral_api_url=upstream.url,
        maidcentral_api_key="bench",
        demo=True,  # the bench's own demo upstream, blobs in the stand-in project
        supabase_url=project.url,
        supabase_service_role_key=storage.service_role_key,
        workers=args.workers,
        poll_interval_s=0.2,
        retry_base_s=1.0,
    )
    engine = Engine(settings)
    started = time.monotonic()
    try:
        engine.sync()
        engine.start(scheduler=False)
        while len(storage.stored(BUCKET)) < settings.days_ahead:
            time.sleep(0.05)
        done_before = len(storage.stored(BUCKET))
        project.stop()
        outage_at = time.monotonic()
        print(f"storage stopped after {done_before} objects, {outage_at - started:.1f} s in")
        time.sleep(args.outage_s)
        project.start()
        restarted_at = time.monotonic()
        print(f"storage restarted after {restarted_at - outage_at:.1f} s")
        while engine.storage_gate.state.ok is False:
            time.sleep(0.05)
        resumed_s = time.monotonic() - restarted_at
        finished = engine.wait_idle(timeout_s=600, poll_s=0.1)
        ended_at = time.monotonic()
        with engine.db.read() as conn:
            by_status = dict(
                conn.execute(
                    select(BackgroundJob.status, func.count()).group_by(BackgroundJob.status)
                ).all()
            )
            max_attempts = conn.execute(select(func.max(BackgroundJob.attempts))).scalar()
    finally:
        engine.stop()
        upstream.stop()
        project.stop()

    lines = [r for r in counter.records if r.name.startswith("opsdash")]
    storage_lines = [r for r in lines if "storage" in r.getMessage().lower()]
    tracebacks = [r for r in lines if r.exc_info and r.levelno >= logging.INFO]
    print(
        f"finished: {finished}; jobs by status: {by_status}; most attempts of a job: {max_attempts}"
    )
    print(
        f"engine resumed {resumed_s:.1f} s after storage came back; "
        f"sync ended {ended_at - restarted_at:.1f} s after; total {ended_at - started:.1f} s"
    )
    print(
        f"log lines mentioning storage: {len(storage_lines)}; "
        f"tracebacks at INFO or above: {len(tracebacks)}; "
        f"stored objects: {sum(1 for _ in storage.stored(BUCKET))}"
    )
    return 0 if finished and set(by_status) == {"completed"} else 1


if __name__ == "__main__":
    sys.exit(main())
