"""The shared reads of browser consoles: same answers as direct reads, one execution per
(read, params) per interval however many consoles ask, failures shared too."""

from __future__ import annotations

import shutil
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from opsdash.app import OpsdashApp
from opsdash.config import Settings
from opsdash.engine.db import Database, connect
from opsdash.engine.models import BackgroundJob, Company, JobStatus, JobType
from opsdash.engine.queries import JobFilter
from opsdash.engine.runtime import Engine
from opsdash.engine.sqltypes import utcnow
from opsdash.screens.preview import PreviewScreen
from opsdash.screens.widgets.live_table import LiveTable
from opsdash.shared_reads import (
    READS,
    ConsoleReads,
    DirectReader,
    SharedReader,
    SharedReadFailed,
    SharedReadServer,
)
from tests.waiting import settle_until

NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
INTERVAL_S = 1.0


class Ticker:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are short (108 bytes): pytest's tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="opsdash-reads-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def seeded(db: Database) -> tuple[Company, BackgroundJob]:
    acme = Company(name="Acme Cleaning", service_company_id="1001")
    with db.session() as session:
        session.add(acme)
        session.commit()
        session.refresh(acme)
        failed = BackgroundJob(
            job_type=JobType.SYNC_SCHEDULE,
            company_id=acme.id,
            status=JobStatus.FAILED,
            params={"date": "2026-11-28"},
            dedup_key=f"sched:{acme.id}:2026-11-28",
            created_at=NOW - timedelta(minutes=5),
            scheduled_at=NOW - timedelta(minutes=5),
            completed_at=NOW - timedelta(minutes=4),
            error_message="upstream reported failure: down",
        )
        session.add(failed)
        session.commit()
        session.refresh(failed)
        session.expunge_all()
    return acme, failed


def serve(db: Database, folder: Path, ticker: Ticker | None = None) -> Iterator[SharedReadServer]:
    server = SharedReadServer(
        db,
        Settings(),
        folder / "reads.sock",
        interval_s=INTERVAL_S,
        clock=lambda: NOW,
        **({"ticker": ticker} if ticker else {}),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture
def server(db: Database, socket_dir: Path, ticker: Ticker) -> Iterator[SharedReadServer]:
    yield from serve(db, socket_dir, ticker)


class Statements:
    """Every statement the database runs while counting."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.seen: list[str] = []

    def __enter__(self) -> Statements:
        event.listen(self.db.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.db.engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.seen.append(statement)


def every_read(acme: Company, job: BackgroundJob) -> dict[str, dict[str, Any]]:
    """Each read with params that find something."""
    return {
        "ping": {},
        "sync_times": {},
        "freshness": {"company_id": None},
        "jobs_page": {"job_filter": JobFilter(status="failed", search="acme")},
        "job_detail": {"job_id": job.id},
        "status_counts": {},
        "throughput": {},
        "run_progress": {},
        "company_choices": {},
        "company_storage": {},
        "company_toggles": {"company_id": acme.id},
        "stored_days": {"company_id": acme.id},
        "technicians": {"company_id": acme.id},
        "run_history": {},
        "recent_alerts": {"limit": 10},
        "recent_actions": {"limit": 10},
    }


def test_every_read_answers_through_the_server_as_it_does_directly(
    db: Database, seeded: tuple[Company, BackgroundJob], server: SharedReadServer
) -> None:
    reads = every_read(*seeded)
    assert set(reads) == set(READS)
    direct = DirectReader(db, Settings())
    shared = SharedReader(server.socket_path)
    try:
        for name, params in reads.items():
            assert shared.read(name, NOW, **params) == direct.read(name, NOW, **params), name
    finally:
        shared.close()
    jobs = ConsoleReads(SharedReader(server.socket_path)).jobs_page(JobFilter(status="failed"))
    assert [row.error_message for row in jobs] == ["upstream reported failure: down"]


def test_five_consoles_asking_at_once_cost_one_execution_per_read(
    db: Database,
    seeded: tuple[Company, BackgroundJob],
    server: SharedReadServer,
    ticker: Ticker,
) -> None:
    acme, job = seeded
    refresh = every_read(acme, job)

    direct = DirectReader(db, Settings())
    with Statements(db) as alone:
        for name, params in refresh.items():
            direct.read(name, NOW, **params)

    consoles = [SharedReader(server.socket_path) for _ in range(5)]
    start = threading.Barrier(len(consoles))
    failures: list[BaseException] = []

    def console(reader: SharedReader) -> None:
        try:
            start.wait(timeout=30)
            for name, params in refresh.items():
                reader.read(name, NOW, **params)
        except BaseException as error:
            failures.append(error)

    with Statements(db) as shared:
        threads = [threading.Thread(target=console, args=(c,)) for c in consoles]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    assert server.executions == len(refresh)
    assert server.requests == 5 * len(refresh)
    assert len(shared.seen) == len(alone.seen)

    # The next interval reads again, once.
    ticker.now += INTERVAL_S
    with Statements(db) as next_interval:
        for reader in consoles:
            reader.read("status_counts", NOW)
    assert server.executions == len(refresh) + 1
    assert len(next_interval.seen) >= 1
    for reader in consoles:
        reader.close()


def test_different_params_are_different_reads(
    db: Database, seeded: tuple[Company, BackgroundJob], server: SharedReadServer
) -> None:
    reader = SharedReader(server.socket_path)
    failed = reader.read("jobs_page", NOW, job_filter=JobFilter(status="failed"))
    pending = reader.read("jobs_page", NOW, job_filter=JobFilter(status="pending"))
    again = reader.read("jobs_page", NOW, job_filter=JobFilter(status="failed"))
    reader.close()
    assert len(failed) == 1 and pending == [] and again == failed
    assert server.executions == 2


def test_a_failing_read_fails_for_every_asker_of_the_interval(socket_dir: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = connect(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none?connect_timeout=2")
    try:
        for server in serve(unreachable, socket_dir):
            readers = [SharedReader(server.socket_path) for _ in range(3)]
            errors = []
            for reader in readers:
                with pytest.raises(SharedReadFailed) as failed:
                    reader.read("status_counts", NOW)
                errors.append(str(failed.value))
                reader.close()
            assert server.executions == 1
            assert all("OperationalError" in error for error in errors)
    finally:
        unreachable.dispose()


def test_a_console_whose_server_is_gone_gets_a_clear_failure(
    db: Database, socket_dir: Path
) -> None:
    for server in serve(db, socket_dir):
        reader = SharedReader(server.socket_path)
        reader.read("ping", NOW)
    with pytest.raises(SharedReadFailed, match="the shared reads are unavailable"):
        reader.read("ping", NOW)
    with pytest.raises(SharedReadFailed, match="the shared reads are unavailable"):
        SharedReader(socket_dir / "reads.sock").read("ping", NOW)


def test_the_socket_is_private_and_nonsense_does_not_stop_it(
    db: Database, server: SharedReadServer
) -> None:
    mode = stat.S_IMODE(server.socket_path.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)
    with socket.socket(socket.AF_UNIX) as rude:
        rude.connect(str(server.socket_path))
        rude.sendall(b"\x00\x00\x00\x05hello")
        assert rude.recv(10) == b""  # dropped
    reader = SharedReader(server.socket_path)
    with pytest.raises(SharedReadFailed, match="no shared read 'drop_tables'"):
        reader.read("drop_tables", NOW)
    assert reader.read("company_choices", NOW) == []
    reader.close()


def test_the_typed_face_reads_every_screen_read(db: Database) -> None:
    reads = ConsoleReads(DirectReader(db, Settings()))
    assert reads.company_choices() == []
    assert reads.jobs_page(JobFilter()) == []
    assert reads.job_detail(uuid.uuid4()) is None
    assert reads.run_progress(NOW) is None
    assert reads.status_counts(NOW)["failed"] == 0


# --- a console reading through the server ---------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_console_reading_through_the_server_shows_the_jobs(
    engine: Engine, socket_dir: Path
) -> None:
    engine.sync_now()  # one job queued: the users sync
    server = SharedReadServer(
        engine.db, engine.settings, socket_dir / "reads.sock", interval_s=3600, clock=utcnow
    )
    server.start()
    reader = SharedReader(server.socket_path)
    try:
        app = OpsdashApp(engine, reads=ConsoleReads(reader))
        async with app.run_test(size=(120, 36)) as pilot:
            jobs = app.screen
            await settle_until(pilot, lambda: jobs.refreshes >= 1)
            assert jobs.query_one("#jobs-table", LiveTable).row_count == 1
            # Later refreshes within the interval are answered without the database: each
            # read (here always with the same params) ran once, however often it was asked.
            await settle_until(pilot, lambda: jobs.refreshes >= 3)
            assert server.asked["jobs_page"] >= 3
            assert set(server.run.values()) == {1}, server.summary()
    finally:
        reader.close()
        server.stop()


@pytest.mark.anyio
async def test_the_technician_preview_reads_through_the_server(
    engine: Engine, socket_dir: Path
) -> None:
    engine.start(scheduler=False)
    engine.sync()
    assert engine.wait_idle(timeout_s=60)
    server = SharedReadServer(
        engine.db, engine.settings, socket_dir / "reads.sock", interval_s=3600, clock=utcnow
    )
    server.start()
    reader = SharedReader(server.socket_path)
    try:
        app = OpsdashApp(engine, reads=ConsoleReads(reader), poll_interval_s=0.3)
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("3")
            await settle_until(pilot, lambda: isinstance(app.screen, PreviewScreen))
            preview = app.screen
            assert isinstance(preview, PreviewScreen)
            await settle_until(pilot, lambda: preview.refreshes >= 3)
            assert preview._result is not None, preview._problem
            # Every query of the preview's refresh went through the server, and ran once.
            for name in ("company_choices", "stored_days", "technicians", "company_toggles"):
                assert server.asked[name] >= 3, server.summary()
                assert server.run[name] == 1, server.summary()
    finally:
        reader.close()
        server.stop()
