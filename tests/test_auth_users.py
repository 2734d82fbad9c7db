"""The users sync in Supabase mode: supabase-py's admin client against the Auth stand-in.

The upstream directory is served over real HTTP (``DirectoryServer``), the Auth admin API
by ``SupabaseAuthStandIn`` on a loopback port, the database is SQLite and Postgres.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from opsdash.engine import handlers, queue
from opsdash.engine.auth_users import PAGE_SIZE, AuthAdmin, AuthAdminError
from opsdash.engine.db import Database, create_schema
from opsdash.engine.models import BackgroundJob, Company, UserProfile
from opsdash.engine.upstream import MaidCentralClient, RateLimiter
from tests.supabase_auth_server import SupabaseAuthStandIn
from tests.test_users_sync import DirectoryServer, company, user

JWT_SECRET = "auth-stand-in-secret-" * 3


@pytest.fixture
def auth() -> Iterator[SupabaseAuthStandIn]:
    with SupabaseAuthStandIn(JWT_SECRET) as server:
        yield server


@pytest.fixture
def directory() -> Iterator[DirectoryServer]:
    server = DirectoryServer()
    yield server
    server.close()


def run_sync(
    db: Database, directory: DirectoryServer, auth: SupabaseAuthStandIn, *, concurrency: int = 8
) -> tuple[bool, dict[str, Any], str]:
    """One users job, claimed and run as a worker does; (ok, result, error)."""
    client = MaidCentralClient(directory.url, "key", limiter=RateLimiter(10_000))
    admin = AuthAdmin(
        auth.url, auth.service_role_key, concurrency=concurrency, attempts=2, max_backoff_s=0.01
    )
    context = handlers.HandlerContext(db=db, blobs=None, upstream=client, auth=admin)  # type: ignore[arg-type]
    with db.read() as conn:  # schedule jobs queued by an earlier run are not under test
        pending = conn.execute(select(BackgroundJob.id).where(BackgroundJob.status == "pending"))
        queue.cancel(db, list(pending.scalars()))
    queue.enqueue(db, [queue.users_job()])
    worker = queue.new_worker_id()
    [job] = queue.claim(db, worker, lease_s=60)
    try:
        [outcome] = handlers.run(context, [job])
    finally:
        client.close()
        admin.close()
    if outcome.ok:
        queue.complete(db, job, worker, outcome.result)
    else:
        queue.fail(db, job, worker, outcome.error, retry_base_s=0.0, retryable=outcome.retryable)
    return outcome.ok, outcome.result, outcome.error


def profiles(db: Database) -> dict[str, UserProfile]:
    with db.session() as session:
        return {p.email or "": p for p in session.execute(select(UserProfile)).scalars()}


def company_id(db: Database, service_id: str) -> uuid.UUID:
    with db.session() as session:
        return session.execute(
            select(Company.id).where(Company.service_company_id == service_id)
        ).scalar_one()


def upstream_id(name: str) -> uuid.UUID:
    return uuid.UUID(user(name, [])["UserId"])


def test_new_users_become_confirmed_passwordless_auth_users(db, directory, auth) -> None:
    directory.companies = [
        company(
            1001,
            [
                user("ann", ["Administrator"]),
                user("otto", ["Office"]),
                user("tess", ["Employee"], "E1"),
            ],
        )
    ]
    ok, result, _ = run_sync(db, directory, auth)
    assert ok
    assert result["auth_users"] == {
        "created": 3,
        "updated": 0,
        "adopted": 0,
        "banned": 0,
        "unbanned": 0,
        "failed": 0,
        "failures": [],
    }
    tess = auth.users[upstream_id("tess")]
    assert tess.email == "tess@example.com"
    assert tess.email_confirmed_at is not None
    assert not tess.password_set
    assert tess.app_metadata == {
        "provider": "email",
        "providers": ["email"],
        "maidcentral_user_id": str(upstream_id("tess")),
        "company_id": str(company_id(db, "1001")),
        "service_company_id": "1001",
        "role": "technician",
        "employee_information_id": "E1",
    }
    assert "employee_information_id" not in auth.users[upstream_id("otto")].app_metadata
    people = profiles(db)
    assert {p.id for p in people.values()} == set(auth.users)
    assert all(p.maidcentral_user_id == p.id for p in people.values())
    assert people["ann@example.com"].role == "admin"


def test_unchanged_directory_costs_only_the_listing_and_changes_are_applied(
    db, directory, auth
) -> None:
    directory.companies = [
        company(1001, [user("ann", ["Administrator"]), user("tess", ["Employee"], "E1")]),
        company(1002, [user("bo", ["Office"])]),
    ]
    run_sync(db, directory, auth)
    auth.reset_counts()
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and result["auth_users"]["created"] == result["auth_users"]["updated"] == 0
    assert auth.count() == auth.count("GET", "admin/users") == 1

    tess = user("tess", ["Office"], None, Email="Tess.New@Example.com")
    directory.companies = [
        company(1001, [user("ann", ["Administrator"])]),
        company(1002, [user("bo", ["Office"]), tess]),
    ]
    auth.reset_counts()
    ok, result, _ = run_sync(db, directory, auth)
    assert ok
    assert result["auth_users"]["updated"] == 1
    assert auth.count("PUT") == 1 and auth.count("POST") == 0
    moved = auth.users[upstream_id("tess")]
    assert moved.email == "tess.new@example.com"
    assert moved.app_metadata["role"] == "office"
    assert moved.app_metadata["service_company_id"] == "1002"
    assert moved.app_metadata["company_id"] == str(company_id(db, "1002"))
    assert "employee_information_id" not in moved.app_metadata
    profile = profiles(db)["tess.new@example.com"]
    assert (profile.role, profile.company_id) == ("office", company_id(db, "1002"))


def test_departed_user_is_banned_not_deleted_and_unbanned_on_return(db, directory, auth) -> None:
    everyone = [user("ann", ["Administrator"]), user("tess", ["Employee"], "E1")]
    directory.companies = [company(1001, everyone)]
    run_sync(db, directory, auth)

    directory.companies = [company(1001, everyone[:1])]
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and result["auth_users"]["banned"] == 1
    assert result["removed_profiles"] == 1
    assert "tess@example.com" not in profiles(db)
    tess = auth.users[upstream_id("tess")]  # still there, banned
    assert tess.banned_until is not None and tess.banned_until.year > 2100
    assert auth.count("DELETE") == 0

    auth.reset_counts()
    run_sync(db, directory, auth)  # already banned: nothing to do
    assert auth.count("PUT") == 0

    directory.companies = [company(1001, everyone)]
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and result["auth_users"]["unbanned"] == 1
    assert auth.users[upstream_id("tess")].banned_until is None
    assert profiles(db)["tess@example.com"].id == upstream_id("tess")


def test_existing_auth_user_with_the_same_email_is_adopted(db, directory, auth) -> None:
    # Made by the earlier system: its own id, mixed-case email, its own metadata.
    old = auth.add_user("Tess@Example.com", app_metadata={"legacy": True})
    stranger = auth.add_user("dashboard-admin@example.com")
    directory.companies = [company(1001, [user("tess", ["Employee"], "E1")])]
    ok, result, _ = run_sync(db, directory, auth)
    assert ok
    assert result["auth_users"]["adopted"] == 1
    assert result["auth_users"]["created"] == 0
    assert auth.count("POST") == 0
    profile = profiles(db)["tess@example.com"]
    assert profile.id == old.id
    assert profile.maidcentral_user_id == upstream_id("tess")
    adopted = auth.users[old.id]
    assert adopted.app_metadata["legacy"] is True  # keys opsdash does not own are kept
    assert adopted.app_metadata["maidcentral_user_id"] == str(upstream_id("tess"))
    # An Auth user opsdash never managed is never banned.
    assert auth.users[stranger.id].banned_until is None

    auth.reset_counts()
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and auth.count() == 1
    assert result["auth_users"]["adopted"] == 0
    assert profiles(db)["tess@example.com"].id == old.id


def test_one_bad_user_never_stops_the_others(db, directory, auth) -> None:
    directory.companies = [
        company(
            1001,
            [
                user("ann", ["Administrator"]),
                user("broken", ["Employee"], "E2"),
                user("noemail", ["Employee"], "E3", Email=None),
                user("garbled", ["Employee"], "E4", Email="not an email"),
                user("tess", ["Employee"], "E1"),
            ],
        )
    ]
    auth.faults.failing_emails = {"broken@example.com"}
    ok, result, _ = run_sync(db, directory, auth)
    assert ok
    summary = result["auth_users"]
    assert (summary["created"], summary["failed"]) == (2, 3)
    reasons = {failure["email"]: failure["reason"] for failure in summary["failures"]}
    assert reasons.keys() == {"broken@example.com", "", "not an email"}
    assert "500 unexpected_failure" in reasons["broken@example.com"]
    assert "has no email" in reasons[""]
    assert "email_address_invalid" in reasons["not an email"]
    # Users without an Auth user get no profile; the others are in.
    assert set(profiles(db)) == {"ann@example.com", "tess@example.com"}

    # A failing update keeps the user's access, with the upstream's new role.
    directory.companies[0]["Users"][-1]["Roles"] = ["Office"]
    auth.faults.failing_emails = {"tess@example.com"}
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and result["auth_users"]["failed"] >= 1
    assert profiles(db)["tess@example.com"].role == "office"
    assert auth.users[upstream_id("tess")].app_metadata["role"] == "technician"

    auth.faults.failing_emails = set()
    ok, result, _ = run_sync(db, directory, auth)
    assert auth.users[upstream_id("tess")].app_metadata["role"] == "office"
    assert auth.by_email("broken@example.com") is not None


def test_two_upstream_users_with_one_email_fail_instead_of_sharing_a_login(
    db, directory, auth
) -> None:
    directory.companies = [
        company(1001, [user("ann", ["Administrator"])]),
        company(1002, [user("ann2", ["Office"], Email="ann@example.com")]),
    ]
    ok, result, _ = run_sync(db, directory, auth)
    assert ok
    assert result["auth_users"]["created"] == 1
    assert result["auth_users"]["failed"] == 1
    assert len(profiles(db)) == 1

    # Listed first next time, the newcomer still cannot take over ann's login.
    directory.companies.reverse()
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and result["auth_users"]["failed"] == 1
    assert (
        "belongs to the Auth user of upstream user" in result["auth_users"]["failures"][0]["reason"]
    )
    [profile] = profiles(db).values()
    assert profile.id == profile.maidcentral_user_id == upstream_id("ann")
    assert auth.users[upstream_id("ann")].app_metadata["role"] == "admin"


def test_auth_unreachable_changes_nothing_and_the_job_retries(db, directory, auth) -> None:
    directory.companies = [company(1001, [user("ann", ["Administrator"])])]
    auth.faults.status = 503
    ok, _, error = run_sync(db, directory, auth)
    assert not ok and "listing Supabase Auth users failed" in error
    with db.read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM companies")).scalar_one() == 0
        failed = conn.execute(select(BackgroundJob.status, BackgroundJob.attempts)).one()
    assert failed == ("pending", 1)  # back in the queue for another attempt


def test_auth_failing_for_every_write_stops_early_and_keeps_access(db, directory, auth) -> None:
    directory.companies = [company(1001, [user("ann", ["Administrator"])])]
    run_sync(db, directory, auth)
    newcomers = [user(f"new{n}", ["Employee"], f"E{n}") for n in range(60)]
    directory.companies = [company(1001, [user("ann", ["Office"]), *newcomers])]
    auth.faults.write_status = 503
    auth.reset_counts()
    ok, _, error = run_sync(db, directory, auth, concurrency=2)
    assert not ok and "Auth admin API failing" in error
    # Two attempts per call, and it stopped well before trying all 61 users.
    assert auth.count("POST") + auth.count("PUT") < 2 * 40
    assert profiles(db)["ann@example.com"].role == "office"


def test_admin_calls_run_in_parallel_but_never_more_than_the_bound(db, directory, auth) -> None:
    directory.companies = [
        company(1001, [user(f"tech{n}", ["Employee"], f"E{n}") for n in range(40)])
    ]
    auth.faults.latency_s = 0.05  # long enough for calls to overlap
    ok, result, _ = run_sync(db, directory, auth, concurrency=3)
    assert ok and result["auth_users"]["created"] == 40
    assert auth.max_in_flight == 3


def test_paging_covers_every_auth_user(db, directory, auth) -> None:
    # More than a page of Auth users the earlier system made; the upstream lists the last.
    for n in range(PAGE_SIZE + 5):
        auth.add_user(f"legacy{n}@example.com")
    directory.companies = [
        company(1001, [user("legacy1004", ["Office"], Email="legacy1004@example.com")])
    ]
    ok, result, _ = run_sync(db, directory, auth)
    assert ok and result["auth_users"]["adopted"] == 1
    assert auth.count("GET", "admin/users") == 2
    assert auth.count("POST") == 0


@pytest.mark.slow
def test_twenty_thousand_unchanged_users_make_only_listing_calls(db, directory, auth) -> None:
    per_company = 1000
    directory.companies = [
        company(
            2000 + c,
            [user(f"u{c}-{n}", ["Employee"], f"E{c}-{n}") for n in range(per_company)],
        )
        for c in range(20)
    ]
    # What the first sync leaves behind, made directly so the test stays quick: the
    # companies and profiles, and Auth users holding exactly what the sync would give them.
    handlers.sync_users(
        handlers.HandlerContext(
            db=db,
            blobs=None,  # type: ignore[arg-type]
            upstream=MaidCentralClient(directory.url, "key", limiter=RateLimiter(10_000)),
        ),
        BackgroundJob(job_type="sync_users"),
    )
    for listed in directory.companies:
        service_id = str(listed["ServiceCompanyId"])
        ids = {"company_id": str(company_id(db, service_id)), "service_company_id": service_id}
        for person in listed["Users"]:
            metadata = {
                "maidcentral_user_id": person["UserId"],
                "role": "technician",
                "employee_information_id": person["EmployeeInformationId"],
                **ids,
            }
            auth.add_user(
                person["Email"], user_id=uuid.UUID(person["UserId"]), app_metadata=metadata
            )
    auth.reset_counts()
    ok, result, _ = run_sync(db, directory, auth)
    assert ok, result
    assert result["profiles"] == 20_000
    counts = result["auth_users"]
    assert sum(v for k, v in counts.items() if k != "failures") == 0
    # 20 full pages and the short one that ends the listing; nothing else.
    assert auth.count() == auth.count("GET", "admin/users") == 21


def test_schema_upgrade_adds_and_backfills_the_upstream_id(db: Database) -> None:
    # A database made before the column existed (schema revision 0001): profiles keyed by
    # the upstream id. Migration 0002 adds the column.
    with db.write() as conn:
        conn.exec_driver_sql("DROP INDEX user_profiles_maidcentral_user_id")
        conn.exec_driver_sql("ALTER TABLE user_profiles DROP COLUMN maidcentral_user_id")
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    legacy = uuid.uuid4()
    as_stored = legacy if db.is_postgres else legacy.hex  # SQLite keeps uuids as 32 hex digits
    with db.write() as conn:
        conn.execute(
            text("INSERT INTO user_profiles (id, role, email) VALUES (:id, 'admin', 'a@x.com')"),
            {"id": as_stored},
        )
    create_schema(db)
    create_schema(db)  # and again: nothing left to do
    [profile] = profiles(db).values()
    assert profile.maidcentral_user_id == profile.id == legacy
    other = uuid.uuid4()
    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(
            text("INSERT INTO user_profiles (id, role, maidcentral_user_id) VALUES (:a, 'x', :b)"),
            {"a": other if db.is_postgres else other.hex, "b": as_stored},
        )


def test_ping_tells_a_working_key_from_a_rejected_one(auth) -> None:
    good = AuthAdmin(auth.url, auth.service_role_key, attempts=1)
    user_key = AuthAdmin(auth.url, auth.mint_key("authenticated"), attempts=1)
    forged = AuthAdmin(auth.url, "not-a-jwt", attempts=1)
    try:
        good.ping()
        with pytest.raises(AuthAdminError, match="403 not_admin"):
            user_key.ping()
        with pytest.raises(AuthAdminError, match="403 bad_jwt") as rejected:
            forged.ping()
        assert not rejected.value.retryable
    finally:
        for admin in (good, user_key, forged):
            admin.close()
