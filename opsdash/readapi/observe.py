"""One log line and one metrics observation per request (a plain ASGI middleware, cheap).

Lines for refused requests (4xx, 5xx) are kept within a budget per status code, so a
flood of bad tokens costs a bounded amount of log; the metrics still count them all.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsdash.readapi.logbudget import LogBudget
from opsdash.readapi.metrics import RequestMetrics

access_log = logging.getLogger("opsdash.readapi.access")

# A 10 KB query string must not become a 10 KB log line.
MAX_LOGGED_TARGET = 200


class ObserveRequests:
    def __init__(
        self, app: ASGIApp, metrics: RequestMetrics, refusals_logged: LogBudget | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.refusals_logged = refusals_logged or LogBudget(lines=50, window_s=10.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            elapsed = time.perf_counter() - started
            path: str = scope["path"]
            self.metrics.observe(self.metrics.route_label(path), status, elapsed)
            if access_log.isEnabledFor(logging.INFO):
                line = (
                    "%s %s %s %d %.2fms",
                    _client(scope),
                    scope["method"],
                    _target(path, scope.get("query_string", b"")),
                    status,
                    elapsed * 1000,
                )
                if status < 400:
                    access_log.info(*line)
                else:
                    # Refusals are what a flood is made of: bounded per status code.
                    self.refusals_logged.log(access_log, logging.INFO, str(status), *line)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _target(path: str, query: bytes) -> str:
    target = f"{path}?{query.decode('latin-1')}" if query else path
    # Control characters in a request line must not forge extra log lines.
    target = target.encode("unicode_escape").decode("ascii")
    if len(target) > MAX_LOGGED_TARGET:
        return target[:MAX_LOGGED_TARGET] + "..."
    return target
