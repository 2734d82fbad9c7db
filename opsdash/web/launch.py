"""Start ``opsdash web`` from the settings: the database for sign-in, TLS, the options."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from opsdash.config import Settings
from opsdash.engine import operators
from opsdash.engine.db import Database, connect_with
from opsdash.engine.runtime import Engine
from opsdash.engine.schema import ensure_schema
from opsdash.engine.sqltypes import utcnow
from opsdash.shared_reads import SharedReadServer
from opsdash.web.server import ConsoleServer, WebOptions, serve, tls_context

log = logging.getLogger("opsdash.web")


class WebConfigError(ValueError):
    """Settings that ``opsdash web`` cannot start with."""


def options_from(settings: Settings, console_environment: dict[str, str]) -> WebOptions:
    if (settings.web_tls_cert is None) != (settings.web_tls_key is None):
        raise WebConfigError("OPSDASH_WEB_TLS_CERT and OPSDASH_WEB_TLS_KEY go together")
    context = None
    if settings.web_tls_cert is not None and settings.web_tls_key is not None:
        context = tls_context(settings.web_tls_cert, settings.web_tls_key)
    return WebOptions(
        max_sessions=settings.web_max_sessions,
        session_lifetime_s=settings.web_session_hours * 3600,
        signin_failures=settings.web_signin_failures,
        signin_window_s=settings.web_signin_window_s,
        trusted_proxy=settings.web_trusted_proxy,
        ssl_context=context,
        console_environment=console_environment,
    )


def mode_environment(settings: Settings) -> dict[str, str]:
    """The command line's mode choices (``--demo``, ``--config``) for the console processes.

    Each browser console is a fresh ``python -m opsdash`` that reads only its environment:
    without these, ``opsdash web --demo`` would start consoles that refuse the database.
    """
    environment: dict[str, str] = {}
    if settings.demo:
        environment["OPSDASH_DEMO"] = "1"
    if settings.config_file is not None:
        environment["OPSDASH_CONFIG"] = str(settings.config_file.resolve())
    return environment


@contextmanager
def shared_reads(settings: Settings, db: Database) -> Iterator[dict[str, str]]:
    """The one refresh the browser consoles read through; what tells them where it is."""
    if not settings.web_shared_reads:
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="opsdash-web-"))  # this user only (0700)
    server = SharedReadServer(
        db, settings, folder / "reads.sock", interval_s=settings.web_refresh_s, clock=utcnow
    )
    server.start()
    try:
        yield {"OPSDASH_SHARED_READS_SOCKET": str(server.socket_path)}
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def hosted_upstream_environment(engine: Engine | None) -> dict[str, str]:
    """Where this process serves the demo upstream, for its browser consoles.

    Each console is a process of its own; told nothing, in the embedded mode each would
    start a demo upstream of its own that it never calls (its engine runs no workers).
    """
    if engine is None or engine.local_upstream is None:
        return {}
    return {
        "OPSDASH_DEMO": "1",
        "MAIDCENTRAL_API_URL": engine.upstream.base_url,
        "MAIDCENTRAL_API_KEY": engine.local_upstream.api_key,
    }


def run_web(
    settings: Settings,
    *,
    host: str,
    port: int,
    with_engine: bool = True,
    engine_factory: Callable[[Settings], Engine] = Engine,
) -> int:
    """Serve the consoles; with ``with_engine``, this process also hosts the one engine
    (workers and scheduler, built by ``engine_factory``) of this deployment's web console.

    A browser console runs no workers or scheduler of its own: eight open pages would
    otherwise be eight engines, each claiming jobs and planning the hourly sync, and a
    page closed mid-job would stop a worker.
    """
    engine = engine_factory(settings) if with_engine else None
    db = engine.db if engine else connect_with(settings)
    try:
        if engine is not None:
            engine.start()
        ensure_schema(db)
        with shared_reads(settings, db) as console_environment:
            server = ConsoleServer(
                verify=lambda name, password: operators.verify_operator(db, name, password),
                lookup=lambda name: operators.find_operator(db, name),
                options=options_from(
                    settings,
                    {
                        **mode_environment(settings),
                        **hosted_upstream_environment(engine),
                        **console_environment,
                    },
                ),
                host=host,
                port=port,
            )

            def ready(urls: list[str]) -> None:
                # One line a script (or a test) can wait for.
                print(f"opsdash web: serving the console on {' '.join(urls)}", flush=True)
                if not operators.list_operators(db):
                    log.warning("no operators yet: add one with `opsdash operators add NAME`")

            asyncio.run(serve(server, ready=ready))
    finally:
        if engine is not None:
            engine.stop()
        else:
            db.dispose()
    print("opsdash web: stopped", file=sys.stderr)
    return 0
