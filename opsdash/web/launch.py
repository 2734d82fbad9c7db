"""Start ``opsdash web`` from the settings: the database for sign-in, TLS, the options."""

from __future__ import annotations

import asyncio
import logging
import sys

from opsdash.config import Settings
from opsdash.engine import operators
from opsdash.engine.db import connect
from opsdash.engine.schema import ensure_schema
from opsdash.web.server import ConsoleServer, WebOptions, serve, tls_context

log = logging.getLogger("opsdash.web")


class WebConfigError(ValueError):
    """Settings that ``opsdash web`` cannot start with."""


def options_from(settings: Settings) -> WebOptions:
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
    )


def run_web(settings: Settings, *, host: str, port: int) -> int:
    options = options_from(settings)
    db = connect(settings.effective_database_url, pooler=settings.db_pooler)
    try:
        ensure_schema(db)
        server = ConsoleServer(
            verify=lambda name, password: operators.verify_operator(db, name, password),
            lookup=lambda name: operators.find_operator(db, name),
            options=options,
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
        db.dispose()
    print("opsdash web: stopped", file=sys.stderr)
    return 0
