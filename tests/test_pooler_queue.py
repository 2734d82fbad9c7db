"""Every queue transition test again, with the database reached through PgBouncer in
transaction mode (`tests/test_queue.py` runs them directly on SQLite and Postgres)."""

from __future__ import annotations

import pytest

from tests.test_queue import *  # noqa: F403  (the transition tests, collected here again)

pytestmark = pytest.mark.postgres


@pytest.fixture
def db_url(pooled_pg_url: str) -> str:
    return pooled_pg_url
