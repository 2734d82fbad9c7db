"""The privacy view as properties: for any document, toggles and viewer, nothing leaks."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdash.demo import DemoWorld
from opsdash.engine.transform import build_document
from opsdash.privacy import (
    ALWAYS_HIDDEN_JOB_FIELDS,
    CONTACT_FIELD_TOGGLES,
    DISCOUNT_FIELDS,
    DOCUMENT_HEADER_FIELDS,
    EMPLOYEE_FIELDS,
    EMPLOYEE_SCHEDULE_FIELDS,
    HIDE_DISCOUNTS,
    PRIVACY_TOGGLES,
    RATE_FIELD_TOGGLES,
    TEAM_FIELDS,
    TECHNICIAN_JOB_FIELDS,
    ForeignCompany,
    UnknownRole,
    hidden_job_fields,
    schedule_view,
    view_inputs,
)

COMPANY = str(uuid.UUID(int=1))
OTHER_COMPANY = str(uuid.UUID(int=2))
EMPLOYEE_IDS = ["101", "102", "103", "104", "105"]
TEAM_IDS = ["7", "8", "9"]
# Values that must never reach a technician carry SECRET; toggled values carry their own
# marker, so a view's bytes show which of them got through.
SECRET = "SECRET-"
PHONE = "PHONE-"
EMAIL = "EMAIL-"
DISCOUNT = "DISCOUNT-"
MARKERS = (SECRET, PHONE, EMAIL, DISCOUNT)

ALLOWED_JOB_FIELDS = TECHNICIAN_JOB_FIELDS | set(RATE_FIELD_TOGGLES) | {"contactInfo", "discounts"}

# --- strategies ------------------------------------------------------------------------

# Sampled rather than generated text: the properties depend on which fields and markers
# appear, not on the characters, and sampling keeps each example to a few hundred draws.
texts = st.sampled_from(["", "a", "Ana Silva", "12 Main St, Richmond", "08:00", "née 😀"])


def marked(marker: str) -> st.SearchStrategy[str]:
    return st.sampled_from([marker + "1", marker + "two"])


secret_texts = marked(SECRET)
maybe_text = st.none() | texts
rates = st.sampled_from([None, 0, 95, 12.5, 140.25])
# A toggle may be missing, a boolean, or something odd a hand-edited override could hold.
toggle_values = st.sampled_from([True, False, None, "true", 1, 0, "false"])
toggles = st.dictionaries(
    st.sampled_from([*PRIVACY_TOGGLES, "TechDashboard_SomethingNew"]), toggle_values
)
# Fields nobody has allowed yet, as the upstream or the transform might add them.
unknown_fields = st.dictionaries(
    st.sampled_from(["customerSsn", "gateCode", "notes", "billRateDetail"]),
    secret_texts | st.dictionaries(texts, secret_texts, max_size=2),
    max_size=2,
)


@st.composite
def employee_schedules(draw: st.DrawFn) -> list[dict[str, Any]]:
    people = draw(st.lists(st.sampled_from(EMPLOYEE_IDS), max_size=3, unique=True))
    return [
        {
            "EmployeeInformationId": person,
            "FirstName": draw(maybe_text),
            "LastName": draw(maybe_text),
            "TeamListId": draw(st.sampled_from(TEAM_IDS)),
            **draw(st.dictionaries(st.just("HomePhone"), secret_texts, max_size=1)),
        }
        for person in people
    ]


@st.composite
def jobs(draw: st.DrawFn, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = {
        "jobId": str(job_id),
        "date": "2026-12-01",
        "startTime": draw(maybe_text),
        "endTime": draw(maybe_text),
        "status": draw(maybe_text),
        "serviceType": draw(maybe_text),
        "customerName": draw(maybe_text),
        "address": draw(maybe_text),
        "teamIds": draw(st.lists(st.sampled_from(TEAM_IDS), unique=True)),
        "instructions": draw(maybe_text),
        "employeeSchedules": draw(employee_schedules()),
        "billRate": draw(rates),
        "feeSplitRate": draw(rates),
        "addOnRate": draw(rates),
        "roomRate": draw(rates),
        "contactInfo": {
            "phone": draw(marked(PHONE)),
            "email": draw(marked(EMAIL)),
            **draw(st.dictionaries(st.just("fax"), secret_texts, max_size=1)),
        },
        "discounts": [
            {"description": draw(marked(DISCOUNT)), "amount": draw(rates), "code": SECRET}
            for _ in range(draw(st.integers(0, 2)))
        ],
        "internalMemo": draw(secret_texts),
        "accessInformation": draw(secret_texts),
    }
    job.update(draw(unknown_fields))
    # Any field may be missing in an odd document.
    for field in draw(st.sets(st.sampled_from(sorted(job)), max_size=3)):
        del job[field]
    return job


@st.composite
def documents(draw: st.DrawFn, company_id: str = COMPANY, max_jobs: int = 6) -> dict[str, Any]:
    count = draw(st.integers(0, max_jobs))
    return {
        "companyId": company_id,
        "serviceCompanyId": "1001",
        "date": "2026-12-01",
        "generatedAt": "2026-11-30T12:00:00.000Z",
        "jobs": [draw(jobs(job_id)) for job_id in range(count)],
        "employees": [
            {
                "employeeInformationId": person,
                "firstName": draw(texts),
                "lastName": draw(texts),
                "salary": SECRET + "salary",
            }
            for person in EMPLOYEE_IDS
        ],
        "teams": [
            {"teamListId": team, "description": draw(texts), "color": "#fff", "lead": SECRET}
            for team in TEAM_IDS
        ],
        "internalNotes": SECRET + "document-level",
    }


# Each property runs on fewer examples than hypothesis's default 100: the document strategy
# is large, and 40 examples per property keep the whole module to a few seconds.
property_test = settings(max_examples=40, deadline=None)

technician_ids = st.none() | st.just("") | st.sampled_from([*EMPLOYEE_IDS, "999"])


def assigned(job: dict[str, Any], employee_id: str | None) -> bool:
    return bool(employee_id) and any(
        entry.get("EmployeeInformationId") == employee_id
        for entry in job.get("employeeSchedules", [])
    )


def technician_view(document: dict[str, Any], employee_id: str | None, flags: Any) -> Any:
    return schedule_view(
        document, role="technician", employee_id=employee_id, toggles=flags, company_id=COMPANY
    )


# --- technicians -----------------------------------------------------------------------


@property_test
@given(documents(), technician_ids, toggles)
def test_technician_sees_exactly_their_own_jobs(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    view = technician_view(document, employee_id, flags)
    expected = [job.get("jobId") for job in document["jobs"] if assigned(job, employee_id)]
    assert [job.get("jobId") for job in view["jobs"]] == expected
    if not employee_id:
        assert view["jobs"] == []


@property_test
@given(documents(), technician_ids, toggles)
def test_technician_view_holds_only_allow_listed_fields(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    view = technician_view(document, employee_id, flags)
    assert set(view) <= {*DOCUMENT_HEADER_FIELDS, "jobs", "employees", "teams"}
    for job in view["jobs"]:
        assert set(job) <= ALLOWED_JOB_FIELDS
        assert set(job.get("contactInfo", {})) <= set(CONTACT_FIELD_TOGGLES)
        for discount in job.get("discounts", []):
            assert set(discount) <= set(DISCOUNT_FIELDS)
        for entry in job.get("employeeSchedules", []):
            assert set(entry) <= set(EMPLOYEE_SCHEDULE_FIELDS)
    for employee in view["employees"]:
        assert set(employee) <= set(EMPLOYEE_FIELDS)
    for team in view["teams"]:
        assert set(team) <= set(TEAM_FIELDS)


@property_test
@given(documents(), technician_ids, toggles)
def test_toggled_off_and_always_hidden_fields_are_absent(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    view = technician_view(document, employee_id, flags)
    for job in view["jobs"]:
        assert not ALWAYS_HIDDEN_JOB_FIELDS & set(job)
        for field, toggle in RATE_FIELD_TOGGLES.items():
            if flags.get(toggle) is not True:
                assert field not in job
        contact = job.get("contactInfo", {})
        for field, toggle in CONTACT_FIELD_TOGGLES.items():
            if flags.get(toggle) is not True:
                assert field not in contact
        if not any(flags.get(toggle) is True for toggle in CONTACT_FIELD_TOGGLES.values()):
            assert "contactInfo" not in job
        if flags.get(HIDE_DISCOUNTS) is not False:
            assert "discounts" not in job


@property_test
@given(documents(), technician_ids, toggles)
def test_no_hidden_value_reaches_the_bytes(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    # Secrets sit in always-hidden fields, unknown fields and nested extras at every level.
    body = orjson.dumps(technician_view(document, employee_id, flags)).decode()
    assert SECRET not in body
    if flags.get(CONTACT_FIELD_TOGGLES["phone"]) is not True:
        assert PHONE not in body
    if flags.get(CONTACT_FIELD_TOGGLES["email"]) is not True:
        assert EMAIL not in body
    if flags.get(HIDE_DISCOUNTS) is not False:
        assert DISCOUNT not in body


@property_test
@given(documents(), technician_ids, toggles)
def test_technician_sees_only_the_people_and_teams_on_their_jobs(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    view = technician_view(document, employee_id, flags)
    people = {e["EmployeeInformationId"] for job in view["jobs"] for e in job["employeeSchedules"]}
    teams = {team for job in view["jobs"] for team in job.get("teamIds", [])}
    teams |= {e["TeamListId"] for job in view["jobs"] for e in job["employeeSchedules"]}
    assert {employee["employeeInformationId"] for employee in view["employees"]} == people
    assert {team["teamListId"] for team in view["teams"]} == teams


@property_test
@given(documents(), technician_ids, toggles)
def test_hidden_fields_name_exactly_what_the_view_leaves_out(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    view = technician_view(document, employee_id, flags)
    originals = [job for job in document["jobs"] if assigned(job, employee_id)]
    for shown, original in zip(view["jobs"], originals, strict=True):
        hidden = hidden_job_fields(original, role="technician", toggles=flags)
        top_level_hidden = {name for name in hidden if "." not in name}
        assert set(shown) | top_level_hidden == set(original)
        assert not set(shown) & top_level_hidden
        for name in hidden:
            if name.startswith("contactInfo."):
                assert name.split(".", 1)[1] not in shown["contactInfo"]


@property_test
@given(documents(), technician_ids, toggles, toggles)
def test_views_that_differ_have_different_cache_keys(
    document: dict[str, Any],
    employee_id: str | None,
    first: dict[str, Any],
    second: dict[str, Any],
) -> None:
    # The read API caches rendered views by view_inputs: a collision would serve one
    # technician's view (or toggles) to another.
    if technician_view(document, employee_id, first) != technician_view(
        document, employee_id, second
    ):
        assert view_inputs("technician", employee_id, first) != view_inputs(
            "technician", employee_id, second
        )


@property_test
@given(documents(), technician_ids, toggles)
def test_the_document_is_not_changed(
    document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    before = copy.deepcopy(document)
    technician_view(document, employee_id, flags)
    schedule_view(document, role="admin", employee_id=None, toggles=flags, company_id=COMPANY)
    assert document == before


# --- admin and office, other companies, other roles -----------------------------------


@pytest.mark.parametrize("role", ["admin", "office"])
@property_test
@given(document=documents(), flags=toggles)
def test_admin_and_office_see_their_whole_company(
    role: str, document: dict[str, Any], flags: dict[str, Any]
) -> None:
    view = schedule_view(document, role=role, employee_id="101", toggles=flags, company_id=COMPANY)
    assert view == document
    for job in document["jobs"]:
        assert hidden_job_fields(job, role=role, toggles=flags) == []


@pytest.mark.parametrize("role", ["admin", "office", "technician"])
@property_test
@given(
    document=documents(company_id=OTHER_COMPANY, max_jobs=2),
    employee_id=technician_ids,
    flags=toggles,
)
def test_nobody_sees_another_company(
    role: str, document: dict[str, Any], employee_id: str | None, flags: dict[str, Any]
) -> None:
    with pytest.raises(ForeignCompany):
        schedule_view(
            document, role=role, employee_id=employee_id, toggles=flags, company_id=COMPANY
        )


@property_test
@given(
    document=documents(max_jobs=2),
    role=st.text(max_size=12).filter(lambda text: text not in {"admin", "office", "technician"}),
)
def test_unknown_roles_are_refused(document: dict[str, Any], role: str) -> None:
    with pytest.raises(UnknownRole):
        schedule_view(document, role=role, employee_id="101", toggles={}, company_id=COMPANY)
    with pytest.raises(PermissionError):
        view_inputs(role, "101", {})


# --- real documents from the transform ------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(company_index=st.integers(0, 2), day=st.dates(date(2026, 1, 1), date(2027, 12, 31)))
def test_every_technician_of_a_real_document_sees_their_jobs(company_index: int, day: date) -> None:
    world = DemoWorld(companies=3)
    company = world.companies[company_index]
    service_id = str(company.service_company_id)
    document = build_document(
        world.jobs_for_day(service_id, day),
        company_id=COMPANY,
        service_company_id=service_id,
        day=day,
        generated_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    flags = {**{toggle: False for toggle in PRIVACY_TOGGLES}, HIDE_DISCOUNTS: True}
    covered: set[str] = set()
    for employee in document["employees"]:
        employee_id = employee["employeeInformationId"]
        view = technician_view(document, employee_id, flags)
        assert view["jobs"], "everyone listed in a document works at least one job"
        for job in view["jobs"]:
            assert set(job) == TECHNICIAN_JOB_FIELDS
            assert employee_id in {e["EmployeeInformationId"] for e in job["employeeSchedules"]}
        covered |= {job["jobId"] for job in view["jobs"]}
    staffed = {job["jobId"] for job in document["jobs"] if job["employeeSchedules"]}
    assert covered == staffed
