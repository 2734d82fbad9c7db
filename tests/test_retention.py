"""Retention removes exactly the days past the period, per company time zone, in batches,
from storage and schedule_data, in one process at a time; on SQLite and Postgres, on the
local folder and on the Supabase Storage stand-in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from opsdash.engine import retention
from opsdash.engine.blobs import (
    BlobStore,
    LocalBlobStore,
    SupabaseBlobStore,
    content_path,
    schedule_path,
    sha256_hex,
)
from opsdash.engine.db import Database
from opsdash.engine.models import Company, ScheduleData
from opsdash.readapi.metrics import render_retention
from tests.supabase_storage_server import SupabaseStorageStandIn

JWT_SECRET = "stand-in-project-jwt-secret-with-32-bytes-or-more"
# 10:00 UTC: already tomorrow at UTC+14, still yesterday at UTC-11.
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
ZONES = {
    "east": ("Pacific/Kiritimati", date(2026, 11, 30)),
    "west": ("Pacific/Pago_Pago", date(2026, 11, 28)),
}
KEEP_DAYS = 30


@pytest.fixture(params=["local", "supabase"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    with SupabaseStorageStandIn(JWT_SECRET) as storage:
        store = SupabaseBlobStore(storage.url, storage.service_role_key)
        store.ensure_bucket()
        yield store
        store.close()


def body_and_path(service_id: str, day: date) -> tuple[bytes, str]:
    """A day's document and where sync stores it: content-addressed, except every other
    day under the fixed name rows written before content addressing still point at."""
    body = b'{"day": "%s"}' % day.isoformat().encode()
    if day.toordinal() % 2:
        return body, schedule_path(service_id, day)
    return body, content_path(service_id, day, sha256_hex(body))


def seed(db: Database, blobs: BlobStore) -> dict[str, tuple[uuid.UUID, date]]:
    """Two companies, 40 days back to 2 ahead of their own today; returns id and today."""
    companies: dict[str, tuple[uuid.UUID, date]] = {}
    with db.write_session() as session:
        for service_id, (zone, today) in ZONES.items():
            company = Company(service_company_id=service_id, name=service_id, timezone=zone)
            session.add(company)
            session.flush()
            companies[service_id] = (company.id, today)
            for offset in range(-40, 3):
                day = today + timedelta(days=offset)
                body, path = body_and_path(service_id, day)
                blobs.put(path, body)
                session.add(
                    ScheduleData(
                        company_id=company.id,
                        date=day,
                        storage_path=path,
                        file_size_kb=0.02,
                        checksum="0" * 64,
                    )
                )
        session.commit()
    return companies


def stored_days(db: Database) -> set[tuple[uuid.UUID, date]]:
    with db.session() as session:
        return {
            (row.company_id, row.date) for row in session.execute(select(ScheduleData)).scalars()
        }


def test_retention_removes_exactly_the_days_before_each_companys_cutoff(
    db: Database, blobs: BlobStore
) -> None:
    companies = seed(db, blobs)
    stats = retention.RetentionStats()

    result = retention.apply(db, blobs, retention_days=KEEP_DAYS, now=NOW, batch=7, stats=stats)

    assert result is not None
    expected = {
        (company_id, today + timedelta(days=offset))
        for company_id, today in companies.values()
        for offset in range(-KEEP_DAYS, 3)
    }
    assert stored_days(db) == expected
    assert result.removed_days == result.removed_objects == 2 * (40 - KEEP_DAYS)
    kept_paths = sorted(
        body_and_path(service_id, today + timedelta(days=offset))[1]
        for service_id, (_, today) in companies.items()
        for offset in range(-KEEP_DAYS, 3)
    )
    assert [info.path for info in blobs.list_blobs()] == kept_paths
    assert (stats.runs, stats.removed_days, stats.skipped) == (1, 20, 0)
    # Nothing left to do: a second run removes nothing.
    again = retention.apply(db, blobs, retention_days=KEEP_DAYS, now=NOW, stats=stats)
    assert again is not None and again.removed_days == 0


def test_retention_runs_in_one_process_at_a_time(db: Database, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    seed(db, blobs)
    stats = retention.RetentionStats()
    before = stored_days(db)
    with db.exclusive(retention.LOCK_NAME) as mine:
        assert mine
        # Another holder (a second connection, or a second open of the lock file): skipped.
        assert retention.apply(db, blobs, retention_days=KEEP_DAYS, now=NOW, stats=stats) is None
    assert stored_days(db) == before
    assert stats.skipped == 1
    assert retention.apply(db, blobs, retention_days=KEEP_DAYS, now=NOW, stats=stats) is not None


def test_retention_is_counted_in_metrics() -> None:
    stats = retention.RetentionStats()
    stats.record(retention.RetentionResult(5, 5, 12.0), NOW)
    stats.record(None, NOW)
    lines = render_retention(stats)
    assert "opsdash_retention_removed_days_total 5" in lines
    assert "opsdash_retention_removed_objects_total 5" in lines
    assert "opsdash_retention_runs_total 1" in lines
    assert "opsdash_retention_skipped_total 1" in lines
