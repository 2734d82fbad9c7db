"""Throwaway databases for the benchmarks: an isolated Postgres schema or a temp SQLite file."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh schema in the local test database, dropped afterwards."""
    schema = f"opsdash_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.db"
