"""The HTTP connection under abuse: uvicorn's httptools protocol with the guards it lacks.

uvicorn (0.54, httptools) reads a request's headers without any bound on their
size or on the time they take, and closes a connection only after it answered
something (``timeout_keep_alive``): a client that connects and says nothing, or
sends one header byte a minute, or a header of 256 MB, holds a socket and memory
for as long as it likes. ``limit_concurrency`` answers 503 to everything, health
checks included, once the limit is reached. This protocol adds:

- **a bound on the request head**: more than :data:`MAX_HEAD_BYTES` before the
  headers end is answered ``431`` at once and the connection closed, before the
  parser has buffered more than that;
- **a deadline to receive a request** (head and body): ``request_timeout_s`` from
  the first byte (or from the connection, for a client that sends nothing); then
  ``408`` and close. Idle keep-alive connections close after ``keep_alive_s``
  (uvicorn's own timer, armed after each answer);
- **a cap on connections per process**: at the cap, a new connection first closes
  the connection that has waited longest without a request in progress (an idle
  keep-alive one or a half-sent head), so a flood of idle sockets can never lock
  real clients out. When every connection is busy with a request, the new one is
  *over capacity*: it gets ``503`` with ``Retry-After``, except ``/healthz``, which
  answers as usual so a load balancer can tell "busy" from "down".
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1000
    request_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_head_bytes: int = MAX_HEAD_BYTES


def _raw_answer(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"connection: close\r\n\r\n"
        + body
    )


HEAD_TOO_LARGE = _raw_answer(431, "Request Header Fields Too Large", "request headers too large")
REQUEST_TIMEOUT = _raw_answer(408, "Request Timeout", "request not received in time")


class _Connections:
    """One process's connections waiting for a request, oldest first, and those being evicted."""

    def __init__(self) -> None:
        self.waiting: OrderedDict[GuardedHttpToolsProtocol, None] = OrderedDict()
        self.evicting: set[GuardedHttpToolsProtocol] = set()

    def evict_oldest_waiting(self) -> bool:
        while self.waiting:
            victim, _ = self.waiting.popitem(last=False)
            if victim.transport is None or victim.transport.is_closing():
                continue
            self.evicting.add(victim)
            victim.transport.close()
            return True
        return False


_registries: weakref.WeakKeyDictionary[Any, _Connections] = weakref.WeakKeyDictionary()


def _connections_of(server_state: Any) -> _Connections:
    registry = _registries.get(server_state)
    if registry is None:
        registry = _registries[server_state] = _Connections()
    return registry


class OverCapacity:
    """What an over-capacity connection runs instead of the app: 503, but health checks pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        body = orjson.dumps({"error": "server busy: too many connections, retry shortly"})
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head-size bound, a receive deadline and a cap."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "limits", None) or ConnectionLimits()
        self._registry = _connections_of(server_state)
        self._head_bytes = 0
        self._heads_read = 0
        # True from the end of one request (or the connection's start) to the end of the
        # next request's headers: nothing is being answered because of these bytes yet.
        self._reading_head = True
        self._receive_timer: asyncio.TimerHandle | None = None

    # --- connection life -------------------------------------------------------------

    # uvicorn's own signature, which narrows asyncio.Protocol's BaseTransport to a Transport
    # (and is marked the same way there): the server only ever hands over a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        registry = self._registry
        at_cap = len(self.connections) - len(registry.evicting) >= self.limits.max_connections
        over_capacity = at_cap and not registry.evict_oldest_waiting()
        super().connection_made(transport)
        if over_capacity:
            self.app = OverCapacity(self.app)
        self._registry.waiting[self] = None
        # A client that connects and says nothing is held to the same deadline.
        self._arm_receive_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_receive_timer()
        self._registry.waiting.pop(self, None)
        self._registry.evicting.discard(self)
        super().connection_lost(exc)

    # --- receiving -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._reading_head:
            super().data_received(data)
            return
        room = self.limits.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what may still belong to the head; if no head ended within it, refuse
        # before the parser buffers any more of it.
        head, rest = data[:room], data[room:]
        heads_before = self._heads_read
        self._head_bytes += len(head)
        if head:
            super().data_received(head)
        if self.transport.is_closing():
            return
        if self._heads_read == heads_before:
            self._refuse(HEAD_TOO_LARGE)
            return
        self.data_received(rest)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._receive_timer is None:
            self._arm_receive_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._heads_read += 1
        self._registry.waiting.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._cancel_receive_timer()
        if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
            self._registry.waiting[self] = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._reading_head and not self.pipeline and not self.transport.is_closing():
            self._registry.waiting[self] = None

    # --- deadlines and refusals ------------------------------------------------------

    def _arm_receive_timer(self) -> None:
        self._cancel_receive_timer()
        self._receive_timer = self.loop.call_later(
            self.limits.request_timeout_s, self._receive_timed_out
        )

    def _cancel_receive_timer(self) -> None:
        if self._receive_timer is not None:
            self._receive_timer.cancel()
            self._receive_timer = None

    def _receive_timed_out(self) -> None:
        self._receive_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # An answer is on its way; the late request (a pipelined head, a trickled
            # body) is judged once it is sent.
            self._arm_receive_timer()
            return
        # A half-sent head gets a 408; a silent client or a body trickled after its
        # answer just gets closed (an answer now would follow one already sent).
        self._refuse(REQUEST_TIMEOUT if self._reading_head and self._head_bytes else b"")

    def _refuse(self, answer: bytes) -> None:
        self._cancel_receive_timer()
        if answer and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(answer)
        self.transport.close()
