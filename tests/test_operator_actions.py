"""The engine-facing boundary of operator actions: a read-only operator is refused every
state-changing action there (whatever a console shows), and every call, allowed or not,
leaves a row in the audit trail. SQLite and Postgres, a real engine."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from sqlalchemy import select

from opsdash.config import Settings
from opsdash.engine import audit, queries
from opsdash.engine.companies import UnknownCompany
from opsdash.engine.models import BackgroundJob, Company, JobStatus, JobType
from opsdash.engine.operator_actions import Action, ActionRefused, OperatorActions
from opsdash.engine.operators import Operator
from opsdash.engine.runtime import Engine

VIEWER = Operator("viewer", read_only=True)
ADMIN = Operator("ana", read_only=False)
DAY = date(2026, 12, 2)


@pytest.fixture
def running(settings: Settings) -> Iterator[Engine]:
    """An engine with one paused worker (so pause/resume has a pool, and no job runs)."""
    engine = Engine(settings)
    engine.start(workers=1, scheduler=False)
    assert engine.pool is not None
    engine.pool.pause()
    yield engine
    engine.stop()


def _world(engine: Engine) -> tuple[Company, BackgroundJob, BackgroundJob]:
    acme = Company(service_company_id="1001", name="Acme", timezone="UTC")
    failed = BackgroundJob(
        job_type=JobType.SYNC_SCHEDULE,
        company_id=acme.id,
        status=JobStatus.FAILED,
        params={"date": "2026-12-01"},
        attempts=3,
        error_message="HTTP 500",
        dedup_key=f"sync_schedule:{acme.id}:2026-12-01",
    )
    pending = BackgroundJob(
        job_type=JobType.SYNC_SCHEDULE,
        company_id=acme.id,
        status=JobStatus.PENDING,
        params={"date": "2026-12-05"},
        dedup_key=f"sync_schedule:{acme.id}:2026-12-05",
    )
    with engine.db.write_session() as session:
        session.add(acme)
        session.flush()
        session.add_all([failed, pending])
    return acme, failed, pending


def _calls(
    acme: Company, failed: BackgroundJob, pending: BackgroundJob
) -> dict[Action, Callable[[OperatorActions], Any]]:
    """Every action, called the way a console calls it."""
    return {
        Action.SYNC_NOW: lambda a: a.sync_now(),
        Action.RESYNC_COMPANY: lambda a: a.resync_company(acme.id),
        Action.RESYNC_DAY: lambda a: a.resync_day(acme.id, DAY),
        Action.RETRY_JOB: lambda a: a.retry_job(failed.id),
        Action.RETRY_FAILED: lambda a: a.retry_failed([failed.id]),
        Action.CANCEL_JOB: lambda a: a.cancel_job(pending.id),
        Action.PAUSE: lambda a: a.toggle_pause(),  # the fixture paused it: this resumes
        Action.RESUME: lambda a: a.toggle_pause(),
        Action.TOGGLE_SYNC: lambda a: a.toggle_sync(acme.id),
        Action.SAVE_TOGGLES: lambda a: a.save_toggles(acme.id, {"TechDashboard_X": True}),
    }


def _state(engine: Engine, acme: Company) -> tuple[Any, ...]:
    """Everything an action could change."""
    with engine.db.session() as session:
        jobs = sorted(
            (str(j.id), j.status, j.attempts)
            for j in session.execute(select(BackgroundJob)).scalars()
        )
    toggles = queries.company_toggles(engine.db, acme.id)
    assert toggles is not None
    company = engine.company_by_service_id("1001")
    assert company is not None
    return (jobs, toggles.overrides, company.sync_enabled, engine.status().paused)


def test_a_read_only_operator_is_refused_every_action_and_each_refusal_is_audited(
    running: Engine,
) -> None:
    acme, failed, pending = _world(running)
    actions = OperatorActions(running, VIEWER, "web")
    before = _state(running, acme)
    calls = _calls(acme, failed, pending)
    for call in calls.values():
        with pytest.raises(ActionRefused, match="viewer is a read-only operator"):
            call(actions)
    assert _state(running, acme) == before, "a refused action changed something"

    entries = list(reversed(audit.recent(running.db)))
    assert [e.result for e in entries] == ["refused"] * len(calls)
    assert {(e.operator, e.console) for e in entries} == {("viewer", "web")}
    # Pause and resume are one key; paused as it is, the refused call was "resume".
    assert {e.action for e in entries} == {a.value for a in Action} - {"pause"}
    by_action = {e.action: e for e in entries}
    assert by_action["resync_day"].target["company"] == "Acme (1001)"
    assert by_action["resync_day"].target["day"] == "2026-12-02"
    assert by_action["retry_job"].target["job"] == "sync_schedule 1001/2026-12-01"
    assert by_action["retry_failed"].target == {"jobs": 1}
    assert all(e.detail == "read-only operator" for e in entries)


def test_a_full_rights_operator_acts_and_every_action_is_audited(running: Engine) -> None:
    acme, failed, pending = _world(running)
    actions = OperatorActions(running, ADMIN, "terminal")
    calls = _calls(acme, failed, pending)

    assert actions.cancel_job(pending.id) is True
    assert actions.retry_job(failed.id) is True
    assert actions.retry_failed([failed.id]) == 0  # already pending again: nothing to do
    assert actions.toggle_sync(acme.id) is False
    run = actions.resync_company(acme.id)
    assert run.planned == 0  # sync is off for the company now
    assert actions.toggle_sync(acme.id) is True
    assert actions.resync_day(acme.id, DAY).planned == 1
    assert actions.sync_now().planned >= 1
    actions.save_toggles(acme.id, {"TechDashboard_X": True})
    assert actions.toggle_pause() is False  # resumed
    assert actions.toggle_pause() is True  # paused again

    toggles = queries.company_toggles(running.db, acme.id)
    assert toggles is not None and toggles.overrides == {"TechDashboard_X": True}
    entries = list(reversed(audit.recent(running.db)))
    assert [e.action for e in entries] == [
        "cancel_job",
        "retry_job",
        "retry_failed",
        "toggle_sync",
        "resync_company",
        "toggle_sync",
        "resync_day",
        "sync_now",
        "save_toggles",
        "resume",
        "pause",
    ]
    assert {e.action for e in entries} == {a.value for a in calls}
    assert {(e.operator, e.console, e.result) for e in entries} == {("ana", "terminal", "ok")}
    details = {(e.action, e.detail) for e in entries}
    assert ("retry_failed", "0 of 1 retried") in details
    assert ("toggle_sync", "off") in details and ("toggle_sync", "on") in details
    assert ("resync_company", "0 queued of 0 planned") in details
    saved = next(e for e in entries if e.action == "save_toggles")
    assert saved.target["overrides"] == {"TechDashboard_X": True}


def test_an_action_that_fails_is_audited_as_failed_and_raises(running: Engine) -> None:
    actions = OperatorActions(running, ADMIN, "terminal")
    missing = uuid.uuid4()
    with pytest.raises(UnknownCompany):
        actions.toggle_sync(missing)
    (entry,) = audit.recent(running.db)
    assert (entry.action, entry.result) == ("toggle_sync", "failed")
    assert entry.target == {"company_id": str(missing)}
    assert entry.detail is not None and entry.detail.startswith("UnknownCompany: no company")


def test_an_action_outcome_that_changes_nothing_is_still_recorded(engine: Engine) -> None:
    """Pause in a process without workers: nothing to pause, the attempt is on record."""
    actions = OperatorActions(engine, ADMIN, "terminal")
    assert actions.toggle_pause() is None
    (entry,) = audit.recent(engine.db)
    assert (entry.action, entry.result, entry.detail) == (
        "pause",
        "ok",
        "this process runs no workers",
    )
