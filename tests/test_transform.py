"""Upstream records → schedule document: field mapping, tolerance, errors, determinism."""

from __future__ import annotations

import copy
import statistics
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdash.demo.data import DemoWorld
from opsdash.engine.transform import (
    DroppedValues,
    TransformError,
    build_document,
    document_counts,
    duplicate_job_ids,
    group_by_date,
    read_key,
    serialize_document,
    split_by_date,
)

DAY = date(2025, 3, 14)
GENERATED_AT = datetime(2025, 3, 13, 22, 5, 9, 123456, tzinfo=UTC)


def realistic_record() -> dict[str, Any]:
    """One job as MaidCentral sends it, down to the casing."""
    return {
        "JobInformationId": 48213377,
        "JobDate": "2025-03-14T00:00:00",
        "JobStatus": "Scheduled",
        "ScheduledStartTime": "09:30",
        "ScheduledEndTime": "12:00",
        "AllowedTime": 2.5,
        "BillRate": 165.5,
        "FeeSplitRate": 45.0,
        "AddOnRate": 25.0,
        "RoomRate": 0.0,
        "Discounts": [
            {"DiscountDescription": "Recurring client discount", "DiscountAmount": 16.55},
        ],
        "ScheduledTeams": [
            {"TeamListId": 100102, "TeamListDescription": "Team Green", "Color": "#43A047"},
        ],
        "EmployeeSchedules": [
            {"EmployeeInformationId": "1001004", "FirstName": "Mia", "LastName": "Lee",
             "TeamListId": 100102, "TeamPosition": 1},
            {"EmployeeInformationId": 1001005, "FirstName": "Owen", "LastName": "King",
             "TeamListId": 100102, "TeamPosition": 2},
        ],
        "CustomerInformation": {"CustomerFirstName": "Grace", "CustomerLastName": "O'Brien"},
        "HomeInformation": {
            "HomeAddress1": "41 Maple Avenue",
            "HomeAddress2": "Unit 3",
            "HomeCity": "Atlanta",
            "HomeRegion": "GA",
            "HomePostalCode": "30307",
            "HomeSquareFootage": 2100,
        },
        "NotesAndMemos": {
            "EventInstructions": "Clean inside the oven.",
            "HomeSpecialInstructions": "Two dogs - keep the gate closed.",
            "HomeAccessInformation": "Lockbox on the back door, code 4821.",
            "HomeInternalMemo": "Pays by card on file.",
        },
        "ContactInfos": [
            {"ContactTypeId": 1, "ContactInfo": "(404) 555-0101"},
            {"ContactTypeId": 3, "ContactInfo": "grace.obrien@example.com"},
            {"ContactTypeId": 2, "ContactInfo": "(404) 555-0177"},
        ],
        "ServiceSet": {"ServiceSetDescription": "Deep Clean"},
    }  # fmt: skip


def build(records: list[Any], day: date = DAY) -> dict[str, Any]:
    return build_document(
        records,
        company_id="5b7c2f4e-0000-4000-8000-000000000001",
        service_company_id="1001",
        day=day,
        generated_at=GENERATED_AT,
    )


def only_job(record: dict[str, Any]) -> dict[str, Any]:
    (job,) = build([record])["jobs"]
    return job


# -- field mapping ------------------------------------------------------------------------------


def test_realistic_record_maps_field_by_field() -> None:
    assert only_job(realistic_record()) == {
        "jobId": "48213377",
        "date": "2025-03-14",
        "startTime": "09:30",
        "endTime": "12:00",
        "status": "Scheduled",
        "serviceType": "Deep Clean",
        "customerName": "Grace O'Brien",
        "address": "41 Maple Avenue, Unit 3, Atlanta, GA 30307",
        "teamIds": ["100102"],
        "billRate": 165.5,
        "feeSplitRate": 45.0,
        "addOnRate": 25.0,
        "roomRate": 0.0,
        "contactInfo": {"phone": "(404) 555-0177", "email": "grace.obrien@example.com"},
        "discounts": [{"description": "Recurring client discount", "amount": 16.55}],
        "internalMemo": "Pays by card on file.",
        "accessInformation": "Lockbox on the back door, code 4821.",
        "instructions": "Clean inside the oven.\nTwo dogs - keep the gate closed.",
        "employeeSchedules": [
            {"EmployeeInformationId": "1001004", "FirstName": "Mia", "LastName": "Lee",
             "TeamListId": "100102"},
            {"EmployeeInformationId": "1001005", "FirstName": "Owen", "LastName": "King",
             "TeamListId": "100102"},
        ],
    }  # fmt: skip


def test_document_envelope_employees_and_teams() -> None:
    doc = build([realistic_record()])
    assert doc["companyId"] == "5b7c2f4e-0000-4000-8000-000000000001"
    assert doc["serviceCompanyId"] == "1001"
    assert doc["date"] == "2025-03-14"
    assert doc["generatedAt"] == "2025-03-13T22:05:09.123Z"
    assert doc["employees"] == [
        {"employeeInformationId": "1001004", "firstName": "Mia", "lastName": "Lee"},
        {"employeeInformationId": "1001005", "firstName": "Owen", "lastName": "King"},
    ]
    assert doc["teams"] == [
        {"teamListId": "100102", "description": "Team Green", "color": "#43A047"}
    ]
    assert document_counts(doc) == (1, 2, 1)


def test_generated_at_is_converted_to_utc_with_milliseconds() -> None:
    auckland_morning = datetime(2025, 3, 14, 11, 0, 0, 500, tzinfo=timezone(timedelta(hours=13)))
    doc = build_document(
        [], company_id="c", service_company_id="1", day=DAY, generated_at=auckland_morning
    )
    assert doc["generatedAt"] == "2025-03-13T22:00:00.000Z"


def test_naive_generated_at_is_refused() -> None:
    with pytest.raises(TransformError, match="timezone-aware"):
        build_document([], company_id="c", service_company_id="1", day=DAY,
                       generated_at=datetime(2025, 3, 14, 8, 0))  # fmt: skip


def test_misspelled_access_key_is_accepted() -> None:
    record = realistic_record()
    notes = record["NotesAndMemos"]
    notes["HomeAcessInformation"] = notes.pop("HomeAccessInformation")
    assert only_job(record)["accessInformation"] == "Lockbox on the back door, code 4821."


def test_keys_are_read_case_insensitively() -> None:
    record = {
        "jobinformationid": 9,
        "JOBDATE": "2025-03-14",
        "scheduledStartTime": "8:00 AM",
        "notesandmemos": {"homeaccessinformation": "Key under the mat"},
        "contactinfos": [{"contacttypeid": "3", "contactinfo": "a@example.com"}],
    }
    job = only_job(record)
    assert (job["jobId"], job["startTime"]) == ("9", "08:00")
    assert job["accessInformation"] == "Key under the mat"
    assert job["contactInfo"] == {"phone": None, "email": "a@example.com"}


def test_read_key_walks_nested_mappings_and_falls_back_to_default() -> None:
    record = {"NotesAndMemos": {"HomeInternalMemo": "VIP"}, "ServiceSet": None}
    assert read_key(record, "notesandmemos", "HOMEINTERNALMEMO") == "VIP"
    assert read_key(record, "ServiceSet", "ServiceSetDescription", default="?") == "?"
    assert read_key(record, "NotesAndMemos", "HomeInternalMemo", "deeper") is None
    assert read_key(["not", "a", "mapping"], "key") is None


def test_missing_optional_fields_are_tolerated() -> None:
    job = only_job({"JobInformationId": 7})
    assert job == {
        "jobId": "7",
        "date": "2025-03-14",
        "startTime": None,
        "endTime": None,
        "status": None,
        "serviceType": None,
        "customerName": None,
        "address": None,
        "teamIds": [],
        "billRate": None,
        "feeSplitRate": None,
        "addOnRate": None,
        "roomRate": None,
        "contactInfo": {"phone": None, "email": None},
        "discounts": [],
        "internalMemo": None,
        "accessInformation": None,
        "instructions": None,
        "employeeSchedules": [],
    }


def test_null_nested_objects_and_blank_text_read_as_missing() -> None:
    record = {
        "JobInformationId": 8,
        "CustomerInformation": None,
        "HomeInformation": {"HomeAddress1": "  ", "HomeCity": "Boise"},
        "NotesAndMemos": {"EventInstructions": "", "HomeSpecialInstructions": "Shoes off"},
        "ContactInfos": None,
        "Discounts": None,
        "EmployeeSchedules": [{"FirstName": "Unassigned"}],
    }
    job = only_job(record)
    assert job["customerName"] is None
    assert job["address"] == "Boise"
    assert job["instructions"] == "Shoes off"
    assert job["contactInfo"] == {"phone": None, "email": None}
    # A slot that names no employee cannot give any technician a view of the job.
    assert job["employeeSchedules"] == []


def contact(type_id: int | str, value: str) -> dict[str, Any]:
    return {"ContactTypeId": type_id, "ContactInfo": value}


@pytest.mark.parametrize(
    ("contacts", "phone"),
    [
        ([contact(1, "home"), contact(2, "cell")], "cell"),
        ([contact(1, "home")], "home"),
        ([contact(2, ""), contact(1, "home")], "home"),
        ([contact("2", "cell")], "cell"),
        ([contact(3, "x@example.com")], None),
    ],
)
def test_cell_phone_is_preferred_over_home_phone(contacts: list[Any], phone: str | None) -> None:
    job = only_job({"JobInformationId": 1, "ContactInfos": contacts})
    assert job["contactInfo"]["phone"] == phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("8:05", "08:05"), ("14:30:00", "14:30"), ("2:15 PM", "14:15"), ("12:00 AM", "00:00"),
     ("2025-03-14T07:45:00", "07:45"), ("after lunch", "after lunch"), ("", None)],
)  # fmt: skip
def test_start_times_are_normalised_to_hh_mm(raw: str, expected: str | None) -> None:
    assert only_job({"JobInformationId": 1, "ScheduledStartTime": raw})["startTime"] == expected


def test_numeric_strings_are_read_as_numbers_and_garbage_is_an_error() -> None:
    assert only_job({"JobInformationId": 1, "BillRate": "120.50"})["billRate"] == 120.5
    with pytest.raises(TransformError, match=r"record 0 has a non-numeric BillRate: 'lots'"):
        build([{"JobInformationId": 1, "BillRate": "lots"}])


# -- errors -------------------------------------------------------------------------------------


def test_record_without_job_id_names_its_index() -> None:
    with pytest.raises(TransformError, match=r"record 1 has no JobInformationId"):
        build([realistic_record(), {"JobDate": "2025-03-14"}])


def test_non_dict_record_names_its_index() -> None:
    with pytest.raises(TransformError, match=r"record 2 is not an object \(got list\)"):
        build([realistic_record(), realistic_record(), ["not", "a", "job"]])
    with pytest.raises(TransformError, match=r"record 0 is not an object \(got str\)"):
        group_by_date(["oops"])


@pytest.mark.parametrize("bad", ["14/03/2025", "2025-02-30", "", 20250314, "2025-03-14Tnoon"])
def test_bad_job_date_names_its_index(bad: Any) -> None:
    with pytest.raises(TransformError, match=r"record 1 has an unreadable JobDate"):
        group_by_date([realistic_record(), {"JobInformationId": 2, "JobDate": bad}])


def test_missing_job_date_is_an_error_when_grouping() -> None:
    with pytest.raises(TransformError, match=r"record 0 has no JobDate"):
        group_by_date([{"JobInformationId": 2}])


def test_record_from_another_day_is_refused() -> None:
    with pytest.raises(TransformError, match=r"record 0 \(job 48213377\) is dated 2025-03-14"):
        build([realistic_record()], day=date(2025, 3, 15))


def test_transform_error_is_a_value_error() -> None:
    assert issubclass(TransformError, ValueError)


# -- grouping and ordering ----------------------------------------------------------------------


def test_group_by_date_accepts_both_date_forms_and_orders_days() -> None:
    records = [
        {"JobInformationId": 1, "JobDate": "2025-03-15T00:00:00"},
        {"JobInformationId": 2, "JobDate": "2025-03-14"},
        {"JobInformationId": 3, "jobdate": "2025-03-15"},
    ]
    groups = group_by_date(records)
    assert list(groups) == [date(2025, 3, 14), date(2025, 3, 15)]
    assert [r["JobInformationId"] for r in groups[date(2025, 3, 15)]] == [1, 3]


def test_jobs_sort_by_start_time_then_numeric_job_id_untimed_last() -> None:
    records = [
        {"JobInformationId": 10, "ScheduledStartTime": "09:00"},
        {"JobInformationId": 9, "ScheduledStartTime": "09:00"},
        {"JobInformationId": 1},
        {"JobInformationId": 5, "ScheduledStartTime": "08:00"},
    ]
    assert [job["jobId"] for job in build(records)["jobs"]] == ["5", "9", "10", "1"]


def test_employees_and_teams_are_unique_and_sorted_by_id() -> None:
    def job(job_id: int, team: int, employees: list[str]) -> dict[str, Any]:
        return {
            "JobInformationId": job_id,
            "ScheduledTeams": [{"TeamListId": team, "TeamListDescription": f"T{team}"}],
            "EmployeeSchedules": [
                {"EmployeeInformationId": e, "FirstName": e, "TeamListId": team} for e in employees
            ],
        }

    doc = build([job(1, 20, ["12", "3"]), job(2, 3, ["3", "100"]), job(3, 20, ["12"])])
    assert [e["employeeInformationId"] for e in doc["employees"]] == ["3", "12", "100"]
    assert [t["teamListId"] for t in doc["teams"]] == ["3", "20"]
    assert document_counts(doc) == (3, 3, 2)


# -- determinism --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_day() -> list[dict[str, Any]]:
    return DemoWorld(companies=2, seed=3).jobs_for_day("1002", DAY)


def test_same_input_gives_same_bytes(demo_day: list[dict[str, Any]]) -> None:
    first = serialize_document(build(demo_day))
    second = serialize_document(build(copy.deepcopy(demo_day)))
    assert first == second
    assert orjson.loads(first) == build(demo_day)


@settings(max_examples=25, deadline=None)
@given(order=st.randoms(use_true_random=False))
def test_shuffled_input_gives_same_bytes(demo_day: list[dict[str, Any]], order: Any) -> None:
    shuffled = list(demo_day)
    order.shuffle(shuffled)
    assert serialize_document(build(shuffled)) == serialize_document(build(demo_day))


def test_repeated_job_id_still_gives_one_order(demo_day: list[dict[str, Any]]) -> None:
    twin = copy.deepcopy(demo_day[0])
    twin["NotesAndMemos"]["HomeInternalMemo"] = "a different memo"
    records = [*demo_day, twin]
    assert serialize_document(build(records)) == serialize_document(build(records[::-1]))


# -- demo data end to end -----------------------------------------------------------------------


def test_demo_company_days_transform_cleanly() -> None:
    world = DemoWorld(companies=6, seed=0)
    start = date(2025, 3, 10)
    upstream_sizes: list[int] = []
    for company_id in world.service_company_ids:
        upstream = world.schedule(start, start + timedelta(days=6), company_id)
        for day, records in group_by_date(upstream).items():
            upstream_sizes.append(len(orjson.dumps(records)))
            doc = build_document(
                records,
                company_id=f"uuid-{company_id}",
                service_company_id=company_id,
                day=day,
                generated_at=GENERATED_AT,
            )
            jobs, _, _ = document_counts(doc)
            assert 20 <= jobs <= 60
            assert {e["employeeInformationId"] for e in doc["employees"]} == {
                s["EmployeeInformationId"] for job in doc["jobs"] for s in job["employeeSchedules"]
            }
            assert {t for job in doc["jobs"] for t in job["teamIds"]} <= {
                t["teamListId"] for t in doc["teams"]
            }
            # Both spellings of the access key occur in demo data; none may be lost.
            assert all(job["accessInformation"] for job in doc["jobs"])
            # The document drops upstream noise (positions, duplicated names), so it is smaller.
            assert 0 < len(serialize_document(doc)) < upstream_sizes[-1]
    assert len(upstream_sizes) == 6 * 7
    assert 40_000 <= statistics.mean(upstream_sizes) <= 65_000


# --- odd ids and repeated jobs -----------------------------------------------------------------


def test_an_object_as_job_id_is_rejected_with_the_reason() -> None:
    record = realistic_record() | {"JobInformationId": {"a": 1}}
    with pytest.raises(TransformError, match=r'record 0 has an invalid JobInformationId \{"a":1\}'):
        build([record])


def test_odd_team_and_employee_ids_are_left_out_and_counted_never_stringified() -> None:
    record = realistic_record()
    record["ScheduledTeams"][0]["TeamListId"] = {"a": 1}
    record["EmployeeSchedules"][0]["EmployeeInformationId"] = [7, "x"]
    record["EmployeeSchedules"][1]["TeamListId"] = {"a": 1}
    dropped = DroppedValues()
    document = build_document(
        [record],
        company_id="5b7c2f4e-0000-4000-8000-000000000001",
        service_company_id="1001",
        day=DAY,
        generated_at=GENERATED_AT,
        dropped=dropped,
    )
    [job] = document["jobs"]
    # An entry without its id names nobody: the first employee is gone, not "[7, 'x']".
    assert [entry["EmployeeInformationId"] for entry in job["employeeSchedules"]] == ["1001005"]
    assert job["employeeSchedules"][0]["TeamListId"] is None
    assert dropped.by_field == {"EmployeeInformationId": 1, "TeamListId": 2}
    text = serialize_document(document).decode()
    assert "{'a': 1}" not in text and '{"a":1}' not in text and "[7" not in text


def test_a_job_listed_twice_is_stored_once_and_counted() -> None:
    first = realistic_record()
    second = copy.deepcopy(first) | {"ScheduledStartTime": "10:00"}
    other = realistic_record() | {"JobInformationId": 1}
    assert duplicate_job_ids([first, second, other]) == 1
    document = build([second, other, first])
    assert sorted(job["jobId"] for job in document["jobs"]) == ["1", "48213377"]
    kept = next(job for job in document["jobs"] if job["jobId"] == "48213377")
    assert kept["startTime"] == "09:30"
    assert document == build([first, other, second])  # the same copy whatever the order


def test_split_by_date_reports_unplaceable_records_and_keeps_the_rest() -> None:
    good = realistic_record()
    groups, unplaced = split_by_date([good, {"JobInformationId": 2, "JobDate": "31/31/2026"}])
    assert groups == {DAY: [good]}
    assert unplaced == ["upstream job record 1 has an unreadable JobDate: '31/31/2026'"]


def test_a_lone_surrogate_fails_the_record_with_a_clear_error() -> None:
    record = realistic_record()
    record["CustomerInformation"]["CustomerFirstName"] = "\ud800"
    with pytest.raises(TransformError, match=r"record 0 \(job 48213377\) has text that is not"):
        build([record])
