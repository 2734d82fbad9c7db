"""The alert outbox: messages waiting to be delivered, claimed like jobs, retried with backoff.

An alert is put in the outbox in the same transaction that opens (or resolves)
its episode, so a message is queued exactly when the database says this
process won the transition, and never lost in a crash between the two. Any
process may deliver: a claim takes rows with ``FOR UPDATE SKIP LOCKED`` on
Postgres (one immediate transaction on SQLite) and leases them, so each message
goes out once even with many processes, and a process that dies mid-send only
delays its messages until the lease runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from opsdash.engine.alerting.channels import Message
from opsdash.engine.db import Database
from opsdash.engine.models import AlertDelivery, table_of
from opsdash.engine.queue import backoff_delay_s
from opsdash.engine.sqltypes import utcnow

DELIVERIES = table_of(AlertDelivery)
D = DELIVERIES.c

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
LEASE = timedelta(minutes=2)
MAX_BACKOFF_S = 15 * 60
ERROR_LIMIT = 300
RECENT_LIMIT = 100


@dataclass(frozen=True)
class Delivery:
    id: uuid.UUID
    alert_id: uuid.UUID | None
    event: str
    channel: str
    subject: str
    body: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    created_at: datetime
    sent_at: datetime | None
    error: str | None

    @property
    def message(self) -> Message:
        return Message(self.subject, self.body, self.payload)


def put(
    conn: Connection,
    *,
    event: str,
    message: Message,
    channels: Sequence[str],
    now: datetime,
    max_attempts: int,
    alert_id: uuid.UUID | None = None,
) -> None:
    """Queue one message per channel, inside the caller's transaction."""
    if not channels:
        return
    conn.execute(
        insert(DELIVERIES),
        [
            {
                "id": uuid.uuid4(),
                "alert_id": alert_id,
                "event": event,
                "channel": channel,
                "subject": message.subject,
                "body": message.body,
                "payload": message.payload,
                "status": PENDING,
                "attempts": 0,
                "max_attempts": max_attempts,
                "next_attempt_at": now,
                "created_at": now,
            }
            for channel in channels
        ],
    )


def claim(
    db: Database, worker: str, *, now: datetime | None = None, limit: int = 20
) -> list[Delivery]:
    """Lease due messages (and those whose sender's lease ran out) for this worker."""
    now = now or utcnow()
    due = or_(
        (D.status == PENDING) & (D.next_attempt_at <= now),
        (D.status == SENDING) & (D.lease_expires_at < now),
    )
    with db.write() as conn:
        ids = [
            row.id
            for row in conn.execute(
                db.lock_skip_locked(
                    select(D.id).where(due).order_by(D.next_attempt_at).limit(limit)
                )
            )
        ]
        if not ids:
            return []
        rows = conn.execute(
            update(DELIVERIES)
            .where(D.id.in_(ids))
            .values(
                status=SENDING,
                locked_by=worker,
                lease_expires_at=now + LEASE,
                attempts=D.attempts + 1,
            )
            .returning(*DELIVERIES.c)
        ).all()
    return [_delivery(row) for row in rows]


def mark_sent(
    db: Database, delivery: Delivery, worker: str, *, now: datetime | None = None
) -> bool:
    with db.write() as conn:
        return bool(
            conn.execute(
                update(DELIVERIES)
                .where(_held(delivery, worker))
                .values(status=SENT, sent_at=now or utcnow(), locked_by=None, error=None)
            ).rowcount
        )


def mark_failed(
    db: Database,
    delivery: Delivery,
    worker: str,
    error: str,
    *,
    retry_base_s: float,
    now: datetime | None = None,
) -> bool:
    """Back to pending after a backoff, or failed for good once its attempts are spent."""
    now = now or utcnow()
    spent = delivery.attempts >= delivery.max_attempts
    delay = min(MAX_BACKOFF_S, backoff_delay_s(delivery.attempts, retry_base_s))
    values: dict[str, Any] = {
        "status": FAILED if spent else PENDING,
        "error": error[:ERROR_LIMIT],
        "locked_by": None,
        "lease_expires_at": None,
        "next_attempt_at": now + timedelta(seconds=delay),
    }
    with db.write() as conn:
        return bool(
            conn.execute(update(DELIVERIES).where(_held(delivery, worker)).values(values)).rowcount
        )


def recent(db: Database, *, limit: int = RECENT_LIMIT) -> list[Delivery]:
    """The newest messages, sent or not, for the console's log screen."""
    with db.read() as conn:
        rows = conn.execute(select(DELIVERIES).order_by(D.created_at.desc()).limit(limit)).all()
    return [_delivery(row) for row in rows]


def _held(delivery: Delivery, worker: str) -> Any:
    # Fenced like a job: a sender whose lease was taken over cannot mark the message.
    return (
        (D.id == delivery.id)
        & (D.locked_by == worker)
        & (D.status == SENDING)
        & (D.attempts == delivery.attempts)
    )


def _delivery(row: Any) -> Delivery:
    values = row._mapping
    return Delivery(**{name: values[name] for name in Delivery.__dataclass_fields__})
