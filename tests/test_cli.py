"""The command line as a user runs it: real processes, the demo upstream over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsdash.demo.server import DemoUpstream


def opsdash(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "opsdash", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli_env(tmp_path: Path, demo_upstream: DemoUpstream) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_"))
    }
    env.update(
        {
            "OPSDASH_DATA_DIR": str(tmp_path / "data"),
            # The test's demo upstream, shared by every command: asked for as a demo.
            "OPSDASH_DEMO": "1",
            "MAIDCENTRAL_API_URL": demo_upstream.url,
            "MAIDCENTRAL_API_KEY": "test-key",
            "OPSDASH_POLL_INTERVAL_S": "0.2",
        }
    )
    return env


def test_sync_wait_runs_the_whole_sync_and_summarises(cli_env: dict[str, str]) -> None:
    result = opsdash("sync", "--wait", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "queued 1 of 1 planned jobs" in result.stdout  # no companies known yet
    assert "done: 22 completed; upstream calls: 4" in result.stdout
    again = opsdash("sync", "--company", "1001", "--wait", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert "queued 7 of 7 planned jobs" in again.stdout


def test_sync_one_day_of_one_company(cli_env: dict[str, str]) -> None:
    assert opsdash("sync", "--wait", env=cli_env).returncode == 0
    result = opsdash("sync", "--company", "1002", "--date", "2026-12-24", "--wait", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "queued 1 of 1 planned jobs" in result.stdout
    day_folder = Path(cli_env["OPSDASH_DATA_DIR"], "blobs", "1002", "2026-12-24")
    assert [file.name.startswith("schedule-") for file in day_folder.iterdir()] == [True]


def test_unknown_company_is_a_clear_error(cli_env: dict[str, str]) -> None:
    result = opsdash("sync", "--company", "nope", env=cli_env)
    assert result.returncode == 2
    assert "unknown company 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_date_is_a_clear_error(cli_env: dict[str, str]) -> None:
    result = opsdash("sync", "--date", "2025-13-01", env=cli_env)
    assert result.returncode == 2
    assert "'2025-13-01' is not a date" in result.stderr


def test_unreachable_database_is_a_clear_error(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = opsdash("sync", env=env, timeout=60)
    assert result.returncode == 3
    assert "database unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_a_clear_error(cli_env: dict[str, str]) -> None:
    result = opsdash("sync", env={**cli_env, "OPSDASH_WORKERS": "many"})
    assert result.returncode == 2
    assert "cannot start" in result.stderr
    assert "OPSDASH_WORKERS" in result.stderr and "'many'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_port_is_a_clear_error(cli_env: dict[str, str]) -> None:
    result = opsdash("--serve", "--port", "99999", env=cli_env)
    assert result.returncode == 2
    assert "'99999' is not a port" in result.stderr
