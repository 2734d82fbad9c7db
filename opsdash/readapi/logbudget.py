"""A bounded amount of log for things a client can repeat as fast as it likes.

A flood of bad tokens, oversized requests or requests at a full server must not
grow the log without bound: each kind of line gets ``lines`` per ``window_s``;
past that the lines are counted, and the next line let through says how many
were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


class LogBudget:
    def __init__(
        self,
        lines: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = lines
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # kind → (window start, lines logged in it, lines left out since the last one logged)
        self._kinds: dict[str, tuple[float, int, int]] = {}

    def admit(self, kind: str) -> int | None:
        """None to leave the line out; else how many lines of this kind were left out before it."""
        now = self._clock()
        with self._lock:
            start, logged, left_out = self._kinds.get(kind, (now, 0, 0))
            if now - start >= self.window_s:
                start, logged = now, 0
            if logged >= self.lines:
                self._kinds[kind] = (start, logged, left_out + 1)
                return None
            self._kinds[kind] = (start, logged + 1, 0)
            return left_out

    def log(
        self, logger: logging.Logger, level: int, kind: str, message: str, *args: Any, **kw: Any
    ) -> None:
        """``logger.log(level, message, *args)`` within the budget of ``kind``."""
        if not logger.isEnabledFor(level):
            return
        left_out = self.admit(kind)
        if left_out is None:
            return
        if left_out:
            message += " (%d similar line(s) left out before this one)"
            args = (*args, left_out)
        logger.log(level, message, *args, **kw)
