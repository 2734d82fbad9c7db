"""The schedule view a user may see: one pure function for the read API and the console preview.

Rules (docs/contracts.md, "Privacy"):

- ``admin`` and ``office`` see their own company's whole document.
- A ``technician`` sees only the jobs whose ``employeeSchedules`` name their
  ``EmployeeInformationId``; a technician without one sees no jobs. Their view is
  *built* from allow-lists (job fields, contact fields, discount fields, employee
  and team fields), so a field the upstream or the transform adds tomorrow stays
  out of it until someone allows it here.
- The company's effective toggles (:func:`effective_toggles`: the upstream's with
  the operator's overrides on top) decide the optional fields, read by one rule,
  :func:`toggle_reading`. A ``Display…`` toggle is on only when it is the boolean
  ``True``; ``TechDashboard_HideDiscounts`` shows the discounts only when it is the
  boolean ``False``. A missing, ``null`` or odd value hides the field (fail closed).
- ``internalMemo`` and ``accessInformation`` are never in a technician's view.
- A technician's ``employees`` and ``teams`` lists hold only the people and teams
  on the jobs they can see, so the view does not list the company's whole staff.
- Any other role is refused, and nobody is shown a document of another company.

The view shares unchanged values (strings, lists it copies through) with the
input document; neither is mutated.

This module is imported by the engine, the read API and the console alike, so it
imports nothing beyond the standard library (a test keeps it that way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """The roles of ``user_profiles.role`` (the tables import it from here)."""

    ADMIN = "admin"
    OFFICE = "office"
    TECHNICIAN = "technician"


DISPLAY_BILL_RATE = "TechDashboard_DisplayBillRate"
DISPLAY_FEE_SPLIT_RATE = "TechDashboard_DisplayFeeSplitRate"
DISPLAY_ADD_ON_RATE = "TechDashboard_DisplayAddOnRate"
DISPLAY_ROOM_RATE = "TechDashboard_DisplayRoomRate"
DISPLAY_CUSTOMER_PHONE_NUMBERS = "TechDashboard_DisplayCustomerPhoneNumbers"
DISPLAY_CUSTOMER_EMAILS = "TechDashboard_DisplayCustomerEmails"
HIDE_DISCOUNTS = "TechDashboard_HideDiscounts"

PRIVACY_TOGGLES: tuple[str, ...] = (
    DISPLAY_BILL_RATE,
    DISPLAY_FEE_SPLIT_RATE,
    DISPLAY_ADD_ON_RATE,
    DISPLAY_ROOM_RATE,
    DISPLAY_CUSTOMER_PHONE_NUMBERS,
    DISPLAY_CUSTOMER_EMAILS,
    HIDE_DISCOUNTS,
)

FULL_VIEW_ROLES = frozenset({Role.ADMIN, Role.OFFICE})

# Top-level document fields copied as they are into a technician's view; the view's
# ``jobs``, ``employees`` and ``teams`` are built from the allow-lists below.
DOCUMENT_HEADER_FIELDS = ("companyId", "serviceCompanyId", "date", "generatedAt")
# Job fields every technician sees (the nested ones are themselves allow-listed below).
TECHNICIAN_JOB_FIELDS = frozenset(
    {
        "jobId",
        "date",
        "startTime",
        "endTime",
        "status",
        "serviceType",
        "customerName",
        "address",
        "teamIds",
        "instructions",
        "employeeSchedules",
    }
)
# Job fields a technician sees only when the named toggle is on.
RATE_FIELD_TOGGLES: Mapping[str, str] = {
    "billRate": DISPLAY_BILL_RATE,
    "feeSplitRate": DISPLAY_FEE_SPLIT_RATE,
    "addOnRate": DISPLAY_ADD_ON_RATE,
    "roomRate": DISPLAY_ROOM_RATE,
}
CONTACT_FIELD_TOGGLES: Mapping[str, str] = {
    "phone": DISPLAY_CUSTOMER_PHONE_NUMBERS,
    "email": DISPLAY_CUSTOMER_EMAILS,
}
# Never shown to a technician, whatever the toggles say.
ALWAYS_HIDDEN_JOB_FIELDS = frozenset({"internalMemo", "accessInformation"})

EMPLOYEE_SCHEDULE_FIELDS = ("EmployeeInformationId", "FirstName", "LastName", "TeamListId")
DISCOUNT_FIELDS = ("description", "amount")
EMPLOYEE_FIELDS = ("employeeInformationId", "firstName", "lastName")
TEAM_FIELDS = ("teamListId", "description", "color")


class ViewRefused(PermissionError):
    """The viewer may not see this document at all."""


class UnknownRole(ViewRefused):
    def __init__(self, role: object) -> None:
        super().__init__(f"role {role!r} may not read schedules")


class ForeignCompany(ViewRefused):
    def __init__(self) -> None:
        super().__init__("this schedule belongs to another company")


def toggle_is_on(toggles: Mapping[str, Any], name: str) -> bool:
    """Only the boolean ``True`` is on: a missing or odd value must never reveal a field."""
    return toggles.get(name) is True


def toggle_reading(toggles: Mapping[str, Any], name: str) -> bool:
    """Whether the privacy view treats toggle ``name`` as on, missing values included.

    The one reading rule: for the display toggles a missing value reads as off; for
    the one hide toggle (discounts) as on, since both fail closed. The view, the
    console's toggle editor and :func:`overrides_for` all read toggles through it.
    """
    if name == HIDE_DISCOUNTS:
        return toggles.get(name) is not False
    return toggle_is_on(toggles, name)


def effective_toggles(upstream: Any, overrides: Any) -> dict[str, Any]:
    """The upstream's toggles with the operator's overrides on top.

    The one home of this rule: the read API (through ``Company``) and the console
    (through ``CompanyToggles``) both call it. Anything that is not a mapping (a
    column holding ``null`` or a stray list) counts as no toggles at all.
    """
    layers = (layer for layer in (upstream, overrides) if isinstance(layer, Mapping))
    return {str(name): value for layer in layers for name, value in layer.items()}


def overrides_for(upstream: Mapping[str, Any], wanted: Mapping[str, bool]) -> dict[str, bool]:
    """The fewest overrides that make every toggle in ``wanted`` read as wanted.

    A toggle whose upstream value already reads as wanted (:func:`toggle_reading`,
    gaps included) needs no override and keeps following the upstream; so wanting
    exactly what the upstream gives yields ``{}``, "follow the upstream". The
    stored value is the wanted reading itself, which is how a boolean reads.
    """
    return {
        str(name): bool(value)
        for name, value in wanted.items()
        if toggle_reading(upstream, name) is not bool(value)
    }


def upstream_readings(upstream: Mapping[str, Any], names: Iterable[str]) -> dict[str, bool]:
    """How each named toggle reads with no override: what "follow the upstream" shows."""
    return {name: toggle_reading(upstream, name) for name in names}


def _shows_discounts(toggles: Mapping[str, Any]) -> bool:
    return not toggle_reading(toggles, HIDE_DISCOUNTS)


def parse_role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UnknownRole(role) from None


@dataclass(frozen=True)
class TechnicianFields:
    """Which optional fields a company's toggles let its technicians see."""

    job_fields: frozenset[str]
    contact_fields: tuple[str, ...]

    @classmethod
    def from_toggles(cls, toggles: Mapping[str, Any]) -> TechnicianFields:
        job_fields = set(TECHNICIAN_JOB_FIELDS)
        job_fields.update(
            field for field, toggle in RATE_FIELD_TOGGLES.items() if toggle_is_on(toggles, toggle)
        )
        contact_fields = tuple(
            field
            for field, toggle in CONTACT_FIELD_TOGGLES.items()
            if toggle_is_on(toggles, toggle)
        )
        if contact_fields:
            job_fields.add("contactInfo")
        if _shows_discounts(toggles):
            job_fields.add("discounts")
        return cls(frozenset(job_fields), contact_fields)


def schedule_view(
    document: Mapping[str, Any],
    *,
    role: str | Role,
    employee_id: str | None,
    toggles: Mapping[str, Any],
    company_id: str,
) -> dict[str, Any]:
    """The part of ``document`` that a user with ``role`` in company ``company_id`` may see.

    Raises :class:`UnknownRole` for a role other than admin, office or technician,
    and :class:`ForeignCompany` when the document is not ``company_id``'s.
    """
    viewer_role = parse_role(role)
    if str(document.get("companyId")) != str(company_id):
        raise ForeignCompany()
    if viewer_role in FULL_VIEW_ROLES:
        return dict(document)
    return _technician_view(document, employee_id or None, TechnicianFields.from_toggles(toggles))


def _technician_view(
    document: Mapping[str, Any], employee_id: str | None, fields: TechnicianFields
) -> dict[str, Any]:
    jobs = [
        _technician_job(job, fields)
        for job in _mappings(document.get("jobs"))
        if employee_id is not None and _assigned_to(job, employee_id)
    ]
    schedules = [entry for job in jobs for entry in job.get("employeeSchedules", ())]
    employee_ids = {entry.get("EmployeeInformationId") for entry in schedules}
    team_ids = {team for job in jobs for team in job.get("teamIds", ())}
    team_ids.update(entry.get("TeamListId") for entry in schedules)
    employee_ids.discard(None)
    team_ids.discard(None)
    view: dict[str, Any] = {
        field: document[field]
        for field in DOCUMENT_HEADER_FIELDS
        if field in document and _is_scalar(document[field])
    }
    view["jobs"] = jobs
    view["employees"] = [
        _pick(employee, EMPLOYEE_FIELDS)
        for employee in _mappings(document.get("employees"))
        if _text_id(employee.get("employeeInformationId")) in employee_ids
    ]
    view["teams"] = [
        _pick(team, TEAM_FIELDS)
        for team in _mappings(document.get("teams"))
        if _text_id(team.get("teamListId")) in team_ids
    ]
    return view


def _assigned_to(job: Mapping[str, Any], employee_id: str) -> bool:
    return any(
        _text_id(entry.get("EmployeeInformationId")) == employee_id
        for entry in _mappings(job.get("employeeSchedules"))
    )


def _technician_job(job: Mapping[str, Any], fields: TechnicianFields) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for field, value in job.items():
        if field not in fields.job_fields:
            continue
        if field == "contactInfo":
            if isinstance(value, Mapping):
                view[field] = _pick(value, fields.contact_fields)
        elif field == "discounts":
            view[field] = [_pick(discount, DISCOUNT_FIELDS) for discount in _mappings(value)]
        elif field == "employeeSchedules":
            view[field] = [_employee_schedule(entry) for entry in _mappings(value)]
        elif field == "teamIds":
            view[field] = [_text_id(team) for team in _list(value) if _is_id(team)]
        elif _is_scalar(value):
            view[field] = value
        # A structured value where a scalar belongs is dropped: it could hide anything.
    return view


def _employee_schedule(entry: Mapping[str, Any]) -> dict[str, Any]:
    picked = _pick(entry, EMPLOYEE_SCHEDULE_FIELDS)
    for key in ("EmployeeInformationId", "TeamListId"):
        if key in picked:
            picked[key] = _text_id(picked[key])
    return picked


def _pick(mapping: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    return {key: mapping[key] for key in allowed if key in mapping and _is_scalar(mapping[key])}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _list(value: Any) -> list[Any] | tuple[Any, ...]:
    return value if isinstance(value, list | tuple) else []


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _text_id(value: Any) -> str | None:
    """Ids compare as text: the document carries strings, a profile may hold either."""
    if value is None or isinstance(value, bool):
        return None
    return str(value)


def hidden_job_fields(
    job: Mapping[str, Any], *, role: str | Role, toggles: Mapping[str, Any]
) -> list[str]:
    """The fields of ``job`` that ``role``'s view leaves out, for the console's "hidden" markers.

    Nested contact fields are named with a dot (``contactInfo.email``). Admin and
    office see everything, so the list is empty for them.
    """
    if parse_role(role) in FULL_VIEW_ROLES:
        return []
    fields = TechnicianFields.from_toggles(toggles)
    hidden = [field for field in job if field not in fields.job_fields]
    contact = job.get("contactInfo")
    if "contactInfo" in fields.job_fields and isinstance(contact, Mapping):
        hidden += [f"contactInfo.{key}" for key in contact if key not in fields.contact_fields]
    return hidden


def view_inputs(
    role: str | Role, employee_id: str | None, toggles: Mapping[str, Any]
) -> tuple[str, ...]:
    """Everything besides the document that shapes the view, reduced to what matters.

    Two viewers with equal ``view_inputs`` get the same view of the same
    document, so this is the cache key (and part of the ETag) for rendered views.
    """
    viewer_role = parse_role(role)
    if viewer_role in FULL_VIEW_ROLES:
        return (str(viewer_role),)
    fields = TechnicianFields.from_toggles(toggles)
    optional_fields = ",".join(sorted(fields.job_fields - TECHNICIAN_JOB_FIELDS))
    return (str(viewer_role), employee_id or "", optional_fields, ",".join(fields.contact_fields))
