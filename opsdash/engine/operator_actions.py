"""Every state-changing operator action, from any console, in one place.

A console (the terminal one, or the browser one for a signed-in operator) builds one
``OperatorActions`` with the engine, the operator and the console kind, and calls a
method per action. Each call:

- is refused here when the operator is read-only (``ActionRefused``), whatever the
  console showed or hid, so a key press, a palette entry or a crafted input cannot
  get round it;
- otherwise does the work through the engine (job states through ``engine/queue.py``
  by way of ``Engine``, company edits through ``engine/companies.py``);
- and leaves one row in the audit trail (``engine/audit.py``) saying who did what, to
  what, and how it ended: ``ok``, ``refused`` or ``failed``.

The calls block on the database: a console runs them off its UI thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from opsdash.engine import audit, companies
from opsdash.engine.audit import ConsoleKind, Result
from opsdash.engine.coordinator import SyncRun
from opsdash.engine.models import BackgroundJob, Company, table_of
from opsdash.engine.operators import Operator
from opsdash.engine.runtime import Engine

log = logging.getLogger("opsdash.operator")

__all__ = ["Action", "ActionRefused", "OperatorActions"]

T = TypeVar("T")
COMPANIES = table_of(Company).c
JOBS = table_of(BackgroundJob).c


class Action(StrEnum):
    """The state-changing operator actions; the value is what the audit trail records."""

    SYNC_NOW = "sync_now"
    RESYNC_COMPANY = "resync_company"
    RESYNC_DAY = "resync_day"
    RETRY_JOB = "retry_job"
    RETRY_FAILED = "retry_failed"
    CANCEL_JOB = "cancel_job"
    PAUSE = "pause"
    RESUME = "resume"
    TOGGLE_SYNC = "toggle_sync"
    SAVE_TOGGLES = "save_toggles"


class ActionRefused(PermissionError):
    """A read-only operator asked for an action that changes state."""

    def __init__(self, operator: Operator, action: Action) -> None:
        super().__init__(
            f"{operator.name} is a read-only operator: {action.value.replace('_', ' ')} refused"
        )
        self.operator = operator
        self.action = action


class OperatorActions:
    """The actions one operator may take from one console; every call is audited."""

    def __init__(self, engine: Engine, operator: Operator, console: ConsoleKind) -> None:
        self.engine = engine
        self.operator = operator
        self.console: ConsoleKind = console

    @property
    def read_only(self) -> bool:
        return self.operator.read_only

    # --- the whole system -------------------------------------------------------------

    def sync_now(self) -> SyncRun:
        """Queue a sync run of every enabled company (what is already due is made due now)."""
        return self._perform(Action.SYNC_NOW, {}, self.engine.sync, _describe_run)

    def toggle_pause(self) -> bool | None:
        """Pause this process's workers, or resume them; the new state, or None when this
        process runs no workers (nothing to pause)."""
        engine = self.engine
        paused = engine.status().paused
        action = Action.RESUME if paused else Action.PAUSE

        def toggle() -> bool | None:
            if engine.pool is None:
                return None
            if paused:
                engine.resume()
            else:
                engine.pause()
            return not paused

        def describe(state: bool | None) -> str | None:
            return "this process runs no workers" if state is None else None

        return self._perform(action, {}, toggle, describe)

    # --- one company ------------------------------------------------------------------

    def resync_company(self, company_id: uuid.UUID) -> SyncRun:
        """Queue every day of one company's sync window."""

        def resync() -> SyncRun:
            return self.engine.sync(company_id=company_id)

        return self._perform(
            Action.RESYNC_COMPANY, self._company(company_id), resync, _describe_run
        )

    def resync_day(self, company_id: uuid.UUID, day: date) -> SyncRun:
        def resync() -> SyncRun:
            return self.engine.sync(company_id=company_id, day=day)

        target = {**self._company(company_id), "day": day.isoformat()}
        return self._perform(Action.RESYNC_DAY, target, resync, _describe_run)

    def toggle_sync(self, company_id: uuid.UUID) -> bool:
        """Switch the company's sync on or off; returns whether it is on now."""
        db = self.engine.db

        def toggle() -> bool:
            return companies.toggle_sync_enabled(db, company_id)

        return self._perform(
            Action.TOGGLE_SYNC,
            self._company(company_id),
            toggle,
            lambda enabled: "on" if enabled else "off",
        )

    def save_toggles(self, company_id: uuid.UUID, overrides: Mapping[str, bool]) -> None:
        """Replace the company's feature-toggle overrides ({} follows the upstream)."""
        db = self.engine.db

        def save() -> None:
            companies.set_toggle_overrides(db, company_id, overrides)

        target = {**self._company(company_id), "overrides": dict(overrides)}
        self._perform(Action.SAVE_TOGGLES, target, save)

    # --- jobs -------------------------------------------------------------------------

    def retry_job(self, job_id: uuid.UUID) -> bool:
        """A failed or cancelled job back to pending; False when the same work is active."""

        def retry() -> bool:
            return self.engine.retry([job_id]) == 1

        return self._perform(
            Action.RETRY_JOB,
            self._job(job_id),
            retry,
            lambda done: None if done else "the same work is already queued or running",
        )

    def retry_failed(self, job_ids: Sequence[uuid.UUID]) -> int:
        """Retry many failed jobs; returns how many went back to pending."""
        ids = list(job_ids)

        def retry() -> int:
            return self.engine.retry(ids)

        return self._perform(
            Action.RETRY_FAILED,
            {"jobs": len(ids)},
            retry,
            lambda retried: f"{retried} of {len(ids)} retried",
        )

    def cancel_job(self, job_id: uuid.UUID) -> bool:
        """A pending job to cancelled; False when it had already started."""

        def cancel() -> bool:
            return self.engine.cancel([job_id]) == 1

        return self._perform(
            Action.CANCEL_JOB,
            self._job(job_id),
            cancel,
            lambda done: None if done else "it had already started",
        )

    # --- refusal and audit ------------------------------------------------------------

    def _perform(
        self,
        action: Action,
        target: dict[str, Any],
        work: Callable[[], T],
        describe: Callable[[T], str | None] = lambda _outcome: None,
    ) -> T:
        if self.operator.read_only:
            self._audit(action, target, "refused", "read-only operator")
            raise ActionRefused(self.operator, action)
        try:
            outcome = work()
        except Exception as error:
            self._audit(action, target, "failed", _first_line(error))
            raise
        self._audit(action, target, "ok", describe(outcome))
        return outcome

    def _audit(
        self, action: Action, target: dict[str, Any], result: Result, detail: str | None
    ) -> None:
        who = f"{self.operator.name} ({self.console})"
        log.info("%s %s %s: %s%s", who, action.value, _label(target), result, _suffix(detail))
        try:
            audit.record(
                self.engine.db,
                operator=self.operator.name,
                console=self.console,
                action=action.value,
                target=target,
                result=result,
                detail=detail,
            )
        except SQLAlchemyError as error:
            # The action's own outcome stands (a refusal is still a refusal); the log
            # line above keeps the record that the table could not.
            log.error("audit record of %s %s not written: %s", who, action, _first_line(error))

    def _company(self, company_id: uuid.UUID) -> dict[str, Any]:
        """The audit's target: the id, and the name and ServiceCompanyId for people."""
        target: dict[str, Any] = {"company_id": str(company_id)}
        try:
            with self.engine.db.read() as conn:
                row = conn.execute(
                    select(COMPANIES.name, COMPANIES.service_company_id).where(
                        COMPANIES.id == company_id
                    )
                ).first()
        except SQLAlchemyError:
            return target
        if row is not None:
            target["company"] = f"{row.name} ({row.service_company_id})"
        return target

    def _job(self, job_id: uuid.UUID) -> dict[str, Any]:
        target: dict[str, Any] = {"job_id": str(job_id)}
        try:
            with self.engine.db.read() as conn:
                row = conn.execute(
                    select(JOBS.job_type, JOBS.params, COMPANIES.service_company_id)
                    .select_from(table_of(BackgroundJob))
                    .outerjoin(table_of(Company), COMPANIES.id == JOBS.company_id)
                    .where(JOBS.id == job_id)
                ).first()
        except SQLAlchemyError:
            return target
        if row is not None:
            where = "/".join(
                str(part)
                for part in (row.service_company_id, (row.params or {}).get("date"))
                if part
            )
            target["job"] = f"{row.job_type} {where}".strip()
        return target


def _describe_run(run: SyncRun) -> str:
    return f"{run.queued} queued of {run.planned} planned"


def _label(target: Mapping[str, Any]) -> str:
    return (
        " ".join(str(target[k]) for k in ("company", "day", "job") if k in target)
        or (f"{target['jobs']} jobs" if "jobs" in target else "")
        or "-"
    )


def _suffix(detail: str | None) -> str:
    return f" ({detail})" if detail else ""


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
