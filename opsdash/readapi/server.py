"""``opsdash --serve``: the read API on uvicorn and, optionally, the sync engine beside it.

One process serves HTTP itself; with ``workers > 1`` uvicorn's supervisor runs
that many worker processes on one shared socket, and this process keeps only
the engine. SIGTERM and SIGINT stop everything cleanly: uvicorn finishes the
requests in flight, then the engine finishes or releases its running jobs.
The engine runs only here, never in the HTTP workers, so there is one
scheduler however many workers serve.

Every connection goes through :class:`~opsdash.readapi.protocol.GuardedHttpToolsProtocol`
(a bound on the request head, a deadline to receive a request, a connection cap
per process), and the operator endpoints are open, behind a token or off as
``ops_endpoints`` resolves for the address served (see docs/production.md).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import resource
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from opsdash.config import Mode, Settings
from opsdash.datafolder import secure_existing
from opsdash.engine.blobs import BlobStore, BlobStoreUnavailable
from opsdash.engine.db import DbTimeouts, connect_with
from opsdash.engine.schema import SchemaOutdated, ensure_schema
from opsdash.readapi.app import ROUTES, create_app
from opsdash.readapi.auth import TokenVerifier
from opsdash.readapi.guards import OpsAccess, resolve_ops_access
from opsdash.readapi.metrics import RequestMetrics
from opsdash.readapi.protocol import ConnectionLimits, GuardedHttpToolsProtocol

log = logging.getLogger("opsdash.serve")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
GRACEFUL_SHUTDOWN_S = 10
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIGURATION = 2
# File descriptors kept free beyond the connection cap: the database pool, blob files,
# the listening socket, logs.
RESERVED_FDS = 128
LISTEN_BACKLOG = 2048
# A worker answers the supervisor's pings only once it has imported everything; on a busy
# machine that takes longer than uvicorn's 5 s, and the supervisor would kill and respawn
# it forever.
WORKER_HEALTHCHECK_S = 60

# The read API's statements are point lookups that take milliseconds. The engine's limit
# (OPSDASH_DB_STATEMENT_TIMEOUT_S, 30 s by default) is sized for pipelined batches; here it
# would let a request in flight when the database froze wait half a minute, past any
# client's patience, and hold every request for the same day behind it.
READ_API_STATEMENT_S = 5.0


def read_api_timeouts(settings: Settings) -> DbTimeouts:
    """The configured database timeouts, with the statement limit at most 5 s."""
    configured = DbTimeouts.of(settings)
    return replace(configured, statement_s=min(configured.statement_s, READ_API_STATEMENT_S))


class ManagedEngine(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


EngineFactory = Callable[[Settings], ManagedEngine]


class ConfigurationError(Exception):
    """The server cannot start as configured; the message says what to fix."""


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = 1,
    with_engine: bool = True,
    engine_factory: EngineFactory | None = None,
    http: str = "auto",
    loop: str = "auto",
) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit code.

    ``workers=None`` means one. ``engine_factory`` builds the engine when
    ``with_engine`` (default: :class:`opsdash.engine.runtime.Engine`, imported
    only then; the entry points pass ``opsdash.demo.engine_for``, which also serves
    the demo upstream when the settings ask for it). ``http`` and ``loop`` are
    uvicorn's choices; "auto" and "httptools" serve through the guarded httptools
    protocol, anything else (kept for benchmarks) without its guards.
    """
    worker_count = workers or 1
    try:
        if worker_count < 1:
            raise ConfigurationError("--workers must be at least 1")
        _check_configuration(settings)
        listener = _bind(host, port, spread=worker_count > 1)
    except ConfigurationError as error:
        log.error("cannot serve: %s", error)
        return EXIT_BAD_CONFIGURATION
    ops_access = resolve_ops_access(settings.ops_endpoints, settings.ops_token, host)
    limits = connection_limits(settings)
    log.info(
        "operator endpoints (/metrics, /docs, /openapi.json): %s; at most %d connections "
        "per process",
        ops_access,
        limits.max_connections,
    )

    metrics_dir = Path(tempfile.mkdtemp(prefix="opsdash-metrics-")) if worker_count > 1 else None
    engine: ManagedEngine | None = None
    with _signals_recorded() as received:
        try:
            if with_engine:
                engine = (engine_factory or _default_engine)(settings)
                engine.start()
                log.info("sync engine started")
            if received:
                return EXIT_OK  # told to stop while starting up
            log.info(
                "%s: read API on http://%s:%d (%d worker%s)",
                _mode_banner(settings),
                *listener.getsockname()[:2],
                worker_count,
                "" if worker_count == 1 else "s",
            )
            options = _uvicorn_options(http, loop, limits)
            if worker_count == 1:
                return _serve_in_process(settings, listener, options, ops_access)
            assert metrics_dir is not None
            spec = WorkerSpec(settings, metrics_dir, ops_access)
            return _serve_with_workers(spec, listener, worker_count, options)
        finally:
            if engine is not None:
                log.info("stopping the sync engine")
                engine.stop()
            listener.close()
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
            log.info("stopped")


# --- start-up checks -------------------------------------------------------------------


def _check_configuration(settings: Settings) -> None:
    """Fail before binding when the database, storage or token keys are unusable."""
    secure_existing(settings.data_dir)
    if settings.ops_endpoints == "token" and not settings.ops_token:
        raise ConfigurationError("ops_endpoints is 'token' but OPSDASH_OPS_TOKEN is not set")
    try:
        TokenVerifier.from_settings(settings)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"token verification is not configured: {error}") from None
    try:
        db = connect_with(settings, timeouts=read_api_timeouts(settings))
    except (SQLAlchemyError, ValueError) as error:
        raise ConfigurationError(f"bad database URL: {error}") from None
    try:
        ensure_schema(db)
    except SchemaOutdated as error:
        raise ConfigurationError(str(error)) from None
    except SQLAlchemyError as error:
        raise ConfigurationError(
            f"cannot use the database at {db.display_url}: {_first_line(error)}"
        ) from None
    finally:
        db.dispose()
    try:
        open_blob_store(settings).ping()
    except (BlobStoreUnavailable, OSError) as error:
        raise ConfigurationError(f"cannot use the blob store: {error}") from None


def _mode_banner(settings: Settings) -> str:
    if settings.mode is Mode.DEMO:
        return "DEMO (demo upstream, not real schedules)"
    return settings.mode.value.upper()


def _bind(host: str, port: int, *, spread: bool = False) -> socket.socket:
    """The listening socket; with ``spread``, a per-worker one (see :class:`PerWorkerSocket`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    spread = spread and hasattr(socket, "SO_REUSEPORT")
    listener = (PerWorkerSocket if spread else socket.socket)(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if spread:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    if not spread:  # bound, not listening: the port is held, connections go to the workers
        listener.listen(LISTEN_BACKLOG)
    listener.set_inheritable(True)
    return listener


class PerWorkerSocket(socket.socket):
    """A socket that each worker process receives as a listening socket of its own.

    uvicorn's supervisor hands every worker the same listening socket, and whichever
    worker wakes first takes most connections (uneven p99 between workers). Pickled to a
    worker, this socket instead becomes a new one bound to the same address with
    ``SO_REUSEPORT``: the kernel then spreads connections evenly across the workers. The
    parent's socket stays bound but not listening, so it holds the port and takes none.
    """

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        return (_listen_per_worker, (self.family, self.getsockname()))


def _listen_per_worker(family: socket.AddressFamily, address: tuple[Any, ...]) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(address)
    listener.listen(LISTEN_BACKLOG)
    return listener


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def open_blob_store(settings: Settings) -> BlobStore:
    # The engine's factory, imported late so that importing the read API stays light.
    from opsdash.engine.runtime import open_blob_store as engine_open_blob_store

    return engine_open_blob_store(settings)


def _default_engine(settings: Settings) -> ManagedEngine:
    from opsdash.engine.runtime import Engine

    return Engine(settings)


# --- serving ---------------------------------------------------------------------------


def build_app(
    settings: Settings, metrics_dir: Path | None = None, ops_access: OpsAccess | None = None
) -> FastAPI:
    """The application one serving process runs, owning its database handle."""
    db = connect_with(settings, timeouts=read_api_timeouts(settings))
    metrics = RequestMetrics(ROUTES, shared_dir=metrics_dir)
    blobs = open_blob_store(settings)
    app = create_app(
        settings, db, blobs, metrics=metrics, on_shutdown=db.dispose, ops_access=ops_access
    )
    # Everything imported and built so far lives as long as the process: keep it out of
    # the cyclic collector, whose full passes over ~100k objects stall every request in
    # flight for tens of milliseconds.
    gc.collect()
    gc.freeze()
    return app


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The guards' limits; the connection cap kept below what the process may open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        # The soft limit is a default, not a decision: take what the system allows.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    cap = settings.http_max_connections
    if soft != resource.RLIM_INFINITY and cap > soft - RESERVED_FDS:
        cap = max(1, soft - RESERVED_FDS)
        log.warning(
            "only %d file descriptors: serving at most %d connections per process", soft, cap
        )
    return ConnectionLimits(
        max_connections=cap,
        request_timeout_s=settings.http_request_timeout_s,
        keep_alive_s=settings.http_keep_alive_s,
    )


def _uvicorn_options(http: str, loop: str, limits: ConnectionLimits) -> dict[str, Any]:
    guarded = http in ("auto", "httptools")
    if not guarded:
        log.warning("http=%s: serving without the connection guards", http)
    return {
        "http": GuardedHttpToolsProtocol if guarded else http,
        "loop": loop,
        "limits": limits,
        "timeout_keep_alive": limits.keep_alive_s,
        "log_config": log_config(),
        "access_log": False,  # ObserveRequests logs each request once, with its latency
        "server_header": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # uvicorn kills a worker that does not answer its supervisor's ping in time; a
        # worker still importing on a busy machine is slow, not hung.
        "timeout_worker_healthcheck": WORKER_HEALTHCHECK_S,
    }


class GuardedConfig(uvicorn.Config):
    """uvicorn's config carrying the :class:`ConnectionLimits` the guarded protocol reads."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits


def _serve_in_process(
    settings: Settings, listener: socket.socket, options: dict[str, Any], ops_access: OpsAccess
) -> int:
    config = GuardedConfig(build_app(settings, ops_access=ops_access), **options)
    server = uvicorn.Server(config)
    server.run(sockets=[listener])
    return EXIT_OK if server.started else EXIT_FAILED


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its app; pickled to each spawned worker."""

    settings: Settings
    metrics_dir: Path
    ops_access: OpsAccess


class WorkerConfig(GuardedConfig):
    """The guarded config, except that each worker builds the app from a :class:`WorkerSpec`.

    uvicorn's supervisor spawns fresh interpreters and normally re-imports the
    app by name; building it from the pickled settings instead keeps the exact
    settings the server was started with (command-line choices included).
    """

    def __init__(self, spec: WorkerSpec, **kwargs: Any) -> None:
        super().__init__(app="opsdash.readapi.server:build_app", factory=True, **kwargs)
        self.spec = spec

    def load_app(self) -> Any:
        spec = self.spec
        return functools.partial(build_app, spec.settings, spec.metrics_dir, spec.ops_access)


def _serve_with_workers(
    spec: WorkerSpec, listener: socket.socket, workers: int, options: dict[str, Any]
) -> int:
    # ``options`` already carries the worker healthcheck timeout (see above).
    config = WorkerConfig(spec, workers=workers, **options)
    supervisor = Multiprocess(config, sockets=[listener])
    supervisor.run()
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return EXIT_FAILED if failed else EXIT_OK


def log_config(level: str = "INFO") -> dict[str, Any]:
    """Logging for this process and every worker: one format, to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"uvicorn.access": {"level": "WARNING"}},
    }


@contextmanager
def _signals_recorded() -> Iterator[list[int]]:
    """Catch SIGTERM/SIGINT for the whole run, restoring the old handlers afterwards.

    uvicorn re-raises the signal that stopped it once it has shut down; with
    the default handlers that would kill this process before the engine stops.
    """
    received: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
