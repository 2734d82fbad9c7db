"""Blob storage for schedule documents: ``{service_company_id}/{date}/schedule.json``.

Every path is built by :func:`schedule_path`, which validates both parts, so
no id or date from the upstream or a request can escape the store's root.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

SERVICE_COMPANY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CONTENT_TYPE = "application/json"


class InvalidBlobPath(ValueError):
    """A service company id or date that must never become part of a path."""


class BlobNotFound(LookupError):
    pass


class BlobStoreUnavailable(RuntimeError):
    """Storage could not be reached; the caller may retry."""


def schedule_path(service_company_id: str, day: date | str) -> str:
    if not isinstance(service_company_id, str) or not SERVICE_COMPANY_ID.fullmatch(
        service_company_id
    ):
        raise InvalidBlobPath(f"invalid service company id {service_company_id!r}")
    day_text = day.isoformat() if isinstance(day, date) else day
    if not isinstance(day_text, str) or not ISO_DATE.fullmatch(day_text):
        raise InvalidBlobPath(f"invalid date {day!r}: expected YYYY-MM-DD")
    try:
        date.fromisoformat(day_text)
    except ValueError as error:
        raise InvalidBlobPath(f"invalid date {day_text!r}: {error}") from None
    return f"{service_company_id}/{day_text}/schedule.json"


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class BlobInfo:
    path: str
    size: int


class BlobStore(Protocol):
    """Where schedule documents live. Paths come from :func:`schedule_path`."""

    def put(self, path: str, body: bytes) -> None: ...

    def get(self, path: str) -> bytes: ...

    def delete(self, path: str) -> None: ...

    def list(self, prefix: str = "") -> list[BlobInfo]: ...

    def ping(self) -> None:
        """Raise :class:`BlobStoreUnavailable` when the store cannot be reached."""
        ...

    @property
    def description(self) -> str: ...


class LocalBlobStore:
    """A folder on disk with the bucket's layout; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def description(self) -> str:
        return f"local folder {self.root}"

    def _file(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root) or target == self.root:
            raise InvalidBlobPath(f"path {path!r} escapes the blob root")
        return target

    def put(self, path: str, body: bytes) -> None:
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(body)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def get(self, path: str) -> bytes:
        try:
            return self._file(path).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(path) from None

    def delete(self, path: str) -> None:
        self._file(path).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[BlobInfo]:
        base = self._file(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            (
                BlobInfo(str(file.relative_to(self.root)), file.stat().st_size)
                for file in base.rglob("schedule.json")
            ),
            key=lambda info: info.path,
        )

    def ping(self) -> None:
        if not self.root.is_dir():
            raise BlobStoreUnavailable(f"blob folder {self.root} is missing")


class SupabaseBlobStore:
    """Supabase Storage through storage3; the bucket is private."""

    def __init__(self, url: str, service_role_key: str, bucket: str = "schedule-data") -> None:
        from storage3 import SyncStorageClient

        self.bucket = bucket
        self._url = url.rstrip("/")
        headers = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        self._client = SyncStorageClient(f"{self._url}/storage/v1", headers)

    @property
    def description(self) -> str:
        return f"Supabase Storage bucket {self.bucket} at {self._url}"

    def _bucket(self) -> Any:
        return self._client.from_(self.bucket)

    def put(self, path: str, body: bytes) -> None:
        options = {"content-type": CONTENT_TYPE, "upsert": "true", "cache-control": "no-cache"}
        self._call(lambda: self._bucket().upload(path, body, options))

    def get(self, path: str) -> bytes:
        return self._call(lambda: self._bucket().download(path), missing_path=path)

    def delete(self, path: str) -> None:
        self._call(lambda: self._bucket().remove([path]))

    def list(self, prefix: str = "") -> list[BlobInfo]:
        # Storage lists one folder level at a time: company/ → date/ → schedule.json.
        found: list[BlobInfo] = []
        pending = [prefix.rstrip("/")]
        while pending:
            folder = pending.pop()
            entries = self._call(lambda f=folder: self._bucket().list(f, {"limit": 1000}))
            for entry in entries:
                child = f"{folder}/{entry['name']}" if folder else entry["name"]
                if entry.get("id") is None:
                    pending.append(child)
                elif entry["name"].endswith(".json"):
                    size = (entry.get("metadata") or {}).get("size", 0)
                    found.append(BlobInfo(child, int(size)))
        return sorted(found, key=lambda info: info.path)

    def ping(self) -> None:
        self._call(lambda: self._client.get_bucket(self.bucket))

    def ensure_bucket(self) -> None:
        """Create the private bucket if it does not exist yet."""
        from storage3.exceptions import StorageApiError

        try:
            self._client.create_bucket(self.bucket, options={"public": False})
        except StorageApiError as error:
            if str(getattr(error, "status", "")) != "409":
                raise

    def _call(self, operation: Any, *, missing_path: str | None = None) -> Any:
        import httpx
        from storage3.exceptions import StorageApiError

        try:
            return operation()
        except StorageApiError as error:
            # The storage API reports most errors as HTTP 400 with the real status
            # as a string in the body.
            status = str(getattr(error, "status", ""))
            if missing_path is not None and status == "404":
                raise BlobNotFound(missing_path) from None
            if status.startswith("5"):
                raise BlobStoreUnavailable(f"storage error {status}: {error}") from error
            raise
        except httpx.TransportError as error:
            raise BlobStoreUnavailable(f"storage unreachable: {error}") from error
