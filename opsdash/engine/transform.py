"""Upstream MaidCentral job records → the schedule document stored as a blob.

Pure functions: no I/O and no clock (the caller passes ``generated_at``). Upstream keys are
read case-insensitively, as MaidCentral's casing is not a contract. The output is
deterministic: the same records in any order give the same bytes, so an unchanged day
produces the same checksum and is not rewritten.

A text field takes only a string from the upstream and an id only a string or an
integer. Anything else (an object or a list where text belongs) is dropped and
counted in :class:`DroppedValues`, never turned into text: ``str()`` of an object
would carry whatever it holds, an access code say, into a field technicians see.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

import orjson

UpstreamRecord = Mapping[str, Any]
ScheduleDocument = dict[str, Any]

CONTACT_HOME_PHONE = 1
CONTACT_CELL_PHONE = 2
CONTACT_EMAIL = 3

# Real MaidCentral data sometimes spells the access key with one "c"; both are read.
_ACCESS_KEYS = ("HomeAccessInformation", "HomeAcessInformation")

_JOB_DATE = re.compile(
    r"(?P<day>\d{4}-\d{2}-\d{2})"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)
_CLOCK = re.compile(
    r"(?:\d{4}-\d{2}-\d{2}[T ])?"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::\d{2}(?:\.\d+)?)?"
    r"\s*(?P<meridiem>[AaPp][Mm])?"
)
_MISSING = object()


class TransformError(ValueError):
    """Upstream data that cannot become a schedule document; the message names the record."""


class DroppedValues:
    """Upstream values left out of a document because they had the wrong type, by field."""

    def __init__(self) -> None:
        self.by_field: Counter[str] = Counter()

    def note(self, field: str) -> None:
        self.by_field[field] += 1

    @property
    def total(self) -> int:
        return sum(self.by_field.values())


# -- reading upstream records ---------------------------------------------------------------


def _is_mapping(value: Any) -> bool:
    # Parsed JSON is plain dicts; skip the slow ABC check for them.
    return type(value) is dict or isinstance(value, Mapping)


def _lookup(record: Mapping[str, Any], key: str) -> Any:
    value = record.get(key, _MISSING)
    if value is not _MISSING:
        return value
    wanted = key.casefold()
    for candidate, value in record.items():
        if isinstance(candidate, str) and candidate.casefold() == wanted:
            return value
    return _MISSING


def read_key(record: Any, *path: str, default: Any = None) -> Any:
    """``record[path[0]][path[1]]…`` with keys matched case-insensitively.

    Returns ``default`` when a key is missing, a value on the way is null, or a value on
    the way is not a mapping.
    """
    current = record
    for key in path:
        if not _is_mapping(current):
            return default
        current = _lookup(current, key)
        if current is _MISSING or current is None:
            return default
    return current


def _text(value: Any, drops: DroppedValues, field: str) -> str | None:
    """Trimmed text, or None for null and blank values and for anything but a string."""
    if value is None:
        return None
    if not isinstance(value, str):
        drops.note(field)
        return None
    return value.strip() or None


def _identifier(value: Any, drops: DroppedValues, field: str) -> str | None:
    """Ids arrive as ints or strings; the document always carries strings."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value, drops, field)


def _job_id(record: UpstreamRecord, index: int, drops: DroppedValues) -> str:
    """A job's id: a number or text; anything else is rejected with the reason."""
    raw = read_key(record, "JobInformationId")
    if raw is None:
        raise TransformError(f"upstream job record {index} has no JobInformationId")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        shown = orjson.dumps(raw, default=str).decode()
        raise TransformError(
            f"upstream job record {index} has an invalid JobInformationId {shown} "
            "(expected a number or text)"
        )
    job_id = _identifier(raw, drops, "JobInformationId")
    if job_id is None:
        raise TransformError(f"upstream job record {index} has no JobInformationId")
    return job_id


def _items(value: Any) -> list[Mapping[str, Any]]:
    """The mapping entries of an upstream list; null or a non-list reads as empty."""
    if not isinstance(value, list):
        return []
    return [item for item in value if _is_mapping(item)]


def _natural_key(identifier: str) -> tuple[int, int, str]:
    # Numeric ids sort as numbers ("9" before "10"); anything else sorts as text, after them.
    if identifier.isascii() and identifier.isdigit():
        return (0, int(identifier), identifier)
    return (1, 0, identifier)


# -- dates and times --------------------------------------------------------------------------


def _parse_job_date(value: Any) -> date | None:
    """A JobDate as "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SS"; None when it is not one."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    match = _JOB_DATE.fullmatch(value.strip())
    if match is None:
        return None
    try:
        return date.fromisoformat(match["day"])
    except ValueError:
        return None


def _clock_time(value: Any, drops: DroppedValues, field: str) -> str | None:
    """Normalise "8:00", "08:00:00", "8:00 AM" or an ISO datetime to "HH:MM".

    Anything unrecognised is passed through trimmed rather than dropped: a technician would
    rather read an odd time than none.
    """
    text = _text(value, drops, field)
    if text is None:
        return None
    match = _CLOCK.fullmatch(text)
    if match is None:
        return text
    hour, minute = int(match["hour"]), int(match["minute"])
    meridiem = (match["meridiem"] or "").upper()
    if meridiem == "PM" and hour < 12:
        hour += 12
    elif meridiem == "AM" and hour == 12:
        hour = 0
    if hour > 23 or minute > 59:
        return text
    return f"{hour:02d}:{minute:02d}"


def _utc_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TransformError("generated_at must be timezone-aware (a naive time is ambiguous)")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- grouping ---------------------------------------------------------------------------------


def _require_record(record: Any, index: int) -> UpstreamRecord:
    if not isinstance(record, Mapping):
        raise TransformError(
            f"upstream job record {index} is not an object (got {type(record).__name__})"
        )
    return record


def _record_date(record: UpstreamRecord, index: int) -> date | None:
    raw = read_key(record, "JobDate")
    if raw is None:
        return None
    day = _parse_job_date(raw)
    if day is None:
        raise TransformError(f"upstream job record {index} has an unreadable JobDate: {raw!r}")
    return day


def split_by_date(
    upstream_jobs: list[Any],
) -> tuple[dict[date, list[dict[str, Any]]], list[str]]:
    """Like :func:`group_by_date`, but a record that cannot be placed on a day is reported
    (one message each) instead of failing the whole answer."""
    groups: dict[date, list[dict[str, Any]]] = {}
    unplaced: list[str] = []
    for index, raw in enumerate(upstream_jobs):
        try:
            record = _require_record(raw, index)
            day = _record_date(record, index)
            if day is None:
                raise TransformError(f"upstream job record {index} has no JobDate")
        except TransformError as error:
            unplaced.append(str(error))
            continue
        groups.setdefault(day, []).append(raw)
    return {day: groups[day] for day in sorted(groups)}, unplaced


def group_by_date(upstream_jobs: list[Any]) -> dict[date, list[dict[str, Any]]]:
    """Split a multi-day upstream answer into days, in date order, records in input order."""
    groups: dict[date, list[dict[str, Any]]] = {}
    for index, raw in enumerate(upstream_jobs):
        record = _require_record(raw, index)
        day = _record_date(record, index)
        if day is None:
            raise TransformError(f"upstream job record {index} has no JobDate")
        groups.setdefault(day, []).append(raw)
    return {day: groups[day] for day in sorted(groups)}


# -- one job ----------------------------------------------------------------------------------


def _number(record: UpstreamRecord, key: str, index: int) -> int | float | None:
    value = read_key(record, key)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return float(value)
        except ValueError:
            pass
    raise TransformError(f"upstream job record {index} has a non-numeric {key}: {value!r}")


def _customer_name(record: UpstreamRecord, drops: DroppedValues) -> str | None:
    parts = (
        _text(
            read_key(record, "CustomerInformation", "CustomerFirstName"), drops, "CustomerFirstName"
        ),
        _text(
            read_key(record, "CustomerInformation", "CustomerLastName"), drops, "CustomerLastName"
        ),
    )
    return " ".join(part for part in parts if part) or None


def _address(record: UpstreamRecord, drops: DroppedValues) -> str | None:
    home = read_key(record, "HomeInformation", default={})

    def line(key: str) -> str | None:
        return _text(read_key(home, key), drops, key)

    region_and_code = " ".join(
        part for part in (line("HomeRegion"), line("HomePostalCode")) if part
    )
    parts = (
        line("HomeAddress1"),
        line("HomeAddress2"),
        line("HomeCity"),
        region_and_code or None,
    )
    return ", ".join(part for part in parts if part) or None


def _contact_type(entry: Mapping[str, Any]) -> int | None:
    raw = read_key(entry, "ContactTypeId")
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        return None


def _contact_info(record: UpstreamRecord, drops: DroppedValues) -> dict[str, str | None]:
    found: dict[int, str] = {}
    for entry in _items(read_key(record, "ContactInfos")):
        value = _text(read_key(entry, "ContactInfo"), drops, "ContactInfo")
        contact_type = _contact_type(entry)
        if value and contact_type is not None:
            found.setdefault(contact_type, value)
    # A cell phone reaches a customer on the day; the home phone is the fallback.
    phone = found.get(CONTACT_CELL_PHONE) or found.get(CONTACT_HOME_PHONE)
    return {"phone": phone, "email": found.get(CONTACT_EMAIL)}


def _discounts(record: UpstreamRecord, index: int, drops: DroppedValues) -> list[dict[str, Any]]:
    return [
        {
            "description": _text(
                read_key(entry, "DiscountDescription"), drops, "DiscountDescription"
            ),
            "amount": _number(entry, "DiscountAmount", index),
        }
        for entry in _items(read_key(record, "Discounts"))
    ]


def _access_information(notes: Any, drops: DroppedValues) -> str | None:
    for key in _ACCESS_KEYS:
        value = _text(read_key(notes, key), drops, key)
        if value:
            return value
    return None


def _instructions(notes: Any, drops: DroppedValues) -> str | None:
    parts = (
        _text(read_key(notes, "EventInstructions"), drops, "EventInstructions"),
        _text(read_key(notes, "HomeSpecialInstructions"), drops, "HomeSpecialInstructions"),
    )
    return "\n".join(part for part in parts if part) or None


def _team_ids(record: UpstreamRecord, drops: DroppedValues) -> list[str]:
    ids: list[str] = []
    for team in _items(read_key(record, "ScheduledTeams")):
        team_id = _identifier(read_key(team, "TeamListId"), drops, "TeamListId")
        if team_id and team_id not in ids:
            ids.append(team_id)
    return ids


def _employee_schedules(
    record: UpstreamRecord, drops: DroppedValues
) -> list[dict[str, str | None]]:
    # An entry without an employee id names nobody, so it can grant no technician a view.
    schedules = []
    for entry in _items(read_key(record, "EmployeeSchedules")):
        employee_id = _identifier(
            read_key(entry, "EmployeeInformationId"), drops, "EmployeeInformationId"
        )
        if employee_id:
            schedules.append(
                {
                    "EmployeeInformationId": employee_id,
                    "FirstName": _text(read_key(entry, "FirstName"), drops, "FirstName"),
                    "LastName": _text(read_key(entry, "LastName"), drops, "LastName"),
                    "TeamListId": _identifier(read_key(entry, "TeamListId"), drops, "TeamListId"),
                }
            )
    return schedules


def _job(record: UpstreamRecord, index: int, day: date, drops: DroppedValues) -> dict[str, Any]:
    job_id = _job_id(record, index, drops)
    record_day = _record_date(record, index)
    if record_day is not None and record_day != day:
        raise TransformError(
            f"upstream job record {index} (job {job_id}) is dated {record_day}, not {day}"
        )
    notes = read_key(record, "NotesAndMemos", default={})
    job = {
        "jobId": job_id,
        "date": day.isoformat(),
        "startTime": _clock_time(
            read_key(record, "ScheduledStartTime"), drops, "ScheduledStartTime"
        ),
        "endTime": _clock_time(read_key(record, "ScheduledEndTime"), drops, "ScheduledEndTime"),
        "status": _text(read_key(record, "JobStatus"), drops, "JobStatus"),
        "serviceType": _text(
            read_key(record, "ServiceSet", "ServiceSetDescription"), drops, "ServiceSetDescription"
        ),
        "customerName": _customer_name(record, drops),
        "address": _address(record, drops),
        "teamIds": _team_ids(record, drops),
        "billRate": _number(record, "BillRate", index),
        "feeSplitRate": _number(record, "FeeSplitRate", index),
        "addOnRate": _number(record, "AddOnRate", index),
        "roomRate": _number(record, "RoomRate", index),
        "contactInfo": _contact_info(record, drops),
        "discounts": _discounts(record, index, drops),
        "internalMemo": _text(read_key(notes, "HomeInternalMemo"), drops, "HomeInternalMemo"),
        "accessInformation": _access_information(notes, drops),
        "instructions": _instructions(notes, drops),
        "employeeSchedules": _employee_schedules(record, drops),
    }
    try:
        orjson.dumps(job)
    except orjson.JSONEncodeError as error:
        # A lone UTF-16 surrogate ("\\ud800") is valid in JSON text but is no character.
        raise TransformError(
            f"upstream job record {index} (job {job_id}) has text that is not valid Unicode "
            f"({error})"
        ) from None
    return job


def duplicate_job_ids(upstream_jobs: list[Any]) -> int:
    """How many records repeat a job id already seen in the same list (stored once)."""
    seen: set[str] = set()
    repeats = 0
    for raw in upstream_jobs:
        if not _is_mapping(raw):
            continue
        job_id = _identifier(read_key(raw, "JobInformationId"), DroppedValues(), "")
        if job_id is not None and job_id in seen:
            repeats += 1
        elif job_id is not None:
            seen.add(job_id)
    return repeats


def _unique_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One job per id, in order: the upstream sometimes lists a job twice. The copy kept is
    the first in the deterministic order, so shuffled input still gives the same bytes."""
    seen: set[str] = set()
    unique = []
    for job in jobs:
        if job["jobId"] not in seen:
            seen.add(job["jobId"])
            unique.append(job)
    return unique


def _job_order(job: dict[str, Any]) -> tuple[bool, str, tuple[int, int, str], bytes]:
    # Untimed jobs go last. The encoded job breaks any remaining tie (a job id repeated
    # upstream), so shuffled input still yields one order and therefore the same bytes.
    start = job["startTime"]
    encoded = orjson.dumps(job, option=orjson.OPT_SORT_KEYS)
    return (start is None, start or "", _natural_key(job["jobId"]), encoded)


# -- the document -----------------------------------------------------------------------------


def _employees(jobs: Iterable[dict[str, Any]]) -> list[dict[str, str | None]]:
    employees: dict[str, dict[str, str | None]] = {}
    for job in jobs:
        for entry in job["employeeSchedules"]:
            employees.setdefault(
                entry["EmployeeInformationId"],
                {
                    "employeeInformationId": entry["EmployeeInformationId"],
                    "firstName": entry["FirstName"],
                    "lastName": entry["LastName"],
                },
            )
    return [employees[key] for key in sorted(employees, key=_natural_key)]


def _teams(records: Iterable[UpstreamRecord], drops: DroppedValues) -> list[dict[str, str | None]]:
    teams: dict[str, dict[str, str | None]] = {}
    # The ids were counted with the jobs; teams are read again here, so only the text is.
    ids_counted = DroppedValues()
    for record in records:
        for team in _items(read_key(record, "ScheduledTeams")):
            team_id = _identifier(read_key(team, "TeamListId"), ids_counted, "TeamListId")
            if team_id is None:
                continue
            entry = {
                "teamListId": team_id,
                "description": _text(
                    read_key(team, "TeamListDescription"), drops, "TeamListDescription"
                ),
                "color": _text(read_key(team, "Color"), drops, "Color"),
            }
            # Keep the smallest entry when jobs disagree, so input order never decides.
            if team_id not in teams or _team_rank(entry) < _team_rank(teams[team_id]):
                teams[team_id] = entry
    return [teams[key] for key in sorted(teams, key=_natural_key)]


def _team_rank(team: dict[str, str | None]) -> tuple[str, str]:
    return (team["description"] or "", team["color"] or "")


def build_document(
    upstream_jobs: list[Any],
    *,
    company_id: str,
    service_company_id: str,
    day: date,
    generated_at: datetime,
    dropped: DroppedValues | None = None,
) -> ScheduleDocument:
    """The schedule document of one company-day (docs/contracts.md, "The schedule document").

    Values of the wrong type are left out and counted in ``dropped`` when given.
    """
    drops = dropped if dropped is not None else DroppedValues()
    records = [_require_record(raw, index) for index, raw in enumerate(upstream_jobs)]
    jobs = _unique_jobs(
        sorted(
            (_job(record, index, day, drops) for index, record in enumerate(records)),
            key=_job_order,
        )
    )
    return {
        "companyId": company_id,
        "serviceCompanyId": service_company_id,
        "date": day.isoformat(),
        "generatedAt": _utc_timestamp(generated_at),
        "jobs": jobs,
        "employees": _employees(jobs),
        "teams": _teams(records, drops),
    }


def serialize_document(doc: ScheduleDocument) -> bytes:
    """Deterministic bytes: keys sorted, compact. Same document → same bytes → same checksum."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise TransformError(f"schedule document cannot be serialized: {exc}") from exc


def document_counts(doc: ScheduleDocument) -> tuple[int, int, int]:
    """(jobs, employees, teams) — the counts the ``schedule_data`` row carries."""
    return len(doc["jobs"]), len(doc["employees"]), len(doc["teams"])
