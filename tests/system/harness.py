"""The whole system on loopback: real processes, a real database, a read-API load throughout.

One :class:`System` per scenario starts the demo upstream (`opsdash demo-upstream`,
its fault knobs driven over `/_demo/faults`), `opsdash worker` processes, one
`opsdash --serve`, and :class:`ApiLoad`, threads that ask the read API for
schedules with technician and admin tokens and count every answer by status.
:meth:`System.losses` is what each scenario asserts empty: jobs left running,
jobs failed without a reason, metadata rows whose blob is missing, empty,
partial or of another checksum, and temporary files left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from opsdash.config import Settings
from opsdash.engine import coordinator
from opsdash.engine.db import Database, connect, create_schema
from opsdash.readapi.tokens import mint_token
from tests.system.cluster import free_port
from tests.waiting import answers_ok, wait_until

API_KEY = "system-key"
SCHEDULE_PATH = "/functions/v1/get-schedule"


@dataclass
class Proc:
    """A started process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; SIGKILL if it outlives ``timeout_s``. Returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout_s} s") from None


@dataclass
class Answer:
    at: float
    status: str  # "200", "304", "503", … or "timeout" / "error" for no HTTP answer


class ApiLoad:
    """Threads asking the read API for schedules until stopped; every answer is kept."""

    def __init__(self, base_url: str, tokens: list[str], days: list[str], threads: int = 2) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.days = days
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True, name=f"load-{index}")
            for index in range(threads)
        ]

    def start(self) -> ApiLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.by_status()

    def wait_for_answers(self, count: int, timeout_s: float = 120) -> None:
        """Let the load run until it has had ``count`` answers in all."""
        wait_until(
            lambda: sum(self.by_status().values()) >= count,
            what=f"{count} read-API answers",
            timeout_s=timeout_s,
            seen=self.by_status,
        )

    def by_status(self, since: float = 0.0) -> Counter[str]:
        with self._lock:
            return Counter(a.status for a in self.answers if a.at >= since)

    def first_ok_after(self, moment: float) -> float | None:
        with self._lock:
            return next((a.at for a in self.answers if a.at >= moment and a.status == "200"), None)

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        etags: dict[tuple[str, str], str] = {}
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            while not self._stop.is_set():
                token, day = rng.choice(self.tokens), rng.choice(self.days)
                headers = {"Authorization": f"Bearer {token}"}
                known = etags.get((token, day))
                if known and rng.random() < 0.5:
                    headers["If-None-Match"] = known
                try:
                    reply = client.get(SCHEDULE_PATH, params={"date": day}, headers=headers)
                    status = str(reply.status_code)
                    if reply.status_code == 200 and "etag" in reply.headers:
                        etags[(token, day)] = reply.headers["etag"]
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.TransportError:
                    status = "error"
                with self._lock:
                    self.answers.append(Answer(time.monotonic(), status))
                self._stop.wait(0.01)  # pacing: a steady load, not a benchmark


@dataclass
class Losses:
    running: list[str] = field(default_factory=list)
    failed_without_reason: list[str] = field(default_factory=list)
    bad_blobs: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)

    @property
    def jobs_lost(self) -> int:
        return len(self.running) + len(self.failed_without_reason)

    def __bool__(self) -> bool:
        return bool(self.jobs_lost or self.bad_blobs or self.temp_files)


class System:
    """Everything one scenario runs; ``close`` stops what is still running."""

    def __init__(
        self,
        root: Path,
        database_url: str,
        *,
        companies: int = 10,
        days_ahead: int = 2,
        lease_s: float = 4.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.companies = companies
        self.days_ahead = days_ahead
        self.lease_s = lease_s
        self.extra_env = env or {}
        self.procs: list[Proc] = []
        self.upstream_url = ""
        self.api_url = ""
        self._db: Database | None = None
        self._schema_ready = False

    # --- processes -------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_"))
        }
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "OPSDASH_DATA_DIR": str(self.data_dir),
                # The upstream is a demo upstream shared by every process: a demo asked for.
                "OPSDASH_DEMO": "1",
                "MAIDCENTRAL_API_URL": self.upstream_url,
                "MAIDCENTRAL_API_KEY": API_KEY,
                "OPSDASH_LEASE_S": str(self.lease_s),
                "OPSDASH_POLL_INTERVAL_S": "0.2",
                "OPSDASH_RETRY_BASE_S": "0.2",
                "OPSDASH_UPSTREAM_TIMEOUT_S": "3",
                "OPSDASH_UPSTREAM_BACKOFF_MAX_S": "0.2",
                "OPSDASH_UPSTREAM_RATE_PER_MINUTE": "100000",
                "OPSDASH_UPSTREAM_RATE_PER_HOUR": "1000000",
                "OPSDASH_DAYS_AHEAD": str(self.days_ahead),
                "OPSDASH_SYNC_CRON": "0 0 1 1 *",  # no hourly run in the middle of a scenario
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None, module: str = "opsdash"
    ) -> Proc:
        log = self.root / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as sink:  # a file, not a pipe: a chatty process never blocks
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=Path(__file__).resolve().parents[2],
                env=env or self.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_upstream(self, *fault_args: str, bad_data: bool = False) -> None:
        """The demo upstream (or, with ``bad_data``, tests/system/bad_upstream.py) on a port."""
        port = free_port()
        args = ["--port", str(port), "--companies", str(self.companies), "--api-key", API_KEY]
        if bad_data:
            proc = self.spawn("upstream", *args, module="tests.system.bad_upstream")
        else:
            proc = self.spawn("upstream", "demo-upstream", *args, *fault_args)
        self.upstream_url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: answers_ok(f"{self.upstream_url}/_demo/stats") or not proc.alive(),
            what="the demo upstream to listen",
            timeout_s=60,
            seen=proc.log_tail,
        )
        assert proc.alive(), proc.log_tail()

    def ensure_schema(self) -> None:
        """Create the tables before any process starts.

        Two processes that start together on an empty Postgres database both create the
        schema, and one of them dies of the race (a unique violation in pg_type); the
        scenarios are about other faults, so the schema is made here, once.
        """
        if not self._schema_ready:
            create_schema(self.db)
            self._schema_ready = True

    def start_worker(self, concurrency: int = 2, **env: str) -> Proc:
        self.ensure_schema()
        proc = self.spawn(
            "worker", "worker", "--concurrency", str(concurrency), env=self.env(**env)
        )
        return proc

    def start_server(self, workers: int = 1) -> Proc:
        self.ensure_schema()
        port = free_port()
        proc = self.spawn(
            "serve", "--serve", "--port", str(port), env=self.env(OPSDASH_WORKERS=str(workers))
        )
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: answers_ok(f"{self.api_url}/healthz") or not proc.alive(),
            what="opsdash --serve to answer",
            timeout_s=90,
            seen=proc.log_tail,
        )
        assert proc.alive(), proc.log_tail()
        return proc

    def cli(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        self.ensure_schema()
        return subprocess.run(
            [sys.executable, "-m", "opsdash", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def faults(self, **changes: Any) -> dict[str, Any]:
        reply = httpx.post(f"{self.upstream_url}/_demo/faults", json=changes, timeout=10)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def upstream_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.upstream_url}/_demo/stats", timeout=10).json()

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                with contextlib.suppress(AssertionError):
                    proc.terminate(timeout_s=20)
        if self._db is not None:
            self._db.dispose()

    # --- the database, read from outside ---------------------------------------------

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = connect(self.database_url)
        return self._db

    def settings(self) -> Settings:
        return Settings(
            database_url=self.database_url,
            data_dir=self.data_dir,
            demo=True,
            supabase_url=None,
            supabase_service_role_key=None,
            supabase_jwt_secret=None,
            jwks_url=None,
        )

    def job_counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(
                text("SELECT status, COUNT(*) FROM background_jobs GROUP BY status")
            ).all()
        return {status: count for status, count in rows}

    def active(self) -> int:
        counts = self.job_counts()
        return counts.get("pending", 0) + counts.get("running", 0)

    def queue_sync(self, *, expect_new: bool = True) -> None:
        """Queue a sync run as `opsdash sync` does, without waiting for a process to start:
        a scenario that must catch jobs running cannot lose seconds to an interpreter.

        ``expect_new=False`` when jobs of an earlier run may still be waiting to retry: the
        run then queues only what is not already queued, possibly nothing."""
        self.ensure_schema()
        run = coordinator.plan_and_enqueue(self.db, days_ahead=self.days_ahead, expedite=True)
        assert run.queued > 0 or not expect_new, run

    def wait_drained(self, timeout_s: float = 240, what: str = "the sync to finish") -> None:
        """Wait until jobs exist and none is pending or running."""
        wait_until(
            lambda: self.job_counts() and self.active() == 0,
            what=what,
            timeout_s=timeout_s,
            poll_s=0.5,
            seen=self.job_counts,
        )

    def stored_count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM schedule_data")).scalar_one())

    def checksums(self) -> dict[str, str]:
        with self.db.read() as conn:
            rows = conn.execute(text("SELECT storage_path, checksum FROM schedule_data")).all()
        return {path: checksum for path, checksum in rows}

    def tokens(self, ttl: timedelta = timedelta(hours=2)) -> list[str]:
        """Tokens of a few admins and technicians (with jobs) of the synced companies."""
        with self.db.read() as conn:
            admins = conn.execute(
                text("SELECT email FROM user_profiles WHERE role = 'admin' ORDER BY email LIMIT 3")
            ).scalars()
            technicians = conn.execute(
                text(
                    "SELECT email FROM user_profiles WHERE role = 'technician' "
                    "AND employee_information_id IS NOT NULL ORDER BY email LIMIT 3"
                )
            ).scalars()
            emails = [*admins, *technicians]
        assert len(emails) == 6, f"expected 3 admins and 3 technicians, found {emails}"
        settings = self.settings()
        return [mint_token(settings, self.db, email, ttl) for email in emails]

    def stored_days(self, every_company: bool = True) -> list[str]:
        # By default only the days every company has: each company's week starts on its own
        # local date, and a day some company lacks is rightly a 404 for its users.
        having = "HAVING COUNT(*) = (SELECT COUNT(*) FROM companies)" if every_company else ""
        with self.db.read() as conn:
            days = conn.execute(
                text(f"SELECT date FROM schedule_data GROUP BY date {having} ORDER BY 1")
            )
            found = [str(day) for day in days.scalars()]
        assert found, "no day is stored for every company"
        return found

    def start_load(self, threads: int = 2, every_company: bool = True) -> ApiLoad:
        days = self.stored_days(every_company)
        return ApiLoad(self.api_url, self.tokens(), days, threads).start()

    # --- what was lost ---------------------------------------------------------------

    def losses(self) -> Losses:
        losses = Losses()
        with self.db.read() as conn:
            jobs = conn.execute(text("SELECT id, status, error_message FROM background_jobs")).all()
            rows = conn.execute(
                text("SELECT storage_path, checksum, file_size_kb FROM schedule_data")
            ).all()
        for job_id, status, error in jobs:
            if status == "running":
                losses.running.append(str(job_id))
            if status == "failed" and not (error or "").strip():
                losses.failed_without_reason.append(str(job_id))
        blobs = self.data_dir / "blobs"
        for path, checksum, _size_kb in rows:
            blob = blobs / path
            if not blob.is_file():
                losses.bad_blobs.append(f"{path}: missing")
                continue
            body = blob.read_bytes()
            if not body:
                losses.bad_blobs.append(f"{path}: empty")
            elif hashlib.sha256(body).hexdigest() != checksum:
                losses.bad_blobs.append(f"{path}: checksum differs from its metadata")
        losses.temp_files = [str(p) for p in blobs.rglob("*") if p.name.startswith(".tmp")]
        return losses


@contextlib.contextmanager
def running_system(root: Path, database_url: str, **options: Any) -> Iterator[System]:
    system = System(root, database_url, **options)
    try:
        yield system
    finally:
        system.close()
