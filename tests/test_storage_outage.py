"""Storage that heals itself and outages that are waited out, end to end.

The engine syncs the demo upstream into the Supabase Storage stand-in (storage3 over real
HTTP) or the local folder; objects are deleted behind its back, and storage is made to
fail in the middle of a sync the ways the real one does. Every wait is on a condition.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine.blobs import BlobNotFound, content_path, sha256_hex
from opsdash.engine.models import BackgroundJob, JobStatus, JobType, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings, migrated
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.supabase_storage_server import SupabaseStorageStandIn

JWT_SECRET = "stand-in-project-jwt-secret-with-32-bytes-or-more"
BUCKET = "schedule-data"


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


@pytest.fixture
def storage() -> SupabaseStorageStandIn:
    return SupabaseStorageStandIn(JWT_SECRET)


@pytest.fixture
def project(storage: SupabaseStorageStandIn) -> Iterator[SupabaseAuthStandIn]:
    """One Supabase project URL: Auth (the users sync maintains its users) and storage."""
    with SupabaseAuthStandIn(JWT_SECRET, storage=storage) as server:
        yield server


def supabase_settings(
    db_url: str, tmp_path: Path, upstream: DemoUpstream, project: SupabaseAuthStandIn, **extra
) -> Settings:
    return engine_settings(
        db_url,
        tmp_path / "data",
        upstream.url,
        supabase_url=project.url,
        supabase_service_role_key=project.service_role_key,
        storage_connect_timeout_s=0.5,
        storage_read_timeout_s=0.5,
        **extra,
    )


def jobs(engine: Engine) -> list[BackgroundJob]:
    with engine.db.session() as session:
        return list(session.execute(select(BackgroundJob)).scalars())


def rows(engine: Engine) -> dict[str, ScheduleData]:
    with engine.db.session() as session:
        return {row.storage_path: row for row in session.execute(select(ScheduleData)).scalars()}


def sync_and_wait(engine: Engine, **narrow) -> None:
    engine.sync(**narrow)
    assert engine.wait_idle(timeout_s=60, poll_s=0.05), "the sync did not finish"


# --- a lost object comes back by itself -------------------------------------------------


@dataclass
class Synced:
    """An engine that has synced every demo company into storage (local or the stand-in)."""

    engine: Engine
    settings: Settings
    storage: SupabaseStorageStandIn
    backend: str

    def put_behind_its_back(self, path: str, body: bytes | None) -> None:
        """Replace the object at ``path`` with ``body``, or with ``None`` delete it, without
        going through the engine."""
        if self.backend == "supabase":
            if body is None:
                self.storage.buckets[BUCKET].objects.pop(path)
            else:
                self.storage.put_object(BUCKET, path, body)
        elif body is None:
            (self.settings.blob_root / path).unlink()
        else:
            (self.settings.blob_root / path).write_bytes(body)

    def resync_company_of(self, path: str) -> dict[str, BackgroundJob]:
        """Sync the company that ``path`` belongs to; its new jobs by date."""
        before = {job.id for job in jobs(self.engine)}
        company = self.engine.company_by_service_id(path.split("/")[0])
        assert company is not None
        sync_and_wait(self.engine, company_id=company.id)
        return {
            job.params["date"]: job
            for job in jobs(self.engine)
            if job.id not in before and job.job_type == JobType.SYNC_SCHEDULE
        }


@pytest.fixture(params=["local", "supabase"])
def synced(
    request: pytest.FixtureRequest,
    db_url: str,
    tmp_path: Path,
    demo_upstream: DemoUpstream,
    storage: SupabaseStorageStandIn,
    project: SupabaseAuthStandIn,
) -> Iterator[Synced]:
    db_url = migrated(db_url)
    if request.param == "supabase":
        settings = supabase_settings(db_url, tmp_path, demo_upstream, project)
    else:
        settings = engine_settings(db_url, tmp_path / "data", demo_upstream.url)
    engine = Engine(settings)
    try:
        engine.start(scheduler=False)
        sync_and_wait(engine)
        yield Synced(engine, settings, storage, request.param)
    finally:
        engine.stop()


TAMPERINGS: dict[str, Callable[[bytes], bytes | None]] = {
    "deleted": lambda original: None,
    "replaced with other bytes": lambda original: b'{"jobs": [], "written": "by someone else"}',
    "truncated": lambda original: original[: len(original) // 2],
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_an_object_lost_or_altered_behind_the_engines_back_is_restored_by_the_next_sync(
    synced: Synced, tamper: Callable[[bytes], bytes | None]
) -> None:
    engine = synced.engine
    stored = rows(engine)
    path, other = sorted(stored)[:2]
    original, other_before = engine.blobs.get(path), engine.blobs.get(other)
    synced.put_behind_its_back(path, tamper(original))

    new_jobs = synced.resync_company_of(path)

    assert engine.blobs.get(path) == original  # the same bytes, so the same checksum
    assert rows(engine)[path].checksum == stored[path].checksum
    assert engine.blobs.get(other) == other_before
    day = path.split("/")[1]
    assert (new_jobs[day].result or {}).get("restored") is True
    others = [job.result or {} for date, job in new_jobs.items() if date != day]
    assert others and all(result.get("unchanged") for result in others)
    assert not any(result.get("restored") for result in others)
    assert {job.status for job in new_jobs.values()} == {JobStatus.COMPLETED}


def test_another_version_of_the_day_does_not_stand_in_for_the_lost_one(synced: Synced) -> None:
    engine = synced.engine
    path = sorted(rows(engine))[0]
    original = engine.blobs.get(path)
    company_id, day, _ = path.split("/")
    # A late writer's version of the day, of the very same size, and the published one gone.
    stray_body = original.upper()
    stray = content_path(company_id, day, sha256_hex(stray_body))
    assert len(stray_body) == len(original) and stray != path
    engine.blobs.put(stray, stray_body)
    engine.blobs.delete(path)

    synced.resync_company_of(path)

    assert engine.blobs.get(path) == original
    assert rows(engine)[path].storage_path == path
    # The unpublished version is swept by that sync too: it would otherwise stay forever.
    with pytest.raises(BlobNotFound):
        engine.blobs.get(stray)


def test_a_sync_lists_each_company_once_and_an_unchanged_one_writes_nothing(
    db_url: str,
    tmp_path: Path,
    demo_upstream: DemoUpstream,
    storage: SupabaseStorageStandIn,
    project: SupabaseAuthStandIn,
) -> None:
    settings = supabase_settings(migrated(db_url), tmp_path, demo_upstream, project)
    engine = Engine(settings)
    try:
        engine.start(scheduler=False)
        sync_and_wait(engine)
        companies = {row.company_id for row in rows(engine).values()}
        assert len(companies) == len(demo_upstream.world.service_company_ids)
        storage.reset_counts()

        sync_and_wait(engine)

        # One list-v2 request per company for all its days: no folder walk, no request per
        # day, and nothing read or written when nothing changed.
        assert storage.count("POST", "object/list-v2") == len(companies)
        assert storage.count(route="object/list") == 0
        assert storage.count(route="object") == storage.count(route="object/authenticated") == 0
        assert {job.status for job in jobs(engine)} == {JobStatus.COMPLETED}
    finally:
        engine.stop()


# --- outages are ridden out ------------------------------------------------------------


Outage = Callable[[SupabaseAuthStandIn], Callable[[], None]]


def _restart_later(project: SupabaseAuthStandIn) -> Callable[[], None]:
    project.stop()
    return project.start


def _switch(field: str, value: object) -> Outage:
    def fault(project: SupabaseAuthStandIn) -> Callable[[], None]:
        assert project.storage is not None
        setattr(project.storage.faults, field, value)
        return project.storage.faults.clear

    return fault


OUTAGES: dict[str, Outage] = {
    "server stopped and restarted": _restart_later,
    "gateway answers 502": _switch("gateway_status", 502),
    "storage's database times out (544)": _switch("storage_status", 544),
    "storage's database unreachable (500)": _switch("storage_status", 500),
    "storage stalls": _switch("stall", True),
}


@pytest.mark.parametrize("outage", OUTAGES.values(), ids=OUTAGES.keys())
def test_a_storage_outage_in_the_middle_of_a_sync_ends_with_every_job_completed(
    sqlite_url: str,
    tmp_path: Path,
    storage: SupabaseStorageStandIn,
    project: SupabaseAuthStandIn,
    outage: Outage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = DemoUpstream(companies=4, api_key="test-key")
    upstream.faults.latency_ms = 300  # each company's batch takes a while: time to strike
    upstream.start()
    settings = supabase_settings(sqlite_url, tmp_path, upstream, project, workers=1)
    engine = Engine(settings)
    engine.storage_gate.first_backoff_s = 0.1
    engine.storage_gate.max_backoff_s = 0.4
    try:
        engine.sync()
        engine.start(scheduler=False)
        wait_for(lambda: len(storage.stored(BUCKET)) >= settings.days_ahead, what="a first company")
        end_outage = outage(project)
        wait_for(lambda: not engine.storage_gate.state.ok, what="the workers to notice")
        # Down for a while: the workers keep probing (with backoff) and claim nothing.
        wait_for(lambda: engine.storage_gate.failed_probes >= 3, what="probes during the outage")
        running = [job for job in jobs(engine) if job.status == JobStatus.RUNNING]
        assert running == []
        assert engine.status().storage.reason
        end_outage()
        assert engine.wait_idle(timeout_s=60, poll_s=0.05), "the sync did not finish"
    finally:
        engine.stop()
        upstream.stop()

    finished = jobs(engine)
    assert {job.status for job in finished} == {JobStatus.COMPLETED}
    schedule_jobs = [job for job in finished if job.job_type == JobType.SYNC_SCHEDULE]
    assert len(schedule_jobs) == 4 * settings.days_ahead
    # The outage spent no attempt: every job completed at its first, with no error.
    assert {job.attempts for job in finished} == {1}
    assert all(not job.errors for job in finished)
    stored = storage.stored(BUCKET)
    for row in rows(engine).values():
        assert hashlib.sha256(stored[row.storage_path]).hexdigest() == row.checksum
    # One line per released batch, never a traceback or a gateway's page.
    released = [r for r in caplog.records if "released without spending an attempt" in r.message]
    assert released
    for record in caplog.records:
        assert record.exc_info is None or record.levelno < 20, record.getMessage()
        assert "<html" not in record.getMessage()
