"""Supabase mode end to end: users sync → Auth users → a user's token → the read API answers.

Real parts throughout: the demo upstream over HTTP, a Supabase project stand-in (Auth admin
API and Storage on one loopback port) driven by supabase-py, the engine's workers on
SQLite or Postgres, and the read API in its own process under uvicorn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine.models import BackgroundJob, ScheduleData, UserProfile
from opsdash.engine.runtime import Engine
from opsdash.readapi.app import SCHEDULE_PATH
from tests.conftest import engine_settings, migrated
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.supabase_storage_server import SupabaseStorageStandIn
from tests.test_readapi_server import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
JWT_SECRET = "project-jwt-secret-for-the-round-trip-" * 2
BUCKET = "schedule-data"


@pytest.fixture
def project() -> Iterator[SupabaseAuthStandIn]:
    storage = SupabaseStorageStandIn(JWT_SECRET)
    with SupabaseAuthStandIn(JWT_SECRET, storage=storage) as server:
        yield server


def supabase_settings(
    db_url: str, data_dir: Path, upstream: DemoUpstream, project: SupabaseAuthStandIn
) -> Settings:
    return engine_settings(
        db_url,
        data_dir,
        upstream.url,
        # On Postgres the whole production set is here: production (Supabase) mode. On
        # SQLite the same project runs as a demo asked for (production needs Postgres).
        demo=not db_url.startswith("postgresql"),
        supabase_url=project.url,
        supabase_service_role_key=project.service_role_key,
        supabase_jwt_secret=JWT_SECRET,
        jwt_audience="authenticated",
        days_ahead=2,
    )


@contextmanager
def read_api(settings: Settings) -> Iterator[str]:
    """``opsdash --serve`` without the engine, in its own process; yields the base URL."""
    port = free_port()
    values = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in settings.model_dump().items()
        if value is not None
    }
    script = (
        "import sys\n"
        "from opsdash.config import Settings\n"
        "from opsdash.readapi.server import serve\n"
        f"settings = Settings(**{values!r})\n"
        f"sys.exit(serve(settings, host='127.0.0.1', port={port}, with_engine=False))\n"
    )
    prefixes = ("OPSDASH_", "SUPABASE_", "MAIDCENTRAL_", "DATABASE_URL")
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(prefixes)},
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the readiness poll
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the read API never became ready"
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        process.communicate(timeout=30)


def upstream_people(upstream: DemoUpstream) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{upstream.url}/api/dr-schedule/users", headers={"Authorization": "Bearer test-key"}
    )
    groups = answer.json()["Result"]["ServiceCompanyGroups"]
    return [
        person
        for group in groups
        for listed in group["ServiceCompanies"]
        for person in listed["Users"]
    ]


def test_users_sync_to_auth_token_to_read_api(
    db_url: str, tmp_path: Path, demo_upstream: DemoUpstream, project: SupabaseAuthStandIn
) -> None:
    people = upstream_people(demo_upstream)
    technicians = [p for p in people if p["EmployeeInformationId"] and "Employee" in p["Roles"]]
    # One technician already has an Auth user, made by the earlier system with its own id.
    veteran = technicians[0]
    legacy = project.add_user(veteran["Email"].upper(), app_metadata={"from": "edge functions"})

    settings = supabase_settings(migrated(db_url), tmp_path / "data", demo_upstream, project)
    with Engine(settings) as engine:
        engine.sync()
        engine.start(scheduler=False)
        assert engine.wait_idle(timeout_s=120, poll_s=0.1)
        with engine.db.session() as session:
            [users_job] = session.execute(
                select(BackgroundJob).where(BackgroundJob.job_type == "sync_users")
            ).scalars()
            profiles = {p.email: p for p in session.execute(select(UserProfile)).scalars()}
            days = session.execute(select(ScheduleData)).scalars().all()

    # Auth users exist for everyone: created with the upstream id, or adopted.
    assert users_job.status == "completed", users_job.error_message
    counts = users_job.result["auth_users"]
    assert (counts["created"], counts["adopted"], counts["failed"]) == (len(people) - 1, 1, 0)
    for person in people:
        profile = profiles[person["Email"].lower()]
        assert profile.maidcentral_user_id == uuid.UUID(person["UserId"])
        expected_id = legacy.id if person is veteran else uuid.UUID(person["UserId"])
        assert profile.id == expected_id
        assert project.users[profile.id].email == person["Email"].lower()
    assert len(project.users) == len(people)

    # The veteran signs in (as the portal does, by OTP) and reads their own day.
    veteran_profile = profiles[veteran["Email"].lower()]
    employee_id = veteran_profile.employee_information_id
    blobs = project.storage.stored(BUCKET) if project.storage else {}
    assert blobs, "the schedules were written to Supabase Storage"
    mine = {}
    for day in days:
        document = orjson.loads(blobs[day.storage_path])
        if document["companyId"] != str(veteran_profile.company_id):
            continue
        mine[day.date] = [
            job["jobId"]
            for job in document["jobs"]
            if any(s["EmployeeInformationId"] == employee_id for s in job["employeeSchedules"])
        ]
    day, expected_jobs = max(mine.items(), key=lambda item: len(item[1]))
    assert expected_jobs, "the veteran has work on some day"
    token = project.access_token(legacy.id)
    office = next(
        p
        for p in profiles.values()
        if p.role in ("office", "admin") and p.company_id == veteran_profile.company_id
    )
    office_token = project.access_token(office.id)

    with read_api(settings) as base_url:
        answer = httpx.get(
            f"{base_url}{SCHEDULE_PATH}",
            params={"date": str(day)},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text
        assert sorted(job["jobId"] for job in answer.json()["jobs"]) == sorted(expected_jobs)

        # Office staff of the same company see their company's full day.
        full = httpx.get(
            f"{base_url}{SCHEDULE_PATH}",
            params={"date": str(day)},
            headers={"Authorization": f"Bearer {office_token}"},
        )
        assert full.status_code == 200
        company_day = {job["jobId"] for job in full.json()["jobs"]}
        assert company_day > set(expected_jobs)

        # A token for an Auth user the sync never made a profile for finds nothing.
        stranger = project.add_user("someone-else@example.com")
        unknown = httpx.get(
            f"{base_url}{SCHEDULE_PATH}",
            params={"date": str(day)},
            headers={"Authorization": f"Bearer {project.access_token(stranger.id)}"},
        )
        assert unknown.status_code == 404
