"""Blob storage for schedule documents: ``{service_company_id}/{date}/schedule.json``.

Every path is built by :func:`schedule_path`, which validates both parts, so
no id or date from the upstream or a request can escape the store's root.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opsdash.datafolder import private_dir

if TYPE_CHECKING:
    from storage3.exceptions import StorageApiError

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

    def close(self) -> None: ...


class LocalBlobStore:
    """A folder on disk with the bucket's layout; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root.resolve())

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
        private_dir(target.parent)  # blobs are the schedules: the owner's alone, like the file
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

    def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def ping(self) -> None:
        if not self.root.is_dir():
            raise BlobStoreUnavailable(f"blob folder {self.root} is missing")


class SupabaseBlobStore:
    """Supabase Storage through storage3; the bucket is private.

    The storage API answers most errors as HTTP 400 with the real status as a string in the
    body; storage3 raises ``StorageApiError`` with that string as ``status`` and the body's
    ``error`` field as ``code``. :meth:`_translate` maps them onto the exceptions
    :class:`LocalBlobStore` raises: :class:`BlobNotFound` for a missing object,
    :class:`BlobStoreUnavailable` for whatever makes the store unusable (unreachable, 5xx,
    429, a rejected key, a missing bucket), with a message that names the cause.

    A wrong key can look like a missing object: ``GET /object/{bucket}/{path}``, the route
    ``download()`` uses, answers a rejected token as "Bucket not found", and row-level
    security hides a private bucket's objects from any key but the service role key, so
    they read as missing and folders as empty. Every "nothing there" answer is therefore
    believed only after :meth:`ping` (an authenticated bucket lookup) has passed.

    Listing matches prefixes case-insensitively (and storage API 1.x treats ``_`` as a LIKE
    wildcard), so company ids differing only in case or at an ``_`` would share listings.
    """

    LEAF = "schedule.json"

    def __init__(
        self,
        url: str,
        service_role_key: str,
        bucket: str = "schedule-data",
        *,
        list_page_size: int = 1000,
    ) -> None:
        from storage3 import SyncStorageClient

        self.bucket = bucket
        self._url = url.rstrip("/")
        self._list_page_size = list_page_size
        headers = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        # storage3 joins routes onto this URL; without the trailing slash it warns on every start.
        self._client = SyncStorageClient(f"{self._url}/storage/v1/", headers)

    @property
    def description(self) -> str:
        return f"Supabase Storage bucket {self.bucket} at {self._url}"

    def close(self) -> None:
        """Close the pooled connections to the storage API."""
        self._client.session.close()

    def _bucket(self) -> Any:
        return self._client.from_(self.bucket)

    def put(self, path: str, body: bytes) -> None:
        key = self._object_key(path)
        # The API stores a multipart upload's cacheControl as "max-age=<value>" and only an
        # empty value as "no-cache"; sending "no-cache" would store "max-age=no-cache".
        options = {"content-type": CONTENT_TYPE, "cache-control": "", "upsert": "true"}
        self._call(lambda: self._bucket().upload(key, body, options))

    def get(self, path: str) -> bytes:
        key = self._object_key(path)
        try:
            return self._call(lambda: self._bucket().download(key), missing_path=path)
        except BlobNotFound:
            self.ping()  # a rejected or non-service key also reads as "not found" here
            raise

    def delete(self, path: str) -> None:
        key = self._object_key(path)
        removed = self._call(lambda: self._bucket().remove([key]))
        if not removed:
            self.ping()  # nothing removed is also what a key without access gets

    def list(self, prefix: str = "") -> list[BlobInfo]:
        # Storage lists one folder level at a time: company/ → date/ → schedule.json.
        top = prefix.strip("/")
        found: list[BlobInfo] = []
        folders = [self._object_key(top) if top else ""]
        while folders:
            folder = folders.pop()
            for entry in self._folder_entries(folder):
                child = f"{folder}/{entry['name']}" if folder else entry["name"]
                if entry.get("id") is None:
                    folders.append(child)
                elif entry["name"] == self.LEAF:
                    size = (entry.get("metadata") or {}).get("size", 0)
                    found.append(BlobInfo(child, int(size)))
        if not found:
            self.ping()  # an empty listing is also what a key without access gets
        return sorted(found, key=lambda info: info.path)

    @staticmethod
    def _object_key(path: str) -> str:
        """``path`` as an object key; empty and dot segments never reach the storage API."""
        if not path or any(part in {"", ".", ".."} for part in path.split("/")):
            raise InvalidBlobPath(f"invalid object path {path!r}")
        return path

    def _folder_entries(self, folder: str) -> list[dict[str, Any]]:
        """One folder level, page by page: each answer holds at most ``limit`` entries."""
        entries: list[dict[str, Any]] = []
        while True:
            options = {"limit": self._list_page_size, "offset": len(entries)}
            page = self._call(partial(self._bucket().list, folder, options))
            entries.extend(page)
            if len(page) < self._list_page_size:
                return entries

    def ping(self) -> None:
        self._call(lambda: self._client.get_bucket(self.bucket))

    def ensure_bucket(self) -> None:
        """Create the private bucket if it does not exist yet; refuse an existing public one."""
        from storage3.exceptions import StorageApiError

        try:
            self._call(lambda: self._client.create_bucket(self.bucket, options={"public": False}))
        except StorageApiError as error:
            if str(error.status) != "409":
                raise
            self._refuse_public_bucket()

    def _refuse_public_bucket(self) -> None:
        # Schedule documents hold customer addresses, phone numbers and access codes.
        existing = self._call(lambda: self._client.get_bucket(self.bucket))
        if existing.public:
            raise BlobStoreUnavailable(
                f"bucket {self.bucket!r} is public, so anyone could read the schedules in it: "
                "make it private in Supabase Storage"
            )

    def _call(self, operation: Callable[[], Any], *, missing_path: str | None = None) -> Any:
        import httpx
        from storage3.exceptions import StorageApiError

        try:
            return operation()
        except StorageApiError as error:
            translated = self._translate(error, missing_path)
            if translated is error:
                raise
            raise translated from error
        except httpx.TransportError as error:
            raise BlobStoreUnavailable(
                f"Supabase Storage at {self._url} is unreachable: {error!r}"
            ) from error

    def _translate(self, error: StorageApiError, missing_path: str | None) -> Exception:
        """The store's exception for a storage API error; unexpected ones pass through."""
        status = str(error.status)
        if status == "404" and missing_path is not None:
            return BlobNotFound(missing_path)
        if status == "404":
            return BlobStoreUnavailable(
                f"bucket {self.bucket!r} not found ({error.message}): it does not exist, or the "
                "key is not the service role key (row-level security hides it from other keys)"
            )
        if status in {"401", "403"}:
            return BlobStoreUnavailable(
                f"Supabase Storage refused the key ({error.message}): "
                "SUPABASE_SERVICE_ROLE_KEY must be the project's service role key"
            )
        if status.startswith("5") or status == "429":
            return BlobStoreUnavailable(f"Supabase Storage answered {status}: {error.message}")
        return error
