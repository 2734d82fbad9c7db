"""The demo upstream: a real HTTP server that answers like MaidCentral, with fault injection.

It runs on the standard library's ``ThreadingHTTPServer`` in a background thread, so a test,
a benchmark or the embedded default can start one on a loopback port without extra
dependencies. Faults are drawn from a seeded ``random.Random`` so a run can be replayed.
"""

from __future__ import annotations

import contextlib
import hmac
import random
import re
import socket
import socketserver
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson

from opsdash.demo.data import DemoWorld

FAULT_KINDS: tuple[str, ...] = ("500", "429", "timeout", "malformed", "unsuccessful")
MAX_RANGE_DAYS = 31
DEMO_API_KEY = "demo-key"  # the built-in demo upstream's key; it guards nothing real

_SCHEDULE_ENDPOINT = "dr-schedule"
_USERS_ENDPOINT = "users"
_OTHER_ENDPOINT = "other"
# ASP.NET routes are case-insensitive, so these are matched lower-cased.
_API_PATHS: dict[str, str] = {
    "/api/dr-schedule": _SCHEDULE_ENDPOINT,
    "/api/dr-schedule/users": _USERS_ENDPOINT,
}
_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
_RATE_FIELDS = ("error_rate", "rate_limit_rate", "timeout_rate", "malformed_rate", "failure_rate")
_DURATION_FIELDS = ("latency_ms", "hang_s")
_COUNT_FIELDS = ("retry_after_s", "revision")


def _is_number(value: object) -> bool:
    # bool is an int subclass; "error_rate": true is a mistake, not 1.0.
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class FaultSettings:
    """What goes wrong, and how often. Mutable: tests flip knobs on a running server.

    Rates are per request, in [0, 1]. ``failing_companies`` maps a ServiceCompanyId to a
    fault kind that every request naming that company gets, whatever the rates.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    timeout_rate: float = 0.0
    hang_s: float = 30.0
    malformed_rate: float = 0.0
    failure_rate: float = 0.0
    failing_companies: dict[str, str] = field(default_factory=dict)
    revision: int = 0

    def __post_init__(self) -> None:
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
        for name in _DURATION_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if not isinstance(self.failing_companies, Mapping):
            raise ValueError("failing_companies must map a ServiceCompanyId to a fault kind")
        for company, kind in self.failing_companies.items():
            if kind not in FAULT_KINDS:
                raise ValueError(
                    f"failing_companies[{company!r}] must be one of {', '.join(FAULT_KINDS)}"
                )
        # Query strings carry ids as text; JSON or Python callers may use ints.
        self.failing_companies = {str(k): v for k, v in self.failing_companies.items()}

    def updated(self, changes: Mapping[str, Any]) -> FaultSettings:
        """A validated copy with ``changes`` applied; unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DemoRequest:
    method: str
    path: str
    query: dict[str, str]  # keys lower-cased: ASP.NET binds query parameters case-insensitively
    headers: Message
    body: bytes


@dataclass(frozen=True)
class DemoReply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    counted: bool = True  # admin replies stay out of the traffic stats


def _envelope_error(status: int, message: str) -> DemoReply:
    body = {"IsSuccess": False, "Message": message, "Result": None, "StatusCode": status}
    return DemoReply(status, orjson.dumps(body))


def _envelope_success(result_json: bytes) -> DemoReply:
    # Spliced rather than re-encoded: the result is cached, already-encoded JSON.
    body = b'{"IsSuccess":true,"Message":null,"Result":' + result_json + b',"StatusCode":200}'
    return DemoReply(200, body)


def _admin_reply(status: int, payload: Any) -> DemoReply:
    return DemoReply(status, orjson.dumps(payload), counted=False)


def _join_json_arrays(arrays: list[bytes]) -> bytes:
    items = [array[1:-1] for array in arrays if array != b"[]"]
    return b"[" + b",".join(items) + b"]"


def _parse_date(query: Mapping[str, str], name: str) -> date:
    raw = query.get(name.lower(), "")
    if not raw:
        raise ValueError(f"{name} is required (YYYY-MM-DD)")
    if not _DATE_PATTERN.fullmatch(raw):
        raise ValueError(f"{name} must look like YYYY-MM-DD, got {raw!r}")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a calendar date") from None


def _parse_range(query: Mapping[str, str]) -> tuple[date, date]:
    start = _parse_date(query, "startDate")
    end = _parse_date(query, "endDate")
    if end < start:
        raise ValueError(f"endDate {end} is before startDate {start}")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise ValueError(f"a range may span at most {MAX_RANGE_DAYS} days")
    return start, end


class _Stats:
    """Request counters for tests and benchmarks; one lock, copied out on read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._by_endpoint: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self._companies: Counter[str] = Counter()
            self._bytes_sent = 0
            self._last_minute: deque[float] = deque()
            self._peak_per_minute = 0

    def record(self, endpoint: str, outcome: str, company: str | None = None) -> None:
        with self._lock:
            self._by_endpoint[endpoint][outcome] += 1
            if endpoint == _SCHEDULE_ENDPOINT:
                self._companies[company or "all"] += 1
            # The most requests seen in any 60 s: what a rate limit is judged by.
            now = time.monotonic()
            self._last_minute.append(now)
            while self._last_minute[0] <= now - 60:
                self._last_minute.popleft()
            self._peak_per_minute = max(self._peak_per_minute, len(self._last_minute))

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes_sent += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_endpoint = {name: dict(outcomes) for name, outcomes in self._by_endpoint.items()}
            outcomes: Counter[str] = Counter()
            for counter in self._by_endpoint.values():
                outcomes.update(counter)
            return {
                "requests": sum(outcomes.values()),
                "endpoints": {name: sum(c.values()) for name, c in by_endpoint.items()},
                "outcomes": dict(outcomes),
                "by_endpoint": by_endpoint,
                "companies": dict(self._companies),
                "bytes_sent": self._bytes_sent,
                "peak_per_minute": self._peak_per_minute,
            }


class _Handler(BaseHTTPRequestHandler):
    """Turns HTTP into a ``DemoRequest`` and a ``DemoReply`` back into HTTP/1.1."""

    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    disable_nagle_algorithm = True  # headers and body are two writes; don't wait on ACKs
    timeout = 120  # an idle keep-alive connection gives its thread back eventually
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        query = {
            key.lower(): values[0]
            for key, values in parse_qs(url.query, keep_blank_values=True).items()
        }
        request = DemoRequest(self.command, url.path, query, self.headers, body)
        reply = self.server.app(request)
        if reply is None:
            # The server is stopping in the middle of a hang: drop the connection unanswered.
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        if reply.counted:
            self.server.on_sent(len(reply.body))

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(
        self,
        address: tuple[str, int],
        app: Callable[[DemoRequest], DemoReply | None],
        on_sent: Callable[[int], None],
        log_requests: bool,
    ) -> None:
        self.app = app
        self.on_sent = on_sent
        self.log_requests = log_requests
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall for
        # seconds in a sandbox; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut keep-alive connections, or a pooled client would keep talking to a stopped
        server and ``server_close`` would wait for their threads."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-reply (timeouts, stop()) is normal here, not news.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class DemoUpstream:
    """MaidCentral's schedule and users endpoints over real HTTP, with fault injection.

    >>> with DemoUpstream(companies=2) as upstream:
    ...     upstream.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(
        self,
        world: DemoWorld | None = None,
        *,
        companies: int = 6,
        seed: int = 0,
        api_key: str = DEMO_API_KEY,
        faults: FaultSettings | None = None,
        log_requests: bool = False,
    ) -> None:
        self.world = world if world is not None else DemoWorld(companies=companies, seed=seed)
        self.api_key = api_key
        self.faults = faults if faults is not None else FaultSettings()
        self.log_requests = log_requests
        self._fault_rng = random.Random(self.world.seed)
        self._fault_rng_lock = threading.Lock()
        self._stats = _Stats()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._users_result_json = orjson.dumps(self.world.users_result())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port) and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError(f"the demo upstream is already running at {self._url}")
        self._stopping.clear()
        httpd = _Server((host, port), self.handle, self._stats.add_bytes, self.log_requests)
        bound_port = httpd.server_address[1]
        shown_host = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown_host}:{bound_port}"
        self._httpd = httpd
        # A short poll interval makes stop() quick; the loop is idle otherwise.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"demo-upstream:{bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self._url

    def stop(self) -> None:
        """Stop serving, end any hang in progress, close connections. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()  # joins the handler threads, which now all end promptly
        if thread is not None:
            thread.join()
        self._httpd = None
        self._thread = None
        self._url = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the demo upstream is not running; call start() first")
        return self._url

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- counters --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Requests per endpoint and outcome, per company asked for, and bytes sent."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    # -- request handling ------------------------------------------------------------------

    def handle(self, request: DemoRequest) -> DemoReply | None:
        """Answer one request; ``None`` means drop the connection (stopping mid-hang)."""
        path = request.path.rstrip("/").lower()
        if path.startswith("/_demo/"):
            return self._admin(request, path)
        endpoint = _API_PATHS.get(path)
        if endpoint is None:
            self._stats.record(_OTHER_ENDPOINT, "404")
            return _envelope_error(404, f"No endpoint at {request.path}")
        if request.method != "GET":
            self._stats.record(endpoint, "405")
            return _envelope_error(405, f"{request.method} is not allowed here; use GET")
        return self._serve_api(endpoint, request)

    def _serve_api(self, endpoint: str, request: DemoRequest) -> DemoReply | None:
        faults = self.faults  # one snapshot per request, even if a test swaps it meanwhile
        company = request.query.get("servicecompanyid") or None
        if faults.latency_ms > 0 and not self._pause(faults.latency_ms / 1000):
            return None
        if not self._authorized(request):
            self._stats.record(endpoint, "401", company)
            reply = _envelope_error(401, "Authorization has been denied for this request.")
            return replace(reply, headers=(("WWW-Authenticate", "Bearer"),))
        fault = self._choose_fault(faults, company)
        if fault is None:
            reply, outcome = self._route(endpoint, request, faults.revision)
            self._stats.record(endpoint, outcome, company)
            return reply
        # Counted before any hang, so a test can wait for it while the client is stuck.
        self._stats.record(endpoint, fault, company)
        return self._faulty_reply(fault, endpoint, request, faults)

    def _faulty_reply(
        self, fault: str, endpoint: str, request: DemoRequest, faults: FaultSettings
    ) -> DemoReply | None:
        if fault == "timeout":
            if not self._pause(faults.hang_s):
                return None
            return self._route(endpoint, request, faults.revision)[0]  # late; the client gave up
        if fault == "500":
            return _envelope_error(500, "An error has occurred. (demo fault)")
        if fault == "429":
            reply = _envelope_error(429, "Rate limit exceeded. (demo fault)")
            return replace(reply, headers=(("Retry-After", str(faults.retry_after_s)),))
        if fault == "malformed":
            honest = self._route(endpoint, request, faults.revision)[0]
            # Any strict prefix of a JSON object is invalid JSON: the closing brace is gone.
            return replace(honest, status=200, body=honest.body[: max(1, len(honest.body) // 2)])
        # "unsuccessful": HTTP 200, yet the envelope says it failed.
        return _envelope_error(200, "The request could not be completed. (demo fault)")

    def _route(self, endpoint: str, request: DemoRequest, revision: int) -> tuple[DemoReply, str]:
        """The honest answer and its outcome name ("ok" or the HTTP status)."""
        if endpoint == _USERS_ENDPOINT:
            return _envelope_success(self._users_result_json), "ok"
        try:
            start, end = _parse_range(request.query)
        except ValueError as exc:
            return _envelope_error(400, str(exc)), "400"
        company = request.query.get("servicecompanyid") or None
        if company is not None and self.world.company(company) is None:
            return _envelope_error(404, f"Unknown service company {company!r}"), "404"
        days = [
            self.world.encoded_jobs_for_day(company_id, day, revision)
            for company_id, day in self.world.company_days(start, end, company)
        ]
        return _envelope_success(_join_json_arrays(days)), "ok"

    def _authorized(self, request: DemoRequest) -> bool:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _choose_fault(self, faults: FaultSettings, company: str | None) -> str | None:
        if company is not None and company in faults.failing_companies:
            return faults.failing_companies[company]
        chances = (
            ("timeout", faults.timeout_rate),
            ("500", faults.error_rate),
            ("429", faults.rate_limit_rate),
            ("malformed", faults.malformed_rate),
            ("unsuccessful", faults.failure_rate),
        )
        with self._fault_rng_lock:
            for kind, rate in chances:
                # Zero rates draw nothing, so enabling one fault doesn't reshuffle another's.
                if rate > 0 and self._fault_rng.random() < rate:
                    return kind
        return None

    def _pause(self, seconds: float) -> bool:
        """Sleep unless the server stops first; False when it did."""
        return not self._stopping.wait(seconds)

    # -- admin endpoints (no auth: for tests that run the server in another process) -------

    def _admin(self, request: DemoRequest, path: str) -> DemoReply:
        if path == "/_demo/stats" and request.method == "GET":
            return _admin_reply(200, self.stats())
        if path == "/_demo/stats/reset" and request.method == "POST":
            self.reset_stats()
            return _admin_reply(200, self.stats())
        if path == "/_demo/faults" and request.method == "GET":
            return _admin_reply(200, self.faults.as_dict())
        if path == "/_demo/faults" and request.method == "POST":
            return self._update_faults(request.body)
        return _admin_reply(404, {"error": f"no admin endpoint {request.method} {request.path}"})

    def _update_faults(self, body: bytes) -> DemoReply:
        try:
            changes = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as exc:
            return _admin_reply(400, {"error": f"body is not JSON: {exc}"})
        if not isinstance(changes, dict):
            return _admin_reply(400, {"error": "body must be a JSON object of fault settings"})
        try:
            self.faults = self.faults.updated(changes)
        except (TypeError, ValueError) as exc:
            return _admin_reply(400, {"error": str(exc)})
        return _admin_reply(200, self.faults.as_dict())
