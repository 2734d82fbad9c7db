"""``opsdash web``: textual-serve's server with a sign-in in front of every route.

textual-serve starts the console command once per websocket and relays the terminal
to xterm.js in the browser; it has no authentication of its own. This server adds it:

- ``GET /login`` is the sign-in page; its form posts ``username`` and ``password`` to
  ``POST /login``. Success sets a session cookie (a random token kept in this process;
  HttpOnly, SameSite=Strict, Path=/, Secure when the browser reached us over https).
- Every other route needs a live session: pages redirect to ``/login``, the websocket
  is refused with 401. ``/logout`` ends the session and closes its consoles.
- Failed sign-ins are limited per client address and per user name (``signin``).
- Each websocket's console runs with ``OPSDASH_OPERATOR`` set to the signed-in name and
  ``OPSDASH_CONSOLE=web``, set here and never from anything the browser sends.
- At most ``max_sessions`` consoles run at once; over that, the page says so (503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shlex
import signal
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
import textual_serve
from aiohttp import WSCloseCode, web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from opsdash.web.signin import Client, FailureLimiter, SessionStore, WebSession, resolve_client

log = logging.getLogger("opsdash.web")

TEMPLATES = Path(__file__).parent / "templates"
STATICS = Path(textual_serve.__file__).parent / "static"
COOKIE = "opsdash_session"
OPEN_PATHS = frozenset({"/login", "/logout"})
MAX_NAME = 64
MAX_PASSWORD = 1024
BUSY_RETRY_AFTER_S = 30
# Sign-in checks are memory-hard hashes: a few at a time, whoever asks.
CONCURRENT_CHECKS = 2

SESSION_KEY = web.RequestKey("session", WebSession)
CLIENT_KEY = web.RequestKey("client", Client)

# What a console of a browser session gets from this server only, never by inheritance.
SET_HERE_ONLY = ("OPSDASH_OPERATOR", "OPSDASH_CONSOLE", "OPSDASH_SHARED_READS_SOCKET")


class SignedIn(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def read_only(self) -> bool: ...


Verify = Callable[[str, str], SignedIn | None]
"""(name, password) -> the operator, or None for a wrong name or password (or disabled)."""
Lookup = Callable[[str], SignedIn | None]
"""name -> the operator if they may still use a console, else None."""


@dataclass(frozen=True)
class WebOptions:
    max_sessions: int = 8
    session_lifetime_s: float = 12 * 3600
    signin_failures: int = 5
    signin_window_s: float = 300.0
    trusted_proxy: str | None = None
    ssl_context: ssl.SSLContext | None = None
    console_environment: Mapping[str, str] = field(default_factory=dict)
    """Set in every console's environment on top of this process's (the shared reads)."""


def console_command() -> str:
    """The console, started by the same interpreter that runs this server."""
    return shlex.join([sys.executable, "-m", "opsdash"])


class OperatorAppService(AppService):
    """One console process, running as the operator of the session that opened it."""

    def __init__(
        self, command: str, *, operator: str, extra_environment: Mapping[str, str], **kwargs: Any
    ) -> None:
        super().__init__(command, **kwargs)
        self.operator = operator
        self._extra_environment = dict(extra_environment)

    async def run(self) -> None:
        await super().run()
        # The console's output ended. After a normal quit the page was told already; a
        # console that failed to start or died did not say so, and without this the page
        # would wait for it forever.
        await self.remote_close()

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        environment = super()._build_environment(width=width, height=height)
        for name in SET_HERE_ONLY:
            environment.pop(name, None)
        environment.update(self._extra_environment)
        environment["OPSDASH_OPERATOR"] = self.operator
        environment["OPSDASH_CONSOLE"] = "web"
        return environment


@dataclass
class RunningConsole:
    session_token: str
    websocket: web.WebSocketResponse


class ConsoleServer(Server):
    def __init__(
        self,
        *,
        verify: Verify,
        lookup: Lookup,
        options: WebOptions,
        host: str = "127.0.0.1",
        port: int = 8080,
        command: str | None = None,
    ) -> None:
        super().__init__(
            command or console_command(),
            host=host,
            port=port,
            title="opsdash",
            statics_path=STATICS,
            templates_path=TEMPLATES,
        )
        self._verify = verify
        self._lookup = lookup
        self.options = options
        self.sessions = SessionStore(options.session_lifetime_s)
        self.limiter = FailureLimiter(options.signin_failures, options.signin_window_s)
        self.consoles: dict[OperatorAppService, RunningConsole] = {}
        self._checks = asyncio.Semaphore(CONCURRENT_CHECKS)

    # --- the application -----------------------------------------------------------

    async def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._security_headers, self._require_session])
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
        app.add_routes(
            [
                web.get("/login", self.handle_login_page, name="login"),
                web.post("/login", self.handle_login),
                web.get("/logout", self.handle_logout),
                web.post("/logout", self.handle_logout),
                web.get("/", self.handle_index, name="index"),
                web.get("/ws", self.handle_websocket, name="websocket"),
                web.get("/download/{key}", self.handle_download, name="download"),
                web.static("/static", self.statics_path, name="static"),
            ]
        )
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self.on_shutdown)
        return app

    async def on_startup(self, app: web.Application) -> None:
        """(textual-serve prints a banner here; the CLI says where it listens instead.)"""

    async def on_shutdown(self, app: web.Application) -> None:
        # Closing the websockets ends their message loops, and each handler then stops
        # its console and waits for the process to exit.
        for running in list(self.consoles.values()):
            await running.websocket.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")

    def client(self, request: web.Request) -> Client:
        known = request.get(CLIENT_KEY)
        if known is None:
            known = resolve_client(
                peer=request.remote,
                tls=request.transport is not None
                and request.transport.get_extra_info("sslcontext") is not None,
                headers=_header_reader(request),
                trusted_proxy=self.options.trusted_proxy,
            )
            request[CLIENT_KEY] = known
        return known

    def _same_origin(self, request: web.Request) -> bool:
        """A browser names the page that sent a request; it must be one of ours.

        SameSite=Strict already keeps the cookie off other sites' requests; this also
        refuses a cross-site sign-in post (which would sign the victim in as the
        attacker) and any websocket opened from another origin.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser, or a same-origin GET: the cookie decides
        host = self.client(request).host
        return host is not None and urlsplit(origin).netloc.lower() == host.lower()

    @web.middleware
    async def _security_headers(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as error:
            _harden(error)
            raise
        if not response.prepared:
            if request.path.startswith("/static/") and response.status == 200:
                # The same xterm.js bundle for every page: the browser may keep it (privately).
                response.headers.setdefault("Cache-Control", "private, max-age=3600")
            _harden(response)
        return response

    @web.middleware
    async def _require_session(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.path == "/ws":
                raise web.HTTPUnauthorized(text="sign in first\n")
            raise web.HTTPFound("/login")
        request[SESSION_KEY] = session
        return await handler(request)

    # --- signing in and out ----------------------------------------------------------

    async def handle_login_page(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.get(request.cookies.get(COOKIE)) is not None:
            raise web.HTTPFound("/")
        return self._login_page(request)

    def _login_page(
        self,
        request: web.Request,
        *,
        error: str | None = None,
        username: str = "",
        status: int = 200,
    ) -> web.Response:
        response = aiohttp_jinja2.render_template(
            "login.html", request, {"error": error, "username": username}, status=status
        )
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return response

    async def handle_login(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="a sign-in from another site is refused\n")
        form = await request.post()
        username = str(form.get("username", "")).strip()[:MAX_NAME]
        password = str(form.get("password", ""))[:MAX_PASSWORD]
        client = self.client(request)
        keys = [f"address {client.address}", f"name {username.casefold()}"]

        wait_s = self.limiter.retry_after(keys)
        if wait_s > 0:
            log.warning(
                "sign-in refused for %r from %s: too many failures", username, client.address
            )
            minutes = max(1, math.ceil(wait_s / 60))
            response = self._login_page(
                request,
                error=f"Too many failed sign-ins. Try again in {minutes} minute"
                + ("s." if minutes > 1 else "."),
                username=username,
                status=429,
            )
            response.headers["Retry-After"] = str(math.ceil(wait_s))
            return response

        # Counted before checking, so parallel guesses cannot all slip in under the limit.
        self.limiter.record_failure(keys)
        operator = None
        if username and password:
            async with self._checks:
                operator = await asyncio.get_running_loop().run_in_executor(
                    None, self._verify, username, password
                )
        if operator is None:
            log.warning("failed sign-in for %r from %s", username, client.address)
            # One message whether the name exists or not: the form tells nobody who exists.
            return self._login_page(
                request, error="Wrong name or password.", username=username, status=401
            )
        self.limiter.pardon(keys)

        self.sessions.end(request.cookies.get(COOKIE))  # a new token on every sign-in
        session = self.sessions.create(operator.name, read_only=operator.read_only)
        log.info(
            "%s signed in from %s%s",
            operator.name,
            client.address,
            " (read-only)" if operator.read_only else "",
        )
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE,
            session.token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=client.https,
        )
        _harden(response)
        return response

    async def handle_logout(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.end(request.cookies.get(COOKIE))
        if session is not None:
            log.info("%s signed out", session.operator)
            await self._close_consoles_of(session.token)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        _harden(response)
        return response

    async def _close_consoles_of(self, token: str) -> None:
        for running in [r for r in self.consoles.values() if r.session_token == token]:
            await running.websocket.close(code=WSCloseCode.POLICY_VIOLATION, message=b"signed out")

    # --- the console -----------------------------------------------------------------

    def _full(self) -> bool:
        return len(self.consoles) >= self.options.max_sessions

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        session = request[SESSION_KEY]
        if self._full():
            response = aiohttp_jinja2.render_template(
                "busy.html",
                request,
                {"limit": self.options.max_sessions, "retry_after": BUSY_RETRY_AFTER_S},
                status=503,
            )
            response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
            return response
        return aiohttp_jinja2.render_template(
            "app_index.html",
            request,
            {
                "operator": session.operator,
                "read_only": session.read_only,
                "font_size": to_int(request.query.get("fontsize", "16"), 16),
            },
        )

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        session = request[SESSION_KEY]
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="a console opened from another site is refused\n")
        if self._full():
            raise web.HTTPServiceUnavailable(
                text=f"all {self.options.max_sessions} browser consoles are in use\n",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )
        # Whoever signed in may since have been removed or disabled.
        operator = await asyncio.get_running_loop().run_in_executor(
            None, self._lookup, session.operator
        )
        if operator is None:
            self.sessions.end(session.token)
            raise web.HTTPUnauthorized(text="this operator may no longer use the console\n")
        if self._full():  # checked again: other consoles may have started meanwhile
            raise web.HTTPServiceUnavailable(
                text=f"all {self.options.max_sessions} browser consoles are in use\n",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )

        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        app_service = OperatorAppService(
            self.command,
            operator=session.operator,
            extra_environment=self.options.console_environment,
            write_bytes=websocket.send_bytes,
            write_str=websocket.send_str,
            close=websocket.close,
            download_manager=self.download_manager,
            debug=self.debug,
        )
        # The slot is taken before the first await below, so the cap holds under a rush.
        self.consoles[app_service] = RunningConsole(session.token, websocket)
        client = self.client(request)
        log.info("console started for %s from %s", session.operator, client.address)
        try:
            await websocket.prepare(request)
            await app_service.start(width, height)
            try:
                await self._process_messages(websocket, app_service)
            finally:
                await app_service.stop()
        except asyncio.CancelledError:
            await websocket.close()
        except Exception:
            log.exception("console of %s failed", session.operator)
        finally:
            await app_service.stop()
            del self.consoles[app_service]
            log.info("console of %s ended", session.operator)
        return websocket


def _header_reader(request: web.Request) -> Callable[[str], list[str]]:
    def read(name: str) -> list[str]:
        return list(request.headers.getall(name, []))

    return read


def _harden(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    # Not "no-referrer": under it a browser sends "Origin: null" with the sign-in form,
    # and the origin check would refuse every sign-in.
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cache-Control", "no-store")


async def serve(server: ConsoleServer, *, ready: Callable[[list[str]], None]) -> None:
    """Serve until SIGINT or SIGTERM; ``ready`` gets the bound URLs once listening."""
    app = await server._make_app()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, server.host, server.port, ssl_context=server.options.ssl_context)
    await site.start()
    scheme = "https" if server.options.ssl_context else "http"
    urls = []
    for address in runner.addresses:
        host, port = address[0], address[1]
        urls.append(f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}")
    ready(urls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.fspath(cert), os.fspath(key))
    return context
