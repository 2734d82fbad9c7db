"""A stand-in for Supabase Auth's admin API that answers the way the real server does.

It serves ``/auth/v1/admin/users`` (list, create) and ``/auth/v1/admin/users/{id}`` (get,
update, delete) on a real loopback port, as the ``supabase/auth`` repository documents them
(``openapi.yaml``) and implements them (``internal/api/admin.go``, ``apierrors``):

- the list is paged by ``page`` / ``per_page`` (defaults 1 and 50), newest first, with
  ``X-Total-Count`` and ``Link`` headers, and answers ``{"aud": ..., "users": [...]}``;
- a create needs an email or a phone (400 ``validation_failed``), refuses an email already
  registered (422 ``email_exists``), accepts a caller-chosen ``id`` (400 when it is not a
  uuid; 500 ``unexpected_failure`` when the id is taken, the database's primary key
  refusing it), sets a random password when none is given, and starts ``app_metadata``
  with ``provider`` / ``providers`` before merging the caller's;
- ``app_metadata`` updates merge key by key, a ``null`` value removes the key;
- ``ban_duration`` is a Go duration (``"876000h"``) or ``"none"``, which lifts the ban;
- an unknown user is 404 ``user_not_found``;
- errors have the 2024-01-01 shape ``{"code": "<error_code>", "message"}`` when the request
  names that API version in ``X-Supabase-Api-Version`` (supabase-py always does; the header
  is echoed back), otherwise the original ``{"code": <status>, "error_code", "msg"}``;
- the admin routes need a service-role JWT: none is 401 ``no_authorization``, a forged one
  403 ``bad_jwt``, a user's 403 ``not_admin``.

Every request is counted by method and route (``calls``), and ``faults`` makes chosen users
or every request fail the way an overloaded server does. With a storage stand-in attached,
``/storage/v1`` is served from the same port, so one URL is the whole Supabase project.
:meth:`SupabaseAuthStandIn.access_token` signs a user's token the way the Auth server does.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import orjson

from tests.supabase_storage_server import Request as StorageRequest
from tests.supabase_storage_server import SupabaseStorageStandIn

AUTH_PREFIX = "/auth/v1/"
STORAGE_PREFIX = "/storage/v1/"
API_VERSION_HEADER = "x-supabase-api-version"
API_VERSION_2024 = "2024-01-01"
DUPLICATE_EMAIL = "A user with this email address has already been registered"
_BEARER = re.compile(r"^Bearer\s+", re.IGNORECASE)
# checkmail's format check, close enough: something@something.tld without spaces
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class AuthApiError(Exception):
    """An ``apierrors.HTTPError``: status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def parse_go_duration(text: str) -> timedelta:
    """Go's ``time.ParseDuration`` for the non-negative durations a ban uses."""
    if text in ("0", ""):
        return timedelta(0)
    position, seconds = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f'time: invalid duration "{text}"')
    return timedelta(seconds=seconds)


@dataclass
class AuthUserRecord:
    id: uuid.UUID
    email: str
    created_at: datetime
    updated_at: datetime
    app_metadata: dict[str, Any]
    user_metadata: dict[str, Any] = field(default_factory=dict)
    role: str = "authenticated"
    aud: str = "authenticated"
    email_confirmed_at: datetime | None = None
    banned_until: datetime | None = None
    password_set: bool = True

    def banned(self, now: datetime) -> bool:
        return self.banned_until is not None and self.banned_until > now

    def json(self) -> dict[str, Any]:
        """``models.User`` as the server renders it (empty optional timestamps omitted)."""
        body: dict[str, Any] = {
            "id": str(self.id),
            "aud": self.aud,
            "role": self.role,
            "email": self.email,
            "phone": "",
            "app_metadata": self.app_metadata,
            "user_metadata": self.user_metadata,
            "identities": [
                {
                    "identity_id": str(uuid.uuid5(self.id, "email")),
                    "id": str(self.id),
                    "user_id": str(self.id),
                    "identity_data": {
                        "email": self.email,
                        "email_verified": self.email_confirmed_at is not None,
                        "phone_verified": False,
                        "sub": str(self.id),
                    },
                    "provider": "email",
                    "created_at": _iso(self.created_at),
                    "updated_at": _iso(self.updated_at),
                    "email": self.email,
                }
            ],
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "is_anonymous": False,
        }
        if self.email_confirmed_at is not None:
            body["email_confirmed_at"] = _iso(self.email_confirmed_at)
            body["confirmed_at"] = _iso(self.email_confirmed_at)
        if self.banned_until is not None:
            body["banned_until"] = _iso(self.banned_until)
        return body


@dataclass
class AuthFaults:
    """What goes wrong while set; tests flip these on a running server."""

    # Requests that create or update a user with one of these emails fail with a 500.
    failing_emails: set[str] = field(default_factory=set)
    # Every create/update/delete answers this status (e.g. 503, 429) before doing anything.
    write_status: int | None = None
    # Every request, listing included, answers this status.
    status: int | None = None
    # Every request takes at least this long (a server far away, or busy).
    latency_s: float = 0.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # after /auth/v1/
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            value = orjson.loads(self.body or b"{}")
        except orjson.JSONDecodeError:
            raise AuthApiError(400, "bad_json", "Could not parse request body as JSON") from None
        if not isinstance(value, dict):
            raise AuthApiError(400, "bad_json", "Could not parse request body as JSON")
        return value


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Reply:
        return cls(status, orjson.dumps(value), {"Content-Type": "application/json"})


def _merge_metadata(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``User.UpdateAppMetaData``: keys merge, a null value deletes the key."""
    merged = dict(current)
    for key, value in update.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


class SupabaseAuthStandIn:
    """The Auth admin API over real HTTP; optionally the project's storage on the same port."""

    def __init__(self, jwt_secret: str, *, storage: SupabaseStorageStandIn | None = None) -> None:
        self.jwt_secret = jwt_secret
        self.storage = storage
        self.faults = AuthFaults()
        self.users: dict[uuid.UUID, AuthUserRecord] = {}
        self._by_email: dict[str, uuid.UUID] = {}  # auth.users' unique email index
        self.calls: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests ever served at once
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- keys and tokens -------------------------------------------------------------------

    def mint_key(self, role: str = "service_role") -> str:
        """A project API key: an HS256 JWT like the ones Supabase issues."""
        issued = int(time.time())
        claims = {"iss": "supabase", "role": role, "iat": issued, "exp": issued + 10 * 365 * 86400}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    @property
    def service_role_key(self) -> str:
        return self.mint_key("service_role")

    def access_token(self, user_id: uuid.UUID, *, expires_in_s: int = 3600) -> str:
        """A user's access token with the claims the Auth server puts in one (an OTP sign-in)."""
        with self._lock:
            user = self.users[user_id]
            issued = int(time.time())
            claims = {
                "iss": f"{self.url}/auth/v1",
                "sub": str(user.id),
                "aud": "authenticated",
                "exp": issued + expires_in_s,
                "iat": issued,
                "email": user.email,
                "phone": "",
                "app_metadata": user.app_metadata,
                "user_metadata": user.user_metadata,
                "role": user.role,
                "aal": "aal1",
                "amr": [{"method": "otp", "timestamp": issued}],
                "session_id": str(uuid.uuid4()),
                "is_anonymous": False,
            }
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256", headers={"typ": "JWT"})

    # -- state for tests -------------------------------------------------------------------

    def add_user(
        self,
        email: str,
        *,
        user_id: uuid.UUID | None = None,
        app_metadata: dict[str, Any] | None = None,
        banned: bool = False,
        created_at: datetime | None = None,
    ) -> AuthUserRecord:
        """Seed a user directly, as an earlier system (or the dashboard) would have made them."""
        now = created_at or _now()
        record = AuthUserRecord(
            id=user_id or uuid.uuid4(),
            email=email.lower(),
            created_at=now,
            updated_at=now,
            app_metadata={"provider": "email", "providers": ["email"], **(app_metadata or {})},
            email_confirmed_at=now,
            banned_until=now + timedelta(days=3650) if banned else None,
        )
        with self._lock:
            self.users[record.id] = record
            self._by_email[record.email] = record.id
        return record

    def by_email(self, email: str) -> AuthUserRecord | None:
        with self._lock:
            user_id = self._by_email.get(email.lower())
            return self.users[user_id] if user_id else None

    def count(self, method: str | None = None, route: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (m, r), n in self.calls.items()
                if (method is None or m == method) and (route is None or r == route)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.max_in_flight = 0

    # -- routing ---------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        route = "admin/users" if len(parts) == 2 else "admin/users/{id}"
        with self._lock:
            self.calls[(request.method, route if parts[:2] == ["admin", "users"] else "other")] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.faults.latency_s:
                time.sleep(self.faults.latency_s)
            return self._handle(request, parts)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle(self, request: Request, parts: list[str]) -> Reply:
        try:
            if self.faults.status is not None:
                raise _fault(self.faults.status)
            if parts[:2] != ["admin", "users"] or len(parts) > 3:
                raise AuthApiError(404, "not_found", "Not Found")
            self._require_admin(request)
            if request.method != "GET" and self.faults.write_status is not None:
                raise _fault(self.faults.write_status)
            with self._lock:
                if len(parts) == 2:
                    if request.method == "GET":
                        return self._list(request)
                    if request.method == "POST":
                        return self._create(request)
                else:
                    user = self._load(parts[2])
                    if request.method == "GET":
                        return Reply.json(user.json())
                    if request.method == "PUT":
                        return self._update(request, user)
                    if request.method == "DELETE":
                        del self.users[user.id]
                        self._by_email.pop(user.email, None)
                        return Reply.json({})
            raise AuthApiError(405, "method_not_allowed", "Method Not Allowed")
        except AuthApiError as error:
            return _render_error(error, request)

    def _require_admin(self, request: Request) -> None:
        token = _BEARER.sub("", request.headers.get("authorization", "")).strip()
        if not token:
            raise AuthApiError(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            claims = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
        except jwt.PyJWTError as error:
            message = f"invalid JWT: unable to parse or verify signature, {error}"
            raise AuthApiError(403, "bad_jwt", message) from None
        if claims.get("role") not in ("service_role", "supabase_admin"):
            raise AuthApiError(403, "not_admin", "User not allowed")

    def _load(self, raw_id: str) -> AuthUserRecord:
        try:
            user_id = uuid.UUID(raw_id)
        except ValueError:
            raise AuthApiError(404, "validation_failed", "user_id must be an UUID") from None
        user = self.users.get(user_id)
        if user is None:
            raise AuthApiError(404, "user_not_found", "User not found")
        return user

    def _list(self, request: Request) -> Reply:
        try:
            page = int(request.query.get("page", ["1"])[0] or 1)
            per_page = int(request.query.get("per_page", ["50"])[0] or 50)
            if page < 1 or per_page < 1:
                raise ValueError("page and per_page must be positive")
        except ValueError as error:
            message = f"Bad Pagination Parameters: {error}"
            raise AuthApiError(400, "validation_failed", message) from None
        # Newest first, as FindUsersInAudience sorts by default.
        ordered = sorted(self.users.values(), key=lambda u: (u.created_at, u.id), reverse=True)
        chunk = ordered[(page - 1) * per_page : page * per_page]
        reply = Reply.json({"aud": "authenticated", "users": [user.json() for user in chunk]})
        total = len(ordered)
        last = max(1, -(-total // per_page))
        links = []
        if page < last:
            links.append(f'</admin/users?page={page + 1}&per_page={per_page}>; rel="next"')
        links.append(f'</admin/users?page={last}&per_page={per_page}>; rel="last"')
        reply.headers["X-Total-Count"] = str(total)
        reply.headers["Link"] = ", ".join(links)
        return reply

    def _email(self, raw: Any) -> str:
        email = str(raw).strip()
        if len(email) > 255:
            raise AuthApiError(400, "validation_failed", "An email address is too long")
        if not _EMAIL.match(email):
            message = "Unable to validate email address: invalid format"
            raise AuthApiError(400, "email_address_invalid", message)
        return email.lower()

    def _check_faults(self, email: str) -> None:
        if email in self.faults.failing_emails:
            raise AuthApiError(500, "unexpected_failure", "Database error saving user")

    def _ban(self, raw: Any, now: datetime) -> tuple[bool, datetime | None]:
        """(given, banned_until) from a ``ban_duration`` parameter."""
        if raw in (None, ""):
            return False, None
        if raw == "none":
            return True, None
        try:
            duration = parse_go_duration(str(raw))
        except ValueError as error:
            message = f"invalid format for ban duration: {error}"
            raise AuthApiError(400, "validation_failed", message) from None
        return True, (now + duration if duration > timedelta(0) else None)

    def _create(self, request: Request) -> Reply:
        params = request.json()
        if not params.get("email") and not params.get("phone"):
            message = "Cannot create a user without either an email or phone"
            raise AuthApiError(400, "validation_failed", message)
        if not params.get("email"):
            raise AuthApiError(400, "validation_failed", "phone sign-ups are not imitated")
        email = self._email(params["email"])
        if email in self._by_email:
            raise AuthApiError(422, "email_exists", DUPLICATE_EMAIL)
        user_id = uuid.uuid4()
        if params.get("id"):
            try:
                user_id = uuid.UUID(str(params["id"]))
            except ValueError:
                message = "ID must conform to the uuid v4 format"
                raise AuthApiError(400, "validation_failed", message) from None
            if user_id.int == 0:
                raise AuthApiError(400, "validation_failed", "ID cannot be a nil uuid")
        now = _now()
        ban_given, banned_until = self._ban(params.get("ban_duration"), now)
        self._check_faults(email)
        if user_id in self.users:  # the primary key refuses it inside the transaction
            raise AuthApiError(500, "unexpected_failure", "Database error creating new user")
        record = AuthUserRecord(
            id=user_id,
            email=email,
            created_at=now,
            updated_at=now,
            app_metadata=_merge_metadata(
                {"provider": "email", "providers": ["email"]}, params.get("app_metadata") or {}
            ),
            user_metadata=dict(params.get("user_metadata") or {}),
            role=params.get("role") or "authenticated",
            email_confirmed_at=now if params.get("email_confirm") else None,
            banned_until=banned_until if ban_given else None,
            password_set=bool(params.get("password")),
        )
        self.users[record.id] = record
        self._by_email[email] = record.id
        return Reply.json(record.json())

    def _update(self, request: Request, user: AuthUserRecord) -> Reply:
        params = request.json()
        now = _now()
        email = self._email(params["email"]) if params.get("email") else None
        ban_given, banned_until = self._ban(params.get("ban_duration"), now)
        self._check_faults(email or user.email)
        taken = self._by_email.get(email or "", user.id) != user.id
        if email is not None and taken:
            raise AuthApiError(422, "email_exists", DUPLICATE_EMAIL)
        if params.get("role"):
            user.role = params["role"]
        if params.get("email_confirm"):
            user.email_confirmed_at = user.email_confirmed_at or now
        if email is not None:
            self._by_email.pop(user.email, None)
            user.email = email
            self._by_email[email] = user.id
        if params.get("app_metadata") is not None:
            user.app_metadata = _merge_metadata(user.app_metadata, params["app_metadata"])
        if params.get("user_metadata") is not None:
            user.user_metadata = _merge_metadata(user.user_metadata, params["user_metadata"])
        if ban_given:
            user.banned_until = banned_until
        user.updated_at = now
        return Reply.json(user.json())

    # -- lifecycle -------------------------------------------------------------------------

    def dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Reply | None:
        split = urlsplit(target)
        if split.path.startswith(AUTH_PREFIX):
            request = Request(
                method,
                unquote(split.path.removeprefix(AUTH_PREFIX)),
                parse_qs(split.query),
                headers,
                body,
            )
            return self.handle(request)
        if self.storage is not None and split.path.startswith(STORAGE_PREFIX):
            rest = split.path.removeprefix(STORAGE_PREFIX)
            segments = [unquote(part) for part in rest.split("/")]
            reply = self.storage.handle(StorageRequest(method, "/".join(segments), headers, body))
            return None if reply is None else Reply(reply.status, reply.body, reply.headers)
        return Reply.json({"message": "no Route matched with those values"}, 404)

    def start(self) -> str:
        if self._httpd is not None:
            raise RuntimeError("the auth stand-in is already running")
        # A restart listens on the port it had, as a restarted project would.
        self._httpd = _Server(("127.0.0.1", getattr(self, "_port", 0)), self.dispatch)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"supabase-auth:{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join()
        self._httpd = None
        self._thread = None

    @property
    def url(self) -> str:
        """The project URL (``SUPABASE_URL``): ``/auth/v1`` and, if attached, ``/storage/v1``."""
        if self._httpd is None:
            raise RuntimeError("the auth stand-in is not running")
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


def _fault(status: int) -> AuthApiError:
    if status == 429:
        return AuthApiError(429, "over_request_rate_limit", "Request rate limit reached")
    return AuthApiError(status, "unexpected_failure", "Unexpected failure, please check logs")


def _render_error(error: AuthApiError, request: Request) -> Reply:
    """``HandleResponseError``: the 2024-01-01 shape when the request asks for that version."""
    version = request.headers.get(API_VERSION_HEADER, "")
    if version >= API_VERSION_2024:
        reply = Reply.json({"code": error.code, "message": error.message}, error.status)
        reply.headers["X-Supabase-Api-Version"] = API_VERSION_2024
        return reply
    body = {"code": error.status, "error_code": error.code, "msg": error.message}
    if error.status >= 500:
        body["error_id"] = secrets.token_hex(8)
    return Reply.json(body, error.status)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
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
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.app(self.command, self.path, headers, body)
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
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: Any) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no reverse DNS lookup
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
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)
