"""The console shows storage trouble: Pilot against an engine on the Supabase Storage stand-in.

The engine's periodic storage check (driven here by calling it) finds the bucket made
public, then storage gone; the header and the banner say so, and both clear once storage
is back and private.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opsdash.demo.server import DemoUpstream
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings
from tests.supabase_storage_server import SupabaseStorageStandIn
from tests.test_console_actions import NARROW, make_app, text_of, wait_for

JWT_SECRET = "stand-in-project-jwt-secret-with-32-bytes-or-more"
BUCKET = "schedule-data"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def storage() -> Iterator[SupabaseStorageStandIn]:
    with SupabaseStorageStandIn(JWT_SECRET) as standin:
        yield standin


@pytest.fixture
def engine(
    tmp_path: Path, sqlite_url: str, demo_upstream: DemoUpstream, storage: SupabaseStorageStandIn
) -> Iterator[Engine]:
    settings = engine_settings(
        sqlite_url,
        tmp_path / "data",
        demo_upstream.url,
        supabase_url=storage.url,
        supabase_service_role_key=storage.service_role_key,
        storage_connect_timeout_s=0.5,
        storage_read_timeout_s=0.5,
    )
    running = Engine(settings)
    yield running
    running.stop()


async def test_a_public_bucket_and_a_storage_outage_show_in_the_header_and_banner(
    engine: Engine, storage: SupabaseStorageStandIn
) -> None:
    app = make_app(engine)
    async with app.run_test(size=NARROW) as pilot:
        await wait_for(pilot, lambda: app.system_status is not None)
        banner = app.screen.query_one("#status-banner")
        health = app.screen.query_one("#status-health")
        assert not banner.display

        storage.buckets[BUCKET].public = True
        assert not engine.check_storage().ok
        await wait_for(pilot, lambda: banner.display)
        assert "bucket PUBLIC" in text_of(health)
        assert "Storage bucket is public" in text_of(banner)

        storage.buckets[BUCKET].public = False
        storage.stop()
        assert not engine.check_storage().ok
        await wait_for(pilot, lambda: "Storage unusable" in text_of(banner))
        assert "storage  ✖ down" in text_of(health)
        assert "unreachable" in text_of(banner)

        storage.start()
        assert engine.check_storage().ok
        await wait_for(pilot, lambda: not banner.display)
        assert "storage" not in text_of(health)
