"""Read API under load: wrk on loopback against `serve()`, and nginx serving the same blob.

    .venv/bin/python bench/bench_readapi.py [--workers 2] [--duration 10] [--connections 50]
                                            [--backend sqlite|postgres|pooler]

Needs `wrk` and `nginx` on PATH (Debian: `apt-get install -y wrk nginx`). The script
syncs the demo upstream into a temporary data folder, picks the company-day whose
document is closest to 50 KB and a technician with a typical number of jobs that
day, starts the read API (`opsdash.readapi.server.serve`, no engine) and nginx on
free loopback ports, and runs, one after the other:

1. the technician's view (200),
2. the technician's revalidation (`If-None-Match` → 304),
3. the admin's whole document (200, for scale),
4. nginx serving the same blob bytes as a static file.

``--backend`` chooses where the read API finds tokens' users and the stored days: the
data folder's SQLite file (the default), a fresh database on the local Postgres
(127.0.0.1:5432), or the same database through a real PgBouncer in transaction mode
(Supabase's pooler works the same way; needs Debian's `pgbouncer`).

It prints requests/s, p50/p99 latency, the ratio to nginx and the server's peak RSS
(VmHWM of the serving processes), then stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from opsdash.config import Settings  # noqa: E402
from opsdash.demo import engine_for  # noqa: E402
from opsdash.engine.db import connect, create_schema  # noqa: E402
from opsdash.engine.models import ScheduleData, UserProfile  # noqa: E402
from opsdash.readapi.conditional import SCHEDULE_PATH  # noqa: E402
from opsdash.readapi.tokens import mint_token  # noqa: E402
from tests.pgbouncer import PgBouncer, pgbouncer_missing_reason  # noqa: E402

TARGET_KB = 50


@dataclass
class Scenario:
    name: str
    url: str
    headers: dict[str, str]


@dataclass
class Result:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    body_bytes: int
    command: str
    rounds_rps: list[float] = field(default_factory=list)
    rounds_p99: list[float] = field(default_factory=list)


@dataclass
class Fixture:
    settings: Settings
    date: str
    blob_path: Path
    blob_kb: float
    jobs: int
    technician_jobs: int
    technician_token: str
    admin_token: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(data_dir: Path, database_url: str | None) -> Fixture:
    """Sync the demo world and pick the ~50 KB company-day and a typical technician."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        demo=database_url is not None,  # the demo world in a database of the benchmark's own
        demo_companies=6,
        days_ahead=14,
        workers=2,
    )
    engine = engine_for(settings)
    try:
        engine.sync()
        engine.start(scheduler=False)
        if not engine.wait_idle(timeout_s=300, poll_s=0.1):
            raise SystemExit("the demo sync did not finish")
        with engine.db.session() as session:
            rows = session.execute(select(ScheduleData)).scalars().all()
            chosen = min(rows, key=lambda row: abs(row.file_size_kb - TARGET_KB))
            people = (
                session.execute(
                    select(UserProfile).where(UserProfile.company_id == chosen.company_id)
                )
                .scalars()
                .all()
            )
        document = orjson.loads(engine.blobs.get(chosen.storage_path))
        jobs_per_employee: dict[str, int] = {}
        for job in document["jobs"]:
            for entry in job["employeeSchedules"]:
                employee = entry["EmployeeInformationId"]
                jobs_per_employee[employee] = jobs_per_employee.get(employee, 0) + 1
        technicians = sorted(
            (p for p in people if p.role == "technician" and p.employee_information_id),
            key=lambda p: jobs_per_employee.get(p.employee_information_id or "", 0),
        )
        working = [t for t in technicians if jobs_per_employee.get(t.employee_information_id or "")]
        technician = working[len(working) // 2]  # the median technician, not the busiest
        admin = next(p for p in people if p.role == "admin")
        ttl = timedelta(hours=2)
        return Fixture(
            settings=settings,
            date=str(chosen.date),
            blob_path=settings.blob_root / chosen.storage_path,
            blob_kb=chosen.file_size_kb,
            jobs=chosen.job_count,
            technician_jobs=jobs_per_employee[technician.employee_information_id or ""],
            technician_token=mint_token(settings, engine.db, technician.email or "", ttl),
            admin_token=mint_token(settings, engine.db, admin.email or "", ttl),
        )
    finally:
        engine.stop()


@contextmanager
def fresh_postgres_database(port: int) -> Iterator[str]:
    """A database of the benchmark's own on the Postgres at ``port``, dropped afterwards."""
    name = f"opsdash_bench_{uuid.uuid4().hex[:12]}"
    admin_dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def backend_urls(backend: str, port: int) -> Iterator[tuple[str | None, str | None]]:
    """(URL the demo sync writes through, URL the read API reads through) for ``backend``."""
    if backend == "sqlite":
        yield None, None
        return
    with fresh_postgres_database(port) as name:
        direct = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"
        database = connect(direct)
        try:
            create_schema(database)  # as `opsdash migrate` does before a first start
        finally:
            database.dispose()
        if backend == "postgres":
            yield direct, direct
            return
        reason = pgbouncer_missing_reason()
        if reason:
            raise SystemExit(reason)
        bouncer = PgBouncer(server_port=port).start()
        try:
            # The pooler's wildcard entry routes the alias to the database of that name.
            yield direct, bouncer.url(name, query="pgbouncer=true")
        finally:
            bouncer.stop()


def start_server(
    data_dir: Path, port: int, args: argparse.Namespace, log: Path, database_url: str | None
) -> subprocess.Popen[bytes]:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from opsdash.config import Settings\n"
        "from opsdash.readapi.server import serve\n"
        f"settings = Settings(data_dir=Path({str(data_dir)!r}), database_url={database_url!r},"
        f" demo={database_url is not None})\n"
        f"sys.exit(serve(settings, host='127.0.0.1', port={port}, workers={args.workers},"
        f" with_engine=False, http={args.http!r}, loop={args.loop!r}))\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_"))
    }
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, stdout=log_file, stderr=log_file, env=env
        )
    wait_until_ready(f"http://127.0.0.1:{port}/readyz", process)
    return process


def start_nginx(root: Path, port: int, work_dir: Path) -> subprocess.Popen[bytes]:
    config = work_dir / "nginx.conf"
    (work_dir / "logs").mkdir(exist_ok=True)
    config.write_text(
        f"""
worker_processes 2;
daemon off;
pid {work_dir}/nginx.pid;
error_log {work_dir}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types {{ application/json json; }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
  }}
}}
"""
    )
    process = subprocess.Popen(
        ["nginx", "-c", str(config), "-p", str(work_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until_ready(f"http://127.0.0.1:{port}/", process, ok_statuses=(200, 403, 404))
    return process


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], ok_statuses: tuple[int, ...] = (200,)
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code in ok_statuses:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} never became ready")


_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _LATENCY_UNITS[match[2]]


def run_wrk(scenario: Scenario, args: argparse.Namespace) -> Result:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s"]
    command += ["--latency", "--timeout", "5s"]
    for name, value in scenario.headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(scenario.url)
    body_bytes = len(httpx.get(scenario.url, headers=scenario.headers).content)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests_per_s = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p50 = _milliseconds(re.search(r"\s50%\s+(\S+)", output)[1])  # type: ignore[index]
    p99 = _milliseconds(re.search(r"\s99%\s+(\S+)", output)[1])  # type: ignore[index]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    shown = " ".join(
        part if not part.startswith("Authorization") else "Authorization: Bearer $TOKEN"
        for part in command
    )
    return Result(
        scenario.name,
        requests_per_s,
        p50,
        p99,
        int(non_2xx[1]) if non_2xx else 0,
        body_bytes,
        shown,
    )


def stop_processes(
    started: Callable[[], tuple[subprocess.Popen[bytes] | None, subprocess.Popen[bytes] | None]],
) -> None:
    """Stop the read API and nginx (whichever of them ``started()`` says are running)."""
    server, nginx = started()
    if server is not None and server.poll() is None:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    if nginx is not None and nginx.poll() is None:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)


def process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split()
        for child in children:
            found += process_tree(int(child))
    return found


def peak_rss_mb(pid: int) -> dict[int, float]:
    """VmHWM (peak resident set) of each process in the tree, in MiB."""
    peaks = {}
    for member in process_tree(pid):
        status = Path(f"/proc/{member}/status").read_text()
        command = Path(f"/proc/{member}/cmdline").read_bytes()
        if b"resource_tracker" in command:
            continue  # multiprocessing's helper, not a server process
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            peaks[member] = int(match[1]) / 1024
    return peaks


def median_run(runs: list[Result]) -> Result:
    """The median run by throughput, so one noisy run neither flatters nor sinks the figure."""
    ordered = sorted(runs, key=lambda result: result.requests_per_s)
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per scenario (median)")
    parser.add_argument(
        "--http", default="auto", help="uvicorn's HTTP parser (auto, h11, httptools)"
    )
    parser.add_argument(
        "--loop", default="auto", help="uvicorn's event loop (auto, asyncio, uvloop)"
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "pooler"),
        default="sqlite",
        help="the database the read API reads: the data folder's SQLite file, the local "
        "Postgres, or the local Postgres through PgBouncer in transaction mode",
    )
    parser.add_argument(
        "--postgres-port", type=int, default=5432, help="the local Postgres (trust, postgres)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y wrk nginx")

    work_dir = Path(tempfile.mkdtemp(prefix="opsdash-bench-"))
    server: subprocess.Popen[bytes] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    with ExitStack() as stack:
        sync_url, read_url = stack.enter_context(backend_urls(args.backend, args.postgres_port))
        print(f"syncing the demo world ({args.backend})…", flush=True)
        fixture = prepare(work_dir / "data", sync_url)
        api_port, nginx_port = free_port(), free_port()
        stack.callback(stop_processes, lambda: (server, nginx))
        server = start_server(work_dir / "data", api_port, args, work_dir / "server.log", read_url)
        # nginx serves a copy of the same bytes from a folder its workers may read.
        static_root = work_dir / "static"
        static_file = static_root / "schedule.json"
        static_root.mkdir()
        shutil.copyfile(fixture.blob_path, static_file)
        os.chmod(work_dir, 0o755)
        static_root.chmod(0o755)
        static_file.chmod(0o644)
        nginx = start_nginx(static_root, nginx_port, work_dir)

        api = f"http://127.0.0.1:{api_port}{SCHEDULE_PATH}?date={fixture.date}"
        technician = {"Authorization": f"Bearer {fixture.technician_token}"}
        admin = {"Authorization": f"Bearer {fixture.admin_token}"}
        etag = httpx.get(api, headers=technician).headers["etag"]
        httpx.get(api, headers=admin)
        scenarios = [
            Scenario("technician view (200)", api, technician),
            Scenario("technician revalidation (304)", api, {**technician, "If-None-Match": etag}),
            Scenario("admin whole document (200)", api, admin),
            Scenario("nginx static blob", f"http://127.0.0.1:{nginx_port}/schedule.json", {}),
        ]
        results = []
        for scenario in scenarios:
            runs = [run_wrk(scenario, args) for _ in range(args.rounds)]
            middle = median_run(runs)
            middle.rounds_rps = [run.requests_per_s for run in runs]
            middle.rounds_p99 = [run.p99_ms for run in runs]
            results.append(middle)
            spread = ", ".join(
                f"{run.requests_per_s:,.0f} req/s p99 {run.p99_ms:.1f} ms" for run in runs
            )
            print(f"  {scenario.name}: {spread}", flush=True)
        peaks = peak_rss_mb(server.pid)

    nginx_rps = results[-1].requests_per_s
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "uvloop": _installed("uvloop"),
            "httptools": _installed("httptools"),
        },
        "document": {
            "kb": fixture.blob_kb,
            "jobs": fixture.jobs,
            "technician_jobs": fixture.technician_jobs,
            "date": fixture.date,
        },
        "workers": args.workers,
        "backend": args.backend,
        "http": args.http,
        "loop": args.loop,
        "results": [asdict(result) for result in results],
        "server_peak_rss_mb": {str(pid): round(mb, 1) for pid, mb in peaks.items()},
        "server_peak_rss_total_mb": round(sum(peaks.values()), 1),
    }
    print_report(report, nginx_rps)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def print_report(report: dict[str, Any], nginx_rps: float) -> None:
    machine, document = report["machine"], report["document"]
    print()
    print(
        f"{machine['cpus']} CPUs, Python {machine['python']}, uvloop={machine['uvloop']}, "
        f"httptools={machine['httptools']}, read API workers={report['workers']}, "
        f"backend={report['backend']}, "
        f"http={report['http']}, loop={report['loop']}"
    )
    print(
        f"document: {document['kb']} KB, {document['jobs']} jobs on {document['date']}; "
        f"the technician has {document['technician_jobs']} of them"
    )
    print()
    print(
        f"{'scenario':34} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'body B':>8} {'vs nginx':>9}"
    )
    for result in report["results"]:
        ratio = result["requests_per_s"] / nginx_rps if nginx_rps else 0
        print(
            f"{result['name']:34} {result['requests_per_s']:>10,.0f} {result['p50_ms']:>8.2f} "
            f"{result['p99_ms']:>8.2f} {result['body_bytes']:>8} {ratio:>8.1%}"
        )
        if result["non_2xx_3xx"]:
            print(f"  !! {result['non_2xx_3xx']} answers were not 2xx/3xx")
    peaks = report["server_peak_rss_mb"]
    print()
    print(
        f"server peak RSS: {report['server_peak_rss_total_mb']} MiB in all "
        f"({', '.join(f'{mb} MiB' for mb in peaks.values())}: parent first, then workers)"
    )
    print()
    print("wrk commands (median of the rounds is reported):")
    for result in report["results"]:
        print(f"  {result['command']}")


if __name__ == "__main__":
    sys.exit(main())
