"""A PostgreSQL cluster of a test's own, for faults the shared server must never see.

Crashing, stopping or freezing (SIGSTOP) the shared server on 5432 would break every
other test and every other engineer's run; these tests start a throwaway cluster
instead: ``initdb`` into a temp dir, a free loopback port, run as the ``postgres``
user (the server refuses to run as root), removed afterwards.

    with PgCluster.create() as cluster:
        url = cluster.url            # postgresql+psycopg://postgres@127.0.0.1:<port>/postgres
        cluster.crash()              # immediate stop: no checkpoint, no WAL writer flush
        cluster.start()
        with cluster.frozen():       # every server process SIGSTOPped, then SIGCONTed
            ...

Also usable as the pytest fixture ``pg_cluster`` (import it into a test module or a
conftest: ``from tests.pgcluster import pg_cluster  # noqa: F401``).
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
import pytest

from tests.waiting import wait_until

PG_BIN = Path(os.environ.get("OPSDASH_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres"


def freeze_server(postmaster: int) -> list[int]:
    """SIGSTOP a Postgres server: the postmaster first and, once it is seen stopped (it can
    fork no new backend then), every process it started. Returns the pids, to thaw.

    Listing the children first let a backend forked meanwhile escape: it answered queries
    all through a "frozen" database."""
    os.kill(postmaster, signal.SIGSTOP)
    wait_until(
        lambda: _process_state(postmaster) in {"T", "t"},
        what="the postmaster to stop",
        timeout_s=10,
        poll_s=0.001,
    )
    children = _children(postmaster)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return [postmaster, *children]


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("T": stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def available() -> bool:
    """initdb is installed and there is a ``postgres`` user to run the server as."""
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return False
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgCluster:
    """One initdb'd cluster on a loopback port; trust auth for ``postgres``."""

    def __init__(self, root: Path, port: int, settings: dict[str, str]) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.settings = settings

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    def create(cls, **settings: str) -> PgCluster:
        """initdb a new cluster and start it. ``settings`` become ``-c name=value``."""
        if not available():
            raise RuntimeError(f"no PostgreSQL binaries in {PG_BIN} or no user {RUN_AS!r}")
        root = Path(tempfile.mkdtemp(prefix="opsdash-pg-"))
        account = pwd.getpwnam(RUN_AS)
        if os.geteuid() == 0:
            os.chown(root, account.pw_uid, account.pw_gid)
        cluster = cls(root, _free_port(), settings)
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
                "--no-sync", "-E", "UTF8",
            )  # fmt: skip
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", RUN_AS, "--", *command]
        return command

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            self._command(tool, *args),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def start(self) -> None:
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c fsync=on",
            "-c max_connections=100",
        ] + [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-o", " ".join(options), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def crash(self) -> None:
        """An immediate stop: the server exits without a checkpoint or flushing WAL buffers,
        as in a crash; the next start runs crash recovery."""
        self.thaw()
        self.stop("immediate")

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started, stopped ones included: a
        crash in which nothing gets to write what it still held."""
        postmaster = self.postmaster_pid
        processes = [postmaster, *_children(postmaster)]
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in processes),
            what="the killed server processes to be gone",
            timeout_s=30,
        )
        self._frozen = []

    def server_process(self, kind: str) -> int:
        """The pid of one of the server's own processes, e.g. ``walwriter``."""
        title = f"postgres: {kind}".encode()
        for pid in _children(self.postmaster_pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                    return pid
        raise LookupError(f"no {kind} process")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.thaw()
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.destroy()

    # --- freezing --------------------------------------------------------------------

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def freeze(self) -> None:
        """SIGSTOP every server process: connections stay open and nothing answers."""
        self._frozen = freeze_server(self.postmaster_pid)

    def thaw(self) -> None:
        for pid in getattr(self, "_frozen", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    # --- connecting ------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (psycopg 3 driver)."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg://")

    def execute(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A cluster of the test's own (skipped where initdb or the postgres user is missing)."""
    if not available():
        pytest.skip(f"needs PostgreSQL binaries in {PG_BIN} and a {RUN_AS!r} user")
    with PgCluster.create() as cluster:
        yield cluster
