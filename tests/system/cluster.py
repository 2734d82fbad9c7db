"""A PostgreSQL cluster of the suite's own: initdb into a temporary folder, on a free port.

The system scenarios stop, restart and freeze their database; doing that to the
shared server on 5432 would break every other test running on the machine. This
cluster is theirs alone. Postgres refuses to run as root, so when the suite runs as
root the cluster's files belong to, and its commands run as, the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.pgcluster import freeze_server
from tests.waiting import wait_until

PG_BIN = Path(os.environ.get("OPSDASH_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_binaries_present() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


class OwnPostgres:
    """One throwaway cluster: ``start``, ``stop``, ``restart``, ``freeze``/``thaw``, ``destroy``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="opsdash-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.frozen: list[int] = []

    # --- commands --------------------------------------------------------------------

    def _run(self, *command: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(PG_BIN / command[0]), *command[1:]]
        if self._user is not None:
            argv = ["runuser", "-u", self._user, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed ({result.returncode}): {result.stderr or result.stdout}"
                f"\n{self.log_tail()}"
            )
        return result

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def init(self) -> OwnPostgres:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "fsync": "off",  # a crash here loses nothing we keep; speed matters more
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60",
            "restart",
        )  # fmt: skip

    # --- freezing: every process of the cluster stopped, sockets left open ----------

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def freeze(self) -> None:
        """SIGSTOP the postmaster and its children: connections hang, nothing is refused."""
        self.frozen = freeze_server(self.postmaster_pid)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    # --- databases -------------------------------------------------------------------

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_until(
            self.accepts_connections,
            what=f"the own Postgres on port {self.port} to accept connections",
            timeout_s=timeout_s,
            poll_s=0.2,
            seen=self.log_tail,
        )

    def destroy(self) -> None:
        self.thaw()
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres().init()
    try:
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.destroy()


def elapsed_since(started: float) -> float:
    return time.monotonic() - started
