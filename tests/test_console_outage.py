"""A real database outage under the console: Postgres behind a loopback TCP proxy that the
test cuts and restores. The console shows a banner, keeps running, and recovers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsdash.demo.server import DemoUpstream
from opsdash.engine.runtime import Engine
from tests.conftest import PostgresSchemas, engine_settings, migrated
from tests.test_console_actions import NARROW, make_app, text_of, toasts, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

POSTGRES = ("127.0.0.1", 5432)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TcpProxy:
    """Forwards a loopback port to Postgres; ``cut`` makes the database unreachable."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, as a stopped server would."""
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxied_engine(
    pg_schemas: PostgresSchemas, tmp_path: Path, demo_upstream: DemoUpstream
) -> Iterator[tuple[Engine, TcpProxy]]:
    proxy = TcpProxy(POSTGRES)
    direct = migrated(pg_schemas.new_url())
    url = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    engine = Engine(engine_settings(url, tmp_path / "data", demo_upstream.url))
    engine.start(scheduler=False)
    engine.sync()
    assert engine.wait_idle(timeout_s=30)
    yield engine, proxy
    engine.stop()


async def test_the_console_survives_the_database_going_away(proxied_engine) -> None:
    engine, proxy = proxied_engine
    app = make_app(engine)
    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: app.system_status is not None)
        banner = app.screen.query_one("#status-banner")
        assert not banner.display
        proxy.cut()
        await wait_for(pilot, lambda: banner.display, timeout_s=30)
        assert "Database unreachable" in text_of(banner)
        await pilot.press("2")  # screens still switch while the database is away
        await pilot.press("1")
        assert app.is_running
        proxy.restore()
        await wait_for(pilot, lambda: not banner.display, timeout_s=30)
        assert any("reachable again" in toast for toast in toasts(app))
        engine.sync()  # and the engine works again
        assert engine.wait_idle(timeout_s=30)
