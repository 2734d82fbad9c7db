"""Who is asking: browser sessions, the failed sign-in limit and the client's address.

Plain objects without aiohttp, so each rule is tested on its own. All state lives in
the memory of the ``opsdash web`` process: restarting it signs everybody out, which is
what an operator expects from restarting the console's server.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Clock = Callable[[], float]

# Bounds on what an unauthenticated client can make this process remember.
MAX_SESSIONS_KEPT = 10_000
MAX_LIMITER_KEYS = 10_000


@dataclass(frozen=True)
class WebSession:
    token: str
    operator: str
    read_only: bool
    expires_at: float


class SessionStore:
    """Random tokens for signed-in operators; a token is worth nothing after sign-out or
    ``lifetime_s``."""

    def __init__(self, lifetime_s: float, *, clock: Clock = time.monotonic) -> None:
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()

    def create(self, operator: str, *, read_only: bool) -> WebSession:
        self._drop_expired()
        while len(self._sessions) >= MAX_SESSIONS_KEPT:
            self._sessions.popitem(last=False)
        session = WebSession(
            token=secrets.token_urlsafe(32),
            operator=operator,
            read_only=read_only,
            expires_at=self._clock() + self._lifetime_s,
        )
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> WebSession | None:
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[token]
            return None
        return session

    def end(self, token: str | None) -> WebSession | None:
        return self._sessions.pop(token, None) if token else None

    def end_operator(self, operator: str) -> list[WebSession]:
        """Sign an operator out everywhere (say, their account was removed)."""
        ended = [s for s in self._sessions.values() if s.operator == operator]
        for session in ended:
            del self._sessions[session.token]
        return ended

    def __len__(self) -> int:
        self._drop_expired()
        return len(self._sessions)

    def _drop_expired(self) -> None:
        now = self._clock()
        for token in [t for t, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[token]


class FailureLimiter:
    """At most ``limit`` failed sign-ins per key in any ``window_s``; then the key waits.

    Keys are the client's address and the user name tried, so neither many names from
    one address nor one name from many addresses gets unbounded guesses.
    """

    def __init__(self, limit: int, window_s: float, *, clock: Clock = time.monotonic) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until every key may try again; 0 when none is blocked."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            failures = self._recent(key, now)
            if len(failures) >= self._limit:
                # Free again when the oldest failure that still counts leaves the window.
                wait = max(wait, failures[-self._limit] + self._window_s - now)
        return wait

    def record_failure(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            failures = self._recent(key, now)
            failures.append(now)
            self._failures[key] = failures
            self._failures.move_to_end(key)
            while len(failures) > self._limit:
                failures.popleft()
        while len(self._failures) > MAX_LIMITER_KEYS:
            self._failures.popitem(last=False)

    def pardon(self, keys: Iterable[str]) -> None:
        """Take back the latest failure of each key (the attempt turned out right)."""
        for key in keys:
            failures = self._failures.get(key)
            if failures:
                failures.pop()
            if not failures:
                self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self._window_s:
            failures.popleft()
        if not failures:
            self._failures.pop(key, None)
        return failures


@dataclass(frozen=True)
class Client:
    """Where a request comes from, after deciding whether to believe a proxy."""

    address: str
    https: bool
    host: str | None
    """The host name the browser used (the proxy's X-Forwarded-Host, else Host)."""


def _single_address(text: str) -> str | None:
    candidate = text.strip()
    if candidate.startswith("[") and "]" in candidate:  # "[::1]:443"
        candidate = candidate[1 : candidate.index("]")]
    elif candidate.count(":") == 1:  # "192.0.2.1:443"
        candidate = candidate.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def resolve_client(
    *,
    peer: str | None,
    tls: bool,
    headers: Callable[[str], list[str]],
    trusted_proxy: str | None,
) -> Client:
    """The client as the trusted proxy describes it, or else the TCP peer itself.

    Forwarded headers are believed only when the peer is ``trusted_proxy``; anybody else
    could write them. From X-Forwarded-For the right-most entry counts: it is the one the
    proxy added, whatever the browser sent before it.
    """
    peer_address = _single_address(peer or "") or (peer or "unknown")
    host_headers = headers("Host")
    host = host_headers[0] if host_headers else None
    if trusted_proxy is None or peer_address != _single_address(trusted_proxy):
        return Client(address=peer_address, https=tls, host=host)
    forwarded_for = [part for value in headers("X-Forwarded-For") for part in value.split(",")]
    address = peer_address
    if forwarded_for:
        address = _single_address(forwarded_for[-1]) or peer_address
    protos = [part.strip().lower() for v in headers("X-Forwarded-Proto") for part in v.split(",")]
    https = protos[-1] == "https" if protos else tls
    forwarded_hosts = [part.strip() for v in headers("X-Forwarded-Host") for part in v.split(",")]
    if forwarded_hosts and forwarded_hosts[-1]:
        host = forwarded_hosts[-1]
    return Client(address=address, https=https, host=host)
