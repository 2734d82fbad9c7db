"""Blob storage for schedule documents: ``{service_company_id}/{date}/schedule-{hash}.json``.

Every path is built by :func:`schedule_path` (or :func:`content_path`), which
validates each part, so no id or date from the upstream or a request can escape
the store's root.

Documents are content-addressed: the file name carries the start of the
document's SHA-256, so a write never replaces bytes that someone published. A
worker that lost its lease and writes late leaves a file nobody points at
(``schedule_data.storage_path`` names the published one) and removes it again.
Rows written before this layout point at ``schedule.json``, which stays readable.
"""

from __future__ import annotations

import contextlib
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

# What may become part of a path (docs/contracts.md), checked wherever such a value
# enters: the upstream's company records, the read API's date parameter, here.
SERVICE_COMPANY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only, unlike \d
CONTENT_TYPE = "application/json"
CHECKSUM = re.compile(r"[0-9a-f]{64}")
CONTENT_NAME_DIGITS = 16
CONTENT_NAME = re.compile(rf"schedule-[0-9a-f]{{{CONTENT_NAME_DIGITS}}}\.json")


class InvalidBlobPath(ValueError):
    """A service company id or date that must never become part of a path."""


class BlobNotFound(LookupError):
    pass


class BlobStoreUnavailable(RuntimeError):
    """Storage cannot be used right now (unreachable, failing, key refused, bucket missing).

    None of these is a job's fault: workers wait for storage to come back instead of
    spending the job's attempts (see :mod:`opsdash.engine.storage_gate`).
    """


class BlobStorePublic(BlobStoreUnavailable):
    """The bucket is public: anyone could read the schedules in it."""


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


def content_path(service_company_id: str, day: date | str, checksum: str) -> str:
    """Where a document with this SHA-256 lives: the day's folder, named by its content."""
    if not CHECKSUM.fullmatch(checksum):
        raise InvalidBlobPath(f"invalid checksum {checksum!r}: expected 64 hex digits")
    folder = schedule_path(service_company_id, day).rsplit("/", 1)[0]
    return f"{folder}/schedule-{checksum[:CONTENT_NAME_DIGITS]}.json"


def is_schedule_file(name: str) -> bool:
    """``schedule.json`` (the layout before content addressing) or ``schedule-{hash}.json``."""
    return name == "schedule.json" or bool(CONTENT_NAME.fullmatch(name))


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class BlobInfo:
    path: str
    size: int


# Connect and read timeouts of every storage call, unless the settings say otherwise:
# a stalled storage must turn into an error within seconds, never a hung worker or request.
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 5.0
# Objects per bulk remove request (the storage API accepts up to 1,000 names at once).
REMOVE_BATCH = 500


def day_of(path: str) -> str | None:
    """The date folder of a schedule document's path ``{company}/{date}/{file}``."""
    parts = path.split("/")
    return parts[1] if len(parts) == 3 else None


class BlobStore(Protocol):
    """Where schedule documents live. Paths come from :func:`schedule_path`."""

    def put(self, path: str, body: bytes) -> None: ...

    def get(self, path: str) -> bytes: ...

    def delete(self, path: str) -> None: ...

    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        """Every schedule document under the folder ``prefix`` (a company id, or
        ``{company}/{date}``; everything when empty), with its size, sorted by path.

        A few requests at most (one per 1,000 objects on Supabase Storage), so a sync can
        list a company's documents on every run and notice a lost or altered one cheaply.
        """
        ...

    def delete_many(self, paths: list[str]) -> int:
        """Remove many objects in a few requests; returns how many were removed."""
        ...

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

    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        base = self._file(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            (
                BlobInfo(str(file.relative_to(self.root)), file.stat().st_size)
                for file in base.rglob("schedule*.json")
                if is_schedule_file(file.name)
            ),
            key=lambda info: info.path,
        )

    def delete_many(self, paths: list[str]) -> int:
        removed = 0
        for path in paths:
            target = self._file(path)
            if target.exists():
                target.unlink()
                removed += 1
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # an empty date folder goes too; a full one stays
        return removed

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
    :class:`BlobStoreUnavailable` for whatever makes the store unusable (unreachable, 5xx
    such as a gateway's 502 or storage's 544 database timeout, 429, a rejected key, a
    missing bucket), with a one-line message that names the cause: never a gateway's HTML
    page, never a traceback.

    Every call has connect and read timeouts, so a stalled storage is an error within
    seconds.

    A wrong key can look like a missing object: ``GET /object/{bucket}/{path}``, the route
    ``download()`` uses, answers a rejected token as "Bucket not found", and row-level
    security hides a private bucket's objects from any key but the service role key, so
    they read as missing and folders as empty. Every "nothing there" answer is therefore
    believed only after :meth:`ping` (an authenticated bucket lookup) has passed. The same
    lookup checks that the bucket is still private.

    Listing uses list-v2: every object under a prefix, with its size, in one request per
    1,000 objects (list v1 walks one folder level per request and tells no folder's size).
    """

    def __init__(
        self,
        url: str,
        service_role_key: str,
        bucket: str = "schedule-data",
        *,
        list_page_size: int = 1000,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        import httpx
        from storage3 import SyncStorageClient

        self.bucket = bucket
        self._url = url.rstrip("/")
        self._list_page_size = list_page_size
        headers = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        # storage3's own client has one overall timeout (and no connect bound of its own):
        # this one gives up connecting after connect_timeout_s and waiting for an answer
        # after read_timeout_s.
        session = httpx.Client(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            follow_redirects=True,
        )
        # storage3 joins routes onto this URL; without the trailing slash it warns on every start.
        self._client = SyncStorageClient(f"{self._url}/storage/v1/", headers, http_client=session)

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

    def delete_many(self, paths: list[str]) -> int:
        keys = [self._object_key(path) for path in paths]
        removed = 0
        for start in range(0, len(keys), REMOVE_BATCH):
            batch = keys[start : start + REMOVE_BATCH]
            removed += len(self._call(partial(self._bucket().remove, batch)))
        if keys and not removed:
            self.ping()  # nothing removed is also what a key without access gets
        return removed

    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        folder = self._object_key(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        found = [
            BlobInfo(entry.name, int((entry.metadata or {}).get("size", 0)))
            for entry in self._objects_under(folder)
            # Only names under the folder as written. v1.70.6 matches the prefix literally
            # and case-sensitively, but older servers read "_" as any character (and before
            # that ignored case), so "acme_1/" would bring in "acmeX1/"'s objects. Escaping
            # "_" here instead would make v1.70.6, which escapes it itself, look for "\_".
            if entry.name.startswith(folder) and is_schedule_file(entry.name.rsplit("/", 1)[-1])
        ]
        if not found:
            self.ping()  # an empty listing is also what a key without access gets
        return sorted(found, key=lambda info: info.path)

    @staticmethod
    def _object_key(path: str) -> str:
        """``path`` as an object key; empty and dot segments never reach the storage API."""
        if not path or any(part in {"", ".", ".."} for part in path.split("/")):
            raise InvalidBlobPath(f"invalid object path {path!r}")
        return path

    def _objects_under(self, prefix: str) -> list[Any]:
        """Every object whose name starts with ``prefix``, with its size: list-v2, whole
        names rather than one folder level, one request per page of at most 1,000."""
        objects: list[Any] = []
        options: dict[str, Any] = {"prefix": prefix, "limit": self._list_page_size}
        while True:
            page = self._call(partial(self._bucket().list_v2, dict(options)))
            objects.extend(page.objects)
            if not (page.hasNext and page.nextCursor):
                return objects
            options["cursor"] = page.nextCursor

    def ping(self) -> None:
        """An authenticated bucket lookup: reachable, the key accepted, the bucket private."""
        self._refuse_public_bucket(self._call(lambda: self._client.get_bucket(self.bucket)))

    def ensure_bucket(self) -> None:
        """Create the private bucket if it does not exist yet; refuse an existing public one."""
        from storage3.exceptions import StorageApiError

        try:
            self._call(lambda: self._client.create_bucket(self.bucket, options={"public": False}))
        except StorageApiError as error:
            if str(error.status) != "409":
                raise
            self.ping()

    def _refuse_public_bucket(self, existing: Any) -> None:
        # Schedule documents hold customer addresses, phone numbers and access codes.
        if existing.public:
            raise BlobStorePublic(
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
            raise translated from None
        except httpx.TransportError as error:
            raise BlobStoreUnavailable(
                f"Supabase Storage at {self._url} is unreachable: {describe_transport_error(error)}"
            ) from None

    def _translate(self, error: StorageApiError, missing_path: str | None) -> Exception:
        """The store's exception for a storage API error; unexpected ones pass through."""
        status = str(error.status)
        reason = short_reason(error)
        if status == "404" and missing_path is not None:
            return BlobNotFound(missing_path)
        if status == "404":
            return BlobStoreUnavailable(
                f"bucket {self.bucket!r} not found ({reason}): it does not exist, or the "
                "key is not the service role key (row-level security hides it from other keys)"
            )
        if status in {"401", "403"}:
            return BlobStoreUnavailable(
                f"Supabase Storage refused the key ({reason}): "
                "SUPABASE_SERVICE_ROLE_KEY must be the project's service role key"
            )
        if status.startswith("5") or status == "429":
            return BlobStoreUnavailable(f"Supabase Storage is failing ({reason})")
        return error


_HTML_TITLE = re.compile(r"<title>\s*(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_REASON_LIMIT = 160


def first_line(text: str, limit: int = _REASON_LIMIT) -> str:
    """The first non-empty line of ``text`` (an HTML page's title), at most ``limit`` long."""
    title = _HTML_TITLE.search(text)
    if title:
        text = title.group(1)
    elif "<" in text and ">" in text:
        text = _TAG.sub("\n", text)
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def short_reason(error: StorageApiError) -> str:
    """ "HTTP <status> <code>: <first line>" — what a log line or a job error can carry.

    A gateway in front of storage answers outages with an HTML page; storage3 puts the
    whole page into the message, and it must never travel further than this.
    """
    message = str(error.message)
    for wrapper in ("Unable to parse error message: ", "could not parse error message response:"):
        if wrapper in message:
            message = message.split(wrapper, 1)[1].strip("'")
    code = str(error.code) if error.code else ""
    reason = first_line(message)
    return f"HTTP {error.status} {code}: {reason}" if code else f"HTTP {error.status}: {reason}"


def describe_transport_error(error: Exception) -> str:
    """A timeout or a refused connection in one short line."""
    import httpx

    if isinstance(error, httpx.TimeoutException):
        kind = {
            httpx.ConnectTimeout: "connect timed out",
            httpx.ReadTimeout: "no answer in time (read timed out)",
            httpx.WriteTimeout: "write timed out",
            httpx.PoolTimeout: "no free connection in time",
        }.get(type(error), "timed out")
        return kind
    text = first_line(str(error)) or type(error).__name__
    return f"{type(error).__name__}: {text}"
