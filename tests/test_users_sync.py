"""The users sync against a crafted directory served over real HTTP."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from opsdash.engine import handlers, queue
from opsdash.engine.blobs import LocalBlobStore
from opsdash.engine.db import Database
from opsdash.engine.models import BackgroundJob, Company, UserProfile
from opsdash.engine.upstream import MaidCentralClient, RateLimiter


class DirectoryServer:
    """Serves ``companies`` as the dr-schedule/users answer and ``jobs`` as dr-schedule's."""

    def __init__(self) -> None:
        self.companies: list[Any] = []
        self.jobs: list[Any] = []
        directory = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                result: Any = directory.jobs
                if self.path.split("?")[0].endswith("/users"):
                    result = {
                        "ServiceCompanyGroups": [
                            {"ServiceCompanyGroupId": 1, "ServiceCompanies": directory.companies}
                        ]
                    }
                body = orjson.dumps(
                    {"IsSuccess": True, "Message": None, "StatusCode": 200, "Result": result}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def directory() -> Iterator[DirectoryServer]:
    server = DirectoryServer()
    yield server
    server.close()


def user(name: str, roles: list[str], employee_id: str | None = None, **extra: Any) -> dict:
    return {
        "UserId": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "Email": f"{name}@example.com",
        "EmployeeInformationId": employee_id,
        "FirstName": name.title(),
        "LastName": "Doe",
        "Roles": roles,
        **extra,
    }


def company(service_id: Any, users: list[dict], **extra: Any) -> dict:
    return {
        "ServiceCompanyId": service_id,
        "Name": f"Company {service_id}",
        "IsActive": True,
        "TimeZoneInfoId": "Pacific Standard Time",
        "FeatureToggles": {"TechDashboard_DisplayBillRate": True},
        "Users": users,
        **extra,
    }


def run_users_sync(db: Database, directory: DirectoryServer) -> dict[str, Any]:
    client = MaidCentralClient(directory.url, "key", limiter=RateLimiter(10_000))
    context = handlers.HandlerContext(db=db, blobs=None, upstream=client)  # type: ignore[arg-type]
    with db.read() as conn:  # schedule jobs queued by an earlier run are not under test
        pending = conn.execute(select(BackgroundJob.id).where(BackgroundJob.status == "pending"))
        queue.cancel(db, list(pending.scalars()))
    queue.enqueue(db, [queue.users_job()])
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=30)
    [outcome] = handlers.run(context, [job])
    assert outcome.ok, outcome.error
    queue.complete(db, job, worker, outcome.result)
    client.close()
    return outcome.result


def profiles(db: Database) -> dict[str, UserProfile]:
    with db.session() as session:
        return {p.email: p for p in session.execute(select(UserProfile)).scalars()}


def test_directory_becomes_companies_and_profiles(db: Database, directory) -> None:
    directory.companies = [
        company(
            1001,
            [
                user("ann", ["Administrator", "Office"]),
                user("otto", ["Office"]),
                user("tess", ["Employee"], "E1"),
            ],
        ),
        company("bad/id", [user("eve", ["Employee"], "E9")]),
        "not a company",
    ]
    result = run_users_sync(db, directory)
    assert result["companies"] == 1
    assert result["new_companies"] == ["1001"]
    assert len(result["skipped"]) == 2
    assert result["queued"] == 7
    people = profiles(db)
    assert {email: p.role for email, p in people.items()} == {
        "ann@example.com": "admin",
        "otto@example.com": "office",
        "tess@example.com": "technician",
    }
    assert people["tess@example.com"].employee_information_id == "E1"
    with db.session() as session:
        [stored] = session.execute(select(Company)).scalars()
    assert stored.timezone == "America/Los_Angeles"
    assert stored.sync_enabled and stored.portal_enabled


def test_resync_updates_keeps_overrides_and_removes_departed_users(db: Database, directory) -> None:
    directory.companies = [
        company(1001, [user("ann", ["Administrator"]), user("tess", ["Employee"], "E1")])
    ]
    run_users_sync(db, directory)
    with db.write_session() as session:
        [stored] = session.execute(select(Company)).scalars()
        stored.toggle_overrides = {"TechDashboard_DisplayBillRate": False}
        stored.sync_enabled = False
        session.add(stored)
    directory.companies = [
        company(
            1001,
            [user("ann", ["Administrator"]), user("bob", ["Employee"], "E2")],
            Name="Renamed Co",
            TimeZoneInfoId="New Zealand Standard Time",
            FeatureToggles={
                "TechDashboard_DisplayBillRate": False,
                "TechDashboard_HideDiscounts": True,
            },
        )
    ]
    result = run_users_sync(db, directory)
    assert result["new_companies"] == []
    assert result["removed_profiles"] == 1
    assert set(profiles(db)) == {"ann@example.com", "bob@example.com"}
    with db.session() as session:
        [stored] = session.execute(select(Company)).scalars()
    assert stored.name == "Renamed Co"
    assert stored.timezone == "Pacific/Auckland"
    assert stored.feature_toggles["TechDashboard_HideDiscounts"] is True
    assert stored.toggle_overrides == {"TechDashboard_DisplayBillRate": False}
    assert stored.sync_enabled is False


def test_bad_users_are_reported_not_stored(db: Database, directory) -> None:
    shared = user("sam", ["Employee"], "E5")
    directory.companies = [
        company(1001, [shared, user("nobody", ["Janitor"]), {"UserId": "not-a-uuid"}, 42]),
        company(1002, [shared]),
    ]
    result = run_users_sync(db, directory)
    assert set(profiles(db)) == {"sam@example.com"}
    messages = " | ".join(result["skipped"])
    assert "no known role" in messages
    assert "invalid UserId" in messages
    assert "not an object" in messages
    assert "more than one company" in messages


def test_roles_that_are_not_a_list_of_strings_leave_the_user_out(db: Database, directory) -> None:
    """``Roles`` as an object once mapped to admin: now the user is skipped with the reason."""
    odd = user("olga", [], "E9")
    odd["Roles"] = {"Administrator": False, "Employee": True}
    text = user("tess", [], "E8")
    text["Roles"] = "Administrator"
    mixed = user("max", [], "E7")
    mixed["Roles"] = ["Employee", {"Administrator": True}]
    directory.companies = [company(1001, [user("ann", ["Administrator"]), odd, text, mixed])]
    result = run_users_sync(db, directory)
    assert set(profiles(db)) == {"ann@example.com"}
    messages = " | ".join(result["skipped"])
    assert "Roles is an object, not a list of strings" in messages
    assert "Roles is a string, not a list of strings" in messages
    assert "Roles holds something other than strings" in messages
    assert len(result["skipped"]) == 3


def test_nested_upstream_text_is_dropped_and_counted_in_the_job_result(
    db: Database, directory, tmp_path
) -> None:
    directory.companies = [company(1001, [user("ann", ["Administrator"])])]
    run_users_sync(db, directory)
    with db.session() as session:
        acme = session.execute(select(Company)).scalar_one()
    day = "2026-12-01"
    directory.jobs = [
        {
            "JobInformationId": 1,
            "JobDate": day,
            "NotesAndMemos": {
                "EventInstructions": {"HomeAccessInformation": "gate 4321"},
                "HomeSpecialInstructions": "Cat inside",
            },
            "EmployeeSchedules": [{"EmployeeInformationId": "E1", "FirstName": ["Bo"]}],
        }
    ]
    client = MaidCentralClient(directory.url, "key", limiter=RateLimiter(10_000))
    blobs = LocalBlobStore(tmp_path / "blobs")
    context = handlers.HandlerContext(db=db, blobs=blobs, upstream=client)
    with db.read() as conn:  # the days the users sync queued for the new company
        pending = conn.execute(select(BackgroundJob.id).where(BackgroundJob.status == "pending"))
        queue.cancel(db, list(pending.scalars()))
    queue.enqueue(db, [queue.schedule_job(acme.id, day, service_company_id="1001")])
    worker = queue.new_worker_id()
    jobs = [job for job in queue.claim(db, worker, lease_s=30) if job.job_type == "sync_schedule"]
    [outcome] = handlers.run(context, jobs)
    client.close()
    assert outcome.ok, outcome.error
    assert outcome.result["dropped_values"] == 2
    assert outcome.result["dropped_fields"] == {"EventInstructions": 1, "FirstName": 1}
    stored = blobs.get(outcome.result["path"]).decode()
    assert "4321" not in stored and "Bo" not in stored
    assert orjson.loads(stored)["jobs"][0]["instructions"] == "Cat inside"


def test_only_real_booleans_count_and_inactive_is_not_enabled(db: Database, directory) -> None:
    directory.companies = [
        company(
            1001,
            [user("ann", ["Administrator"])],
            FeatureToggles={
                "TechDashboard_DisplayBillRate": "false",
                "TechDashboard_DisplayRoomRate": 1,
                "TechDashboard_HideDiscounts": False,
            },
        ),
        {**company(1002, [user("bea", ["Administrator"])]), "IsActive": None},
    ]
    run_users_sync(db, directory)
    with db.session() as session:
        stored = {c.service_company_id: c for c in session.execute(select(Company)).scalars()}
    assert stored["1001"].feature_toggles == {"TechDashboard_HideDiscounts": False}
    assert stored["1001"].sync_enabled is True
    assert stored["1002"].sync_enabled is False and stored["1002"].portal_enabled is False


def test_users_of_a_company_that_vanished_lose_access(db: Database, directory) -> None:
    directory.companies = [
        company(1001, [user("ann", ["Administrator"])]),
        company(1002, [user("bea", ["Administrator"])]),
    ]
    run_users_sync(db, directory)
    directory.companies = [company(1001, [user("ann", ["Administrator"])])]
    result = run_users_sync(db, directory)
    assert result["removed_profiles"] == 1
    assert set(profiles(db)) == {"ann@example.com"}
    directory.companies = []  # an empty answer is an upstream fault, not an exodus
    run_users_sync(db, directory)
    assert set(profiles(db)) == {"ann@example.com"}
