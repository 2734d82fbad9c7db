"""The read API's readiness against Supabase Storage that stalls or whose bucket turns public:
a 503 within the storage timeouts, with a reason, never a 20-second wait."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opsdash.config import Settings
from opsdash.engine.blobs import SupabaseBlobStore
from opsdash.engine.db import Database
from opsdash.readapi.app import create_app
from tests.supabase_storage_server import SupabaseStorageStandIn
from tests.test_readapi import serving

JWT_SECRET = "stand-in-project-jwt-secret-with-32-bytes-or-more"
BUCKET = "schedule-data"
TIMEOUT_S = 0.5


@pytest.fixture
def storage() -> Iterator[SupabaseStorageStandIn]:
    with SupabaseStorageStandIn(JWT_SECRET) as standin:
        standin.create_bucket(BUCKET)
        yield standin


@pytest.fixture
def client(db: Database, tmp_path: Path, storage: SupabaseStorageStandIn) -> Iterator[httpx.Client]:
    blobs = SupabaseBlobStore(
        storage.url,
        storage.service_role_key,
        connect_timeout_s=TIMEOUT_S,
        read_timeout_s=TIMEOUT_S,
    )
    settings = Settings(
        data_dir=tmp_path,
        database_url=db.engine.url.render_as_string(hide_password=False),
        demo=True,  # the test's own database
        supabase_url=None,
        supabase_service_role_key=None,
        supabase_jwt_secret=None,
        jwks_url=None,
    )
    app = create_app(settings, db, blobs)
    try:
        with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
            yield http
    finally:
        blobs.close()


def test_readiness_follows_storage(client: httpx.Client, storage: SupabaseStorageStandIn) -> None:
    assert client.get("/readyz").status_code == 200

    storage.faults.stall = True
    started = time.monotonic()
    stalled = client.get("/readyz")
    took = time.monotonic() - started
    assert stalled.status_code == 503
    assert stalled.json() == {"error": "schedule storage is unreachable"}
    assert took < TIMEOUT_S * 2 + 2.0, took  # bounded by the timeouts, not 20 s

    storage.faults.clear()
    storage.buckets[BUCKET].public = True
    public = client.get("/readyz")
    assert public.status_code == 503
    assert public.json() == {"error": "schedule storage bucket is public"}

    storage.buckets[BUCKET].public = False
    assert client.get("/readyz").status_code == 200
