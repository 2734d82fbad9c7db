"""Privacy properties at the upstream's edge: nested values where text belongs, odd role shapes.

An object inside ``EventInstructions`` once reached a technician as the text
``"{'HomeAccessInformation': '…'}"``, and ``Roles`` sent as an object made its
user an admin. Here hypothesis puts such values anywhere the transform reads
text, and sends every shape of ``Roles``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdash.engine.handlers import map_role
from opsdash.engine.models import Role
from opsdash.engine.transform import DroppedValues, build_document, serialize_document
from opsdash.privacy import PRIVACY_TOGGLES, schedule_view

COMPANY = str(uuid.UUID(int=1))
DAY = date(2026, 12, 1)
SECRET = "SECRET-"
EMPLOYEE = "501"

# Where the transform reads text (or an id), each read exactly once per record.
TEXT_PATHS: tuple[tuple[str, ...], ...] = (
    ("JobStatus",),
    ("ScheduledStartTime",),
    ("ScheduledEndTime",),
    ("ServiceSet", "ServiceSetDescription"),
    ("CustomerInformation", "CustomerFirstName"),
    ("CustomerInformation", "CustomerLastName"),
    ("HomeInformation", "HomeAddress1"),
    ("HomeInformation", "HomeCity"),
    ("HomeInformation", "HomePostalCode"),
    ("NotesAndMemos", "EventInstructions"),
    ("NotesAndMemos", "HomeSpecialInstructions"),
    ("NotesAndMemos", "HomeInternalMemo"),
    ("NotesAndMemos", "HomeAccessInformation"),
)
# Inside list entries: (list key, entry key).
ENTRY_PATHS = (
    ("ContactInfos", "ContactInfo"),
    ("Discounts", "DiscountDescription"),
    ("EmployeeSchedules", "FirstName"),
    ("EmployeeSchedules", "LastName"),
    ("ScheduledTeams", "TeamListDescription"),
)

json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["x", SECRET])
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# What the upstream might put where text belongs: never a plain string. Each carries SECRET,
# so any trace of it in a document means it was turned into text.
nested_values = st.one_of(
    st.dictionaries(
        st.sampled_from(["HomeAccessInformation", "Code", "a"]),
        st.just(SECRET + "gate"),
        min_size=1,
        max_size=2,
    ),
    st.lists(st.just(SECRET + "list"), min_size=1, max_size=2),
    st.fixed_dictionaries({"nested": st.fixed_dictionaries({"deeper": st.just(SECRET + "deep")})}),
)


def base_record(job_id: int) -> dict[str, Any]:
    return {
        "JobInformationId": job_id,
        "JobDate": DAY.isoformat(),
        "JobStatus": "Scheduled",
        "ScheduledStartTime": "09:00",
        "ScheduledEndTime": "11:00",
        "BillRate": 120,
        "ServiceSet": {"ServiceSetDescription": "Deep clean"},
        "CustomerInformation": {"CustomerFirstName": "Ana", "CustomerLastName": "Silva"},
        "HomeInformation": {
            "HomeAddress1": "1 Main St",
            "HomeCity": "Richmond",
            "HomePostalCode": "23220",
        },
        "NotesAndMemos": {
            "EventInstructions": "Use the side door",
            "HomeSpecialInstructions": "Cat inside",
            "HomeInternalMemo": "memo",
            "HomeAccessInformation": "code 1234",
        },
        "ContactInfos": [
            {"ContactTypeId": 2, "ContactInfo": "555-0100"},
            {"ContactTypeId": 3, "ContactInfo": "a@example.com"},
        ],
        "Discounts": [{"DiscountDescription": "Loyalty", "DiscountAmount": 10}],
        "EmployeeSchedules": [
            {
                "EmployeeInformationId": EMPLOYEE,
                "FirstName": "Bo",
                "LastName": "Li",
                "TeamListId": 7,
            }
        ],
        "ScheduledTeams": [{"TeamListId": 7, "TeamListDescription": "Team 7", "Color": "#fff"}],
    }


@st.composite
def records_with_nested_text(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int]:
    """Upstream records with non-string values at some text positions, and how many."""
    records = []
    injected = 0
    for job_id in range(draw(st.integers(1, 3))):
        record = base_record(job_id + 1)
        for path in draw(st.sets(st.sampled_from(TEXT_PATHS), max_size=5)):
            *parents, key = path
            holder = record
            for parent in parents:
                holder = holder[parent]
            holder[key] = draw(nested_values)
            injected += 1
        for list_key, entry_key in draw(st.sets(st.sampled_from(ENTRY_PATHS), max_size=3)):
            record[list_key][0][entry_key] = draw(nested_values)
            injected += 1
        records.append(record)
    return records, injected


ALL_ON = {**{toggle: True for toggle in PRIVACY_TOGGLES}, "TechDashboard_HideDiscounts": False}


@settings(max_examples=60, deadline=None)
@given(records_with_nested_text())
def test_nested_values_never_become_text_and_are_counted(
    drawn: tuple[list[dict[str, Any]], int],
) -> None:
    records, injected = drawn
    dropped = DroppedValues()
    document = build_document(
        records,
        company_id=COMPANY,
        service_company_id="1001",
        day=DAY,
        generated_at=datetime(2026, 11, 30, tzinfo=UTC),
        dropped=dropped,
    )
    # Not in the stored document at all (admins get it whole), let alone a technician's view.
    assert SECRET not in serialize_document(document).decode()
    view = schedule_view(
        document, role="technician", employee_id=EMPLOYEE, toggles=ALL_ON, company_id=COMPANY
    )
    assert len(view["jobs"]) == len(records)
    assert SECRET not in orjson.dumps(view).decode()
    assert dropped.total == injected
    for job in document["jobs"]:
        for field in ("status", "serviceType", "customerName", "address", "instructions"):
            assert job[field] is None or isinstance(job[field], str)


def test_an_object_in_event_instructions_is_dropped_and_named() -> None:
    record = base_record(1)
    record["NotesAndMemos"]["EventInstructions"] = {"HomeAccessInformation": "gate 4321"}
    dropped = DroppedValues()
    document = build_document(
        [record],
        company_id=COMPANY,
        service_company_id="1001",
        day=DAY,
        generated_at=datetime(2026, 11, 30, tzinfo=UTC),
        dropped=dropped,
    )
    assert document["jobs"][0]["instructions"] == "Cat inside"
    assert dropped.by_field == {"EventInstructions": 1}
    assert "4321" not in serialize_document(document).decode()


# --- Roles: only a list of strings is read ----------------------------------------------

role_names = st.sampled_from(["Administrator", "Office", "Employee", "administrator ", "Janitor"])


@settings(max_examples=200, deadline=None)
@given(json_values | st.dictionaries(role_names, json_values, max_size=3) | st.text(max_size=20))
def test_roles_that_are_not_a_list_of_strings_grant_nothing(roles: Any) -> None:
    if isinstance(roles, list) and all(isinstance(role, str) for role in roles):
        return  # the one readable shape, covered below
    assert map_role(roles) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(role_names | st.text(max_size=8), max_size=4))
def test_a_list_of_strings_maps_to_its_highest_known_role(roles: list[str]) -> None:
    names = {role.strip().lower() for role in roles}
    expected = (
        Role.ADMIN
        if "administrator" in names
        else Role.OFFICE
        if "office" in names
        else Role.TECHNICIAN
        if "employee" in names
        else None
    )
    assert map_role(roles) is expected


def test_roles_as_an_object_is_no_role() -> None:
    assert map_role({"Administrator": False, "Employee": True}) is None
    assert map_role("Administrator") is None
    assert map_role(["Administrator", {"x": 1}]) is None
    assert map_role(["Employee", "Administrator"]) is Role.ADMIN
