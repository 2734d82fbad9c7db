"""The read API's tests again, with the engine and the API reading through PgBouncer in
transaction mode (`tests/test_readapi.py` runs them directly on SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_readapi import *  # noqa: F403  (the read API tests, collected here again)
from tests.test_readapi import SyncedWorld, synced_world

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SyncedWorld]:
    from tests.conftest import migrated

    schema = request.getfixturevalue("pg_schemas").new_schema()
    bouncer = request.getfixturevalue("pgbouncer")
    bouncer.add_alias(schema, schema, pool_size=2)
    url = migrated(bouncer.url(schema, query="pgbouncer=true"))
    with synced_world(url, tmp_path_factory.mktemp("pooled-readapi")) as synced:
        assert synced.db.pooled
        yield synced


# The OpenAPI fuzzing (a minute and a half) reads the database no differently from the
# tests above; it runs once, directly, in tests/test_readapi.py.
del test_every_answer_matches_the_served_openapi  # noqa: F821
