"""Bounded in-process caches that keep the read API's hot path off the database and the disk."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from opsdash.statelog import StateChangeLog

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("opsdash.readapi.cache")


class Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = Missing.MISSING


@dataclass(frozen=True)
class CachePolicy:
    """How long and how much the read API remembers.

    ``schedule_ttl_s`` bounds how stale a company-day's metadata may be: a new
    sync (a new checksum) is served about this long after it lands. The
    document and view caches are keyed by checksum, so they can never serve a
    superseded sync; they only need a size bound. Past its TTL an entry is
    still served while one refresh runs in the background, for at most
    ``max_stale_s`` (which only matters when the database stops answering).
    """

    profile_ttl_s: float = 30.0
    schedule_ttl_s: float = 1.0
    max_stale_s: float = 60.0
    token_cache_entries: int = 10_000
    profile_cache_entries: int = 10_000
    schedule_cache_entries: int = 10_000
    document_cache_entries: int = 64
    view_cache_entries: int = 4_096
    view_cache_bytes: int = 64 * 1024 * 1024


class LruCache(Generic[K, V]):
    """Least-recently-used entries, each optionally expiring ``ttl_s`` after it was stored.

    Bounded by an entry count and, when ``weigh`` is given, by a total weight
    (for example bytes). Safe to share between threads.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float | None = None,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.max_weight = max_weight
        self._weigh = weigh
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, int, V]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | Missing:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return MISSING
            expires_at, _weight, value = entry
            if expires_at < self._clock():
                self._remove(key)
                return MISSING
            self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value) if self._weigh else 1
        if self.max_weight is not None and weight > self.max_weight:
            return  # would evict everything else and still not fit
        expires_at = self._clock() + self.ttl_s if self.ttl_s is not None else float("inf")
        with self._lock:
            if key in self._entries:
                self._remove(key)
            self._entries[key] = (expires_at, weight, value)
            self._weight += weight
            while len(self._entries) > self.max_entries or (
                self.max_weight is not None and self._weight > self.max_weight
            ):
                self._remove(next(iter(self._entries)))

    def drop(self, key: K) -> None:
        with self._lock:
            if key in self._entries:
                self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weight = 0

    def _remove(self, key: K) -> None:
        _expires_at, weight, _value = self._entries.pop(key)
        self._weight -= weight

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight(self) -> int:
        return self._weight


class SingleFlight(Generic[K, V]):
    """Concurrent requests for the same missing key share one load.

    When a cache entry expires under load, fifty waiting requests would
    otherwise send fifty identical queries. The load runs as its own task, so a
    client that disconnects does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._loads: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        return await asyncio.shield(self.start(key, load))

    def start(self, key: K, load: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
        """The running load for ``key``, started with ``load`` if there is none."""
        task = self._loads.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._loads[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: K, task: asyncio.Future[V]) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged twice


class RefreshingCache(Generic[K, V]):
    """Values loaded on demand, with one shared reload per key once ``fresh_s`` has passed.

    With ``serve_stale`` (refresh-ahead) the first request past ``fresh_s`` starts
    one background reload and still gets the current value: when a hot entry
    merely expires, the requests in flight don't all wait for it together.
    Without it, requests past ``fresh_s`` wait for that one reload, so a change
    is never answered late (and then cached by a browser for its max-age).
    Either way, when a reload fails (the database is down) a value younger than
    ``max_stale_s`` is still served.
    """

    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        *,
        fresh_s: float,
        max_stale_s: float,
        max_entries: int,
        serve_stale: bool = True,
        clock: Callable[[], float] = time.monotonic,
        outages: StateChangeLog | None = None,
        outage_key: str = "database",
    ) -> None:
        self._load = load
        # Failed reloads during an outage are logged through ``outages``: once, not per key.
        self._outages = outages or StateChangeLog(log)
        self._outage_key = outage_key
        self.fresh_s = fresh_s
        self._serve_stale = serve_stale
        self._clock = clock
        self._entries: LruCache[K, tuple[float, V]] = LruCache(
            max_entries=max_entries, ttl_s=max(fresh_s, max_stale_s), clock=clock
        )
        self._loads: SingleFlight[K, V] = SingleFlight()

    def peek(self, key: K) -> V | Missing:
        """The value if one is servable, without waiting; a stale one triggers a reload."""
        entry = self._entries.get(key)
        if entry is MISSING:
            return MISSING
        loaded_at, value = entry
        if self._clock() - loaded_at > self.fresh_s:
            if not self._serve_stale:
                return MISSING
            reload = self._loads.start(key, lambda: self._load_and_keep(key))
            reload.add_done_callback(lambda done: self._log_failed_refresh(key, done))
        return value

    async def get(self, key: K) -> V:
        value = self.peek(key)
        if value is not MISSING:
            return value
        try:
            return await self._loads.run(key, lambda: self._load_and_keep(key))
        except Exception as error:
            entry = self._entries.get(key)  # kept until max_stale_s
            if entry is MISSING:
                raise
            self._outages.failed(
                self._outage_key, "reloading %r failed, serving the older value: %s", key, error
            )
            return entry[1]

    def drop(self, key: K) -> None:
        self._entries.drop(key)

    async def _load_and_keep(self, key: K) -> V:
        value = await self._load(key)
        self._entries.put(key, (self._clock(), value))
        self._outages.succeeded(self._outage_key)
        return value

    def _log_failed_refresh(self, key: K, done: asyncio.Future[V]) -> None:
        if not done.cancelled() and done.exception() is not None:
            error = done.exception()
            self._outages.failed(
                self._outage_key, "refreshing %r failed, serving the older value: %s", key, error
            )
