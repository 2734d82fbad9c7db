"""Whether storage can be used right now, and the waiting while it cannot.

A storage outage (unreachable, 5xx, 544, 429, a refused key, a bucket made public) is
not a job's fault, so it must not spend the job's attempts. Workers ask :meth:`wait_ready`
before claiming: while storage is down they wait with backoff (one thread probes, the
others sleep) and claim again by themselves once it answers. A handler that meets an
outage mid-job raises :class:`~opsdash.engine.blobs.BlobStoreUnavailable`; the worker
releases the batch uncounted and reports the outage here.

The same state feeds the console's banner and header.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from opsdash.engine.blobs import BlobStore, BlobStorePublic, BlobStoreUnavailable

log = logging.getLogger("opsdash.storage")


@dataclass(frozen=True)
class StorageState:
    """A snapshot: ``reason`` says why storage is not usable (None when it is)."""

    reason: str | None = None
    since: datetime | None = None
    public: bool = False
    checked_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class StorageGate:
    def __init__(
        self,
        blobs: BlobStore,
        *,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.blobs = blobs
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._changed = threading.Condition()
        self._state = StorageState()
        self._down_at: float | None = None
        self._backoff_s = first_backoff_s
        self._next_probe_at = 0.0
        self._probing = False
        self.outages = 0
        self.failed_probes = 0

    @property
    def state(self) -> StorageState:
        with self._changed:
            return self._state

    def report(self, error: BlobStoreUnavailable) -> None:
        """Storage failed under a job: mark it down (logged once per outage)."""
        with self._changed:
            self._mark_down(error)

    def check(self) -> StorageState:
        """Probe storage now (reachable, key accepted, bucket private); returns the state."""
        try:
            self.blobs.ping()
        except BlobStoreUnavailable as error:
            with self._changed:
                self.failed_probes += 1
                self._mark_down(error)
                return self._state
        with self._changed:
            self._mark_up()
            return self._state

    def wait_ready(self, stop: threading.Event) -> bool:
        """Return at once while storage is up; otherwise wait until it is (True) or ``stop``.

        While it is down, one waiting thread probes at a time, backing off from
        ``first_backoff_s`` to ``max_backoff_s``; the others sleep until the state changes.
        """
        while not stop.is_set():
            with self._changed:
                if self._state.ok:
                    return True
                wait_s = self._next_probe_at - self._clock()
                if self._probing or wait_s > 0:
                    self._changed.wait(timeout=min(max(wait_s, 0.05), 1.0))
                    continue
                self._probing = True
            try:
                state = self.check()
            finally:
                with self._changed:
                    self._probing = False
                    if not state.ok:
                        self._next_probe_at = self._clock() + self._backoff_s
                        self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
                    self._changed.notify_all()
        return False

    # --- transitions (hold self._changed) -----------------------------------------------

    def _mark_down(self, error: BlobStoreUnavailable) -> None:
        now = datetime.now(UTC)
        reason = str(error)
        if self._state.ok:
            self.outages += 1
            self._down_at = self._clock()
            self._backoff_s = self.first_backoff_s
            self._next_probe_at = self._clock() + self._backoff_s
            log.warning("storage unusable, workers wait for it: %s", reason)
            self._state = StorageState(reason, now, isinstance(error, BlobStorePublic), now)
        else:
            self._state = StorageState(
                reason, self._state.since, isinstance(error, BlobStorePublic), now
            )
        self._changed.notify_all()

    def _mark_up(self) -> None:
        now = datetime.now(UTC)
        if not self._state.ok:
            down_s = self._clock() - (self._down_at or self._clock())
            log.warning("storage is back after %.1f s; workers resume", down_s)
        self._state = StorageState(checked_at=now)
        self._down_at = None
        self._changed.notify_all()
