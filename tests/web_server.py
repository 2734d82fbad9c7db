"""A real ``opsdash web`` process on a loopback port, for the browser console's tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from opsdash.engine import operators
from opsdash.engine.db import connect
from tests.waiting import wait_until

READY = re.compile(r"opsdash web: serving the console on (\S+)")
# A developer's shell must never point a test's consoles at anything real.
CLEARED = ("SUPABASE_", "MAIDCENTRAL_", "DATABASE_URL", "OPSDASH_")


@dataclass
class WebServer:
    url: str
    process: subprocess.Popen[str]
    database_url: str
    stderr_path: Path
    lines: list[str] = field(default_factory=list)

    def add_operator(self, name: str, password: str, *, read_only: bool = False) -> None:
        db = connect(self.database_url)
        try:
            operators.add_operator(db, name, password, read_only=read_only)
        finally:
            db.dispose()

    def set_disabled(self, name: str, disabled: bool) -> None:
        db = connect(self.database_url)
        try:
            operators.set_disabled(db, name, disabled)
        finally:
            db.dispose()

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def consoles(self) -> list[dict[str, str]]:
        """The environment of every console process this server runs now."""
        return [environ for pid, environ in _descendants(self.process.pid)]


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _descendants(root: int) -> list[tuple[int, dict[str, str]]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[tuple[int, dict[str, str]]] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        environ = _environ(pid)
        if environ is not None and environ.get("OPSDASH_CONSOLE") == "web":
            found.append((pid, environ))  # (its own children, a shell's exec, are the same)
            continue
        pending.extend(children.get(pid, []))
    return found


def web_environment(database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(CLEARED)}
    environment.update(
        {
            "DATABASE_URL": database_url,
            "OPSDASH_DATA_DIR": str(data_dir),
            "OPSDASH_DEMO": "1",  # a test database and the demo upstream: asked for
            "OPSDASH_WORKERS": "1",
        }
    )
    environment.update(settings)
    return environment


@contextmanager
def running_web(
    database_url: str,
    tmp_path: Path,
    *,
    environment: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> Iterator[WebServer]:
    """``opsdash web --port 0 [args]`` with the given settings, stopped (SIGTERM) afterwards."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    stderr_path = tmp_path / f"web-{len(list(tmp_path.glob('web-*.log')))}.log"
    env = web_environment(database_url, data_dir, **(environment or {}))
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "opsdash", "web", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        match = wait_until(
            lambda: (
                next((m for line in lines if (m := READY.search(line))), None)
                or process.poll() is not None
            ),
            what="opsdash web to listen",
            timeout_s=60,
            seen=lambda: stderr_path.read_text(errors="replace")[-2000:],
        )
        assert isinstance(match, re.Match), stderr_path.read_text(errors="replace")
        yield WebServer(match[1], process, database_url, stderr_path, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
