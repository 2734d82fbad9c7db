"""Database statements per console refresh with 1 and with 5 open browser consoles.

    .venv/bin/python bench/bench_web_reads.py [--window 30] [--sessions 1 5]

Starts a PostgreSQL cluster of its own with ``pg_stat_statements`` loaded (the shared
server on 5432 does not load it), migrates it, fills it with a demo sync
(``opsdash sync --wait``: 6 companies x 7 days), and adds an operator. Then, for each
number of sessions and with the shared reads off and on (``OPSDASH_WEB_SHARED_READS``),
starts ``opsdash web``, signs in, opens that many consoles over websockets (each a real
console process on the jobs screen, which refreshes every second) for ``--window``
seconds, closes them, and reports every statement the bench database ran meanwhile
(consoles starting and stopping included) and how many jobs-screen refreshes the
consoles made: without shared reads, the jobs-table page reads the database counted;
with them, the page reads the web process was asked for (it logs them when it stops).

The consoles run with ``OPSDASH_WORKERS=0`` unless ``--console-workers N``: the figures
are what viewing costs, not what workers polling for jobs cost (every console hosts an
engine, and one that runs workers adds its own polls).
On a small machine the consoles compete for the CPU, so how often each one manages to
refresh varies; statements per refresh is the figure that compares.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opsdash.engine import operators
from opsdash.engine.db import connect, create_schema
from tests.pgcluster import PgCluster
from tests.waiting import wait_until
from tests.web_server import running_web

PASSWORD = "bench password"
DRAWN_BYTES = 2000


def bench_dsn(cluster: PgCluster) -> str:
    return cluster.dsn.rsplit("/", 1)[0] + "/bench"


def prepare(cluster: PgCluster, folder: Path) -> str:
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
        # Counted from here, so the counting is not counted in the bench database.
        conn.execute("CREATE EXTENSION pg_stat_statements")
    with psycopg.connect(bench_dsn(cluster), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    url = cluster.url.rsplit("/", 1)[0] + "/bench"
    db = connect(url)
    try:
        create_schema(db)
        operators.add_operator(db, "viewer", PASSWORD)
    finally:
        db.dispose()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPSDASH_", "SUPABASE_", "MAIDCENTRAL_", "DATABASE_URL"))
    }
    environment.update(
        {
            "DATABASE_URL": url,
            "OPSDASH_DATA_DIR": str(folder / "data"),
            "OPSDASH_DEMO": "1",  # the demo upstream against the bench database
        }
    )
    subprocess.run(
        [sys.executable, "-m", "opsdash", "sync", "--wait"],
        env=environment,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return url


# The jobs screen's table read: one per refresh of the jobs screen of a console.
JOBS_PAGE = (
    "query ILIKE 'SELECT background_jobs.id, background_jobs.job_type%'"
    " AND query ILIKE '%ORDER BY background_jobs.created_at DESC, background_jobs.id DESC%'"
)
ASKED = re.compile(r"jobs_page (\d+)/(\d+)")


def counts(cluster: PgCluster) -> tuple[int, int]:
    """(all statements, jobs-table page reads) run in the bench database."""
    with psycopg.connect(cluster.dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0),"
            f" coalesce(sum(calls) FILTER (WHERE {JOBS_PAGE}), 0)"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = 'bench'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def top_statements(cluster: PgCluster, limit: int = 12) -> list[tuple[int, str]]:
    with psycopg.connect(cluster.dsn) as conn:
        rows = conn.execute(
            "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = 'bench' ORDER BY calls DESC LIMIT %s",
            (limit,),
        ).fetchall()
    return [(int(calls), str(query)) for calls, query in rows]


def reset(cluster: PgCluster) -> None:
    with psycopg.connect(cluster.dsn) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


async def open_consoles(url: str, token: str, sessions: int) -> list[object]:
    client = aiohttp.ClientSession()
    sockets = []
    for _ in range(sessions):
        websocket = await client.ws_connect(
            url.replace("http", "ws", 1) + "/ws?width=140&height=44",
            headers={"Cookie": f"opsdash_session={token}"},
        )
        received = 0
        while received < DRAWN_BYTES:
            message = await websocket.receive(timeout=120)
            if message.type != aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"console closed before drawing: {message}")
            received += len(message.data)
        sockets.append(websocket)
    return [client, *sockets]


async def drain(sockets: list[object], seconds: float) -> None:
    """Keep reading the consoles' output for ``seconds`` (so none stalls on a full pipe)."""
    deadline = time.monotonic() + seconds

    async def read(websocket: aiohttp.ClientWebSocketResponse) -> None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                await websocket.receive(timeout=left)
            except TimeoutError:
                return

    await asyncio.gather(*(read(ws) for ws in sockets))  # type: ignore[arg-type]


async def close(opened: list[object]) -> None:
    client, *sockets = opened
    for websocket in sockets:
        await websocket.close()  # type: ignore[attr-defined]
    await client.close()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Figures:
    sessions: int
    shared: bool
    seconds: float
    statements: int
    refreshes: int
    """Refreshes of the jobs screen, summed over the consoles."""

    def row(self) -> str:
        per_refresh = self.statements / self.refreshes if self.refreshes else float("nan")
        return (
            f"| {self.sessions} | {'on' if self.shared else 'off'} | {self.refreshes} "
            f"| {self.statements} | {per_refresh:.1f} | {self.statements / self.seconds:.1f} |"
        )


def measure(
    cluster: PgCluster,
    url: str,
    folder: Path,
    *,
    sessions: int,
    shared: bool,
    window: float,
    breakdown: bool = False,
    workers: int = 0,
) -> Figures:
    run_dir = Path(tempfile.mkdtemp(dir=folder))
    settings = {
        "OPSDASH_WEB_SHARED_READS": "true" if shared else "false",
        "OPSDASH_WEB_MAX_SESSIONS": str(max(8, sessions)),
        "OPSDASH_WORKERS": str(workers),
    }
    with running_web(url, run_dir, environment=settings) as web:
        with httpx.Client(base_url=web.url) as client:
            client.post("/login", data={"username": "viewer", "password": PASSWORD})
            token = client.cookies["opsdash_session"]

        async def run() -> float:
            reset(cluster)
            started = time.monotonic()
            opened = await open_consoles(web.url, token, sessions)
            await drain(opened[1:], window)
            await close(opened)
            return time.monotonic() - started

        seconds = asyncio.run(run())
        wait_until(lambda: web.consoles() == [], what="the consoles to exit", timeout_s=120)
        statements, jobs_pages = counts(cluster)
        if breakdown:
            for calls, query in top_statements(cluster):
                print(f"    {calls:6d}  {query}", file=sys.stderr)
    if shared:
        # Asked of the web process's shared reads; it logs the figures when it stops.
        asked = ASKED.search(web.log())
        refreshes = int(asked[1]) if asked else 0
    else:
        refreshes = jobs_pages
    return Figures(sessions, shared, seconds, statements, refreshes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds consoles stay open")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--breakdown", action="store_true", help="the most frequent statements of each run"
    )
    parser.add_argument(
        "--console-workers",
        type=int,
        default=0,
        help="worker threads in each console's engine (OPSDASH_WORKERS; default 0)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        with PgCluster.create(shared_preload_libraries="pg_stat_statements") as cluster:
            url = prepare(cluster, folder)
            print(
                f"Database statements while consoles show the jobs screen for {args.window:g} s "
                "(PostgreSQL, pg_stat_statements; 6 companies, 43 jobs)\n"
            )
            print(
                "| open consoles | shared reads | jobs-screen refreshes | statements "
                "| statements per refresh | statements / s |"
            )
            print("| ---: | --- | ---: | ---: | ---: | ---: |")
            for sessions in args.sessions:
                for shared in (False, True):
                    figures = measure(
                        cluster,
                        url,
                        folder,
                        sessions=sessions,
                        shared=shared,
                        window=args.window,
                        breakdown=args.breakdown,
                        workers=args.console_workers,
                    )
                    print(figures.row(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
