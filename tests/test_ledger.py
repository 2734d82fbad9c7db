"""The run ledger over a real sync against the demo upstream, on SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

from opsdash.engine import ledger
from opsdash.engine.runtime import Engine
from opsdash.engine.sqltypes import utcnow
from tests.conftest import count_rows


def test_each_run_is_recorded_and_closed_with_its_figures(engine: Engine) -> None:
    engine.start(scheduler=False)
    first = engine.sync()  # an empty database: the users job discovers the companies
    assert engine.wait_idle(timeout_s=120)
    engine.watch()
    second = engine.sync()
    assert engine.wait_idle(timeout_s=120)
    engine.watch()

    newest, oldest = ledger.history(engine.db)
    assert (oldest.id, newest.id) == (first.run_id, second.run_id)
    assert oldest.trigger == newest.trigger == "operator"
    assert oldest.scope == "all companies"
    assert (oldest.planned, oldest.queued) == (1, 1)  # only the users job was known to plan
    companies = count_rows(engine.db, "companies")
    days = companies * engine.settings.days_ahead
    # The days the users job queued for the companies it found are the first run's work.
    assert oldest.companies == companies
    assert oldest.days_done == days and oldest.days_failed == 0 and oldest.days_unchanged == 0
    assert oldest.bytes_written > 0
    assert oldest.upstream_calls == companies + 1

    assert newest.finished_at is not None and newest.took is not None
    assert (newest.planned, newest.queued) == (days + 1, days + 1)
    assert newest.companies == companies
    assert newest.days_done == days and newest.days_failed == 0
    # The first run's discovery already stored every day; nothing changed since.
    assert newest.days_unchanged == days
    assert newest.bytes_written == 0
    # One call per company (a claim takes all of a company's days) plus the users call.
    assert newest.upstream_calls == companies + 1


def test_a_run_stays_open_while_its_jobs_are_active(engine: Engine) -> None:
    run = engine.sync()  # no workers started: its job stays pending
    assert ledger.close_finished_runs(engine.db) == 0
    (entry,) = ledger.history(engine.db)
    assert entry.id == run.run_id and entry.finished_at is None
    engine.start(scheduler=False)
    assert engine.wait_idle(timeout_s=120)
    assert ledger.close_finished_runs(engine.db) == 1
    assert ledger.close_finished_runs(engine.db) == 0  # closed once


def test_runs_older_than_the_retention_are_pruned(engine: Engine) -> None:
    engine.sync()
    later = utcnow() + timedelta(days=91)
    assert ledger.prune_runs(engine.db, older_than=timedelta(days=90), now=later) == 1
    assert ledger.history(engine.db) == []


def test_an_unchanged_resync_confirms_the_days_so_they_stay_fresh(engine: Engine) -> None:
    from sqlalchemy import select

    from opsdash.engine.models import ScheduleData

    def stored() -> dict[object, tuple[object, object]]:
        with engine.db.read() as conn:
            rows = conn.execute(
                select(ScheduleData.id, ScheduleData.updated_at, ScheduleData.synced_at)
            ).all()
        return {row.id: (row.updated_at, row.synced_at) for row in rows}

    engine.start(scheduler=False)
    engine.sync()
    assert engine.wait_idle(timeout_s=120)
    first = stored()
    assert first and all(synced is not None for _, synced in first.values())

    engine.sync()  # the demo upstream answers the same schedules: nothing is rewritten
    assert engine.wait_idle(timeout_s=120)
    second = stored()
    assert second.keys() == first.keys()
    for key, (updated, synced) in second.items():
        assert updated == first[key][0]  # the content did not change...
        assert synced > first[key][1]  # ...but a sync confirmed it, so it counts as fresh
