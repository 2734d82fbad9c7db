"""Alert episodes: open once, escalate, remind, resolve once; the database decides who sends.

Every transition is a conditional write (an insert into the one-open-episode
unique index, an update guarded by the state it expects), made in one
transaction together with the outbox rows it produces, under a transaction
lock that serialises evaluators. However many processes evaluate, each
transition happens, and is sent, exactly once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from opsdash.engine.alerting import messages, outbox
from opsdash.engine.alerting.conditions import Condition
from opsdash.engine.db import Database
from opsdash.engine.models import Alert, table_of

ALERTS = table_of(Alert)
A = ALERTS.c
LOCK_NAME = "opsdash.alerts"


@dataclass(frozen=True)
class Policy:
    channels: Sequence[str]
    reminder: timedelta
    summary_threshold: int
    max_attempts: int


@dataclass(frozen=True)
class OpenAlert:
    id: uuid.UUID
    key: str
    kind: str
    subject: str
    level: str
    opened_at: datetime
    last_notified_at: datetime | None
    detail: dict[str, Any]


@dataclass
class Transitions:
    opened: list[OpenAlert] = field(default_factory=list)
    escalated: list[OpenAlert] = field(default_factory=list)
    reminded: list[OpenAlert] = field(default_factory=list)
    resolved: list[OpenAlert] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.opened) + len(self.escalated) + len(self.reminded) + len(self.resolved)


def apply(
    db: Database,
    conditions: Sequence[Condition],
    *,
    kinds: Sequence[str],
    now: datetime,
    policy: Policy,
) -> Transitions:
    """Bring the open episodes of ``kinds`` in line with ``conditions`` and queue the messages."""
    current = {condition.key: condition for condition in conditions}
    transitions = Transitions()
    with db.write() as conn:
        db.lock_named(conn, LOCK_NAME)
        open_alerts = {alert.key: alert for alert in _open(conn, kinds)}
        for key in sorted(current.keys() - open_alerts.keys()):
            transitions.opened.append(_open_episode(conn, current[key], now))
        for key in sorted(current.keys() & open_alerts.keys()):
            alert, condition = open_alerts[key], current[key]
            if _rank(condition.level) > _rank(alert.level):
                escalated = _notify_again(conn, alert, condition, condition.level, now)
                transitions.escalated.append(escalated)
            elif alert.last_notified_at is None or now - alert.last_notified_at >= policy.reminder:
                transitions.reminded.append(_notify_again(conn, alert, condition, alert.level, now))
        for key in sorted(open_alerts.keys() - current.keys()):
            transitions.resolved.append(_resolve(conn, open_alerts[key], now))
        for event, alerts in (
            ("opened", transitions.opened),
            ("escalated", transitions.escalated),
            ("reminder", transitions.reminded),
            ("resolved", transitions.resolved),
        ):
            _queue_messages(conn, event, alerts, now=now, policy=policy)
    return transitions


def open_alerts(db: Database) -> list[OpenAlert]:
    with db.read() as conn:
        return _open(conn, None)


def _open(conn: Connection, kinds: Sequence[str] | None) -> list[OpenAlert]:
    query = select(ALERTS).where(A.resolved_at.is_(None)).order_by(A.opened_at)
    if kinds is not None:
        query = query.where(A.kind.in_(kinds))
    return [_alert(row) for row in conn.execute(query)]


def _open_episode(conn: Connection, condition: Condition, now: datetime) -> OpenAlert:
    alert = OpenAlert(
        id=uuid.uuid4(),
        key=condition.key,
        kind=condition.kind,
        subject=condition.subject,
        level=condition.level,
        opened_at=now,
        last_notified_at=now,
        detail={**condition.detail, "level": condition.level},
    )
    conn.execute(
        insert(ALERTS).values(
            id=alert.id,
            key=alert.key,
            kind=alert.kind,
            company_id=condition.company_id,
            subject=alert.subject,
            detail=alert.detail,
            opened_at=now,
            last_notified_at=now,
            notifications=1,
        )
    )
    return alert


def _notify_again(
    conn: Connection, alert: OpenAlert, condition: Condition, level: str, now: datetime
) -> OpenAlert:
    """The alert is sent again (an escalation to ``level``, or a reminder at its level),
    with the condition's current subject and detail."""
    detail = {**condition.detail, "level": level}
    conn.execute(
        update(ALERTS)
        .where(A.id == alert.id)
        .values(
            subject=condition.subject,
            detail=detail,
            last_notified_at=now,
            notifications=A.notifications + 1,
        )
    )
    return dataclasses.replace(
        alert, subject=condition.subject, level=level, last_notified_at=now, detail=detail
    )


def _resolve(conn: Connection, alert: OpenAlert, now: datetime) -> OpenAlert:
    conn.execute(update(ALERTS).where(A.id == alert.id).values(resolved_at=now))
    return alert


def _queue_messages(
    conn: Connection, event: str, alerts: Sequence[OpenAlert], *, now: datetime, policy: Policy
) -> None:
    if not alerts:
        return
    if len(alerts) > policy.summary_threshold:
        outbox.put(
            conn,
            event="summary",
            message=messages.summary(event, alerts, now=now),
            channels=policy.channels,
            now=now,
            max_attempts=policy.max_attempts,
        )
        return
    for alert in alerts:
        outbox.put(
            conn,
            event=event,
            message=messages.single(event, alert, now=now),
            channels=policy.channels,
            now=now,
            max_attempts=policy.max_attempts,
            alert_id=alert.id,
        )


def _rank(level: str) -> int:
    return {"warning": 1, "critical": 2}.get(level, 0)


def _alert(row: Any) -> OpenAlert:
    detail = dict(row.detail or {})
    return OpenAlert(
        id=row.id,
        key=row.key,
        kind=row.kind,
        subject=row.subject,
        level=str(detail.get("level", "warning")),
        opened_at=row.opened_at,
        last_notified_at=row.last_notified_at,
        detail=detail,
    )
