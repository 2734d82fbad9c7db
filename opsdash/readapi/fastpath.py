"""Warm requests for a schedule, answered straight from the caches.

Once a user's view of a day has been rendered, repeating the request needs no
routing, validation or dependency resolution: the token was verified, the
profile, the day's metadata and the view bytes are all cached. This middleware
answers exactly that case — a remembered token, ``?date=YYYY-MM-DD`` and
nothing else, every cache warm — with the same bytes and headers the route
gives. Anything else (a miss, an odd query, any error) goes on to the route, so
validation, authorization and error mapping still happen in one place.
"""

from __future__ import annotations

from datetime import date

from starlette.types import ASGIApp, Receive, Scope, Send

from opsdash.engine.blobs import ISO_DATE
from opsdash.readapi.auth import TokenVerifier
from opsdash.readapi.conditional import SCHEDULE_PATH, etag_matches, view_headers
from opsdash.readapi.responses import JSON
from opsdash.readapi.service import RenderedView, ScheduleService

_QUERY_PREFIX = b"date="
_BEARER = b"bearer "


class WarmScheduleAnswers:
    def __init__(self, app: ASGIApp, verifier: TokenVerifier, service: ScheduleService) -> None:
        self.app = app
        self.verifier = verifier
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SCHEDULE_PATH and scope["method"] == "GET":
            answer = self._warm_answer(scope)
            if answer is not None:
                view, if_none_match = answer
                await _send_view(send, view, etag_matches(if_none_match, view.etag))
                return
        await self.app(scope, receive, send)

    def _warm_answer(self, scope: Scope) -> tuple[RenderedView, str | None] | None:
        day = _plain_day(scope["query_string"])
        if day is None:
            return None
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"if-none-match":
                if_none_match = value.decode("latin-1")
        if authorization is None or authorization[:7].lower() != _BEARER:
            return None
        token = self.verifier.remembered(authorization[7:].decode("latin-1").strip())
        if token is None:
            return None
        view = self.service.warm_view(token.subject, day)
        return None if view is None else (view, if_none_match)


def _plain_day(query: bytes) -> date | None:
    """The day of a query that is exactly ``date=YYYY-MM-DD``; None for anything else."""
    if len(query) != 15 or not query.startswith(_QUERY_PREFIX):
        return None
    text = query[5:].decode("ascii", "replace")
    if not ISO_DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


async def _send_view(send: Send, view: RenderedView, not_modified: bool) -> None:
    headers = [
        (name.lower().encode(), value.encode()) for name, value in view_headers(view.etag).items()
    ]
    if not_modified:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers += [(b"content-type", JSON.encode()), (b"content-length", str(len(view.body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": view.body})
