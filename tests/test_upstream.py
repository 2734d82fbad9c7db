"""The MaidCentral client against the demo upstream over HTTP, and the rate limiter."""

from __future__ import annotations

import socket
import threading
import time
from datetime import date

import httpcore
import pytest

from opsdash.demo.server import DemoUpstream
from opsdash.engine.upstream import (
    MaidCentralClient,
    MalformedResponse,
    RateLimiter,
    UpstreamAuthError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
    _CancellableBackend,
)

DAY = date(2026, 12, 1)


def client(upstream: DemoUpstream, *, key: str = "test-key", **kwargs: object) -> MaidCentralClient:
    options: dict = {"timeout_s": 2.0, "attempts": 3, "max_backoff_s": 0.01}
    options.update(kwargs)
    return MaidCentralClient(upstream.url, key, limiter=RateLimiter(10_000), **options)


def test_schedule_and_users_round_trip(demo_upstream: DemoUpstream) -> None:
    api = client(demo_upstream)
    companies = api.users()
    assert len(companies) == 3
    service_id = str(companies[0]["ServiceCompanyId"])
    jobs = api.schedule(DAY, DAY, service_id)
    assert 20 <= len(jobs) <= 60
    week = api.schedule(DAY, date(2026, 12, 7), service_id)
    assert len({job["JobDate"] for job in week}) == 7
    assert api.calls == 3


def test_transient_errors_are_retried_within_the_call(demo_upstream: DemoUpstream) -> None:
    demo_upstream.faults.error_rate = 0.5
    api = client(demo_upstream, attempts=20)
    for _ in range(5):
        api.users()
    assert api.calls > 5
    assert demo_upstream.stats()["outcomes"].get("500", 0) == api.calls - 5


def test_retry_after_holds_back_every_caller(demo_upstream: DemoUpstream) -> None:
    demo_upstream.faults.failing_companies = {"1001": "429"}
    demo_upstream.faults.retry_after_s = 1
    api = client(demo_upstream, attempts=1)
    with pytest.raises(UpstreamRateLimited) as raised:
        api.schedule(DAY, DAY, "1001")
    assert raised.value.retry_after_s == 1
    started = time.monotonic()
    api.users()  # another endpoint waits out the pause too
    assert time.monotonic() - started >= 0.9


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        ("500", UpstreamUnavailable, "HTTP 500"),
        ("malformed", MalformedResponse, "not valid JSON"),
        ("unsuccessful", UpstreamRejected, "upstream reported failure"),
        ("timeout", UpstreamUnavailable, "timed out"),
    ],
)
def test_each_fault_raises_a_clear_error(
    demo_upstream: DemoUpstream, fault: str, error: type[Exception], text: str
) -> None:
    demo_upstream.faults.failing_companies = {"1001": fault}
    demo_upstream.faults.hang_s = 1.0
    api = client(demo_upstream, timeout_s=0.3, attempts=2)
    with pytest.raises(error, match=text):
        api.schedule(DAY, DAY, "1001")
    assert api.calls == (1 if fault == "unsuccessful" else 2)


def test_wrong_key_is_a_final_error(demo_upstream: DemoUpstream) -> None:
    api = client(demo_upstream, key="wrong")
    with pytest.raises(UpstreamAuthError) as raised:
        api.users()
    assert not raised.value.retryable


def test_bad_ranges_are_refused_before_sending(demo_upstream: DemoUpstream) -> None:
    api = client(demo_upstream)
    with pytest.raises(ValueError, match="before"):
        api.schedule(DAY, date(2026, 11, 1))
    with pytest.raises(ValueError, match="at most"):
        api.schedule(DAY, date(2027, 1, 15))
    assert api.calls == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_the_limit_then_waits_for_the_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=3, per_hour=5, clock=clock)
    for _ in range(3):
        limiter.acquire()
    assert limiter._wait_needed(clock.now) == pytest.approx(60)
    clock.now = 60.0
    limiter.acquire()
    limiter.acquire()
    clock.now = 130.0
    assert limiter._wait_needed(clock.now) == pytest.approx(3600 - 130)


def test_rate_limiter_is_shared_across_threads() -> None:
    limiter = RateLimiter(per_minute=50)
    sent: list[float] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(10):
            limiter.acquire()
            with lock:
                sent.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 50
    stop = threading.Event()
    stop.set()
    with pytest.raises(UpstreamUnavailable, match="stopping"):
        limiter.acquire(stop)


def test_the_read_timeout_is_a_setting_bounded_to_tens_of_seconds() -> None:
    from pydantic import ValidationError

    from opsdash.config import Settings

    assert Settings(upstream_timeout_s=45).upstream_timeout_s == 45
    with pytest.raises(ValidationError):
        Settings(upstream_timeout_s=90)


def test_a_connection_still_opening_when_requests_are_cut_carries_no_request() -> None:
    # The stop cuts the connections it knows of; one that was being opened at that moment
    # joins the set too late to be cut, so it must refuse to carry a request itself.
    backend = _CancellableBackend()
    opened: list[object] = []
    real_connect = backend._inner.connect_tcp

    def connect_while_the_stop_runs(*args: object, **kwargs: object) -> object:
        stream = real_connect(*args, **kwargs)
        opened.append(stream)
        backend.cancel()  # the stop lands between opening the socket and registering it
        return stream

    backend._inner.connect_tcp = connect_while_the_stop_runs  # type: ignore[method-assign]
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        pytest.raises(httpcore.ConnectError, match="stopping"),
    ):
        backend.connect_tcp("127.0.0.1", server.getsockname()[1])
    assert len(opened) == 1
    with pytest.raises(httpcore.ConnectError, match="stopping"):
        backend.connect_tcp("127.0.0.1", 9)  # and nothing new is opened after the stop
