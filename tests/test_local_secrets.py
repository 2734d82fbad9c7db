"""What another local user can get from the data folder: nothing.

The attacks are real where the suite runs as root (as CI does): a reader runs as
``nobody`` (``setuid`` in the child, through ``subprocess``'s ``user=``) and tries
to open the database, its WAL files, the blobs and the JWT secret. A control
file that ``nobody`` may read proves the reader works, so a pass is not just a
broken harness. Without root the same modes are checked with ``os.stat``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from opsdash.config import Settings
from opsdash.datafolder import read_or_create_secret, secure_existing
from opsdash.demo import engine_for
from opsdash.readapi.tokens import InvalidLifetime, mint_token

NOBODY = 65534
IS_ROOT = os.geteuid() == 0

READER = """
import json, os, sys
results = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as handle:
                handle.read(1)
        results[path] = "read"
    except PermissionError:
        results[path] = "denied"
    except FileNotFoundError:
        results[path] = "missing"
print(json.dumps(results))
"""


def _python_for_nobody() -> str | None:
    """An interpreter that ``nobody`` can run (a venv under /root is out of its reach)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            done = subprocess.run(
                [candidate, "-I", "-c", "pass"], user=NOBODY, capture_output=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return candidate
    return None


PYTHON_FOR_NOBODY = _python_for_nobody() if IS_ROOT else None
as_another_user = pytest.mark.skipif(
    PYTHON_FOR_NOBODY is None, reason="needs root and an interpreter that nobody can run"
)


def read_as_nobody(*paths: Path) -> dict[str, str]:
    assert PYTHON_FOR_NOBODY is not None
    done = subprocess.run(
        [PYTHON_FOR_NOBODY, "-I", "-c", READER, *map(str, paths)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {Path(path).name: outcome for path, outcome in json.loads(done.stdout).items()}


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A folder every local user can enter, as a home directory or /srv often is."""
    base = Path(tempfile.mkdtemp(prefix="opsdash-local-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def embedded_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        demo_companies=1,
        days_ahead=1,
        workers=1,
        poll_interval_s=0.05,
        supabase_url=None,
        supabase_service_role_key=None,
        supabase_jwt_secret=None,
        jwks_url=None,
    )


@pytest.fixture
def live_data_folder(shared_base: Path) -> Iterator[Path]:
    """A synced embedded data folder whose database is still open (so -wal and -shm exist)."""
    data_dir = shared_base / "data"
    settings = embedded_settings(data_dir)
    engine = engine_for(settings)
    try:
        engine.sync()
        engine.start(scheduler=False)
        assert engine.wait_idle(timeout_s=60, poll_s=0.05)
        settings.jwt_secret()
        yield data_dir
    finally:
        engine.stop()


def entries(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def wide_entries(root: Path) -> list[str]:
    return [str(p) for p in entries(root) if stat.S_IMODE(p.lstat().st_mode) & 0o077]


def targets(data_dir: Path) -> list[Path]:
    blob = next(data_dir.glob("blobs/*/*/schedule*.json"))  # named by its content
    return [
        data_dir,
        data_dir / "opsdash.db",
        data_dir / "opsdash.db-wal",
        data_dir / "opsdash.db-shm",
        data_dir / "jwt-secret",
        data_dir / "blobs",
        blob,
    ]


def test_every_folder_is_0700_and_every_file_0600(live_data_folder: Path) -> None:
    data_dir = live_data_folder
    assert (data_dir / "opsdash.db-wal").exists(), "the WAL files are part of what is checked"
    assert wide_entries(data_dir) == []
    for path in entries(data_dir):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


@as_another_user
def test_another_local_user_reads_nothing_in_the_data_folder(
    shared_base: Path, live_data_folder: Path
) -> None:
    data_dir = live_data_folder
    control = shared_base / "public.txt"
    control.write_text("anyone may read this")
    control.chmod(0o644)
    outcome = read_as_nobody(control, *targets(data_dir))
    assert outcome.pop("public.txt") == "read", "the reader works"
    assert set(outcome.values()) == {"denied"}, outcome


@as_another_user
def test_a_folder_found_wide_is_made_private_on_start_with_a_warning(
    live_data_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = live_data_folder
    for path in entries(data_dir):  # as an older opsdash (or a careless copy) left it
        path.chmod(0o755 if path.is_dir() else 0o644)
    before = read_as_nobody(*targets(data_dir))
    assert set(before.values()) == {"read"}, before
    with caplog.at_level(logging.WARNING, logger="opsdash.datafolder"):
        engine_for(embedded_settings(data_dir)).stop()
    assert "was readable by other users" in caplog.text
    assert wide_entries(data_dir) == []
    after = read_as_nobody(*targets(data_dir))
    assert set(after.values()) == {"denied"}, after


def test_secure_existing_reports_only_what_it_changed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "blobs").mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    private = root / "private"
    private.write_text("x")
    private.chmod(0o600)
    wide = root / "blobs" / "wide"
    wide.write_text("x")
    wide.chmod(0o640)
    assert secure_existing(root) == [wide]
    assert stat.S_IMODE(wide.stat().st_mode) == 0o600
    assert secure_existing(root) == []
    assert secure_existing(tmp_path / "missing") == []


@as_another_user
def test_the_secret_is_never_readable_while_it_is_created(shared_base: Path) -> None:
    """A local process polling the path read the old secret in 74 of 300 trials."""
    folder = shared_base / "secrets"
    folder.mkdir()
    folder.chmod(0o755)  # the worst case: a folder everyone may look into
    target = folder / "jwt-secret"
    stop = shared_base / "stop"
    poller = (
        "import os, sys, time\n"
        "target, stop = sys.argv[1], sys.argv[2]\n"
        "read = denied = tries = 0\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists(stop) and time.monotonic() < deadline:\n"
        "    tries += 1\n"
        "    try:\n"
        "        with open(target, 'rb') as handle:\n"
        "            handle.read()\n"
        "        read += 1\n"
        "    except PermissionError:\n"
        "        denied += 1\n"
        "    except FileNotFoundError:\n"
        "        pass\n"
        "print(read, denied, tries)\n"
    )
    assert PYTHON_FOR_NOBODY is not None
    process = subprocess.Popen(
        [PYTHON_FOR_NOBODY, "-I", "-c", poller, str(target), str(stop)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.2)  # let the poller start; its loop runs until told to stop
        secrets = set()
        for _ in range(300):
            secrets.add(read_or_create_secret(folder, "jwt-secret"))
            assert stat.S_IMODE(target.stat().st_mode) == 0o600
            target.unlink()
        assert len(secrets) == 300, "each creation made a new secret"
    finally:
        stop.touch()
        out, _ = process.communicate(timeout=60)
    read, denied, tries = map(int, out.split())
    assert tries > 300, "the poller ran alongside"
    assert denied > 0, "the poller did see the secret file exist"
    assert read == 0, f"another user read the secret {read} times"


def test_two_processes_creating_the_secret_agree(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from opsdash.datafolder import read_or_create_secret\n"
        "print(read_or_create_secret(Path(sys.argv[1]), 'jwt-secret'))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "data")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    secrets = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert len(secrets) == 1 and len(secrets.pop()) >= 64
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["jwt-secret"]


# --- tokens and the secret's strength ----------------------------------------------------


def test_a_weak_supabase_jwt_secret_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="shorter than 32 bytes"):
        Settings(supabase_jwt_secret="super-secret-jwt-token")
    production = {  # a secret is a production setting: it comes with the whole set
        "database_url": "postgresql://opsdash@db.example/postgres",
        "supabase_url": "https://project.supabase.co",
        "supabase_service_role_key": "service-role-key",
        "maidcentral_api_url": "https://maidcentral.example",
        "maidcentral_api_key": "upstream-key",
    }
    strong = Settings(supabase_jwt_secret="x" * 32, **production)  # type: ignore[arg-type]
    assert strong.supabase_jwt_secret == "x" * 32


def test_the_cli_refuses_a_weak_secret_and_says_token_is_for_embedded_mode(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSDASH_", "SUPABASE_"))}
    env.update({"OPSDASH_DATA_DIR": str(tmp_path), "SUPABASE_JWT_SECRET": "short"})
    done = subprocess.run(
        [sys.executable, "-m", "opsdash", "token", "--email", "a@example.com"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "shorter than 32 bytes" in done.stderr and "Traceback" not in done.stderr
    env.pop("SUPABASE_JWT_SECRET")
    helped = subprocess.run(
        [sys.executable, "-m", "opsdash", "token", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "embedded" in helped.stdout and "24h" in helped.stdout
    too_long = subprocess.run(
        [sys.executable, "-m", "opsdash", "token", "--email", "a@example.com", "--ttl", "7d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert too_long.returncode == 2
    assert "between 1 second and 24 hours" in too_long.stderr


def test_token_lifetime_is_capped_at_24_hours(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    with pytest.raises(InvalidLifetime, match="24 hours"):
        mint_token(settings, None, "a@example.com", timedelta(hours=25))  # type: ignore[arg-type]
