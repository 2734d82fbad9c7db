"""Engine benchmarks: enqueue cost, a rate-limited drain, and raw throughput.

    .venv/bin/python bench/bench_engine.py [--only enqueue|drain|throughput|durability]

Runs against SQLite (a temp file) and the PostgreSQL server on 127.0.0.1:5432 (an
isolated schema, dropped afterwards), with the demo upstream over loopback HTTP in a
process of its own.
Prints one line per figure; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
from backends import postgres_url, sqlite_url

from opsdash.config import Settings
from opsdash.engine import coordinator, queue
from opsdash.engine.db import Database, connect, create_schema
from opsdash.engine.models import Company, JobType
from opsdash.engine.runtime import Engine


class ExternalDemo:
    """The demo upstream in its own process, so its CPU is not the engine's."""

    def __init__(self, companies: int, latency_ms: float = 0.0) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "opsdash",
                "demo-upstream",
                "--port",
                "0",
                "--companies",
                str(companies),
                "--api-key",
                "bench-key",
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        assert self.url.startswith("http://"), self.url

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_demo/stats").json()

    def reset_stats(self) -> None:
        httpx.post(f"{self.url}/_demo/stats/reset")

    def __enter__(self) -> ExternalDemo:
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def both_backends() -> Iterator[tuple[str, contextmanager]]:
    yield "sqlite", sqlite_url
    yield "postgres", postgres_url


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_companies(db: Database, count: int) -> None:
    zones = ["America/New_York", "America/Los_Angeles", "UTC", "Pacific/Auckland"]
    with db.session() as session:
        for index in range(count):
            session.add(
                Company(
                    id=uuid.uuid4(),
                    service_company_id=str(10_000 + index),
                    name=f"Company {index}",
                    timezone=zones[index % len(zones)],
                )
            )
        session.commit()


def bench_enqueue(companies: int = 1000, repeats: int = 5) -> None:
    print(f"\n== enqueue one sync run: {companies} companies, {companies * 7 + 1} jobs ==")
    for name, make_url in both_backends():
        first, again = [], []
        for _ in range(repeats):
            with make_url() as url:
                db = connect(url)
                create_schema(db)
                seed_companies(db, companies)
                run = coordinator.plan_and_enqueue(db, days_ahead=7)
                repeat = coordinator.plan_and_enqueue(db, days_ahead=7)
                assert run.queued == companies * 7 + 1, run
                assert repeat.queued == 0, repeat
                first.append(run.took_ms)
                again.append(repeat.took_ms)
                db.dispose()
        print(
            f"{name:9} first run: median {statistics.median(first):6.1f} ms "
            f"(min {min(first):.1f}, max {max(first):.1f}); "
            f"repeated run adds 0 jobs in median {statistics.median(again):6.1f} ms"
        )


def run_sync(url: str, upstream: ExternalDemo, data_dir: Path, **overrides: object) -> dict:
    settings = Settings(
        database_url=url,
        data_dir=data_dir,
        demo=True,  # the benchmark's own demo upstream, shared by its processes
        maidcentral_api_url=upstream.url,
        maidcentral_api_key="bench-key",
        poll_interval_s=0.5,
        retry_base_s=1.0,
        **overrides,  # type: ignore[arg-type]
    )
    engine = Engine(settings)
    try:
        upstream.reset_stats()
        started = time.perf_counter()
        engine.sync()
        engine.start(scheduler=False)
        engine.wait_idle(timeout_s=900, poll_s=0.05)
        wall = time.perf_counter() - started
        return {"wall_s": wall, "calls": engine.upstream.calls, "stats": upstream.stats()}
    finally:
        engine.stop()


def bench_drain(companies: int = 100, latency_ms: float = 150.0, workers: int = 4) -> None:
    rate = 100
    print(
        f"\n== drain a {companies}-company sync ({companies * 7} schedule jobs + 1 users job), "
        f"upstream latency {latency_ms:g} ms, limit {rate}/min, {workers} workers, Postgres =="
    )
    with (
        postgres_url() as url,
        ExternalDemo(companies, latency_ms) as upstream,
        tempfile.TemporaryDirectory() as folder,
    ):
        result = run_sync(
            url,
            upstream,
            Path(folder),
            workers=workers,
            upstream_rate_per_minute=rate,
            upstream_rate_per_hour=1000,
        )
    calls = result["calls"]
    # Lower bound on wall time: calls beyond the first minute's allowance wait for the
    # window, and the workers can only have `workers` calls in flight at once.
    rate_bound = 60.0 * ((calls - 1) // rate) + latency_ms / 1000
    concurrency_bound = calls * latency_ms / 1000 / workers
    bound = max(rate_bound, concurrency_bound)
    print(f"upstream calls: {calls} (companies + 1 = {companies + 1})")
    print(
        f"wall: {result['wall_s']:.1f} s; bound from rate limit and workers: {bound:.1f} s; "
        f"ratio {result['wall_s'] / bound:.2f} (target <= 1.5)"
    )


def bench_throughput(companies: int = 200, workers: int = 4) -> None:
    jobs = companies * 7 + 1
    print(f"\n== throughput: {jobs} jobs, upstream latency 0 ms, {workers} workers ==")
    for name, make_url in both_backends():
        with (
            make_url() as url,
            ExternalDemo(companies) as upstream,
            tempfile.TemporaryDirectory() as folder,
        ):
            result = run_sync(
                url,
                upstream,
                Path(folder),
                workers=workers,
                upstream_rate_per_minute=100_000,
                upstream_rate_per_hour=1_000_000,
            )
        print(
            f"{name:9} {jobs / result['wall_s']:7.1f} jobs/s ({jobs} jobs in "
            f"{result['wall_s']:.1f} s, {result['calls']} upstream calls); "
            f"peak RSS so far {peak_rss_mb():.0f} MB"
        )


@contextmanager
def commits_without_flush() -> Iterator[None]:
    """``synchronous_commit = off`` on every connection this process opens (as opsdash did
    before commits became durable), to measure what durability costs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine as SAEngine

    def relax(dbapi_connection: object, _record: object) -> None:
        with dbapi_connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()  # type: ignore[attr-defined]

    event.listen(SAEngine, "connect", relax)
    try:
        yield
    finally:
        event.remove(SAEngine, "connect", relax)


def bench_durability(cycles: int = 300, rounds: int = 3) -> None:
    """What durable commits cost on Postgres: one job's life (enqueue, claim, complete; three
    commits) with ``synchronous_commit`` on (opsdash's setting) and off, alternated."""
    print(
        f"\n== durable commits: {cycles} job lives (enqueue + claim + complete), Postgres, "
        f"synchronous_commit on vs off, {rounds} rounds alternated =="
    )
    timings: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(rounds):
        for mode in ("on", "off"):
            with (
                postgres_url() as url,
                commits_without_flush() if mode == "off" else nullcontext(),
            ):
                db = connect(url)
                create_schema(db)
                worker = queue.new_worker_id()
                started = time.perf_counter()
                for number in range(cycles):
                    queue.enqueue(db, [queue.NewJob(JobType.SYNC_USERS, f"k{number}")])
                    [job] = queue.claim(db, worker, lease_s=60)
                    queue.complete(db, job, worker, {})
                elapsed = time.perf_counter() - started
                db.dispose()
            timings[mode].append(elapsed / cycles * 1000)
            print(f"synchronous_commit={mode:3} {timings[mode][-1]:6.2f} ms per job life")
    on, off = statistics.median(timings["on"]), statistics.median(timings["off"])
    print(
        f"median: on {on:.2f} ms, off {off:.2f} ms per job life "
        f"(+{on - off:.2f} ms, {on / off - 1:+.0%})"
    )


def bench_throughput_processes(companies: int = 200, processes: int = 2, threads: int = 3) -> None:
    """The same drain with `opsdash worker` processes sharing the Postgres queue (scale-out)."""
    jobs = companies * 7 + 1
    print(
        f"\n== throughput: {jobs} jobs, upstream latency 0 ms, "
        f"{processes} `opsdash worker` processes x {threads} threads, Postgres =="
    )
    with (
        postgres_url() as url,
        ExternalDemo(companies) as upstream,
        tempfile.TemporaryDirectory() as folder,
    ):
        settings = Settings(
            database_url=url,
            data_dir=Path(folder),
            demo=True,
            maidcentral_api_url=upstream.url,
            maidcentral_api_key="bench-key",
            workers=0,
        )
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "OPSDASH_DATA_DIR": folder,
            "OPSDASH_DEMO": "1",
            "MAIDCENTRAL_API_URL": upstream.url,
            "MAIDCENTRAL_API_KEY": "bench-key",
            "OPSDASH_UPSTREAM_RATE_PER_MINUTE": "100000",
            "OPSDASH_UPSTREAM_RATE_PER_HOUR": "10000000",
            "OPSDASH_POLL_INTERVAL_S": "0.1",
        }
        engine = Engine(settings)
        command = [sys.executable, "-m", "opsdash", "worker", "--concurrency", str(threads)]
        workers = [
            subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) for _ in range(processes)
        ]
        try:
            _wait_until_listening(engine, len(workers))
            started = time.perf_counter()
            engine.sync()
            engine.wait_idle(timeout_s=900, poll_s=0.05)
            wall = time.perf_counter() - started
        finally:
            for process in workers:
                process.terminate()
                process.wait(timeout=30)
            engine.stop()
    print(f"postgres  {jobs / wall:7.1f} jobs/s ({jobs} jobs in {wall:.1f} s)")


def _wait_until_listening(engine: Engine, processes: int) -> None:
    """Worker processes are ready once each holds a pooled connection to the database."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.db.read() as conn:
            connected = conn.exec_driver_sql(
                "SELECT COUNT(DISTINCT pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar_one()
        if connected >= processes:
            return
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["enqueue", "drain", "throughput", "durability"])
    parser.add_argument("--durability-cycles", type=int, default=300, help="job lives a round")
    parser.add_argument("--durability-rounds", type=int, default=3, help="rounds of on/off")
    args = parser.parse_args()
    if args.only in (None, "enqueue"):
        bench_enqueue()
    if args.only in (None, "throughput"):
        bench_throughput()
        bench_throughput_processes()
    if args.only in (None, "drain"):
        bench_drain()
    if args.only in (None, "durability"):
        bench_durability(args.durability_cycles, args.durability_rounds)


if __name__ == "__main__":
    main()
