"""Database handle: engine and sessions, schema creation, and every SQLite/Postgres difference.

Callers never branch on the dialect; they ask this module for the statement
or transaction they need.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Select,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlmodel import Session

from opsdash.datafolder import private_file
from opsdash.engine import models  # noqa: F401  (registers the tables on the metadata)
from opsdash.engine.models import BackgroundJob
from opsdash.engine.sqltypes import SQLITE_DATETIME_FORMAT

SQLITE_BUSY_TIMEOUT_S = 30


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the caller may retry later."""


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
        """A transaction-scoped lock on claiming one company's jobs.

        Postgres: an advisory lock, released at commit or rollback. SQLite: the
        immediate transaction already holds the only write lock, so always True.
        """
        if not self.is_postgres:
            return True
        key = func.hashtextextended(str(company_id), 0)
        return bool(conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar())

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

    def insert(self, table: Any) -> Insert:
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
            payload = [(t, str(c) if c else None, p, k, m, _iso(s)) for t, c, p, k, m, s in rows]
            result = conn.execute(
                text(_PG_INSERT_JOBS), {"rows": orjson.dumps(payload).decode(), "now": now}
            )
        else:
            # SQLite stores uuids as 32 hex digits and timestamps as naive UTC text.
            payload = [
                (t, c.hex if c else None, orjson.dumps(p).decode(), k, m, _sqlite_time(s))
                for t, c, p, k, m, s in rows
            ]
            result = conn.execute(
                text(_SQLITE_INSERT_JOBS),
                {"rows": orjson.dumps(payload).decode(), "now": _sqlite_time(now)},
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


def connect(url: str, *, pool_size: int = 10, pooler: PoolerMode = "auto") -> Database:
    """Open the database at ``url`` (creating an SQLite file's folder if needed).

    ``pooler`` says whether a transaction-mode pooler (PgBouncer, Supabase's pooler)
    stands between us and Postgres; ``auto`` decides from the URL (see
    ``behind_transaction_pooler``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Database(_sqlite_engine(url, parsed.database))
    pooled = behind_transaction_pooler(parsed, pooler)
    connect_args: dict[str, Any] = {"connect_timeout": 5}
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
        connect_args=connect_args,
    )
    if not pooled:
        # Through a pooler a session SET would leak to other clients' transactions
        # and not stay with ours, so commits keep the server's durability there.
        _relax_commit_durability(engine)
    return Database(engine, pooled=pooled)


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


def _relax_commit_durability(engine: Engine) -> None:
    """Commits don't wait for the WAL flush (``synchronous_commit = off``).

    A crash of the Postgres server can lose the last fraction of a second of
    commits, never corrupt anything. For the queue that means a job may run
    again, which is harmless: every effect is idempotent (same blob bytes,
    upserted metadata, deduplicated enqueues). It saves a disk flush per
    transaction, the engine's main cost on Postgres.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()


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


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        # database file's mode, so all three stay private to the owner.
        private_file(Path(database))
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=20,
        max_overflow=20,
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


def job_columns() -> list[Any]:
    return list(BackgroundJob.__table__.columns)  # type: ignore[attr-defined]
