"""The read API's caches and its metrics shared across worker processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from opsdash.readapi.cache import MISSING, LruCache, RefreshingCache, SingleFlight
from opsdash.readapi.metrics import RequestMetrics, exposition, render_job_counts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: LruCache[str, int | None] = LruCache(max_entries=10, ttl_s=5, clock=clock)
    cache.put("a", 1)
    cache.put("none", None)  # a remembered "not found" is a value too
    clock.now += 4.9
    assert cache.get("a") == 1
    assert cache.get("none") is None
    clock.now += 0.2
    assert cache.get("a") is MISSING
    assert cache.get("none") is MISSING
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: LruCache[str, int] = LruCache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert cache.get("b") is MISSING
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_a_weight_budget_bounds_the_bytes_kept() -> None:
    cache: LruCache[str, bytes] = LruCache(max_entries=100, max_weight=10, weigh=len)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    cache.put("c", b"1")
    assert cache.get("a") is MISSING
    assert cache.weight == 6
    cache.put("huge", b"x" * 11)  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("huge") is MISSING
    assert cache.get("b") == b"12345"
    cache.put("b", b"1")  # replacing an entry replaces its weight
    assert cache.weight == 2


def test_concurrent_misses_share_one_load() -> None:
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return "value"

    async def main() -> list[str]:
        flight: SingleFlight[str, str] = SingleFlight()
        return await asyncio.gather(*(flight.run("key", load) for _ in range(20)))

    assert asyncio.run(main()) == ["value"] * 20
    assert loads == 1


def test_a_failed_load_fails_every_waiter_and_is_retried_next_time() -> None:
    attempts = 0

    async def load() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise ConnectionError("database down")
        return "value"

    async def main() -> None:
        flight: SingleFlight[str, str] = SingleFlight()
        results = await asyncio.gather(
            *(flight.run("key", load) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, ConnectionError) for result in results)
        assert await flight.run("key", load) == "value"

    asyncio.run(main())
    assert attempts == 2


def test_a_cancelled_waiter_does_not_cancel_the_load_for_the_others() -> None:
    async def load() -> str:
        await asyncio.sleep(0.02)
        return "value"

    async def main() -> str:
        flight: SingleFlight[str, str] = SingleFlight()
        impatient = asyncio.ensure_future(flight.run("key", load))
        patient = asyncio.ensure_future(flight.run("key", load))
        await asyncio.sleep(0)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        return await patient

    assert asyncio.run(main()) == "value"


def test_metrics_from_every_worker_add_up(tmp_path: Path) -> None:
    routes = ("/functions/v1/get-schedule", "/healthz")
    first = RequestMetrics(routes, shared_dir=tmp_path, worker_id="1")
    second = RequestMetrics(routes, shared_dir=tmp_path, worker_id="2")
    first.observe("/functions/v1/get-schedule", 200, 0.0004)
    second.observe("/functions/v1/get-schedule", 200, 0.003)
    second.observe(second.route_label("/unknown/path"), 404, 0.0001)
    second.observe("/healthz", 299, 0.0001)  # an unusual status is counted as "other"
    text = exposition([first.render()])
    labels = 'route="/functions/v1/get-schedule",status="200"'
    assert f"opsdash_http_requests_total{{{labels}}} 2" in text
    assert f'opsdash_http_request_duration_seconds_bucket{{{labels},le="0.0005"}} 1' in text
    assert f'opsdash_http_request_duration_seconds_bucket{{{labels},le="0.005"}} 2' in text
    assert f'opsdash_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} 2' in text
    assert f"opsdash_http_request_duration_seconds_sum{{{labels}}} 0.003400" in text
    assert 'opsdash_http_requests_total{route="other",status="404"} 1' in text
    assert 'opsdash_http_requests_total{route="/healthz",status="other"} 1' in text


def test_job_gauges_or_a_down_database() -> None:
    up = "\n".join(render_job_counts({("sync_schedule", "pending"): 3}))
    assert 'opsdash_background_jobs{job_type="sync_schedule",state="pending"} 3' in up
    assert "opsdash_database_up 1" in up
    down = "\n".join(render_job_counts(None))
    assert "opsdash_database_up 0" in down
    assert "opsdash_background_jobs" not in down


def test_a_stale_value_is_served_while_one_reload_runs() -> None:
    clock = Clock()
    loads: list[str] = []
    release = asyncio.Event()

    async def load(key: str) -> str:
        loads.append(key)
        if len(loads) > 1:
            await release.wait()  # the reload is slow
        return f"{key}-v{len(loads)}"

    async def main() -> None:
        cache: RefreshingCache[str, str] = RefreshingCache(
            load, fresh_s=1, max_stale_s=60, max_entries=10, clock=clock
        )
        assert await cache.get("day") == "day-v1"
        clock.now += 2  # past fresh_s: the next readers get the old value at once
        assert [await cache.get("day") for _ in range(5)] == ["day-v1"] * 5
        assert cache.peek("day") == "day-v1"
        await asyncio.sleep(0)
        assert loads == ["day", "day"], "one reload for all of them"
        release.set()
        await asyncio.sleep(0.01)
        assert await cache.get("day") == "day-v2"

    asyncio.run(main())


def test_a_failed_reload_keeps_the_old_value_until_it_is_too_old() -> None:
    clock = Clock()
    healthy = True

    async def load(key: str) -> str:
        if not healthy:
            raise ConnectionError("database down")
        return "value"

    async def main() -> None:
        nonlocal healthy
        cache: RefreshingCache[str, str] = RefreshingCache(
            load, fresh_s=1, max_stale_s=10, max_entries=10, clock=clock
        )
        assert await cache.get("k") == "value"
        healthy = False
        clock.now += 5
        assert await cache.get("k") == "value"  # stale but servable; the reload fails
        await asyncio.sleep(0.01)
        clock.now += 6  # now older than max_stale_s
        with pytest.raises(ConnectionError):
            await cache.get("k")

    asyncio.run(main())


def test_without_serve_stale_a_change_is_answered_at_once() -> None:
    clock = Clock()
    version = "old"
    healthy = True

    async def load(key: str) -> str:
        if not healthy:
            raise ConnectionError("database down")
        return version

    async def main() -> None:
        nonlocal version, healthy
        cache: RefreshingCache[str, str] = RefreshingCache(
            load, fresh_s=1, max_stale_s=10, max_entries=10, serve_stale=False, clock=clock
        )
        assert await cache.get("k") == "old"
        version = "new"
        assert cache.peek("k") == "old"  # still fresh
        clock.now += 2
        assert cache.peek("k") is MISSING  # the fast path must not answer with it
        assert await cache.get("k") == "new"  # the first request past the TTL waits
        healthy = False
        clock.now += 2
        assert await cache.get("k") == "new"  # database down: the older value, within limits
        clock.now += 9
        with pytest.raises(ConnectionError):
            await cache.get("k")

    asyncio.run(main())
