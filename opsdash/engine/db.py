"""Database handle: engine and sessions, schema creation, and every SQLite/Postgres difference.

Callers never branch on the dialect; they ask this module for the statement
or transaction they need.
"""

from __future__ import annotations

import fcntl
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from opsdash.datafolder import private_file
from opsdash.engine import models  # noqa: F401  (registers the tables on the metadata)
from opsdash.engine.sqltypes import SQLITE_DATETIME_FORMAT

SQLITE_BUSY_TIMEOUT_S = 30
T = TypeVar("T")
log = logging.getLogger("opsdash.db")


class SchemaOutdated(RuntimeError):
    """The database's schema is older than this opsdash needs."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current, self.head = current, head
        stands = f"at revision {current}" if current else "not versioned (no opsdash schema yet)"
        super().__init__(
            f"the database schema is {stands}; this opsdash needs revision {head}. "
            "Run `opsdash migrate` with the same DATABASE_URL, then start again."
        )


@dataclass(frozen=True)
class Database:
    engine: Engine
    # Reached through a transaction-mode pooler: no prepared statements, no session state.
    pooled: bool = False

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that takes the write lock up front.

        On SQLite a deferred transaction that reads then writes can fail with
        "database is locked" when another writer got in between; BEGIN
        IMMEDIATE queues behind the busy timeout instead. Postgres needs nothing.
        """
        with self.engine.connect() as conn:
            if not self.is_postgres:
                conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """An ORM session whose transaction takes the write lock up front (see ``write``).

        Use it for read-modify-write through the ORM: on SQLite a plain session that
        reads first and writes later fails with "database is locked" when a worker
        wrote in between, instead of waiting its turn.
        """
        with self.write() as conn:
            session = Session(bind=conn, expire_on_commit=False)
            try:
                yield session
                session.flush()
            finally:
                session.close()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def lock_skip_locked(self, query: Select[Any]) -> Select[Any]:
        """Row locks for a claim; SQLite's immediate transaction already serialises writers."""
        return query.with_for_update(skip_locked=True) if self.is_postgres else query

    def lock_rows(self, query: Select[Any]) -> Select[Any]:
        """Row locks that wait for other holders (Postgres); a no-op on SQLite."""
        return query.with_for_update() if self.is_postgres else query

    def try_lock_company(self, conn: Connection, company_id: uuid.UUID) -> bool:
        """A transaction-scoped lock on claiming one company's jobs (see ``try_lock``)."""
        return self.try_lock(conn, str(company_id))

    def try_lock(self, conn: Connection, key: str) -> bool:
        """A transaction-scoped lock named ``key``, or False when another holds it.

        Postgres: an advisory lock, released at commit or rollback. SQLite: the
        immediate transaction already holds the only write lock, so always True.
        """
        if not self.is_postgres:
            return True
        hashed = func.hashtextextended(key, 0)
        return bool(conn.execute(select(func.pg_try_advisory_xact_lock(hashed))).scalar())

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Run maintenance called ``name`` in one process at a time; yields whether this
        one got the turn (the others skip it rather than wait).

        Postgres: a transaction-level advisory lock, held by a transaction that stays open
        for the duration and released at its end, or when the holder's connection dies.
        SQLite (one machine): an ``flock`` on a file beside the database.
        """
        if self.is_postgres:
            with self.engine.connect() as conn, conn.begin():
                key = func.hashtextextended(f"opsdash:{name}", 0)
                yield bool(conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar())
            return
        database = self.engine.url.database
        if not database or database == ":memory:":
            yield True
            return
        with open(f"{database}.{name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def lock_named(self, conn: Connection, name: str) -> None:
        """Wait for a transaction-scoped lock named ``name``, so one process at a time
        runs the work it guards. Postgres: an advisory lock released at commit or
        rollback. SQLite: the immediate write transaction already serialises writers."""
        if self.is_postgres:
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(name, 0))))

    def insert(self, table: Any) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which knows ON CONFLICT."""
        dialect_insert = postgresql.insert if self.is_postgres else sqlite.insert
        return dialect_insert(table)

    def insert_jobs_skip_duplicates(
        self, conn: Connection, rows: Sequence[NewJobRow], now: datetime
    ) -> int:
        """Insert many jobs in one statement; rows whose dedup key is active are skipped.

        The rows travel as a single JSON parameter, which keeps a 7,000-job sync
        run to one round trip and clear of the bind-parameter limits; ids and
        timestamps are filled in by the database. Returns how many were inserted.
        """
        if not rows:
            return 0
        if self.is_postgres:
            pg_rows = [(t, str(c) if c else None, p, k, m, _iso(s)) for t, c, p, k, m, s in rows]
            result = conn.execute(
                text(_PG_INSERT_JOBS), {"rows": orjson.dumps(pg_rows).decode(), "now": now}
            )
        else:
            # SQLite stores uuids as 32 hex digits and timestamps as naive UTC text.
            sqlite_rows = [
                (t, c.hex if c else None, orjson.dumps(p).decode(), k, m, _sqlite_time(s))
                for t, c, p, k, m, s in rows
            ]
            result = conn.execute(
                text(_SQLITE_INSERT_JOBS),
                {"rows": orjson.dumps(sqlite_rows).decode(), "now": _sqlite_time(now)},
            )
        return result.rowcount

    def greatest(self, *values: Any) -> Any:
        """SQL max of two values: GREATEST on Postgres, the scalar MAX on SQLite."""
        return func.greatest(*values) if self.is_postgres else func.max(*values)

    def optimize(self) -> None:
        """Keep the query planner's statistics fresh.

        SQLite never gathers them by itself (Postgres has autovacuum), and without
        them some console queries scan a whole index.
        """
        if not self.is_postgres:
            with self.write() as conn:
                # A bounded sample per index keeps this quick on a large table.
                conn.exec_driver_sql("PRAGMA analysis_limit=1000")
                conn.exec_driver_sql("ANALYZE")

    def dispose(self) -> None:
        self.engine.dispose()


# (job_type, company_id, params, dedup_key, max_attempts, scheduled_at or None for now)
NewJobRow = tuple[str, uuid.UUID | None, dict[str, Any], str, int, datetime | None]

_JOB_COLUMNS = (
    "id, job_type, company_id, status, params, errors, attempts, max_attempts, "
    "scheduled_at, created_at, dedup_key, rescue_count"
)

_PG_INSERT_JOBS = f"""
INSERT INTO background_jobs ({_JOB_COLUMNS})
SELECT gen_random_uuid(), r->>0, (r->>1)::uuid, 'pending', r->2, '[]'::jsonb, 0, (r->>4)::int,
       COALESCE((r->>5)::timestamptz, :now), :now, r->>3, 0
FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r
ON CONFLICT (dedup_key) WHERE status IN ('pending', 'running') DO NOTHING
"""

_SQLITE_INSERT_JOBS = f"""
INSERT INTO background_jobs ({_JOB_COLUMNS})
SELECT lower(hex(randomblob(16))), value ->> 0, value ->> 1, 'pending', value ->> 2, '[]', 0,
       value ->> 4, COALESCE(value ->> 5, :now), :now, value ->> 3, 0
FROM json_each(:rows) WHERE true
ON CONFLICT (dedup_key) WHERE status IN ('pending', 'running') DO NOTHING
"""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _sqlite_time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime(SQLITE_DATETIME_FORMAT)


PoolerMode = Literal["auto", "transaction", "none"]
# Supabase's transaction-mode pooler listens here (its session mode on 5432).
TRANSACTION_POOLER_PORT = 6543


# `opsdash migrate`'s statement limit: a migration may rewrite a whole table.
MIGRATION_STATEMENT_S = 3600.0


@dataclass(frozen=True)
class DbTimeouts:
    """How long a caller waits on the database before it gets an error.

    A frozen server (stopped, swapping, a dead host whose TCP stack still answers)
    accepts connections and queries and never replies; without these bounds a
    caller waits as long as the freeze lasts.
    """

    connect_s: float = 5.0  # opening a connection (libpq's connect_timeout, at least 2 s)
    # The server's statement_timeout; the client gives up 1 s later. Generous, since one
    # wait can cover a whole pipelined batch (20,000 profiles); a frozen server is still
    # noticed within ping_s + connect_s when a connection is taken from the pool.
    statement_s: float = 30.0
    pool_s: float = 5.0  # waiting for a free pooled connection
    ping_s: float = 2.0  # the liveness check of a pooled connection before it is handed out

    @classmethod
    def of(cls, settings: Any) -> DbTimeouts:
        """From the settings' ``db_*_timeout_s`` fields."""
        return cls(
            connect_s=settings.db_connect_timeout_s,
            statement_s=settings.db_statement_timeout_s,
            pool_s=settings.db_pool_timeout_s,
        )

    @property
    def answer_s(self) -> float:
        # Past the server's own statement_timeout, so a live server always answers first
        # (with a clean "canceling statement" error); only a frozen one hits this.
        return self.statement_s + 1.0


def connect(
    url: str,
    *,
    pool_size: int = 10,
    pooler: PoolerMode = "auto",
    timeouts: DbTimeouts | None = None,
) -> Database:
    """Open the database at ``url`` (creating an SQLite file's folder if needed).

    ``pooler`` says whether a transaction-mode pooler (PgBouncer, Supabase's pooler)
    stands between us and Postgres; ``auto`` decides from the URL (see
    ``behind_transaction_pooler``). ``timeouts`` bound every wait on the database.
    """
    timeouts = timeouts or DbTimeouts()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Database(_sqlite_engine(url, parsed.database, timeouts))
    pooled = behind_transaction_pooler(parsed, pooler)
    connect_args: dict[str, Any] = {"connect_timeout": max(2, math.ceil(timeouts.connect_s))}
    if pooled:
        # A pooler hands each transaction to whichever server connection is free: a
        # statement prepared on one is missing on (or clashes with) the next, so
        # psycopg must never prepare statements server-side.
        connect_args["prepare_threshold"] = None
    engine = create_engine(
        parsed.difference_update_query(["pgbouncer"]),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeouts.pool_s,
        connect_args=connect_args,
    )
    _bound_waits(engine, timeouts, pooled=pooled)
    return Database(engine, pooled=pooled)


def connect_with(settings: Any, *, timeouts: DbTimeouts | None = None) -> Database:
    """The database ``settings`` name, with their pooler mode and, unless ``timeouts`` are
    given, their time limits."""
    return connect(
        settings.effective_database_url,
        pooler=settings.db_pooler,
        timeouts=timeouts or DbTimeouts.of(settings),
    )


def behind_transaction_pooler(url: URL, pooler: PoolerMode = "auto") -> bool:
    """Whether ``url`` reaches Postgres through a transaction-mode pooler.

    Said explicitly (``OPSDASH_DB_POOLER=transaction`` or ``none``), or read from the
    URL: Supabase's pooler port 6543, or ``?pgbouncer=true`` (the flag Prisma and
    Supabase's docs use for the same purpose).
    """
    if pooler != "auto":
        return pooler == "transaction"
    flag = str(url.query.get("pgbouncer", "")).lower()
    return url.port == TRANSACTION_POOLER_PORT or flag in {"true", "1", "yes"}


class _BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection that stops waiting for the server after ``answer_timeout_s``.

    psycopg waits for a reply as long as it takes; a server that is frozen (SIGSTOP,
    a hung host) never sends one. On timeout the connection is closed (it is midway
    through the protocol and unusable), so the pool discards it.
    """

    answer_timeout_s: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        limit = timeout if timeout is not None else self.answer_timeout_s
        try:
            return super().wait(gen, interval, limit)
        except psycopg.OperationalError as error:
            if not isinstance(error, _WAIT_TIMEOUT) or timeout is not None:
                raise
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"the database did not answer within {limit:g} s (server frozen or overloaded?)"
            ) from None


_WAIT_TIMEOUT: type[Exception] = getattr(psycopg.errors, "_WaitTimeout", TimeoutError)


def _bound_waits(engine: Engine, timeouts: DbTimeouts, *, pooled: bool) -> None:
    """Server-side statement_timeout plus a client-side limit on every wait for a reply.

    Commits wait for the WAL flush (the server's default ``synchronous_commit``): what
    the engine reports as queued, claimed or completed survives a crash of the server.
    """

    @event.listens_for(engine, "do_connect")
    def _open(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        connection = _BoundedConnection.connect(*cargs, **cparams)
        connection.answer_timeout_s = timeouts.answer_s
        return connection

    if not pooled:
        # Through a transaction-mode pooler a session SET would leak to other clients'
        # transactions and not stay with ours (and a SET LOCAL in every transaction
        # costs a round trip each); there the client-side limit above bounds each wait,
        # and the server's limit belongs on the role (ALTER ROLE … SET statement_timeout).
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {int(timeouts.statement_s * 1000)}")
            dbapi_connection.commit()

    # A pooled connection is pinged before use; a frozen server must fail that quickly,
    # so that the caller gets its error (or a fresh connection) in seconds.
    ping = engine.dialect.do_ping

    def _quick_ping(dbapi_connection: Any) -> bool:
        saved = dbapi_connection.answer_timeout_s
        dbapi_connection.answer_timeout_s = timeouts.ping_s
        try:
            return ping(dbapi_connection)
        finally:
            dbapi_connection.answer_timeout_s = saved

    # SQLAlchemy has no hook for the pool's ping; this replaces it on this engine's own
    # dialect instance only.
    engine.dialect.do_ping = _quick_ping  # type: ignore[method-assign]


def _enable_wal(cursor: Any, attempts: int = 50) -> None:
    """Switch a connection to WAL, waiting out others that are switching the same new file.

    Changing the journal mode takes a lock that SQLite's busy handler does not wait for,
    so processes or threads opening a fresh database at once can get "database is locked"
    here; it clears as soon as the first of them has switched.
    """
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def _sqlite_engine(url: str, database: str | None, timeouts: DbTimeouts) -> Engine:
    if database and database != ":memory:":
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        # database file's mode, so all three stay private to the owner.
        private_file(Path(database))
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=20,
        max_overflow=20,
        pool_timeout=timeouts.pool_s,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE is possible.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_schema(db: Database) -> None:
    """Bring the schema up to date by applying the migrations (``engine.schema.upgrade``)."""
    from opsdash.engine.schema import upgrade

    upgrade(db)


# --- riding out a short outage ------------------------------------------------------------

# Errors that mean "the database could not be reached or did not answer", as opposed to a
# statement the database rejected: the first are worth waiting out, the second are not.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


def patiently(
    call: Callable[[], T],
    *,
    patience_s: float,
    stop: threading.Event | None = None,
    what: str = "a database call",
) -> T:
    """``call()``, retried with backoff while the database is unreachable, for up to
    ``patience_s`` seconds (or until ``stop`` is set); then the last error is raised."""
    deadline = time.monotonic() + patience_s
    delay = 0.2
    while True:
        try:
            return call()
        except TRANSIENT_ERRORS as error:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("%s failed (%s); retrying", what, describe_error(error))
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, 5.0)


def describe_error(error: BaseException) -> str:
    """What went wrong with the database, in words an operator can act on.

    A full disk, a locked SQLite file, a frozen server and an unreachable one need
    different fixes, so they are never all called "unreachable".
    """
    cause = getattr(error, "orig", None) or error
    text_ = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    lowered = str(cause).lower()
    sqlstate = getattr(cause, "sqlstate", None) or ""
    if "database or disk is full" in lowered or "no space left" in lowered or sqlstate == "53100":
        return f"disk full: {text_}"
    if "database is locked" in lowered or "database table is locked" in lowered:
        return f"database is locked by another process (waited {SQLITE_BUSY_TIMEOUT_S} s): {text_}"
    if "readonly database" in lowered or "read-only" in lowered:
        return f"database is read-only: {text_}"
    if "unable to open database" in lowered:
        return f"cannot open the database file: {text_}"
    if "did not answer within" in lowered or sqlstate == "57014":
        return f"database too slow or frozen: {text_}"
    if isinstance(error, PoolTimeout):
        return f"no free database connection: {text_}"
    if isinstance(error, TRANSIENT_ERRORS):
        return f"database unreachable: {text_}"
    return f"database error: {text_}"
