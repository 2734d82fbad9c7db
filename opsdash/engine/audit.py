"""The audit trail: every operator action from any console, with who, when, what and how
it ended. Written by ``engine/operator_actions.py``; shown on the console's log screen;
pruned with the run ledger (``OPSDASH_LEDGER_RETENTION_DAYS``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, insert, select

from opsdash.engine.db import Database
from opsdash.engine.models import OperatorAudit, table_of
from opsdash.engine.sqltypes import utcnow

__all__ = [
    "AuditEntry",
    "ConsoleKind",
    "Result",
    "prune_audit",
    "recent",
    "record",
]

AUDIT = table_of(OperatorAudit)
A = AUDIT.c

ConsoleKind = Literal["terminal", "web"]
Result = Literal["ok", "refused", "failed"]
CONSOLE_KINDS: tuple[ConsoleKind, ...] = ("terminal", "web")
RECENT_LIMIT = 200


@dataclass(frozen=True)
class AuditEntry:
    id: uuid.UUID
    at: datetime
    operator: str
    console: str
    action: str
    target: dict[str, Any] = field(default_factory=dict)
    result: str = "ok"
    detail: str | None = None


def record(
    db: Database,
    *,
    operator: str,
    console: ConsoleKind,
    action: str,
    target: dict[str, Any] | None,
    result: Result,
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    with db.write() as conn:
        conn.execute(
            insert(AUDIT).values(
                id=uuid.uuid4(),
                at=at or utcnow(),
                operator=operator,
                console=console,
                action=action,
                target=target or {},
                result=result,
                detail=detail,
            )
        )


def recent(db: Database, *, limit: int = RECENT_LIMIT) -> list[AuditEntry]:
    """The newest entries first."""
    with db.read() as conn:
        rows = conn.execute(
            select(A.id, A.at, A.operator, A.console, A.action, A.target, A.result, A.detail)
            .order_by(A.at.desc())
            .limit(limit)
        ).all()
    return [
        AuditEntry(
            id=row.id,
            at=row.at,
            operator=row.operator,
            console=row.console,
            action=row.action,
            target=row.target or {},
            result=row.result,
            detail=row.detail,
        )
        for row in rows
    ]


def prune_audit(db: Database, *, older_than: timedelta, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - older_than
    with db.write() as conn:
        return conn.execute(delete(AUDIT).where(A.at < cutoff)).rowcount
