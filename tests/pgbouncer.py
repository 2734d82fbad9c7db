"""A real PgBouncer in transaction mode in front of the local Postgres, for the pooler tests.

Each isolated test schema gets a database alias of its own whose server connections
set the schema's ``search_path`` when they open (``connect_query``): PgBouncer 1.18
refuses the ``options`` startup parameter the direct test URLs use, and a session
``SET`` from a client would not survive a transaction anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
START_TIMEOUT_S = 10.0


def pgbouncer_missing_reason() -> str | None:
    if not Path(PGBOUNCER).exists():
        return "pgbouncer is not installed (Debian package `pgbouncer`; .ci/run installs it)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgBouncer:
    """One pgbouncer process with its own config in a temporary folder."""

    def __init__(self, server_host: str = "127.0.0.1", server_port: int = 5432) -> None:
        self.server = (server_host, server_port)
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="opsdash-pgbouncer-"))
        self.aliases: dict[str, tuple[str, int | None]] = {}  # alias -> (search_path, pool)
        self.process: subprocess.Popen[bytes] | None = None
        # PgBouncer refuses to run as root; it drops to this user itself (`user =`).
        self.run_as = "postgres" if os.geteuid() == 0 else None

    @property
    def config_path(self) -> Path:
        return self.dir / "pgbouncer.ini"

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def url(self, alias: str, *, query: str = "") -> str:
        """A SQLAlchemy URL that reaches ``alias`` through the pooler."""
        suffix = f"?{query}" if query else ""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{alias}{suffix}"

    def _write_config(self) -> None:
        host, port = self.server
        databases = [f"* = host={host} port={port}"]
        for alias, (search_path, pool_size) in self.aliases.items():
            pool = f" pool_size={pool_size}" if pool_size else ""
            databases.append(
                f"{alias} = host={host} port={port} dbname=test{pool} "
                f"connect_query='SET search_path TO {search_path}'"
            )
        lines = [
            "[databases]",
            *databases,
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            "admin_users = postgres",
            "pool_mode = transaction",
            # Few server connections for many clients: statements from different
            # clients meet on the same server connection, as on a busy pooler.
            "default_pool_size = 4",
            "max_client_conn = 400",
            "server_reset_query =",
            f"logfile = {self.log_path}",
            f"pidfile = {self.dir / 'pgbouncer.pid'}",
        ]
        if self.run_as:
            lines.append(f"user = {self.run_as}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> PgBouncer:
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        self._write_config()
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.process = subprocess.Popen(
            [PGBOUNCER, str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start: {self._diagnostics()}")
            try:
                self._admin("SHOW VERSION")
                return self
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not accept connections: {self._diagnostics()}")

    def add_alias(self, alias: str, search_path: str, *, pool_size: int | None = None) -> None:
        """Route database ``alias`` to the test database with ``search_path`` set.

        ``pool_size=1`` makes every client of the alias share one server connection.
        """
        self.aliases[alias] = (search_path, pool_size)
        self._write_config()
        self._admin("RELOAD")

    def _admin(self, command: str) -> list[tuple[object, ...]]:
        # The admin console speaks only the simple query protocol.
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=pgbouncer"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
            cursor = psycopg.ClientCursor(conn)
            cursor.execute(command)
            return cursor.fetchall() if cursor.description else []

    def _diagnostics(self) -> str:
        log = self.log_path.read_text() if self.log_path.exists() else ""
        stderr = ""
        if self.process is not None and self.process.poll() is not None and self.process.stderr:
            stderr = self.process.stderr.read().decode(errors="replace")
        return (stderr + log).strip()[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
