"""Operator writes on companies: switching sync on or off, and the feature-toggle overrides.

A sync never touches these columns (see ``handlers._upsert_company``), so what the
operator sets here survives every later sync.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from sqlalchemy import not_, update

from opsdash.engine.db import Database
from opsdash.engine.models import Company, table_of
from opsdash.engine.sqltypes import utcnow
from opsdash.privacy import overrides_for

log = logging.getLogger("opsdash.companies")

__all__ = [
    "UnknownCompany",
    "overrides_for",
    "set_sync_enabled",
    "set_toggle_overrides",
    "toggle_sync_enabled",
]

COMPANIES = table_of(Company)


class UnknownCompany(LookupError):
    def __init__(self, company_id: uuid.UUID) -> None:
        super().__init__(f"no company with id {company_id}")


def toggle_sync_enabled(db: Database, company_id: uuid.UUID) -> bool:
    """Flip ``sync_enabled`` in one statement (no lost update between two operators).

    Returns the new value.
    """
    with db.write() as conn:
        enabled = conn.execute(
            update(COMPANIES)
            .where(COMPANIES.c.id == company_id)
            .values(sync_enabled=not_(COMPANIES.c.sync_enabled), updated_at=utcnow())
            .returning(COMPANIES.c.sync_enabled, COMPANIES.c.service_company_id)
        ).first()
    if enabled is None:
        raise UnknownCompany(company_id)
    log.info("sync %s for company %s", "enabled" if enabled[0] else "disabled", enabled[1])
    return bool(enabled[0])


def set_sync_enabled(db: Database, company_id: uuid.UUID, enabled: bool) -> None:
    with db.write() as conn:
        changed = conn.execute(
            update(COMPANIES)
            .where(COMPANIES.c.id == company_id)
            .values(sync_enabled=enabled, updated_at=utcnow())
        ).rowcount
    if not changed:
        raise UnknownCompany(company_id)
    log.info("sync %s for company %s", "enabled" if enabled else "disabled", company_id)


def set_toggle_overrides(
    db: Database, company_id: uuid.UUID, overrides: Mapping[str, bool]
) -> None:
    """Replace the company's overrides (an empty mapping means "follow the upstream")."""
    clean = {str(name): bool(value) for name, value in overrides.items()}
    with db.write() as conn:
        changed = conn.execute(
            update(COMPANIES)
            .where(COMPANIES.c.id == company_id)
            .values(toggle_overrides=clean, updated_at=utcnow())
        ).rowcount
    if not changed:
        raise UnknownCompany(company_id)
    log.info("feature toggle overrides of company %s set to %s", company_id, clean or "none")
