"""A logging handler that feeds the engine's log lines to the console.

Engine threads log; ``emit`` runs in those threads, so it only appends to a
locked, bounded buffer and posts one :class:`LogLinesArrived` notice (thread-safe,
and coalesced by ``can_replace``). The UI drains the buffer on its own thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from datetime import UTC, datetime

from textual.message_pump import MessagePump

from opsdash.screens.messages import LogLine, LogLinesArrived

CONSOLE_LOGGER = "opsdash"
BUFFER_LINES = 2000


class ConsoleLogHandler(logging.Handler):
    def __init__(self, target: MessagePump, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._target = target
        self._lines: deque[LogLine] = deque(maxlen=BUFFER_LINES)
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = LogLine(
                seq=next(self._seq),
                at=datetime.fromtimestamp(record.created, UTC),
                level=record.levelname,
                logger=record.name,
                message=(record.getMessage().splitlines() or [""])[0],
            )
        except Exception:
            self.handleError(record)
            return
        with self._lock:
            self._lines.append(line)
        self._target.post_message(LogLinesArrived())

    def drain(self) -> list[LogLine]:
        """The lines that arrived since the last drain, oldest first."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
        return lines


class AttachedLogHandler:
    """Attach a handler to the ``opsdash`` logger (at INFO) and detach it again."""

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler
        self._logger = logging.getLogger(CONSOLE_LOGGER)
        self._previous_level = self._logger.level

    def attach(self) -> None:
        # The engine's job lines are INFO; an unconfigured logger would drop them.
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self.handler)

    def detach(self) -> None:
        self._logger.removeHandler(self.handler)
        self._logger.setLevel(self._previous_level)
