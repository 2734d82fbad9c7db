"""The read API: ``create_app(settings, db, blobs)`` builds the FastAPI application.

Routes stay thin: dependencies hand them the verified viewer and the services,
the read path lives in :mod:`opsdash.readapi.service`, and every error goes
through the one handler in :mod:`opsdash.readapi.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

import opsdash
from opsdash.config import Settings
from opsdash.engine import freshness
from opsdash.engine.blobs import ISO_DATE, BlobStore
from opsdash.engine.db import Database
from opsdash.engine.sqltypes import utcnow
from opsdash.readapi.auth import TokenRejected, TokenVerifier
from opsdash.readapi.cache import CachePolicy
from opsdash.readapi.conditional import (
    SCHEDULE_PATH,
    etag_matches,
    parse_day,
    view_headers,
)
from opsdash.readapi.errors import ERROR_RESPONSES, install_error_handler
from opsdash.readapi.fastpath import WarmScheduleAnswers
from opsdash.readapi.guards import OpsAccess, RequestGuards, resolve_ops_access
from opsdash.readapi.metrics import (
    CONTENT_TYPE as METRICS_CONTENT_TYPE,
)
from opsdash.readapi.metrics import (
    RequestMetrics,
    exposition,
    job_counts,
    render_freshness,
    render_job_counts,
    render_retention,
)
from opsdash.readapi.models import ErrorBody, Health, Readiness, ScheduleView
from opsdash.readapi.observe import ObserveRequests
from opsdash.readapi.responses import JSON, json_response
from opsdash.readapi.service import ScheduleService, Viewer

ROUTES = (SCHEDULE_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


@dataclass(frozen=True)
class ReadApiState:
    settings: Settings
    db: Database
    service: ScheduleService
    verifier: TokenVerifier
    metrics: RequestMetrics


# --- dependencies ----------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    description="A Supabase access token, or one minted by `opsdash token --email E`.",
)


async def get_state(request: Request) -> ReadApiState:
    # async on purpose: FastAPI runs plain ``def`` dependencies in the thread pool.
    state: ReadApiState = request.app.state.readapi
    return state


State = Annotated[ReadApiState, Depends(get_state)]


async def current_viewer(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Viewer:
    if credentials is None:
        if "authorization" in request.headers:
            raise TokenRejected("expected 'Authorization: Bearer <token>'")
        raise TokenRejected("missing bearer token")
    token = await state.verifier.verify_async(credentials.credentials)
    return await state.service.viewer(token.subject)


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]


# --- routes ----------------------------------------------------------------------------

router = APIRouter()


@router.get(
    SCHEDULE_PATH,
    summary="The schedule of one day, as the calling user may see it",
    response_model=None,
    responses={
        200: {
            "model": ScheduleView,
            "description": "The day's schedule. Technicians get only their own jobs, "
            "with the fields their company's toggles allow.",
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                "Cache-Control": {"schema": {"type": "string"}},
            },
        },
        304: {"description": "Not modified: the `If-None-Match` ETag is still current."},
        **ERROR_RESPONSES,
    },
)
async def get_schedule(
    day: Annotated[
        str,
        Query(
            alias="date",
            description="The company-local calendar day, YYYY-MM-DD.",
            json_schema_extra={"format": "date", "pattern": f"^{ISO_DATE.pattern}$"},
        ),
    ],
    viewer: CurrentViewer,
    state: State,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    ref = await state.service.locate(viewer, parse_day(day))
    if etag_matches(if_none_match, ref.etag):
        return Response(status_code=304, headers=view_headers(ref.etag))
    view = await state.service.render(ref)
    return Response(view.body, media_type=JSON, headers=view_headers(view.etag))


@router.get("/healthz", summary="The process is up", response_model=Health)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="The database and the blob store answer",
    response_model=Readiness,
    responses={503: {"model": ErrorBody, "description": "Database or storage unreachable."}},
)
async def readyz(state: State) -> Response:
    await run_in_threadpool(state.service.check_ready)
    return json_response({"status": "ready", "database": "ok", "blobs": "ok"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    counts: dict[tuple[str, str], int] | None
    companies: list[freshness.CompanyFreshness] | None
    try:
        counts = await run_in_threadpool(job_counts, state.db)
        companies = await run_in_threadpool(_freshness, state)
    except SQLAlchemyError:
        counts = companies = None
    body = exposition(
        [
            state.metrics.render(),
            render_job_counts(counts),
            render_retention(),
            render_freshness(companies),
        ]
    )
    return Response(body, media_type=METRICS_CONTENT_TYPE)


def _freshness(state: ReadApiState) -> list[freshness.CompanyFreshness]:
    return freshness.configured(state.db, state.settings, now=utcnow())


# --- the application -------------------------------------------------------------------


class ReadApiApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document without its 422 answers: validation errors are answered as 400."""
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title,
                version=self.version,
                description=self.description,
                routes=self.routes,
            )
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            self.openapi_schema = schema
        return self.openapi_schema


def create_app(
    settings: Settings,
    db: Database,
    blobs: BlobStore,
    *,
    policy: CachePolicy | None = None,
    metrics: RequestMetrics | None = None,
    verifier: TokenVerifier | None = None,
    on_shutdown: Callable[[], None] | None = None,
    ops_access: OpsAccess | None = None,
) -> FastAPI:
    """The read API over ``db`` and ``blobs``.

    The caller owns ``db`` and ``blobs``; ``on_shutdown`` runs when the server stops.
    ``ops_access`` decides who reaches ``/metrics``, ``/docs`` and ``/openapi.json``
    (default: ``settings.ops_endpoints`` as on a loopback address).
    """
    policy = policy or CachePolicy()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = ReadApiApp(
        title="opsdash read API",
        version=opsdash.__version__,
        description="Company-day schedules for the technician portal.",
        lifespan=lifespan,
        redoc_url=None,
        # Starlette's slash redirect builds its Location from the Host header before any
        # check; no answer of this API is built from request headers.
        redirect_slashes=False,
        # ObserveRequests records what we need; FastAPI's OpenTelemetry bridge would add
        # a provider lookup to every request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    state = ReadApiState(
        settings=settings,
        db=db,
        service=ScheduleService(db, blobs, policy),
        verifier=verifier
        or TokenVerifier.from_settings(settings, cache_entries=policy.token_cache_entries),
        metrics=metrics or RequestMetrics(ROUTES),
    )
    app.state.readapi = state
    app.include_router(router)
    install_error_handler(app, state.service.outages)
    # Middleware added later wraps what was added before: the fast path sits inside CORS
    # (which adds its headers), the request guards (duplicate Authorization, HEAD, the
    # operator endpoints) outside both, and ObserveRequests outside all sees every answer.
    app.add_middleware(WarmScheduleAnswers, verifier=state.verifier, service=state.service)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "If-None-Match"],
            expose_headers=["ETag"],
            max_age=600,
        )
    app.add_middleware(
        RequestGuards,
        ops_access=ops_access
        or resolve_ops_access(settings.ops_endpoints, settings.ops_token, "127.0.0.1"),
        ops_token=settings.ops_token,
    )
    app.add_middleware(ObserveRequests, metrics=state.metrics)
    return app
