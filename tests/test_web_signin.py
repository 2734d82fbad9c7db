"""The browser console's sign-in rules on their own: sessions, the failure limit, proxies."""

from __future__ import annotations

import pytest

from opsdash.web.signin import FailureLimiter, SessionStore, resolve_client


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers_of(values: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    return lambda name: values.get(name, [])


# --- sessions -------------------------------------------------------------------------------


def test_a_session_is_found_by_its_token_until_it_expires() -> None:
    clock = Clock()
    store = SessionStore(60.0, clock=clock)
    session = store.create("alice", read_only=True)
    assert store.get(session.token) == session
    assert len(session.token) >= 40  # 32 random bytes, url-safe
    clock.now += 59.9
    assert store.get(session.token) == session
    clock.now += 0.2
    assert store.get(session.token) is None


def test_tokens_are_unique_and_unknown_or_empty_tokens_find_nothing() -> None:
    store = SessionStore(60.0)
    tokens = {store.create("alice", read_only=False).token for _ in range(100)}
    assert len(tokens) == 100
    assert store.get(None) is None
    assert store.get("") is None
    assert store.get("not-a-token") is None


def test_ending_a_session_or_an_operator_signs_out() -> None:
    store = SessionStore(60.0)
    first = store.create("alice", read_only=False)
    second = store.create("alice", read_only=False)
    other = store.create("bob", read_only=False)
    assert store.end(first.token) == first
    assert store.get(first.token) is None
    assert store.end_operator("alice") == [second]
    assert store.get(second.token) is None
    assert store.get(other.token) == other


# --- the failure limit ----------------------------------------------------------------------


def test_five_failures_block_a_key_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(5, 300.0, clock=clock)
    keys = ["address 192.0.2.1", "name alice"]
    for _ in range(4):
        limiter.record_failure(keys)
        clock.now += 10
    assert limiter.retry_after(keys) == 0
    limiter.record_failure(keys)
    # The first failure was 40 s ago: it leaves the window in 260 s.
    assert limiter.retry_after(keys) == pytest.approx(260.0)
    clock.now += 259
    assert limiter.retry_after(keys) == pytest.approx(1.0)
    clock.now += 1
    assert limiter.retry_after(keys) == 0


def test_a_blocked_name_is_blocked_from_every_address_and_an_address_for_every_name() -> None:
    limiter = FailureLimiter(5, 300.0, clock=Clock())
    for index in range(5):
        limiter.record_failure([f"address 192.0.2.{index}", "name alice"])
    assert limiter.retry_after(["address 198.51.100.1", "name alice"]) > 0
    assert limiter.retry_after(["address 192.0.2.1", "name bob"]) == 0

    for index in range(5):
        limiter.record_failure(["address 198.51.100.9", f"name user{index}"])
    assert limiter.retry_after(["address 198.51.100.9", "name carol"]) > 0


def test_a_pardoned_attempt_does_not_count() -> None:
    limiter = FailureLimiter(5, 300.0, clock=Clock())
    keys = ["address 192.0.2.1", "name alice"]
    for _ in range(4):
        limiter.record_failure(keys)
    limiter.record_failure(keys)  # counted before the check ...
    limiter.pardon(keys)  # ... and taken back when the password was right
    assert limiter.retry_after(keys) == 0
    limiter.record_failure(keys)
    assert limiter.retry_after(keys) > 0


# --- which client is asking -----------------------------------------------------------------

FORWARDED = {
    "Host": ["10.1.2.3:8080"],
    "X-Forwarded-For": ["198.51.100.7, 203.0.113.5"],
    "X-Forwarded-Proto": ["https"],
    "X-Forwarded-Host": ["console.example.org"],
}


def test_forwarded_headers_count_only_from_the_trusted_proxy() -> None:
    trusted = resolve_client(
        peer="127.0.0.1", tls=False, headers=headers_of(FORWARDED), trusted_proxy="127.0.0.1"
    )
    # The right-most entry is the one the proxy added; anything before it the client wrote.
    assert trusted.address == "203.0.113.5"
    assert trusted.https is True
    assert trusted.host == "console.example.org"

    stranger = resolve_client(
        peer="192.0.2.44", tls=False, headers=headers_of(FORWARDED), trusted_proxy="127.0.0.1"
    )
    assert stranger.address == "192.0.2.44"
    assert stranger.https is False
    assert stranger.host == "10.1.2.3:8080"

    no_proxy = resolve_client(
        peer="127.0.0.1", tls=True, headers=headers_of(FORWARDED), trusted_proxy=None
    )
    assert (no_proxy.address, no_proxy.https) == ("127.0.0.1", True)


def test_a_trusted_proxy_without_forwarded_headers_is_the_client() -> None:
    client = resolve_client(
        peer="::1", tls=False, headers=headers_of({"Host": ["[::1]:8080"]}), trusted_proxy="::1"
    )
    assert (client.address, client.https, client.host) == ("::1", False, "[::1]:8080")


def test_a_forwarded_address_that_is_not_an_address_falls_back_to_the_proxy() -> None:
    client = resolve_client(
        peer="127.0.0.1",
        tls=False,
        headers=headers_of({"X-Forwarded-For": ["<script>"]}),
        trusted_proxy="127.0.0.1",
    )
    assert client.address == "127.0.0.1"


def test_several_forwarded_headers_are_read_as_one_list() -> None:
    client = resolve_client(
        peer="127.0.0.1",
        tls=False,
        headers=headers_of(
            {
                "X-Forwarded-For": ["198.51.100.7", "203.0.113.9:51234"],
                "X-Forwarded-Proto": ["https", "http"],
            }
        ),
        trusted_proxy="127.0.0.1",
    )
    assert (client.address, client.https) == ("203.0.113.9", False)
