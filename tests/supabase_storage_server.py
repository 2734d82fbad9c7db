"""A stand-in for Supabase Storage that answers the way the real server does.

It matches **Supabase Storage v1.70.6** (the version opsdash was run against, file backend,
behind a ``/storage/v1/`` gateway) for the routes storage3 2.34 calls for buckets and
objects, on a real loopback port (the standard library's ``ThreadingHTTPServer`` in a
background thread). Each habit below was observed on that server and checked against
supabase/storage's sources (``src/http/error-handler.ts``, ``src/internal/errors/codes.ts``,
``src/storage/database/knex.ts`` and the ``storage.search`` migrations):

- errors are rendered as ``{"statusCode": "<status>", "error", "message", "code"}`` with
  HTTP 400 for every status but 500, except those sent with their own status: 544
  ``DatabaseTimeout`` and 429 ``SlowDown`` (the pool of storage's database exhausted; since
  v1.58.19 there is no 503 ``DatabaseConnectionLimit`` any more);
- an error that is not the API's own (storage's database unreachable) is HTTP 500
  ``{"statusCode": "500", "error": "Internal", "message": "Internal Server Error"}``;
- a request without an ``Authorization`` header fails schema validation:
  ``InvalidRequest`` "headers must have required property 'authorization'" (``error``
  is ``"Error"``, as for every validation failure);
- routes behind the JWT check answer a bad token with 403 ``AccessDenied``, while
  ``GET /object/{bucket}/{path}`` lets a bad token through as anonymous and, for a
  private bucket, answers it as if the bucket did not exist (``NoSuchBucket``);
- a valid token whose role is not ``service_role`` meets row-level security with no
  policies: private buckets and their objects are invisible, inserts are refused with
  "new row violates row-level security policy";
- a multipart upload's ``cacheControl`` field is stored as ``max-age=<value>``, or
  ``no-cache`` when empty; an upsert keeps the object's ``created_at`` and
  ``last_accessed_at`` and gives it a new ``version``;
- listing (``storage.search``) matches the prefix case-insensitively with ``_`` and ``%``
  taken literally, walks names in ``lower(name) COLLATE "C"`` order, and folders that
  differ only in case merge into one entry spelled as the first name met;
- ``list-v2`` without a delimiter (``POST /object/list-v2/{bucket}``) is a plain query
  over ``storage.objects``: the prefix matched case-sensitively with ``_`` and ``%``
  escaped (literal), names in ``name COLLATE "C"`` order, whole rows with full names, at
  most 1,000 a page, paged by an opaque cursor (see :func:`list_objects_v2`);
- bulk delete returns the deleted ``storage.objects`` rows (``owner``/``owner_id`` empty
  strings for a service key, ``version``, ``user_metadata``);
- an unknown route is Fastify's own 404, with the path as storage sees it (behind the
  gateway, without ``/storage/v1``).

``faults`` makes it fail the way an unreachable, failing or stalled storage does, including
the gateway's HTML 502 page. Every request is counted by method and route (:meth:`count`).
Not imitated: the gateway's own ``apikey`` check, signed URLs, image transforms, TUS, S3,
and ``list-v2`` with a delimiter or another sort order (the stand-in refuses those with
HTTP 501 rather than answer them wrongly).
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import hashlib
import re
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import jwt
import orjson

API_PREFIX = "/storage/v1/"
SERVICE_ROLE = "service_role"
_BEARER = re.compile(r"^Bearer\s+", re.IGNORECASE)


# --- the storage API's error answers -------------------------------------------------------


class StorageError(Exception):
    """An error as the storage API renders it (``StorageBackendError.render()``)."""

    def __init__(
        self, status: int, error: str, code: str, message: str, *, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.code = code
        self.message = message
        # The API's error handler: 500 stays 500, every other status goes out as HTTP 400.
        self.http_status = http_status or (500 if status == 500 else 400)

    def body(self) -> dict[str, str]:
        return {
            "statusCode": str(self.status),
            "error": self.error,
            "message": self.message,
            "code": self.code,
        }


def no_such_key() -> StorageError:
    return StorageError(404, "not_found", "NoSuchKey", "Object not found")


def no_such_bucket() -> StorageError:
    return StorageError(404, "Bucket not found", "NoSuchBucket", "Bucket not found")


def key_already_exists() -> StorageError:
    return StorageError(409, "Duplicate", "KeyAlreadyExists", "The resource already exists")


def bucket_already_exists() -> StorageError:
    return StorageError(409, "Duplicate", "BucketAlreadyExists", "The resource already exists")


def access_denied(message: str) -> StorageError:
    return StorageError(403, "Unauthorized", "AccessDenied", message)


def row_level_security_refused() -> StorageError:
    # Postgres names the table; storage passes on only this much.
    return access_denied("new row violates row-level security policy")


def missing_authorization() -> StorageError:
    message = "headers must have required property 'authorization'"
    return StorageError(400, "Error", "InvalidRequest", message)


def rendered_status(status: int) -> StorageError:
    """What storage itself answers when its database fails.

    500: the database is unreachable (an error storage does not render itself);
    544: a query timed out; 429: the connection pool is exhausted.
    """
    if status == 500:
        message = "Internal Server Error"
        return StorageError(500, "Internal", "InternalError", message)
    if status == 544:
        message = "The connection to the database timed out"
        return StorageError(544, "DatabaseTimeout", "DatabaseTimeout", message, http_status=544)
    if status == 429:
        message = "Too many connections issued to the database"
        return StorageError(429, "too_many_connections", "SlowDown", message, http_status=429)
    raise ValueError(f"Supabase Storage v1.70.6 does not fail with {status} by itself")


def gateway_page(status: int) -> bytes:
    """The HTML page the gateway in front of storage answers with when storage is down."""
    reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}
    title = f"{status} {reason.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


# --- state ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StoredObject:
    id: str
    body: bytes
    mimetype: str
    cache_control: str
    created_at: datetime
    updated_at: datetime
    version: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def etag(self) -> str:
        return f'"{hashlib.md5(self.body).hexdigest()}"'  # S3's ETag for a single-part upload

    def metadata(self) -> dict[str, Any]:
        return {
            "eTag": self.etag,
            "size": len(self.body),
            "mimetype": self.mimetype,
            "cacheControl": self.cache_control,
            "lastModified": _iso(self.updated_at),
            "contentLength": len(self.body),
            "httpStatusCode": 200,
        }

    def row(self, bucket_id: str, name: str) -> dict[str, Any]:
        """The ``storage.objects`` row, as bulk delete returns it."""
        return {
            "bucket_id": bucket_id,
            "name": name,
            # A service key has no user id: storage stores the empty string, not NULL.
            "owner": "",
            "owner_id": "",
            "version": self.version,
            "id": self.id,
            "updated_at": _iso(self.updated_at),
            "created_at": _iso(self.created_at),
            # Only downloads through signed URLs touch it: an upsert keeps the creation time.
            "last_accessed_at": _iso(self.created_at),
            "metadata": self.metadata(),
            "user_metadata": None,
        }


@dataclass
class Bucket:
    id: str
    public: bool
    created_at: datetime = field(default_factory=_now)
    objects: dict[str, StoredObject] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.id,
            "owner": "",
            "public": self.public,
            "file_size_limit": None,
            "allowed_mime_types": None,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class Caller:
    authenticated: bool
    role: str

    @property
    def bypasses_row_level_security(self) -> bool:
        return self.authenticated and self.role == SERVICE_ROLE


ANONYMOUS = Caller(authenticated=False, role="anon")


@dataclass
class StorageFaults:
    """What goes wrong with every request while set; tests flip these on a running server."""

    gateway_status: int | None = None  # the gateway answers this HTML page; storage never sees it
    storage_status: int | None = None  # storage's database fails: 500, 544 or 429
    drop_connections: bool = False  # the connection closes without an answer
    stall: bool = False  # requests hang, unanswered, until this is switched off

    def clear(self) -> None:
        self.gateway_status = self.storage_status = None
        self.drop_connections = self.stall = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # after /storage/v1/, percent-decoded per segment
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.body or b"{}")
        except orjson.JSONDecodeError:
            raise StorageError(400, "Bad Request", "InvalidRequest", "invalid JSON body") from None


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, orjson.dumps(value), {"Content-Type": "application/json; charset=utf-8"})


# --- listing: storage.search ---------------------------------------------------------------


def search(bucket: Bucket, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``POST /object/list/{bucket}``: one folder level, as ``storage.search`` walks it.

    Sorted by name, it seeks through ``lower(name) COLLATE "C"``: the prefix (plus
    ``search``) matches case-insensitively and literally, each folder is one entry spelled
    as the first name met in it, and folders and files come in that one order.
    """
    prefix = body.get("prefix") or ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # "assuming prefix is always a folder"
    wanted = (prefix + (body.get("search") or "")).lower()
    sort_by = body.get("sortBy") or {}
    descending = str(sort_by.get("order", "asc")).lower() == "desc"
    column = str(sort_by.get("column", "name"))
    names = sorted(
        (name for name in bucket.objects if name.lower().startswith(wanted)),
        key=lambda name: (name.lower().encode(), name.encode()),
        reverse=descending,
    )
    folders: dict[str, str] = {}  # lower-case folder → its first spelling
    entries: list[dict[str, Any]] = []
    files: list[tuple[str, StoredObject]] = []
    for name in names:
        rest = name[len(prefix) :]
        if "/" in rest:
            folder = rest.split("/", 1)[0]
            if folder.lower() not in folders:
                folders[folder.lower()] = folder
                entries.append(_folder_entry(folder))
        else:
            files.append((rest, bucket.objects[name]))
            entries.append(_file_entry(rest, bucket.objects[name]))
    if column != "name":
        # Another sort column: folders first, then the files in that column's order.
        files.sort(
            key=lambda item: getattr(item[1], column, item[1].updated_at), reverse=descending
        )
        entries = [entry for entry in entries if entry["id"] is None]
        entries += [_file_entry(name, stored) for name, stored in files]
    offset, limit = int(body.get("offset") or 0), int(body.get("limit") or 100)
    return entries[offset : offset + limit]


def _folder_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "id": None,
        "updated_at": None,
        "created_at": None,
        "last_accessed_at": None,
        "metadata": None,
    }


def _file_entry(name: str, stored: StoredObject) -> dict[str, Any]:
    return {
        "name": name,
        "id": stored.id,
        "updated_at": _iso(stored.updated_at),
        "created_at": _iso(stored.created_at),
        "last_accessed_at": _iso(stored.created_at),
        "metadata": stored.metadata(),
    }


# --- listing: list-v2 -----------------------------------------------------------------------

# ObjectStorage.listObjectsV2: a page holds at most this many entries, whatever is asked.
LIST_V2_MAX_KEYS = 1000


class NotImitated(Exception):
    """A request the stand-in does not answer the way the real server would."""


def list_objects_v2(bucket: Bucket, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /object/list-v2/{bucket}`` without a delimiter, as v1.70.6 answers it.

    Follows supabase/storage ``src/http/routes/object/listObjectsV2.ts`` (the body schema:
    ``prefix``, ``limit`` ≥ 1, ``cursor``, ``with_delimiter``, ``sortBy``),
    ``ObjectStorage.listObjectsV2`` in ``src/storage/object.ts`` (``limit`` capped at
    1,000; one row more is fetched to learn whether there is a next page; the cursor is
    base64 of ``l:<last name>``, with ``o:asc`` once a cursor was given) and the database
    adapter's ``listObjectsV2`` (``bucket_id = $1 AND name LIKE escapeLike(prefix) || '%'``
    ``AND name COLLATE "C" > <cursor's name> ORDER BY name COLLATE "C"``): the prefix is
    matched case-sensitively and literally (``_``, ``%`` and ``\\`` escaped since the fix
    to "escape wildcard characters for list"), and each object is its whole row with its
    full name. The answer is ``{"hasNext", "nextCursor"?, "nextCursorKey"?, "folders": [],
    "objects"}``, the two cursor fields only when there is a next page.
    """
    if body.get("with_delimiter") or body.get("sortBy"):
        raise NotImitated("list-v2 with a delimiter or a sort order")
    limit = min(_positive_limit(body.get("limit")) or LIST_V2_MAX_KEYS, LIST_V2_MAX_KEYS)
    prefix = str(body.get("prefix") or "")
    cursor = _decode_cursor(body["cursor"]) if body.get("cursor") else None
    after = cursor["l"].encode() if cursor else None
    names = sorted(
        (
            name
            for name in bucket.objects
            if name.startswith(prefix) and (after is None or name.encode() > after)
        ),
        key=str.encode,
    )[: limit + 1]
    page = names[:limit]
    answer: dict[str, Any] = {"hasNext": len(names) > limit}
    if answer["hasNext"]:
        token = f"l:{page[-1]}" + ("\no:asc" if cursor else "")
        answer["nextCursor"] = base64.b64encode(token.encode()).decode()
        answer["nextCursorKey"] = page[-1]
    answer["folders"] = []
    answer["objects"] = [_object_row(name, bucket.objects[name]) for name in page]
    return answer


def _positive_limit(value: Any) -> int | None:
    """The body schema's ``limit``: an integer, at least 1 (strings of digits are coerced)."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StorageError(400, "Error", "InvalidRequest", "body/limit must be integer")
    if value < 1:
        raise StorageError(400, "Error", "InvalidRequest", "body/limit must be >= 1")
    return value


def _decode_cursor(cursor: Any) -> dict[str, str]:
    """``decodeContinuationToken``: an unreadable cursor is a plain ``Error``, so HTTP 500.

    Node's base64 decoding never fails: it skips what is not base64 (and reads the URL-safe
    alphabet too), stops at padding, and decodes bad UTF-8 as U+FFFD.
    """
    raw = str(cursor).split("=", 1)[0].replace("-", "+").replace("_", "/")
    raw = re.sub(r"[^A-Za-z0-9+/]", "", raw)
    raw = raw[: len(raw) - 1] if len(raw) % 4 == 1 else raw
    text = base64.b64decode(raw + "=" * (-len(raw) % 4)).decode(errors="replace")
    parts: dict[str, str] = {"o": "asc"}
    for part in text.split("\n"):
        match = re.match(r"^(\S):(.*)", part)
        if not match or match.group(1) not in {"l", "o", "c", "a"}:
            raise rendered_status(500)
        parts[match.group(1)] = match.group(2)
    parts.setdefault("l", "")
    return parts


def _object_row(name: str, stored: StoredObject) -> dict[str, Any]:
    """The columns list-v2 selects from ``storage.objects``; ``name`` is the full key."""
    return {
        "id": stored.id,
        "name": name,
        "metadata": stored.metadata(),
        "updated_at": _iso(stored.updated_at),
        "created_at": _iso(stored.created_at),
        "last_accessed_at": _iso(stored.created_at),
    }


# --- uploads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    content: bytes
    mimetype: str
    cache_control: str


def parse_upload(request: Request) -> Upload:
    """A multipart form (storage3) or a raw body, read as the storage API reads them."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        mimetype = content_type or "application/octet-stream"
        return Upload(request.body, mimetype, request.headers.get("cache-control", "no-cache"))
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    fields: dict[str, str] = {}
    file_part = None
    for part in form.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            file_part = part
        elif isinstance(name, str):
            fields[name] = (part.get_payload(decode=True) or b"").decode()
    if file_part is None:
        raise StorageError(400, "InvalidRequest", "InvalidRequest", "No content provided")
    cache_time = fields.get("cacheControl")
    return Upload(
        file_part.get_payload(decode=True) or b"",
        fields.get("contentType") or file_part.get_content_type(),
        f"max-age={cache_time}" if cache_time else "no-cache",
    )


# --- the server -----------------------------------------------------------------------------


class SupabaseStorageStandIn:
    """Supabase Storage's bucket and object routes over real HTTP.

    >>> with SupabaseStorageStandIn("jwt-secret-" * 4) as storage:
    ...     storage.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(self, jwt_secret: str) -> None:
        self.jwt_secret = jwt_secret
        self.faults = StorageFaults()
        self.buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._closing = threading.Event()  # set by stop(): stalled requests give up
        self.calls: Counter[tuple[str, str]] = Counter()  # (method, route) → requests

    # -- keys ------------------------------------------------------------------------------

    def mint_key(self, role: str = SERVICE_ROLE, *, secret: str | None = None) -> str:
        """A project API key: an HS256 JWT like the ones Supabase issues."""
        claims = {"iss": "supabase", "role": role, "iat": int(time.time())}
        claims["exp"] = claims["iat"] + 10 * 365 * 24 * 3600
        return jwt.encode(claims, secret or self.jwt_secret, algorithm="HS256")

    @property
    def service_role_key(self) -> str:
        return self.mint_key(SERVICE_ROLE)

    def _caller(self, request: Request, *, allow_invalid_jwt: bool = False) -> Caller:
        """The storage API's JWT plugin (``allowInvalidJwt`` lets a bad token through as anon).

        The header itself is required by every route's schema, checked before the token.
        """
        if "authorization" not in request.headers:
            raise missing_authorization()
        token = _BEARER.sub("", request.headers["authorization"])
        if not token and allow_invalid_jwt:
            return ANONYMOUS
        try:
            claims = self._verify(token)
        except StorageError:
            if allow_invalid_jwt:
                return ANONYMOUS
            raise
        return Caller(authenticated=True, role=str(claims.get("role", "anon")))

    def _verify(self, token: str) -> dict[str, Any]:
        # The messages are jose's, which the storage API passes on.
        if token.count(".") != 2:
            raise access_denied("Invalid Compact JWS")
        try:
            return jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.InvalidSignatureError:
            raise access_denied("signature verification failed") from None
        except jwt.ExpiredSignatureError:
            raise access_denied('"exp" claim timestamp check failed') from None
        except jwt.PyJWTError:
            raise access_denied("Invalid Compact JWS") from None

    # -- state for tests -------------------------------------------------------------------

    def create_bucket(self, bucket_id: str, *, public: bool = False) -> None:
        with self._lock:
            self.buckets[bucket_id] = Bucket(bucket_id, public)

    def put_object(self, bucket_id: str, name: str, body: bytes) -> None:
        """Seed an object directly, as another client (or the dashboard) would have."""
        with self._lock:
            now = _now()
            stored = StoredObject(str(uuid.uuid4()), body, "text/plain", "no-cache", now, now)
            self.buckets[bucket_id].objects[name] = stored

    def stored(self, bucket_id: str) -> dict[str, bytes]:
        """Every object's bytes by name (empty when the bucket does not exist)."""
        with self._lock:
            bucket = self.buckets.get(bucket_id)
            return {name: obj.body for name, obj in bucket.objects.items()} if bucket else {}

    def object(self, bucket_id: str, name: str) -> StoredObject | None:
        with self._lock:
            bucket = self.buckets.get(bucket_id)
            return bucket.objects.get(name) if bucket else None

    def count(self, method: str | None = None, route: str | None = None) -> int:
        """Requests received (answered or not), by method and route such as ``object/list-v2``."""
        with self._lock:
            return sum(
                n
                for (m, r), n in self.calls.items()
                if (method is None or m == method) and (route is None or r == route)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()

    # -- routing ---------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply | None:
        """The reply to one request; ``None`` drops the connection unanswered."""
        with self._lock:
            self.calls[(request.method, _route_name(request.path))] += 1
        while self.faults.stall and not self._closing.is_set():
            time.sleep(0.02)  # hangs like a storage whose database stopped answering
        if self.faults.drop_connections:
            return None
        if self.faults.gateway_status is not None:
            headers = {"Content-Type": "text/html"}
            return Reply(
                self.faults.gateway_status, gateway_page(self.faults.gateway_status), headers
            )
        try:
            if self.faults.storage_status is not None:
                raise rendered_status(self.faults.storage_status)
            with self._lock:
                return self._route(request)
        except StorageError as error:
            return Reply.json(error.body(), error.http_status)
        except NotImitated as error:
            return Reply.json({"message": f"not imitated by the stand-in: {error}"}, 501)

    def _route(self, request: Request) -> Reply:
        method, parts = request.method, request.path.split("/")
        if parts[0] == "bucket":
            if method == "POST" and len(parts) == 1:
                return self._create_bucket(request)
            if method == "GET" and len(parts) == 2:
                return self._get_bucket(request, parts[1])
        if parts[0] == "object" and len(parts) >= 2:
            return self._route_object(request, parts[1:])
        return _route_not_found(request)

    def _route_object(self, request: Request, parts: list[str]) -> Reply:
        method = request.method
        if method == "POST" and parts[0] == "list" and len(parts) == 2:
            return self._list(request, parts[1])
        if method == "POST" and parts[0] == "list-v2" and len(parts) == 2:
            return self._list_v2(request, parts[1])
        if method == "GET" and parts[0] == "authenticated" and len(parts) >= 3:
            caller = self._caller(request)
            return self._download(caller, parts[1], "/".join(parts[2:]))
        if method == "DELETE" and len(parts) == 1:
            return self._delete_many(request, parts[0])
        if len(parts) < 2:
            return _route_not_found(request)
        bucket_id, name = parts[0], "/".join(parts[1:])
        if method == "GET":
            caller = self._caller(request, allow_invalid_jwt=True)
            return self._download(caller, bucket_id, name)
        if method in {"POST", "PUT"}:
            upsert = method == "PUT" or request.headers.get("x-upsert") == "true"
            return self._upload(request, bucket_id, name, upsert=upsert)
        if method == "DELETE":
            return self._delete_one(request, bucket_id, name)
        return _route_not_found(request)

    # -- buckets ---------------------------------------------------------------------------

    def _create_bucket(self, request: Request) -> Reply:
        caller = self._caller(request)
        body = request.json()
        bucket_id = str(body.get("id") or body.get("name") or "")
        if not caller.bypasses_row_level_security:
            raise row_level_security_refused()
        if bucket_id in self.buckets:
            raise bucket_already_exists()
        self.buckets[bucket_id] = Bucket(bucket_id, bool(body.get("public", False)))
        return Reply.json({"name": bucket_id})

    def _get_bucket(self, request: Request, bucket_id: str) -> Reply:
        caller = self._caller(request)
        bucket = self.buckets.get(bucket_id)
        if bucket is None or not caller.bypasses_row_level_security:
            raise no_such_bucket()
        return Reply.json(bucket.row())

    # -- objects ---------------------------------------------------------------------------

    def _visible_object(self, caller: Caller, bucket: Bucket, name: str) -> StoredObject:
        stored = bucket.objects.get(name)
        if stored is None or not (bucket.public or caller.bypasses_row_level_security):
            raise no_such_key()
        return stored

    def _download(self, caller: Caller, bucket_id: str, name: str) -> Reply:
        bucket = self.buckets.get(bucket_id)
        if bucket is None or not (caller.authenticated or bucket.public):
            raise no_such_bucket()
        stored = self._visible_object(caller, bucket, name)
        headers = {
            "Content-Type": stored.mimetype,
            "Cache-Control": stored.cache_control,
            "ETag": stored.etag,
            "Last-Modified": format_datetime(stored.updated_at, usegmt=True),
        }
        return Reply(200, stored.body, headers)

    def _upload(self, request: Request, bucket_id: str, name: str, *, upsert: bool) -> Reply:
        caller = self._caller(request)
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            raise no_such_bucket()
        if not caller.bypasses_row_level_security:
            raise row_level_security_refused()
        existing = bucket.objects.get(name)
        if existing is not None and not upsert:
            raise key_already_exists()
        upload = parse_upload(request)
        now = _now()
        bucket.objects[name] = StoredObject(
            id=existing.id if existing else str(uuid.uuid4()),
            body=upload.content,
            mimetype=upload.mimetype,
            cache_control=upload.cache_control,
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        return Reply.json({"Key": f"{bucket_id}/{name}", "Id": bucket.objects[name].id})

    def _list(self, request: Request, bucket_id: str) -> Reply:
        caller = self._caller(request)
        body = request.json()
        bucket = self.buckets.get(bucket_id)
        if bucket is None or not (bucket.public or caller.bypasses_row_level_security):
            return Reply.json([])  # no rows match: an unknown or hidden bucket lists as empty
        return Reply.json(search(bucket, body))

    def _list_v2(self, request: Request, bucket_id: str) -> Reply:
        caller = self._caller(request)
        body = request.json()
        bucket = self.buckets.get(bucket_id)
        if bucket is None or not (bucket.public or caller.bypasses_row_level_security):
            # The route never looks the bucket up: an unknown bucket, or objects hidden by
            # row-level security, is a query that finds no rows.
            bucket = Bucket(bucket_id, public=False)
        return Reply.json(list_objects_v2(bucket, body))

    def _delete_one(self, request: Request, bucket_id: str, name: str) -> Reply:
        caller = self._caller(request)
        bucket = self.buckets.get(bucket_id)
        if bucket is None:
            raise no_such_key()
        self._visible_object(caller, bucket, name)
        del bucket.objects[name]
        return Reply.json({"message": "Successfully deleted"})

    def _delete_many(self, request: Request, bucket_id: str) -> Reply:
        caller = self._caller(request)
        prefixes = request.json().get("prefixes")
        if not isinstance(prefixes, list) or not prefixes:
            message = "body/prefixes must NOT have fewer than 1 items"
            raise StorageError(400, "Error", "InvalidRequest", message)
        bucket = self.buckets.get(bucket_id)
        if bucket is None or not caller.bypasses_row_level_security:
            return Reply.json([])
        deleted = []
        for name in dict.fromkeys(str(prefix) for prefix in prefixes):
            stored = bucket.objects.pop(name, None)
            if stored is not None:
                deleted.append(stored.row(bucket_id, name))
        return Reply.json(deleted)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on a free loopback port and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("the storage stand-in is already running")
        # A restart listens on the port it had, as a restarted server would.
        self._closing.clear()
        self._httpd = _Server(("127.0.0.1", self._port), self.handle)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"supabase-storage:{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and cut open connections, so clients see a server that is gone."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._closing.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join()
        self._httpd = None
        self._thread = None

    @property
    def url(self) -> str:
        """The project URL (``SUPABASE_URL``); storage lives under ``/storage/v1``."""
        if self._httpd is None:
            raise RuntimeError("the storage stand-in is not running")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _route_name(path: str) -> str:
    """The route a request path belongs to: ``bucket``, ``object/list-v2``, ``object``…"""
    parts = path.split("/")
    if parts[:1] == ["object"] and len(parts) > 2 and parts[1] in {"list", "list-v2"}:
        return "/".join(parts[:2])
    if parts[:1] == ["object"] and len(parts) > 2 and parts[1] == "authenticated":
        return "object/authenticated"
    return parts[0]


def _route_not_found(request: Request) -> Reply:
    # Fastify's own 404, which does not go through the storage error renderer. Storage sits
    # behind the gateway, so the path it names has no /storage/v1 in front.
    message = f"Route {request.method}:/{request.path} not found"
    return Reply.json({"message": message, "error": "Not Found", "statusCode": 404}, 404)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every reply has a length
    disable_nagle_algorithm = True  # headers and body are two writes; don't wait on ACKs
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path
        if not path.startswith(API_PREFIX):
            reply: Reply | None = Reply.json({"message": "no Route matched"}, 404)
        else:
            segments = [unquote(part) for part in path.removeprefix(API_PREFIX).split("/")]
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = Request(self.command, "/".join(segments), headers, body)
            reply = self.server.app(request)
        if reply is None:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read outcomes, not access logs


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: Any) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall; skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut keep-alive connections, or a pooled client would still reach a stopped server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client hanging up mid-reply is normal here
        super().handle_error(request, client_address)
