"""`opsdash verify` and the start-up storage checks, as real `opsdash` processes.

verify: a synced world, then objects deleted, truncated and altered behind opsdash's back;
verify finds them (the altered one only with --deep), --repair queues resyncs, workers
restore every day, and verify is clean again. Start-up: `sync`, `worker` and the console
end with one clear line and exit code 2 when storage is unreachable, refuses the key or
has a public bucket.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine.models import Company, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.supabase_storage_server import SupabaseStorageStandIn

JWT_SECRET = "stand-in-project-jwt-secret-with-32-bytes-or-more"
BUCKET = "schedule-data"
STRIPPED = ("OPSDASH_", "SUPABASE_", "DATABASE_URL", "MAIDCENTRAL_")


def opsdash(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED)}
    return subprocess.run(
        [sys.executable, "-m", "opsdash", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def storage() -> Iterator[SupabaseStorageStandIn]:
    with SupabaseStorageStandIn(JWT_SECRET) as standin:
        yield standin


def environment(settings: Settings) -> dict[str, str]:
    env = {
        "OPSDASH_DATABASE_URL": settings.effective_database_url,
        "OPSDASH_DEMO": "1",  # the tests' own database and demo data
        "OPSDASH_DATA_DIR": str(settings.data_dir),
        "COLUMNS": "200",
    }
    if settings.supabase_url and settings.supabase_service_role_key:
        env["SUPABASE_URL"] = settings.supabase_url
        env["SUPABASE_SERVICE_ROLE_KEY"] = settings.supabase_service_role_key
    return env


@pytest.mark.parametrize("backend", ["local", "supabase"])
def test_verify_finds_lost_and_damaged_objects_and_repair_restores_them(
    sqlite_url: str,
    tmp_path: Path,
    demo_upstream: DemoUpstream,
    storage: SupabaseStorageStandIn,
    backend: str,
) -> None:
    extra = {}
    # A Supabase project answers Auth too (the users sync maintains its users).
    project = SupabaseAuthStandIn(JWT_SECRET, storage=storage)
    project.start()
    if backend == "supabase":
        extra = {
            "supabase_url": project.url,
            "supabase_service_role_key": storage.service_role_key,
        }
    try:
        verify_and_repair(tmp_path, sqlite_url, demo_upstream, storage, backend, extra)
    finally:
        project.stop()


def verify_and_repair(
    tmp_path: Path,
    sqlite_url: str,
    demo_upstream: DemoUpstream,
    storage: SupabaseStorageStandIn,
    backend: str,
    extra: dict[str, str],
) -> None:
    settings = engine_settings(sqlite_url, tmp_path / "data", demo_upstream.url, **extra)
    with Engine(settings) as engine:
        engine.start(scheduler=False)
        engine.sync()
        assert engine.wait_idle(timeout_s=60, poll_s=0.05)
        with engine.db.session() as session:
            paths = sorted(session.execute(select(ScheduleData.storage_path)).scalars())
            first_company = (
                session.execute(
                    select(Company.service_company_id).order_by(Company.service_company_id)
                )
                .scalars()
                .first()
            )
        lost, truncated, altered = [p for p in paths if p.startswith(f"{first_company}/")][:3]
        clean_company = paths[-1].split("/")[0]
        body = engine.blobs.get(altered)
        if backend == "supabase":
            storage.buckets[BUCKET].objects.pop(lost)
        else:
            engine.blobs.delete(lost)
        engine.blobs.put(truncated, engine.blobs.get(truncated)[:100])
        engine.blobs.put(altered, body.replace(b'"', b"'", 1))  # same size, other bytes
    env = environment(settings)

    shallow = opsdash(env, "verify")
    assert shallow.returncode == 1, shallow.stderr
    assert lost in shallow.stdout and "missing" in shallow.stdout
    assert truncated in shallow.stdout and "size 100 B" in shallow.stdout
    assert altered not in shallow.stdout
    assert f"{len(paths)} days" in shallow.stdout and "2 differ" in shallow.stdout

    deep = opsdash(env, "verify", "--deep")
    assert deep.returncode == 1
    assert altered in deep.stdout and "content differs" in deep.stdout

    only_clean = opsdash(env, "verify", "--company", clean_company, "--deep")
    assert only_clean.returncode == 0, only_clean.stdout
    assert "0 differ" in only_clean.stdout
    unknown = opsdash(env, "verify", "--company", "nope")
    assert unknown.returncode == 2 and "unknown company" in unknown.stderr

    repair = opsdash(env, "verify", "--deep", "--repair")
    assert repair.returncode == 1
    assert "queued 3 resyncs" in repair.stdout

    with Engine(settings) as engine:
        engine.start(scheduler=False)
        assert engine.wait_idle(timeout_s=60, poll_s=0.05)
    after = opsdash(env, "verify", "--deep")
    assert after.returncode == 0, after.stdout
    assert "0 differ" in after.stdout


def _unreachable(storage: SupabaseStorageStandIn) -> dict[str, str]:
    storage.stop()
    return {}


def _wrong_key(storage: SupabaseStorageStandIn) -> dict[str, str]:
    return {"SUPABASE_SERVICE_ROLE_KEY": storage.mint_key(secret="another-project" * 4)}


def _public_bucket(storage: SupabaseStorageStandIn) -> dict[str, str]:
    storage.create_bucket(BUCKET, public=True)
    return {}


# Every problem with `sync`; the other commands share its start-up path, so each of them
# is run once (an opsdash process costs seconds on a busy machine).
CASES = {
    "sync, unreachable": (_unreachable, "is unreachable", ["sync"]),
    "sync, key refused": (_wrong_key, "refused the key", ["sync"]),
    "sync, bucket public": (_public_bucket, "is public", ["sync"]),
    "worker, key refused": (_wrong_key, "refused the key", ["worker"]),
    "console, unreachable": (_unreachable, "is unreachable", []),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_commands_refuse_to_start_on_unusable_storage_with_one_line_and_exit_2(
    tmp_path: Path, storage: SupabaseStorageStandIn, case
) -> None:
    make_problem, expected, command = case
    env = {
        "OPSDASH_DATA_DIR": str(tmp_path / "data"),
        "OPSDASH_DEMO": "1",  # a Supabase project for storage, demo data otherwise
        "SUPABASE_URL": storage.url,
        "SUPABASE_SERVICE_ROLE_KEY": storage.service_role_key,
        "OPSDASH_STORAGE_CONNECT_TIMEOUT_S": "1",
        "OPSDASH_STORAGE_READ_TIMEOUT_S": "1",
    }
    env.update(make_problem(storage))
    finished = opsdash(env, *command, timeout=60)
    assert finished.returncode == 2, finished.stderr
    # Besides the start-up line that names the mode and the configuration file.
    lines = [
        line
        for line in finished.stderr.strip().splitlines()
        if "; configuration: " not in line and not line.startswith("mode ")
    ]
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith("opsdash: cannot use the blob store: ")
    assert expected in lines[0]
    assert "Traceback" not in finished.stderr
