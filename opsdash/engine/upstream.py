"""MaidCentral client: httpx with timeouts, tenacity retries and a process-wide rate limiter."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from datetime import date
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx
import orjson
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential_jitter,
)

log = logging.getLogger("opsdash.upstream")

MAX_RANGE_DAYS = 31
MAX_RETRY_AFTER_S = 120.0
STOPPING = "stopping: request not sent"


class UpstreamError(RuntimeError):
    """The upstream call failed. ``retryable`` says whether trying again later may help."""

    retryable: bool = True


class UpstreamUnavailable(UpstreamError):
    """Transport error, timeout or 5xx."""


class UpstreamRateLimited(UpstreamError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MalformedResponse(UpstreamError):
    """The body is not the JSON envelope we expect (truncated, wrong shape)."""


class UpstreamRejected(UpstreamError):
    """The upstream answered but refused: ``IsSuccess: false`` or a 4xx."""


class UpstreamAuthError(UpstreamRejected):
    retryable = False


class RateLimiter:
    """Sliding-window limits shared by every worker thread of the process.

    ``acquire`` blocks until a request may go out; ``pause_for`` holds everyone
    back after the upstream answered 429 with ``Retry-After``.
    """

    def __init__(
        self,
        per_minute: int,
        per_hour: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._windows = [(60.0, per_minute, deque[float]())]
        if per_hour:
            self._windows.append((3600.0, per_hour, deque[float]()))
        self._clock = clock
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause_for(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def acquire(self, stop: threading.Event | None = None) -> None:
        while True:
            if stop is not None and stop.is_set():
                raise UpstreamUnavailable(STOPPING)
            with self._lock:
                wait = self._wait_needed(self._clock())
                if wait <= 0:
                    now = self._clock()
                    for _, _, sent in self._windows:
                        sent.append(now)
                    return
            if stop is not None and stop.wait(min(wait, 1.0)):
                raise UpstreamUnavailable(STOPPING)
            if stop is None:
                time.sleep(min(wait, 1.0))

    def _wait_needed(self, now: float) -> float:
        wait = self._paused_until - now
        for span, limit, sent in self._windows:
            while sent and sent[0] <= now - span:
                sent.popleft()
            if len(sent) >= limit:
                wait = max(wait, sent[0] + span - now)
        return wait


def _lower_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in mapping.items()}


def _retry_after_s(response: httpx.Response) -> float:
    header = response.headers.get("retry-after", "")
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(header).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 5.0
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _is_transient(error: BaseException) -> bool:
    if str(error) == STOPPING:
        return False
    return isinstance(error, UpstreamUnavailable | UpstreamRateLimited | MalformedResponse)


def _parse_json(content: bytes) -> Any:
    """orjson, or where it refuses, the standard library's reading of the same text.

    orjson rejects a lone UTF-16 surrogate escape ("\\ud800") anywhere in the body, which
    would make one bad customer name fail every day of the answer. The standard library
    accepts it; the transform then fails only the record (and day) that carries it.
    """
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as error:
        try:
            return json.loads(content.decode("utf-8", "surrogatepass"))
        except ValueError:
            raise error from None


class _CancellableBackend(httpcore.NetworkBackend):
    """The standard socket backend, remembering its sockets so that a stopping process
    can cut the requests in flight (``cancel``) instead of waiting for their timeout.
    Closing a socket from another thread does not wake a blocked read; shutting it down does.
    """

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._streams: weakref.WeakSet[httpcore.NetworkStream] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.cancelled = False

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        if self.cancelled:
            raise httpcore.ConnectError(STOPPING)
        stream = self._inner.connect_tcp(*args, **kwargs)
        with self._lock:
            self._streams.add(stream)
            cancelled = self.cancelled
        if cancelled:
            # ``cancel`` ran while this connection was being opened: it was not in the
            # set that ``cancel`` cut, so it must not carry a request either.
            stream.close()
            raise httpcore.ConnectError(STOPPING)
        return stream

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(*args, **kwargs)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def cancel(self) -> int:
        with self._lock:
            self.cancelled = True
            streams = list(self._streams)
        for stream in streams:
            sock = stream.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return len(streams)


class MaidCentralClient:
    """The two endpoints the engine needs. Thread-safe; one instance per process."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        limiter: RateLimiter,
        timeout_s: float = 20.0,
        attempts: int = 3,
        max_backoff_s: float = 8.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self._attempts = attempts
        self._max_backoff_s = max_backoff_s
        self._stop = stop
        self._calls = 0
        self._calls_lock = threading.Lock()
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        transport = httpx.HTTPTransport(limits=limits)
        # httpx takes no network backend of its own; its pool does, and cancel() needs one.
        self._backend = _CancellableBackend()
        transport._pool._network_backend = self._backend
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )

    @property
    def calls(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self._calls

    def close(self) -> None:
        self._http.close()

    def cancel_in_flight(self) -> int:
        """Cut every request in flight and refuse new ones (the process is stopping).

        Returns how many connections were cut; their callers get ``UpstreamUnavailable``.
        """
        return self._backend.cancel()

    def schedule(
        self,
        start: date,
        end: date,
        service_company_id: str | None = None,
        *,
        abandon: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs from ``start`` to ``end`` inclusive, for one company or all.

        ``abandon`` is asked before each retry: once it answers True (nobody wants the
        answer any more, e.g. the jobs were taken over) no further request goes out.
        """
        if end < start:
            raise ValueError(f"end date {end} is before start date {start}")
        if (end - start).days >= MAX_RANGE_DAYS:
            raise ValueError(f"a schedule request covers at most {MAX_RANGE_DAYS} days")
        params = {"startDate": start.isoformat(), "endDate": end.isoformat()}
        if service_company_id is not None:
            params["serviceCompanyId"] = service_company_id
        result = self._get("/api/dr-schedule", params, abandon)
        if not isinstance(result, list):
            raise MalformedResponse("dr-schedule: Result is not a list of jobs")
        return result

    def users(self) -> list[dict[str, Any]]:
        """The service companies (with their users) of every group, flattened."""
        result = self._get("/api/dr-schedule/users", {})
        if not isinstance(result, Mapping):
            raise MalformedResponse("dr-schedule/users: Result is not an object")
        groups = _lower_keys(result).get("servicecompanygroups")
        if not isinstance(groups, list):
            raise MalformedResponse("dr-schedule/users: ServiceCompanyGroups is missing")
        companies: list[dict[str, Any]] = []
        for group in groups:
            if not isinstance(group, Mapping):
                raise MalformedResponse("dr-schedule/users: a group is not an object")
            members = _lower_keys(group).get("servicecompanies") or []
            if not isinstance(members, list):
                raise MalformedResponse("dr-schedule/users: ServiceCompanies is not a list")
            companies.extend(members)
        return companies

    def _get(
        self, path: str, params: dict[str, str], abandon: Callable[[], bool] | None = None
    ) -> Any:
        def give_up(state: RetryCallState) -> bool:
            return state.attempt_number >= self._attempts or bool(abandon and abandon())

        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=give_up,
            wait=self._wait,
            sleep=self._pause,
            reraise=True,
        )
        return retrying(self._get_once, path, params)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        backoff = wait_exponential_jitter(multiplier=0.5, max=self._max_backoff_s)(state)
        if isinstance(error, UpstreamRateLimited):
            # The limiter already holds every worker back until Retry-After.
            return 0.0
        return backoff

    def _pause(self, seconds: float) -> None:
        """The backoff between retries; a stopping process does not retry."""
        if self._stop is None:
            time.sleep(seconds)
        elif self._stop.wait(seconds):
            raise UpstreamUnavailable(STOPPING)

    def _get_once(self, path: str, params: dict[str, str]) -> Any:
        self.limiter.acquire(self._stop)
        with self._calls_lock:
            self._calls += 1
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException as error:
            raise UpstreamUnavailable(f"{path}: timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            if self._backend.cancelled:
                raise UpstreamUnavailable(f"{path}: cancelled, the worker is stopping") from None
            raise UpstreamUnavailable(f"{path}: {type(error).__name__}: {error}") from error
        return self._unwrap(path, response)

    def _unwrap(self, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if status == 429:
            retry_after = _retry_after_s(response)
            self.limiter.pause_for(retry_after)
            log.warning("upstream rate limit hit on %s; pausing %.1fs", path, retry_after)
            raise UpstreamRateLimited(
                f"{path}: HTTP 429 (retry after {retry_after:g}s)", retry_after
            )
        if status >= 500:
            raise UpstreamUnavailable(f"{path}: HTTP {status}")
        if status in (401, 403):
            raise UpstreamAuthError(f"{path}: HTTP {status}: check MAIDCENTRAL_API_KEY")
        try:
            body = _parse_json(response.content)
        except orjson.JSONDecodeError as error:
            raise MalformedResponse(f"{path}: body is not valid JSON ({error})") from None
        if not isinstance(body, Mapping):
            raise MalformedResponse(f"{path}: body is not a JSON object")
        envelope = _lower_keys(body)
        if "issuccess" not in envelope:
            raise MalformedResponse(f"{path}: response has no IsSuccess field")
        if envelope["issuccess"] is not True:
            message = envelope.get("message") or "no message"
            raise UpstreamRejected(f"{path}: upstream reported failure (HTTP {status}): {message}")
        if status >= 400:
            raise UpstreamRejected(f"{path}: HTTP {status}")
        return envelope.get("result")
