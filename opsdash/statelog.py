"""Log a recurring failure once when it starts, as a periodic summary while it lasts, and
once when it ends.

During an outage every request, claim and heartbeat fails the same way; logging each
one buried the operator under 50,386 lines in 74 s. A :class:`StateChangeLog` keeps one
state per key (``"database"``, ``"storage"``, ``"claim"``...): the first failure is
logged as given, repeats are counted, a summary line names how many were held back at
most every ``summary_every_s``, and the first success afterwards logs the recovery with
the outage's length and count. Thread-safe; the engine and the read API share it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SUMMARY_EVERY_S = 60.0


@dataclass
class _Failing:
    since: float
    failures: int
    held_back: int
    summarised_at: float
    latest: str


class StateChangeLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        summary_every_s: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.summary_every_s = summary_every_s
        self._clock = clock
        self._failing: dict[str, _Failing] = {}
        self._lock = threading.Lock()

    def failed(self, key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        """One failure of ``key``: logged if it starts an outage, else counted."""
        now = self._clock()
        text = message % args if args else message
        with self._lock:
            state = self._failing.get(key)
            if state is None:
                self._failing[key] = _Failing(now, 1, 0, now, text)
                summary = None
            else:
                state.failures += 1
                state.held_back += 1
                state.latest = text
                summary = self._due_summary(key, state, now)
        if state is None:
            self.logger.log(level, "%s", text)
        elif summary is not None:
            self.logger.log(level, "%s", summary)

    def succeeded(self, key: str) -> None:
        """``key`` works: if it was failing, log the recovery once."""
        if key not in self._failing:  # the common case, without taking the lock
            return
        with self._lock:
            state = self._failing.pop(key, None)
        if state is not None:
            lasted = self._clock() - state.since
            self.logger.warning(
                "%s recovered after %.1f s (%d failure%s)",
                key,
                lasted,
                state.failures,
                "" if state.failures == 1 else "s",
            )

    def is_failing(self, key: str) -> bool:
        return key in self._failing

    def _due_summary(self, key: str, state: _Failing, now: float) -> str | None:
        if now - state.summarised_at < self.summary_every_s:
            return None
        summary = (
            f"{key} still failing after {now - state.since:.0f} s: {state.held_back} more "
            f"failure{'' if state.held_back == 1 else 's'} in the last "
            f"{now - state.summarised_at:.0f} s; latest: {state.latest}"
        )
        state.held_back, state.summarised_at = 0, now
        return summary
