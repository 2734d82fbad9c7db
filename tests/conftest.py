"""Shared fixtures: one parametrized database fixture runs engine tests on SQLite and Postgres."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from opsdash.config import Settings
from opsdash.demo.server import DemoUpstream
from opsdash.engine.db import Database, connect, create_schema
from opsdash.engine.runtime import Engine
from tests.alert_receivers import SmtpReceiver, WebhookReceiver
from tests.pgbouncer import PgBouncer, pgbouncer_missing_reason
from tests.pgcluster import pg_cluster  # noqa: F401  (a Postgres cluster of a test's own)

PG_ADMIN_DSN = os.environ.get("OPSDASH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


POSTGRES_UP = _postgres_available()
if not POSTGRES_UP and os.environ.get("OPSDASH_REQUIRE_POSTGRES") == "1":
    raise RuntimeError(
        f"OPSDASH_REQUIRE_POSTGRES=1 but PostgreSQL is not reachable: {PG_ADMIN_DSN}"
    )


class PostgresSchemas:
    """Isolated schemas in the shared test database, one per test, dropped afterwards."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def new_schema(self) -> str:
        schema = f"opsdash_t_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        self.created.append(schema)
        return schema

    def new_url(self) -> str:
        schema = self.new_schema()
        base = PG_ADMIN_DSN.replace("postgresql://", "postgresql+psycopg://")
        return f"{base}?options=-csearch_path%3D{schema}"

    def drop_all(self) -> None:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            for schema in self.created:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_schemas() -> Iterator[PostgresSchemas]:
    if not POSTGRES_UP:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    schemas = PostgresSchemas()
    yield schemas
    schemas.drop_all()


@pytest.fixture
def pg_url(pg_schemas: PostgresSchemas) -> str:
    """An isolated schema, migrated (a process on Postgres refuses an unmigrated one)."""
    return migrated(pg_schemas.new_url())


@pytest.fixture(scope="session")
def pgbouncer(pg_schemas: PostgresSchemas) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the local Postgres."""
    reason = pgbouncer_missing_reason()
    if reason and os.environ.get("OPSDASH_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)  # CI installs it: a missing pooler is a broken run, not a skip
    if reason:
        pytest.skip(reason)
    bouncer = PgBouncer().start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def pooled_pg_url(pg_schemas: PostgresSchemas, pgbouncer: PgBouncer) -> str:
    """An isolated schema reached through the pooler; the URL says so (?pgbouncer=true)."""
    schema = pg_schemas.new_schema()
    # Fewer server connections than a test's clients: transactions of different clients
    # run on the same server connection, as on a busy pooler.
    pgbouncer.add_alias(schema, schema, pool_size=2)
    return pgbouncer.url(schema, query="pgbouncer=true")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'opsdash.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (the ``db`` fixture migrates it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'opsdash.db'}"
    return request.getfixturevalue("pg_schemas").new_url()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = connect(db_url)
    create_schema(database)
    yield database
    database.dispose()


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    database = connect(pg_url)
    create_schema(database)
    yield database
    database.dispose()


def count_rows(db: Database, table: str, where: str = "true") -> int:
    with db.read() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE {where}")).scalar_one()


# --- the engine against the demo upstream over real HTTP ------------------------------------


@pytest.fixture
def demo_upstream() -> Iterator[DemoUpstream]:
    upstream = DemoUpstream(companies=3, api_key="test-key")
    upstream.start()
    yield upstream
    upstream.stop()


def engine_settings(
    db_url: str, data_dir: Path, upstream_url: str, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url,
        "data_dir": data_dir,
        "maidcentral_api_url": upstream_url,
        "maidcentral_api_key": "test-key",
        "workers": 3,
        "poll_interval_s": 0.2,
        "lease_s": 10.0,
        "retry_base_s": 0.05,
        "upstream_timeout_s": 2.0,
        "upstream_backoff_max_s": 0.05,
        "upstream_rate_per_minute": 100_000,
        "upstream_rate_per_hour": 1_000_000,
        # The upstream is the test's demo upstream, so the demo is asked for; a test of
        # production mode passes demo=False with the whole production set.
        "demo": True,
        # Named explicitly so a developer's shell (SUPABASE_URL, …) never sends a
        # test's blobs or tokens anywhere real.
        "supabase_url": None,
        "supabase_service_role_key": None,
        "supabase_jwt_secret": None,
        "jwks_url": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(db_url: str, tmp_path: Path, demo_upstream: DemoUpstream) -> Settings:
    # Migrated, so a test may build its own Engine from these settings (on Postgres a
    # process refuses an unmigrated schema).
    return engine_settings(migrated(db_url), tmp_path / "data", demo_upstream.url)


def migrated(url: str) -> str:
    """Apply the migrations to ``url`` (a production process refuses an old schema)."""
    database = connect(url)
    try:
        create_schema(database)
    finally:
        database.dispose()
    return url


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    running = Engine(settings)
    yield running
    running.stop()


# --- alert receivers: a real webhook endpoint and a real SMTP server on loopback -------------


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()
