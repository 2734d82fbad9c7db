"""Real receivers for alert tests: an HTTP webhook endpoint and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import threading
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebhookReceiver:
    """Records every JSON body POSTed to it; can be stopped and started on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.received = threading.Condition(self._lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/secret-path"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.received:
                    status = receiver.status
                    if status < 300:
                        receiver.bodies.append(body)
                    receiver.received.notify_all()
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"<html>bad gateway</html>")

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        with self.received:
            if not self.received.wait_for(lambda: len(self.bodies) >= count, timeout_s):
                raise AssertionError(f"expected {count} webhook bodies, got {len(self.bodies)}")
            return list(self.bodies)


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.received = threading.Condition()

    async def handle_DATA(self, _server: Any, _session: Session, envelope: Envelope) -> str:
        with self.received:
            self.messages.append(message_from_bytes(envelope.content))  # type: ignore[arg-type]
            self.received.notify_all()
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """A real SMTP server on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = _Inbox()
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Message]:
        with self.inbox.received:
            if not self.inbox.received.wait_for(
                lambda: len(self.inbox.messages) >= count, timeout_s
            ):
                raise AssertionError(f"expected {count} e-mails, got {len(self.inbox.messages)}")
            return list(self.inbox.messages)
