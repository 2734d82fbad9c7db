"""Every benchmark side by side; rewrites the figures at the top of docs/benchmarks.md.

    bench/run [--quick]

Each figure is the median of several runs with their min and max, next to an anchor
measured in the same run on the same machine: nginx serving the same blob for the read
API, the bound the rate limit sets for the sync, one multi-row ``INSERT`` of the same
rows for the enqueue. Postgres figures come from a cluster of the benchmark's own
(initdb into a temporary folder), so the shared server's other load is not in them and
its CPU time can be counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_engine import ExternalDemo, seed_companies  # noqa: E402
from sqlalchemy import delete, insert  # noqa: E402

from opsdash.config import Settings  # noqa: E402
from opsdash.engine import coordinator  # noqa: E402
from opsdash.engine.db import connect, create_schema  # noqa: E402
from opsdash.engine.models import BackgroundJob  # noqa: E402
from opsdash.engine.runtime import Engine  # noqa: E402
from opsdash.engine.sqltypes import utcnow  # noqa: E402
from tests.system.cluster import OwnPostgres, own_postgres  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench/run: begin -->", "<!-- bench/run: end -->"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Spread:
    """Several runs of one figure."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, fmt: str = "{:,.0f}") -> str:
        low, high = min(self.values), max(self.values)
        return f"{fmt.format(self.median)} ({fmt.format(low)} - {fmt.format(high)})"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the machine -----------------------------------------------------------------------


def machine_line(cluster: OwnPostgres) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])  # type: ignore[index]
    import psycopg

    with psycopg.connect(cluster.admin_dsn) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} x {model[1].strip() if model else 'unknown CPU'}, "
        f"{memory_kb / 1024 / 1024:.0f} GiB, Python {platform.python_version()}, "
        f"PostgreSQL {postgres} (own cluster), SQLite {sqlite3.sqlite_version}; "
        f"load average at the start {load}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


# --- read API ----------------------------------------------------------------------------


def bench_read_api(
    workers: int, rounds: int, duration: int, backend: str = "sqlite", postgres_port: int = 5432
) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable,
            "bench/bench_readapi.py",
            "--backend",
            backend,
            "--postgres-port",
            str(postgres_port),
            "--workers",
            str(workers),
            "--rounds",
            str(rounds),
            "--duration",
            str(duration),
            "--json",
            out.name,
        ]
        log(f"read API, {workers} worker(s), {backend}: {' '.join(command[1:])}")
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        report = json.loads(Path(out.name).read_text())
    # As a reader would type it: the benchmark's own cluster port is different every run.
    shown = [part for part in command[1:-2] if part not in {"--postgres-port", str(postgres_port)}]
    report["command"] = " ".join(["python", *shown])
    return report


DATABASES = {"sqlite": "SQLite", "postgres": "Postgres", "pooler": "PgBouncer → Postgres"}
READ_API_RUNS = [(1, "sqlite"), (2, "sqlite"), (2, "postgres"), (2, "pooler")]


def read_api_section(reports: Sequence[dict]) -> list[str]:
    lines = [
        "## Read API against nginx serving the same blob",
        "",
        f"`wrk`, {reports[0]['results'][0]['command'].split(' http')[0].split('-H')[0].strip()}"
        " on loopback; each cell is the median of the rounds (min - max). The ratio is to",
        "nginx's requests/s in the same run. The database is the data folder's SQLite file, the",
        "local Postgres, or the same Postgres through PgBouncer in transaction mode (the way",
        "Supabase's pooler on port 6543 is reached).",
        "",
        "| read API | database | scenario | req/s | p99 ms | vs nginx |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for report in reports:
        nginx = Spread(report["results"][-1]["rounds_rps"])
        for result in report["results"]:
            rps, p99 = Spread(result["rounds_rps"]), Spread(result["rounds_p99"])
            lines.append(
                f"| {report['workers']} worker(s) | {DATABASES[report['backend']]} | "
                f"{result['name']} | {rps.show()} | "
                f"{p99.show('{:.1f}')} | {rps.median / nginx.median:.0%} |"
            )
    lines += ["", "```sh", *(report["command"] for report in reports), "```", ""]
    return lines


# --- the hourly sync of 1,000 companies against the rate-limit bound --------------------


def cluster_cpu_s(cluster: OwnPostgres) -> float:
    """CPU time of the cluster so far: its live processes plus the backends that ended."""
    total = 0
    for index, pid in enumerate(cluster.processes()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
        total += utime + stime + (cutime + cstime if index == 0 else 0)
    return total / TICKS


def migrated(url: str) -> str:
    """``url`` after `opsdash migrate`: on Postgres the engine refuses an unmigrated schema."""
    db = connect(url)
    try:
        create_schema(db)
    finally:
        db.dispose()
    return url


def bench_sync(cluster: OwnPostgres, companies: int, rate: int, runs: int) -> dict:
    walls, cpus, calls_seen = [], [], []
    for run in range(runs):
        log(f"hourly sync of {companies} companies, run {run + 1} of {runs}")
        url = migrated(cluster.create_database(f"bench_sync_{run}"))
        with ExternalDemo(companies) as upstream, tempfile.TemporaryDirectory() as folder:
            settings = Settings(
                database_url=url,
                data_dir=Path(folder),
                demo=True,  # the benchmark's own demo upstream
                maidcentral_api_url=upstream.url,
                maidcentral_api_key="bench-key",
                workers=4,
                poll_interval_s=0.5,
                upstream_rate_per_minute=rate,
                upstream_rate_per_hour=100 * rate,
            )
            engine = Engine(settings)
            try:
                upstream.reset_stats()
                cpu_before, started = cluster_cpu_s(cluster), time.perf_counter()
                engine.sync()  # the users job discovers the companies and queues their days
                engine.start(scheduler=False)
                engine.wait_idle(timeout_s=900, poll_s=0.1)
                walls.append(time.perf_counter() - started)
                cpus.append(cluster_cpu_s(cluster) - cpu_before)
                calls_seen.append(upstream.stats()["requests"])
            finally:
                engine.stop()
    calls = max(calls_seen)
    # The limit lets `rate` calls through per sliding minute: call number n waits for the
    # window that holds it, so the last one goes out (calls - 1) // rate minutes in.
    bound = 60.0 * ((calls - 1) // rate)
    return {
        "wall": Spread(walls),
        "cpu": Spread(cpus),
        "calls": calls,
        "bound": bound,
        "companies": companies,
        "rate": rate,
    }


def sync_section(result: dict) -> list[str]:
    wall, bound = result["wall"], result["bound"]
    ratio = f"{wall.median / bound:.2f}" if bound else "n/a (within one window)"
    return [
        f"## Hourly sync of {result['companies']:,} companies against the rate-limit bound",
        "",
        f"Demo upstream in its own process, 0 ms latency, limit {result['rate']:,} calls a "
        f"minute, 4 worker threads, Postgres (own cluster). {result['calls']:,} upstream calls;",
        "the bound is the time the limit alone imposes on that many calls.",
        "",
        "| wall s | bound s | wall ÷ bound | Postgres CPU s |",
        "| ---: | ---: | ---: | ---: |",
        f"| {wall.show('{:.1f}')} | {bound:.1f} | {ratio} | {result['cpu'].show('{:.1f}')} |",
        "",
    ]


# --- enqueue against one multi-row INSERT -------------------------------------------------


def _job_rows(company_ids: list[uuid.UUID], days: int) -> list[dict]:
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "job_type": "sync_users",
            "company_id": None,
            "params": {},
            "dedup_key": "sync_users",
            "status": "pending",
            "attempts": 0,
            "max_attempts": 3,
            "scheduled_at": now,
            "created_at": now,
            "errors": [],
        }
    ]
    for company in company_ids:
        for day in range(days):
            rows.append(
                {
                    **rows[0],
                    "id": uuid.uuid4(),
                    "job_type": "sync_schedule",
                    "company_id": company,
                    "params": {"date": f"2027-01-{day + 1:02d}"},
                    "dedup_key": f"sync_schedule:{company}:{day}",
                }
            )
    return rows


ANCHOR_PARAMETERS = 32_000


def bench_enqueue(urls: dict[str, Callable[[int], str]], companies: int, runs: int) -> dict:
    figures = {}
    for name, new_url in urls.items():
        log(f"enqueue of {companies} companies on {name}")
        enqueue, anchor = [], []
        for run in range(runs):
            db = connect(new_url(run))
            create_schema(db)
            seed_companies(db, companies)
            planned = coordinator.plan_and_enqueue(db, days_ahead=7)
            assert planned.queued == companies * 7 + 1, planned
            enqueue.append(planned.took_ms)
            with db.read() as conn:
                ids = [
                    uuid.UUID(str(row[0]))  # SQLite hands the ids back as text
                    for row in conn.exec_driver_sql("SELECT id FROM companies")
                ]
            with db.write() as conn:
                conn.execute(delete(BackgroundJob))
            rows = _job_rows(ids, 7)
            started = time.perf_counter()
            with db.write() as conn:
                # Multi-row INSERTs of as many rows as a statement's bind parameters allow
                # (SQLite 32,766; Postgres 65,535): 3 statements for 7,001 rows.
                per_statement = ANCHOR_PARAMETERS // len(rows[0])
                for first in range(0, len(rows), per_statement):
                    conn.execute(insert(BackgroundJob).values(rows[first : first + per_statement]))
            anchor.append((time.perf_counter() - started) * 1000)
            db.dispose()
        figures[name] = {"enqueue": Spread(enqueue), "anchor": Spread(anchor)}
    return figures


def enqueue_section(figures: dict, companies: int) -> list[str]:
    lines = [
        f"## Enqueue one sync run: {companies:,} companies = {companies * 7 + 1:,} jobs",
        "",
        "The anchor is multi-row `INSERT`s of the same job rows, as few as the bind-parameter",
        "limit allows (no dedup, no",
        "planning), timed the same way.",
        "",
        "| backend | enqueue ms | multi-row INSERTs ms | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, figure in figures.items():
        enqueue, anchor = figure["enqueue"], figure["anchor"]
        lines.append(
            f"| {name} | {enqueue.show('{:.0f}')} | {anchor.show('{:.0f}')} | "
            f"{enqueue.median / anchor.median:.2f} |"
        )
    return [*lines, ""]


# --- durable commits and the console: printed figures of a benchmark script ---------------


def run_script(what: str, command: list[str]) -> tuple[str, str]:
    """Run a benchmark script; its printed figures, and the command as the document shows it."""
    log(f"{what}: {' '.join(command[1:])}")
    output = subprocess.run(
        command, cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    return output, " ".join(["python", *command[1:]])


def printed_section(title: str, prose: list[str], output: str, command: str) -> list[str]:
    return [f"## {title}", "", *prose, "", "```", output, "```", "", "```sh", command, "```", ""]


def bench_durability(cycles: int, rounds: int) -> tuple[str, str]:
    command = [sys.executable, "bench/bench_engine.py", "--only", "durability"]
    command += ["--durability-cycles", str(cycles), "--durability-rounds", str(rounds)]
    return run_script("durable commits", command)


def durability_section(output: str, command: str) -> list[str]:
    prose = [
        "One job's life is three commits (enqueue, claim, complete), each waiting for the WAL",
        "flush so that what the engine reports as queued, claimed or done survives a crash.",
        "The anchor is the same with `synchronous_commit = off` (as before), alternated in",
        "the same run on the shared local Postgres.",
    ]
    return printed_section("What durable commits cost (Postgres)", prose, output, command)


def bench_console(rows: int) -> tuple[str, str]:
    command = [sys.executable, "bench/bench_console.py", "--rows", str(rows), "--backend", "sqlite"]
    return run_script("console", command)


def console_section(output: str, command: str, rows: int) -> list[str]:
    prose = [
        "Each refresh's queries, and the time until the screen shows them, over every",
        "refresh of a headless run (median and max across refreshes).",
    ]
    return printed_section(f"Console refresh with {rows:,} jobs (SQLite)", prose, output, command)


# --- the document -------------------------------------------------------------------------


def rewrite_doc(body: list[str]) -> None:
    block = "\n".join([BEGIN, *body, END])
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n\n## Earlier notes\n{rest}"
    DOC.write_text(text)


@contextmanager
def sqlite_urls() -> Iterator[Callable[[int], str]]:
    with tempfile.TemporaryDirectory() as folder:
        yield lambda run: f"sqlite:///{folder}/enqueue-{run}.db"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round of each")
    args = parser.parse_args()
    rounds, duration = (1, 3) if args.quick else (3, 5)
    sync_runs, enqueue_runs = (1, 1) if args.quick else (2, 5)
    companies = 200 if args.quick else 1000
    console_rows = 20_000 if args.quick else 200_000
    command = "bench/run" + (" --quick" if args.quick else "")
    started = time.monotonic()
    with own_postgres() as cluster, sqlite_urls() as sqlite_url:
        machine = machine_line(cluster)
        read_api = [
            bench_read_api(workers, rounds, duration, backend, cluster.port)
            for workers, backend in READ_API_RUNS
        ]
        enqueue = bench_enqueue(
            {"SQLite": sqlite_url, "Postgres": lambda run: cluster.create_database(f"enq_{run}")},
            companies,
            enqueue_runs,
        )
        sync = bench_sync(cluster, companies, rate=companies, runs=sync_runs)
    durability, durability_command = bench_durability(*((50, 1) if args.quick else (300, 3)))
    console, console_command = bench_console(console_rows)
    took = time.monotonic() - started
    body = [
        "## Latest run of `bench/run`",
        "",
        f"Machine: {machine}. Produced by `{command}` in {took / 60:.1f} minutes; every",
        "figure is the median of the runs, min - max in brackets.",
        "",
        *read_api_section(read_api),
        *sync_section(sync),
        *enqueue_section(enqueue, companies),
        *durability_section(durability, durability_command),
        *console_section(console, console_command, console_rows),
    ]
    rewrite_doc(body)
    print("\n".join(body))
    log(f"docs/benchmarks.md rewritten in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
