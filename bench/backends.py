"""Throwaway databases for the benchmarks: an isolated Postgres schema or a temp SQLite file."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from opsdash.engine.db import connect, create_schema

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local test database, dropped afterwards."""
    schema = f"opsdash_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    try:
        # Migrated up front, as an operator's `opsdash migrate` would: processes on Postgres
        # refuse an unmigrated schema.
        database = connect(url)
        create_schema(database)
        database.dispose()
        yield url
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.db"
