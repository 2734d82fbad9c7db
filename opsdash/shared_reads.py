"""What the console's screens read, and one refresh of it per interval for many consoles.

Every browser console is a process of its own (textual-serve starts one per open page),
so N open pages would each run the same queries every poll. In ``opsdash web`` they read
through the web process instead::

    console ──(Unix socket)──▶ SharedReadServer (in opsdash web) ──▶ database
                               one execution per (read, params) per interval

The contract:

- A read has a name in ``READS`` and is called with a :class:`ReadContext` and keyword
  params. The params (ids, a ``JobFilter``, a limit) are part of the answer's key; the
  time is not: ``now`` is the reading side's clock (the console's own in the terminal,
  the server's for browser consoles).
- The same (name, params) asked again within ``interval_s`` of an execution gets that
  execution's answer. Concurrent askers of a stale key wait for one execution.
- A read that fails answers every asker of that interval with :class:`SharedReadFailed`,
  an ``SQLAlchemyError``, so a console shows the database banner as for its own reads.
- Frames are a 4-byte big-endian length and a pickle, on a Unix socket in a directory
  only this user may enter; only processes that could read this process's memory anyway
  can connect, so unpickling their requests gives nobody anything new.

:class:`ConsoleReads` is the typed face the screens call; behind it a
:class:`DirectReader` (the terminal console) or a :class:`SharedReader` (a browser one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy.exc import SQLAlchemyError

from opsdash.config import Settings
from opsdash.engine import audit, ledger, queries
from opsdash.engine import freshness as freshness_rules
from opsdash.engine.alerting import outbox
from opsdash.engine.db import Database
from opsdash.engine.freshness import CompanyFreshness
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.shared_reads")

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
ANSWER_TIMEOUT_S = 60.0
# Answers nobody asked for in this many intervals are dropped (a filter nobody uses now).
KEEP_INTERVALS = 30


@dataclass(frozen=True)
class ReadContext:
    db: Database
    settings: Settings
    now: datetime


Read = Callable[..., Any]

READS: dict[str, Read] = {
    "ping": lambda c: queries.ping(c.db),
    "sync_times": lambda c: queries.sync_times(c.db, now=c.now),
    "freshness": lambda c, company_id=None: freshness_rules.configured(
        c.db, c.settings, now=c.now, company_id=company_id
    ),
    "jobs_page": lambda c, job_filter: queries.jobs_page(c.db, job_filter),
    "job_detail": lambda c, job_id: queries.job_detail(c.db, job_id),
    "status_counts": lambda c: queries.status_counts(c.db, now=c.now),
    "throughput": lambda c: queries.throughput(c.db, now=c.now),
    "run_progress": lambda c: queries.run_progress(c.db, now=c.now),
    "company_choices": lambda c: queries.company_choices(c.db),
    "company_storage": lambda c: queries.company_storage(c.db, now=c.now),
    "company_toggles": lambda c, company_id: queries.company_toggles(c.db, company_id),
    "stored_days": lambda c, company_id: queries.stored_days(c.db, company_id),
    "technicians": lambda c, company_id: queries.technicians(c.db, company_id),
    "run_history": lambda c: ledger.history(c.db),
    "recent_alerts": lambda c, limit: outbox.recent(c.db, limit=limit),
    "recent_actions": lambda c, limit: audit.recent(c.db, limit=limit),
}
"""Every read a console's screens make on a refresh, by name."""


class SharedReadFailed(SQLAlchemyError):
    """The shared read failed (the database is down, or the web process went away)."""


class Reader(Protocol):
    def read(self, name: str, /, now: datetime | None = None, **params: Any) -> Any: ...


class DirectReader:
    """Runs each read in this process: the terminal console, and tests."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings

    def read(self, name: str, /, now: datetime | None = None, **params: Any) -> Any:
        context = ReadContext(self._db, self._settings, now or utcnow())
        return READS[name](context, **params)


class ConsoleReads:
    """The reads of the console's screens, typed; the reader decides where they run.

    ``now`` is the screen's own time, so one snapshot's reads agree with each other; a
    shared reader answers with the server's reads of this interval instead.
    """

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def ping(self) -> None:
        self.reader.read("ping")

    def sync_times(self, now: datetime) -> queries.SyncTimes:
        return cast(queries.SyncTimes, self.reader.read("sync_times", now))

    def freshness(
        self, now: datetime, company_id: uuid.UUID | None = None
    ) -> list[CompanyFreshness]:
        return cast(
            list[CompanyFreshness], self.reader.read("freshness", now, company_id=company_id)
        )

    def jobs_page(self, job_filter: queries.JobFilter) -> list[queries.JobRow]:
        return cast(list[queries.JobRow], self.reader.read("jobs_page", job_filter=job_filter))

    def job_detail(self, job_id: uuid.UUID) -> queries.JobDetail | None:
        return cast("queries.JobDetail | None", self.reader.read("job_detail", job_id=job_id))

    def status_counts(self, now: datetime) -> dict[str, int]:
        return cast(dict[str, int], self.reader.read("status_counts", now))

    def throughput(self, now: datetime) -> queries.HourlyThroughput:
        return cast(queries.HourlyThroughput, self.reader.read("throughput", now))

    def run_progress(self, now: datetime) -> queries.RunProgress | None:
        return cast("queries.RunProgress | None", self.reader.read("run_progress", now))

    def company_choices(self) -> list[queries.CompanyChoice]:
        return cast(list[queries.CompanyChoice], self.reader.read("company_choices"))

    def company_storage(self, now: datetime) -> list[queries.CompanyStorage]:
        return cast(list[queries.CompanyStorage], self.reader.read("company_storage", now))

    def company_toggles(self, company_id: uuid.UUID) -> queries.CompanyToggles | None:
        return cast(
            "queries.CompanyToggles | None",
            self.reader.read("company_toggles", company_id=company_id),
        )

    def stored_days(self, company_id: uuid.UUID) -> list[queries.StoredDay]:
        return cast(list[queries.StoredDay], self.reader.read("stored_days", company_id=company_id))

    def technicians(self, company_id: uuid.UUID) -> list[queries.Person]:
        return cast(list[queries.Person], self.reader.read("technicians", company_id=company_id))

    def run_history(self) -> list[ledger.RunSummary]:
        return cast(list[ledger.RunSummary], self.reader.read("run_history"))

    def recent_alerts(self, limit: int) -> list[outbox.Delivery]:
        return cast(list[outbox.Delivery], self.reader.read("recent_alerts", limit=limit))

    def recent_actions(self, limit: int) -> list[audit.AuditEntry]:
        return cast(list[audit.AuditEntry], self.reader.read("recent_actions", limit=limit))


# --- framing --------------------------------------------------------------------------------


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(HEADER.pack(len(payload)) + payload)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks += chunk
    return bytes(chunks)


def _receive(sock: socket.socket) -> bytes:
    (size,) = HEADER.unpack(_receive_exactly(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes is larger than allowed")
    return _receive_exactly(sock, size)


# --- the server (in opsdash web) ------------------------------------------------------------


@dataclass
class _Answer:
    ready: threading.Event
    started_at: float
    asked_at: float
    frame: bytes = b""


class SharedReadServer:
    """Answers browser consoles' reads, each (name, params) at most once per ``interval_s``."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        socket_path: Path,
        *,
        interval_s: float,
        clock: Callable[[], datetime],
        ticker: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._settings = settings
        self.socket_path = socket_path
        self._interval_s = interval_s
        self._clock = clock
        self._ticker = ticker
        self._answers: dict[tuple[str, bytes], _Answer] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.asked: Counter[str] = Counter()
        """Reads asked for, by name."""
        self.run: Counter[str] = Counter()
        """Reads run against the database, by name."""
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve_connection(self.request)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(str(socket_path), Handler, bind_and_activate=False)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        old_umask = os.umask(0o177)  # the socket itself: this user only
        try:
            self._server.server_bind()
        finally:
            os.umask(old_umask)
        self._server.server_activate()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="shared-reads", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for sock in open_connections:  # the consoles' readers see the end at once
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket_path.unlink(missing_ok=True)
        log.info(self.summary())

    def _serve_connection(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.add(sock)
        try:
            self._answer_requests(sock)
        finally:
            with self._lock:
                self._connections.discard(sock)

    def _answer_requests(self, sock: socket.socket) -> None:
        while True:
            try:
                name, params = pickle.loads(_receive(sock))
            except (ConnectionError, OSError):
                return
            except Exception as error:  # a frame that is not a request: drop the client
                log.warning("shared reads: a malformed request (%s); closing", error)
                return
            try:
                _send(sock, self.answer(name, params))
            except OSError:
                return

    def answer(self, name: str, params: dict[str, Any]) -> bytes:
        """The pickled answer for (name, params): a fresh one, or this interval's."""
        if name not in READS:
            return pickle.dumps(("error", f"there is no shared read {name!r}"))
        key = (name, pickle.dumps(sorted(params.items())))
        with self._lock:
            self.asked[name] += 1
            now = self._ticker()
            self._forget_unused(now)
            answer = self._answers.get(key)
            mine = answer is None or now - answer.started_at >= self._interval_s
            if mine:
                answer = _Answer(threading.Event(), started_at=now, asked_at=now)
                self._answers[key] = answer
            assert answer is not None
            answer.asked_at = now
        if mine:
            answer.frame = self._execute(name, params)
            answer.ready.set()
        elif not answer.ready.wait(ANSWER_TIMEOUT_S):
            return pickle.dumps(("error", f"the shared read {name!r} took too long"))
        return answer.frame

    @property
    def requests(self) -> int:
        return self.asked.total()

    @property
    def executions(self) -> int:
        return self.run.total()

    def summary(self) -> str:
        by_read = ", ".join(f"{name} {self.asked[name]}/{self.run[name]}" for name in self.asked)
        return (
            f"shared reads: {self.requests} asked, {self.executions} run against the database"
            f" (asked/run: {by_read or 'none'})"
        )

    def _execute(self, name: str, params: dict[str, Any]) -> bytes:
        with self._lock:
            self.run[name] += 1
        try:
            value = READS[name](ReadContext(self._db, self._settings, self._clock()), **params)
            return pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            text = str(getattr(error, "orig", None) or error).strip().splitlines()
            return pickle.dumps(("error", f"{type(error).__name__}: {text[0] if text else ''}"))

    def _forget_unused(self, now: float) -> None:
        horizon = self._interval_s * KEEP_INTERVALS
        for key in [k for k, a in self._answers.items() if now - a.asked_at > horizon]:
            del self._answers[key]


# --- the client (in a browser console) ------------------------------------------------------


class SharedReader:
    """Reads through the web process's :class:`SharedReadServer`."""

    def __init__(self, socket_path: Path, *, timeout_s: float = ANSWER_TIMEOUT_S + 5) -> None:
        self._path = socket_path
        self._timeout_s = timeout_s
        # The console reads from several worker threads at once: a connection each.
        self._idle: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()

    def read(self, name: str, /, now: datetime | None = None, **params: Any) -> Any:
        # ``now`` is not sent: browser consoles share the server's reads, made at its time.
        try:
            sock = self._idle.get_nowait()
        except queue.Empty:
            sock = self._connect()
        try:
            _send(sock, pickle.dumps((name, params), protocol=pickle.HIGHEST_PROTOCOL))
            status, value = pickle.loads(_receive(sock))
        except (OSError, ConnectionError) as error:
            sock.close()
            raise SharedReadFailed(f"the shared reads are unavailable: {error}") from None
        self._idle.put(sock)
        if status != "ok":
            raise SharedReadFailed(value)
        return value

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout_s)
        try:
            sock.connect(str(self._path))
        except OSError as error:
            sock.close()
            raise SharedReadFailed(f"the shared reads are unavailable: {error}") from None
        return sock

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def reader_for(settings: Settings, db: Database) -> Reader:
    """The web process's shared reads when it handed us its socket, else our own."""
    if settings.shared_reads_socket is not None:
        return SharedReader(settings.shared_reads_socket)
    return DirectReader(db, settings)
