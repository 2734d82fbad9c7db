"""Request-level guards in front of every route and the fast path (plain ASGI, cheap).

- More than one ``Authorization`` header is a 400: the fast path and the route
  would otherwise each pick one, and two readers of one request must never
  disagree about who is asking.
- ``HEAD`` is answered as ``GET`` without a body (headers, ``Content-Length``
  and status as the ``GET`` would have them).
- The operator endpoints (``/metrics``, ``/docs``, ``/openapi.json``) are open,
  behind a bearer token, or absent, as ``ops_endpoints`` says.
"""

from __future__ import annotations

import hmac
from enum import StrEnum

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPS_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class OpsAccess(StrEnum):
    OPEN = "open"
    TOKEN = "token"
    OFF = "off"


def resolve_ops_access(setting: str, ops_token: str | None, host: str) -> OpsAccess:
    """``auto``: open on a loopback address; elsewhere behind the token if one is set, else off."""
    if setting != "auto":
        return OpsAccess(setting)
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return OpsAccess.OPEN
    return OpsAccess.TOKEN if ops_token else OpsAccess.OFF


async def _answer(send: Send, status: int, message: str, headers: list | None = None) -> None:
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuards:
    def __init__(
        self, app: ASGIApp, ops_access: OpsAccess = OpsAccess.OPEN, ops_token: str | None = None
    ) -> None:
        if ops_access is OpsAccess.TOKEN and not ops_token:
            raise ValueError("ops_endpoints = token needs OPSDASH_OPS_TOKEN")
        self.app = app
        self.ops_access = ops_access
        self.ops_token = f"Bearer {ops_token}".encode() if ops_token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorizations = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(authorizations) > 1:
            await _answer(send, 400, "more than one Authorization header")
            return
        if scope["path"] in OPS_PATHS and self.ops_access is not OpsAccess.OPEN:
            if self.ops_access is OpsAccess.OFF:
                await _answer(send, 404, "not found")
                return
            given = authorizations[0] if authorizations else b""
            if not hmac.compare_digest(given, self.ops_token):
                await _answer(
                    send,
                    401,
                    "this endpoint needs the operator token",
                    [(b"www-authenticate", b'Bearer realm="opsdash-ops"')],
                )
                return
        if scope["method"] == "HEAD":
            await self.app({**scope, "method": "GET"}, receive, _without_body(send))
            return
        await self.app(scope, receive, send)


def _without_body(send: Send) -> Send:
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return send_head
