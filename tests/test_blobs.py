"""Blob paths can never escape the root; local writes are atomic and idempotent."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from opsdash.engine.blobs import BlobNotFound, InvalidBlobPath, LocalBlobStore, schedule_path


def test_schedule_path_layout() -> None:
    assert schedule_path("1001", date(2026, 12, 1)) == "1001/2026-12-01/schedule.json"
    assert schedule_path("acme_co-2", "2026-02-28") == "acme_co-2/2026-02-28/schedule.json"


@pytest.mark.parametrize(
    ("company", "day"),
    [
        ("../etc", "2026-12-01"),
        ("10/01", "2026-12-01"),
        ("", "2026-12-01"),
        ("1001", "2026-13-01"),
        ("1001", "2026-02-30"),
        ("1001", "../../passwd"),
        ("1001", "2026-12-01/.."),
        ("a" * 65, "2026-12-01"),
    ],
)
def test_bad_ids_and_dates_never_become_paths(company: str, day: str) -> None:
    with pytest.raises(InvalidBlobPath):
        schedule_path(company, day)


def test_local_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    path = schedule_path("1001", "2026-12-01")
    store.put(path, b'{"a": 1}')
    store.put(path, b'{"a": 2}')
    assert store.get(path) == b'{"a": 2}'
    assert [info.path for info in store.list_blobs("1001")] == [path]
    assert list((tmp_path / "blobs").rglob(".tmp-*")) == []
    store.delete(path)
    with pytest.raises(BlobNotFound):
        store.get(path)


def test_local_store_refuses_raw_escapes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(InvalidBlobPath):
        store.put("../outside.json", b"{}")
    assert not (tmp_path / "outside.json").exists()
