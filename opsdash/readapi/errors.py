"""Every error the read API answers, mapped to a status code in one place.

Routes and dependencies raise domain errors (their own :class:`ApiError`
subclasses, the privacy module's refusals, the engine's storage and database
errors); :func:`error_responder` makes the one handler that turns any of them into
``{"error": "..."}`` with the right status. Clients never see a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from opsdash.engine.blobs import BlobNotFound, BlobStorePublic, BlobStoreUnavailable
from opsdash.privacy import ViewRefused
from opsdash.readapi.logbudget import LogBudget
from opsdash.readapi.models import ErrorBody
from opsdash.readapi.responses import json_response
from opsdash.statelog import StateChangeLog

log = logging.getLogger("opsdash.readapi")
_log_budget = LogBudget(lines=10, window_s=60.0)


class ApiError(Exception):
    """An answer other than success, with its status and a message safe to show."""

    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401
    headers = {"WWW-Authenticate": 'Bearer realm="opsdash"'}


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class ServiceUnavailable(ApiError):
    status_code = 503


def _describe_validation_error(error: RequestValidationError) -> str:
    problems = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem.get("loc", ()) if part != "query")
        problems.append(f"{location or 'request'}: {problem.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


def classify(error: Exception) -> tuple[int, str, dict[str, str] | None]:
    """(status, message, extra headers) for any exception a request can raise."""
    if isinstance(error, ApiError):
        return error.status_code, error.message, error.headers
    if isinstance(error, ViewRefused):
        return 403, str(error), None
    if isinstance(error, BlobNotFound):
        return 404, "schedule not ready", None
    if isinstance(error, BlobStorePublic):
        return 503, "schedule storage bucket is public", None
    if isinstance(error, BlobStoreUnavailable):
        return 503, "schedule storage is unreachable", None
    if isinstance(error, SQLAlchemyError):
        return 503, "database is unreachable", None
    if isinstance(error, RequestValidationError):
        return 400, _describe_validation_error(error), None
    if isinstance(error, StarletteHTTPException):
        return error.status_code, str(error.detail), dict(error.headers or {}) or None
    return 500, "internal error", None


def outage_kind(error: Exception) -> str | None:
    """ "database" or "storage" when ``error`` means that part is unreachable, else None."""
    if isinstance(error, BlobStoreUnavailable):
        return "storage"
    if isinstance(error, SQLAlchemyError):
        return "database"
    return None


def error_responder(
    outages: StateChangeLog | None = None,
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The one handler: every error becomes ``{"error": ...}`` with its status.

    Server-side failures are logged for the operator; an unreachable database or
    storage through ``outages``, so an outage is one line when it starts, a summary
    now and then, and one line when it ends, not one line per request.
    """

    async def error_response(request: Request, error: Exception) -> Response:
        status, message, headers = classify(error)
        if status >= 500 and not getattr(error, "logged", False):
            # The operator gets the cause in the log; the client only the message.
            path = request.url.path[:200]
            kind = outage_kind(error)
            if kind is not None and outages is not None:
                outages.failed(
                    kind,
                    "%s unreachable: %s %s failed: %s: %.300s",
                    kind,
                    request.method,
                    path,
                    type(error).__name__,
                    error,
                )
            else:
                # Within a budget per kind of failure, so that a client repeating a
                # failing request cannot fill the disk with tracebacks.
                _log_budget.log(
                    log,
                    logging.ERROR,
                    f"{status} {type(error).__name__}",
                    "%s %s failed: %s: %.300s",
                    request.method,
                    path,
                    type(error).__name__,
                    error,
                    exc_info=status == 500,
                )
        return json_response(ErrorBody(error=message).model_dump(), status, headers)

    return error_response


HANDLED: tuple[type[Exception], ...] = (
    ApiError,
    ViewRefused,
    BlobNotFound,
    BlobStoreUnavailable,
    SQLAlchemyError,
    RequestValidationError,
    StarletteHTTPException,
    Exception,
)


def install_error_handler(app: FastAPI, outages: StateChangeLog | None = None) -> None:
    """Route every exception type through the one handler above."""
    handler = error_responder(outages)
    for error_type in HANDLED:
        app.add_exception_handler(error_type, handler)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Missing or invalid `date` (expected YYYY-MM-DD)."},
    401: {"model": ErrorBody, "description": "Missing, malformed, expired or forged token."},
    403: {"model": ErrorBody, "description": "The user's role may not read schedules."},
    404: {"model": ErrorBody, "description": "Unknown profile, or the schedule is not ready."},
    503: {"model": ErrorBody, "description": "Database or schedule storage unreachable."},
}
