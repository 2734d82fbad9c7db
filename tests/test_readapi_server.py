"""``serve()`` as an operator runs it: a real process, real signals, real worker processes."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from opsdash.config import Settings
from opsdash.demo import engine_for
from opsdash.engine.db import connect
from opsdash.engine.models import ScheduleData, UserProfile
from opsdash.readapi.app import SCHEDULE_PATH
from opsdash.readapi.server import EXIT_BAD_CONFIGURATION, serve
from opsdash.readapi.tokens import mint_token
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_for(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir, demo_companies=1, days_ahead=1, workers=1, poll_interval_s=0.05
    )


@contextmanager
def serving_process(
    data_dir: Path, *, workers: int, with_engine: bool
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from opsdash.config import Settings\n"
        "from opsdash.demo import engine_for\n"
        "from opsdash.readapi.server import serve\n"
        f"settings = Settings(data_dir=Path({str(data_dir)!r}), demo_companies=1, days_ahead=1,"
        " workers=1, poll_interval_s=0.05)\n"
        f"sys.exit(serve(settings, host='127.0.0.1', port={port}, workers={workers},"
        f" with_engine={with_engine}, engine_factory=engine_for))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OPSDASH_", "DATABASE_", "SUPABASE_", "MAIDCENTRAL_"))
        },
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        # Spawned workers import everything afresh: on a loaded machine that takes a while.

        def ready() -> bool:
            assert process.poll() is None, process.communicate()[1]
            try:
                return httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, what="the server to answer /readyz", timeout_s=240, poll_s=0.1)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str]:
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


def test_two_workers_serve_count_together_and_stop_on_sigterm(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    engine = engine_for(settings)
    engine.sync()
    engine.start(scheduler=False)
    assert engine.wait_idle(timeout_s=60, poll_s=0.05)
    with engine.db.session() as session:
        email = session.execute(
            select(UserProfile.email).where(UserProfile.role == "admin")
        ).scalar_one()
        day = session.execute(select(ScheduleData.date)).scalars().first()
    token = mint_token(settings, engine.db, email or "", timedelta(hours=1))
    engine.stop()

    with serving_process(tmp_path, workers=2, with_engine=False) as (process, base_url):
        headers = {"Authorization": f"Bearer {token}"}
        requests = 40
        with httpx.Client(base_url=base_url) as client:
            for _ in range(requests):
                # A new connection each time, so both workers take some of them.
                answer = client.get(
                    SCHEDULE_PATH,
                    params={"date": str(day)},
                    headers={**headers, "Connection": "close"},
                )
                assert answer.status_code == 200
            metrics = client.get("/metrics").text
        counted = f'opsdash_http_requests_total{{route="{SCHEDULE_PATH}",status="200"}} {requests}'
        assert counted in metrics, "every worker's requests are in one scrape"
        code, stderr = stop(process, signal.SIGTERM)

    assert code == 0, stderr
    access_lines = [line for line in stderr.splitlines() if f"GET {SCHEDULE_PATH}" in line]
    assert len(access_lines) == requests, "one log line per request"
    started = [line for line in stderr.splitlines() if "Started server process" in line]
    assert len(started) == 2, stderr
    assert "Traceback" not in stderr, stderr


def test_the_engine_syncs_an_empty_database_and_stops_on_sigint(tmp_path: Path) -> None:
    with serving_process(tmp_path, workers=1, with_engine=True) as (process, base_url):
        db = connect(settings_for(tmp_path).effective_database_url)
        try:

            def stored() -> int:
                with db.session() as session:
                    count = session.execute(select(func.count()).select_from(ScheduleData))
                    return int(count.scalar_one())

            # The first run of the engine syncs every company-day; wait for it to land.
            wait_until(stored, what="the engine to store a schedule", timeout_s=30, poll_s=0.1)
            with db.session() as session:
                email = session.execute(
                    select(UserProfile.email).where(UserProfile.role == "office").limit(1)
                ).scalar_one()
                day = session.execute(select(ScheduleData.date)).scalars().first()
            token = mint_token(settings_for(tmp_path), db, email or "", timedelta(minutes=5))
        finally:
            db.dispose()
        answer = httpx.get(
            f"{base_url}{SCHEDULE_PATH}",
            params={"date": str(day)},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200
        code, stderr = stop(process, signal.SIGINT)
    assert code == 0, stderr
    assert "stopping the sync engine" in stderr
    assert "Traceback" not in stderr, stderr


def test_a_busy_port_is_a_clear_configuration_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="opsdash.serve"):
            code = serve(settings_for(tmp_path), host="127.0.0.1", port=port, with_engine=False)
    assert code == EXIT_BAD_CONFIGURATION
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_an_unreachable_database_is_a_clear_configuration_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none", demo=True
    )
    with caplog.at_level(logging.ERROR, logger="opsdash.serve"):
        code = serve(settings, host="127.0.0.1", port=free_port(), with_engine=False)
    assert code == EXIT_BAD_CONFIGURATION
    assert "cannot use the database" in caplog.text
