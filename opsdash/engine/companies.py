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
from opsdash.engine.models import Company
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.companies")

COMPANIES = Company.__table__  # type: ignore[attr-defined]


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


def overrides_for(upstream: Mapping[str, object], wanted: Mapping[str, bool]) -> dict[str, bool]:
    """The overrides that make the effective toggles equal ``wanted``.

    Only toggles that differ from what the upstream reports are kept, so a toggle
    the operator left alone keeps following the upstream. A toggle the upstream
    does not report (or reports as a non-boolean) is always stored explicitly:
    its meaning would otherwise depend on how the privacy view reads a gap.
    """
    return {name: value for name, value in wanted.items() if upstream.get(name) is not value}


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
