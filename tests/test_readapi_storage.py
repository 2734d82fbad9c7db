"""The read API against storage: readiness when Supabase Storage stalls or its bucket turns
public (a 503 within the storage timeouts, with a reason, never a 20-second wait), and a
blob that is gone by the time it is read (replaced by a sync, or lost)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.engine.blobs import (
    BlobStore,
    LocalBlobStore,
    SupabaseBlobStore,
    content_path,
    sha256_hex,
)
from opsdash.engine.db import Database
from opsdash.engine.models import Company, ScheduleData, UserProfile
from opsdash.engine.transform import build_document, serialize_document
from opsdash.readapi.app import create_app
from opsdash.readapi.service import ObjectLost, ScheduleService
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


# --- a blob replaced between reading the metadata and reading the blob -------------------


@pytest.fixture(params=["local", "supabase"])
def blobs(
    request: pytest.FixtureRequest, tmp_path: Path, storage: SupabaseStorageStandIn
) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    store = SupabaseBlobStore(storage.url, storage.service_role_key)
    yield store
    store.close()


def _document(company: Company, day: date, revision: int) -> bytes:
    stamp = datetime(2026, 12, 1, 6, revision, tzinfo=UTC)
    document = build_document(
        [],
        company_id=str(company.id),
        service_company_id=company.service_company_id,
        day=day,
        generated_at=stamp,
    )
    return serialize_document(document)


def _publish(db: Database, blobs: BlobStore, company: Company, day: date, body: bytes) -> str:
    """What a sync does: the document under its content address, then its metadata."""
    path = content_path(company.service_company_id, day, sha256_hex(body))
    blobs.put(path, body)
    with db.write_session() as session:
        row = session.execute(
            select(ScheduleData).where(ScheduleData.company_id == company.id)
        ).scalar_one_or_none()
        row = row or ScheduleData(company_id=company.id, date=day, storage_path="", checksum="")
        row.storage_path, row.checksum = path, sha256_hex(body)
        row.file_size_kb = round(len(body) / 1024, 2)
        session.add(row)
    return path


@pytest.mark.parametrize("sync_replaced_it", [True, False], ids=["replaced", "lost"])
def test_a_blob_gone_after_its_metadata_was_read_is_read_again_or_reported_lost(
    db: Database, blobs: BlobStore, sync_replaced_it: bool, caplog: pytest.LogCaptureFixture
) -> None:
    day = date(2026, 12, 1)
    company = Company(service_company_id="1001", name="Acme")
    admin = UserProfile(id=uuid.uuid4(), company_id=company.id, role="admin", email="a@x.test")
    with db.write_session() as session:
        session.add(company)
        session.flush()
        session.add(admin)
    first = _publish(db, blobs, company, day, _document(company, day, 1))
    resyncs: list[tuple[uuid.UUID, date]] = []
    service = ScheduleService(
        db, blobs, request_resync=lambda company_id, day: resyncs.append((company_id, day))
    )

    async def read() -> bytes:
        viewer = await service.viewer(admin.id)
        ref = await service.locate(viewer, day)  # the metadata names the first version
        assert ref.schedule.storage_path == first
        if sync_replaced_it:  # a sync publishes a second version and removes the first
            newer = _document(company, day, 2)
            assert _publish(db, blobs, company, day, newer) != first
        blobs.delete(first)
        return (await service.render(ref)).body

    with caplog.at_level(logging.WARNING, logger="opsdash.readapi"):
        if sync_replaced_it:
            view = orjson.loads(asyncio.run(read()))
            assert view["generatedAt"].startswith("2026-12-01T06:02")
            assert resyncs == []
            assert "missing from storage" not in caplog.text
        else:
            with pytest.raises(ObjectLost):
                asyncio.run(read())
            assert resyncs == [(company.id, day)]
            assert "missing from storage" in caplog.text
