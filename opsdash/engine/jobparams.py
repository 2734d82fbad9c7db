"""What a ``sync_schedule`` job asks for: which company, which days.

opsdash queues ``{"date": "YYYY-MM-DD", "company": "<ServiceCompanyId>"}`` with the
``company_id`` column set. The original system's ``hourly-sync`` Edge Function
queued rows of its own, and may keep doing so while a deployment cuts over: no
``dedup_key``, sometimes no ``company_id`` column, and ``params`` spelled in
camelCase or snake_case (``{"company_id": …, "date": …}``,
``{"serviceCompanyId": …, "date": …}``, or a range ``{"startDate": …,
"endDate": …}``), at times even a JSON string. Workers execute those rows too,
so the old cron can keep running until it is unscheduled.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

# A range job covers at most this many days (a company's sync window is far less);
# anything longer is a mistake, and would be a burst of upstream calls.
MAX_RANGE_DAYS = 62


@dataclass(frozen=True)
class ScheduleWork:
    company_id: uuid.UUID | None  # the companies row, when the job names it
    service_company_id: str | None  # MaidCentral's id, when that is all the job names
    days: tuple[date, ...]


def _normalised(params: Any) -> dict[str, Any]:
    """Keys lower-cased without separators: ``serviceCompanyId`` = ``service_company_id``."""
    if isinstance(params, str | bytes):
        try:
            params = json.loads(params)
        except ValueError:
            raise ValueError("params are not a JSON object") from None
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError("params are not a JSON object")
    return {
        str(key).lower().replace("_", "").replace("-", ""): value for key, value in params.items()
    }


def _day(value: Any, name: str) -> date:
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a date")
    try:
        # A timestamp ("2026-11-29T00:00:00Z") names its calendar date.
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


def _days(params: dict[str, Any]) -> tuple[date, ...]:
    if params.get("date") is not None:
        return (_day(params["date"], "date"),)
    if isinstance(params.get("dates"), list) and params["dates"]:
        return tuple(sorted({_day(value, "dates") for value in params["dates"]}))
    start = params.get("startdate") or params.get("start") or params.get("from")
    end = params.get("enddate") or params.get("end") or params.get("to") or start
    if start is None:
        raise ValueError("job params have no date")
    first, last = _day(start, "startDate"), _day(end, "endDate")
    if last < first:
        raise ValueError(f"endDate {last} is before startDate {first}")
    span = (last - first).days + 1
    if span > MAX_RANGE_DAYS:
        raise ValueError(f"a range of {span} days is more than {MAX_RANGE_DAYS}")
    return tuple(first + timedelta(days=offset) for offset in range(span))


def _company_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def schedule_work(company_id: uuid.UUID | None, raw_params: Any) -> ScheduleWork:
    """The company and days a schedule job covers; ``ValueError`` says what is wrong."""
    params = _normalised(raw_params)
    days = _days(params)
    if company_id is not None:
        return ScheduleWork(company_id, None, days)
    named = params.get("companyid")
    if named is not None:
        as_uuid = _company_uuid(named)
        if as_uuid is not None:
            return ScheduleWork(as_uuid, None, days)
    service = params.get("servicecompanyid") or params.get("company") or named
    if service is None or isinstance(service, bool | dict | list):
        raise ValueError("job names no company (company_id or serviceCompanyId)")
    return ScheduleWork(None, str(service).strip(), days)
