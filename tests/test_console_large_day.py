"""The technician preview of a 2,500-job day: a bounded page of cards, the day parsed once.

The demo upstream serves a crowded day (2,500 jobs, all on the technician the preview
opens with), the real engine syncs it into SQLite and local blobs, and the console is
driven with Pilot: keys are handled while and after the day loads, the number of job
cards mounted never exceeds a page, pages turn, and later refreshes reuse the parsed
day instead of reading the blob again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opsdash.demo.crowded import CrowdedDayWorld
from opsdash.demo.server import DemoUpstream
from opsdash.engine import queries
from opsdash.engine.runtime import Engine
from opsdash.screens.preview import JOBS_PER_PAGE, PreviewScreen, page_bounds
from tests.conftest import engine_settings
from tests.test_console_actions import WIDE, company, make_app, text_of, wait_for

pytestmark = pytest.mark.anyio

CROWDED_JOBS = 2500


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def crowded_engine(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Engine, CrowdedDayWorld]]:
    # Two days ahead in UTC is inside every company's seven-day window, whatever its zone.
    day = datetime.now(UTC).date() + timedelta(days=2)
    world = CrowdedDayWorld(day, jobs=CROWDED_JOBS)
    upstream = DemoUpstream(world=world, api_key="test-key")
    upstream.start()
    engine = Engine(engine_settings(sqlite_url, tmp_path / "data", upstream.url))
    engine.start(scheduler=False)
    try:
        engine.sync()
        assert engine.wait_idle(timeout_s=120)
        yield engine, world
    finally:
        engine.stop()
        upstream.stop()


def test_page_bounds_clamp_to_the_jobs_there_are() -> None:
    assert page_bounds(0, 0) == (0, 0, 0)
    assert page_bounds(2500, 0) == (0, 0, JOBS_PER_PAGE)
    assert page_bounds(2500, 1) == (1, JOBS_PER_PAGE, 2 * JOBS_PER_PAGE)
    last = (2500 - 1) // JOBS_PER_PAGE
    assert page_bounds(2500, 10_000) == (last, last * JOBS_PER_PAGE, 2500)
    assert page_bounds(2500, -3) == (0, 0, JOBS_PER_PAGE)


async def test_a_2500_job_day_mounts_one_page_and_stays_responsive(crowded_engine) -> None:
    engine, world = crowded_engine
    target = company(engine)
    stored = next(
        d for d in queries.stored_days(engine.db, target.id) if d.date == world.crowded_day
    )
    assert stored.job_count == CROWDED_JOBS
    assert stored.file_size_kb > 2000  # megabytes of JSON, as on the day that froze the console

    app = make_app(engine)
    async with app.run_test(size=WIDE) as pilot:
        app.open_preview(target.id, world.crowded_day)
        await wait_for(pilot, lambda: isinstance(app.screen, PreviewScreen))
        screen = app.screen
        assert isinstance(screen, PreviewScreen)
        # A key pressed while the day loads is handled at once (the load is off the UI thread).
        await pilot.press("j")
        assert screen.raw_json
        await pilot.press("j")
        assert not screen.raw_json

        def all_jobs_shown() -> bool:
            result = screen._result
            return result is not None and len(result.view["jobs"]) == CROWDED_JOBS

        await wait_for(pilot, all_jobs_shown, timeout_s=60)
        await wait_for(pilot, lambda: len(screen.query(".job-card")) == JOBS_PER_PAGE)
        summary = text_of(screen.query_one("#preview-summary"))
        assert f"receives {CROWDED_JOBS} of {CROWDED_JOBS} jobs" in summary
        assert f"Showing 1 to {JOBS_PER_PAGE}" in summary

        first_page = text_of(screen.query(".job-card").first())
        await pilot.press("right_square_bracket")
        assert screen.page == 1
        cards = screen.query(".job-card")
        assert len(cards) == JOBS_PER_PAGE
        assert text_of(cards.first()) != first_page
        summary = text_of(screen.query_one("#preview-summary"))
        assert f"Showing {JOBS_PER_PAGE + 1} to {2 * JOBS_PER_PAGE}" in summary

        # The raw JSON shows the page too, not the whole 2,500-job view.
        await pilot.press("j")
        raw = text_of(screen.query_one("#preview-json"))
        assert raw.count('"jobId"') == JOBS_PER_PAGE
        await pilot.press("j")

        # Refreshes go on (every POLL_FACTOR polls); the day is read and parsed once.
        seen = screen.refreshes
        await wait_for(pilot, lambda: screen.refreshes >= seen + 3, timeout_s=60)
        assert screen.day_cache.reads == 1
        assert screen.page == 1  # a refresh of an unchanged day keeps the page
        assert len(screen.query(".job-card")) == JOBS_PER_PAGE
