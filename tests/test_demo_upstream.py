"""The demo upstream over real HTTP: data, envelope, auth, every fault, stats, the CLI."""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from opsdash.demo import FAULT_KINDS, DemoUpstream, DemoWorld, FaultSettings
from opsdash.demo.cli import add_arguments, run
from opsdash.demo.data import WINDOWS_TIME_ZONES
from tests.waiting import wait_until

DAY = date(2025, 3, 14)
JOB_KEYS = {
    "JobInformationId", "JobDate", "JobStatus", "ScheduledStartTime", "ScheduledEndTime",
    "AllowedTime", "BillRate", "FeeSplitRate", "AddOnRate", "RoomRate", "Discounts",
    "ScheduledTeams", "EmployeeSchedules", "CustomerInformation", "HomeInformation",
    "NotesAndMemos", "ContactInfos", "ServiceSet",
}  # fmt: skip
AUTH = {"Authorization": "Bearer demo-key"}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def day_params(start: date = DAY, end: date = DAY, company: str | None = None) -> dict[str, str]:
    params = {"startDate": start.isoformat(), "endDate": end.isoformat()}
    if company is not None:
        params["serviceCompanyId"] = company
    return params


@pytest.fixture(scope="module")
def upstream() -> Iterator[DemoUpstream]:
    with DemoUpstream(companies=6, seed=0) as server:
        yield server


@pytest.fixture(autouse=True)
def calm(upstream: DemoUpstream) -> None:
    """Every test starts with no faults and zeroed counters on the shared server."""
    upstream.faults = FaultSettings()
    upstream.reset_stats()


@pytest.fixture
def client(upstream: DemoUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, headers=AUTH, timeout=5.0) as http:
        yield http


def schedule(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    return client.get("/api/dr-schedule", params=day_params(**kwargs))


# -- data ---------------------------------------------------------------------------------------


def test_company_days_have_20_to_60_jobs_and_about_50_kb() -> None:
    world = DemoWorld(companies=6, seed=0)
    sizes, counts = [], []
    for company_id in world.service_company_ids:
        for offset in range(14):
            jobs = world.jobs_for_day(company_id, DAY + timedelta(days=offset))
            counts.append(len(jobs))
            sizes.append(len(orjson.dumps(jobs)))
    assert min(counts) >= 20 and max(counts) <= 60
    assert 40_000 <= statistics.mean(sizes) <= 65_000


def test_jobs_are_shaped_like_upstream_jobs() -> None:
    world = DemoWorld(companies=2, seed=0)
    jobs = world.schedule(DAY, DAY + timedelta(days=6))
    spellings: Counter[str] = Counter()
    for job in jobs:
        assert set(job) == JOB_KEYS
        assert job["JobDate"].endswith("T00:00:00")
        assert len(job["ScheduledStartTime"]) == 5 and job["ScheduledStartTime"][2] == ":"
        team_ids = {team["TeamListId"] for team in job["ScheduledTeams"]}
        assert {entry["TeamListId"] for entry in job["EmployeeSchedules"]} == team_ids
        assert {c["ContactTypeId"] for c in job["ContactInfos"]} <= {1, 2, 3}
        spellings.update(key for key in job["NotesAndMemos"] if key.startswith("HomeAc"))
    misspelled = spellings["HomeAcessInformation"] / len(jobs)
    assert 0.1 < misspelled < 0.3  # about one job in five, as in real data
    assert len({job["JobInformationId"] for job in jobs}) == len(jobs)


def test_users_cover_companies_zones_teams_and_roles() -> None:
    world = DemoWorld(companies=8, seed=5)
    groups = world.users_result()["ServiceCompanyGroups"]
    assert 1 <= len(groups) <= 2
    companies = [c for group in groups for c in group["ServiceCompanies"]]
    assert [c["TimeZoneInfoId"] for c in companies] == list(WINDOWS_TIME_ZONES)
    for company in companies:
        users = company["Users"]
        roles = Counter(user["Roles"][0] for user in users)
        assert roles["Administrator"] == 1 and 1 <= roles["Office"] <= 2
        assert 6 <= roles["Employee"] <= 24  # 3-6 teams of 2-4 technicians
        assert len({user["Email"] for user in users}) == len(users)
        for user in users:
            has_employee_id = user["EmployeeInformationId"] is not None
            assert has_employee_id == (user["Roles"] == ["Employee"])
        assert set(company["FeatureToggles"]) >= {"TechDashboard_HideDiscounts"}
    toggles = {orjson.dumps(c["FeatureToggles"]) for c in companies}
    assert len(toggles) > 1  # toggles vary between companies


def test_data_depends_only_on_seed_company_date_and_revision() -> None:
    small, large = DemoWorld(companies=1, seed=9), DemoWorld(companies=6, seed=9)
    assert small.jobs_for_day("1001", DAY) == large.jobs_for_day("1001", DAY)
    assert DemoWorld(seed=1).jobs_for_day("1001", DAY) != large.jobs_for_day("1001", DAY)
    revised = large.jobs_for_day("1001", DAY, revision=1)
    assert revised != large.jobs_for_day("1001", DAY)
    assert revised != large.jobs_for_day("1001", DAY, revision=2)
    assert [j["JobInformationId"] for j in revised] == [
        j["JobInformationId"] for j in large.jobs_for_day("1001", DAY)
    ]


# -- envelope, auth, validation -----------------------------------------------------------------


def test_schedule_envelope_for_one_company_day(client: httpx.Client) -> None:
    response = schedule(client, company="1003")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert set(body) == {"IsSuccess", "Message", "Result", "StatusCode"}
    assert body["IsSuccess"] is True and body["StatusCode"] == 200
    assert 20 <= len(body["Result"]) <= 60
    assert {job["JobDate"] for job in body["Result"]} == {"2025-03-14T00:00:00"}


def test_schedule_without_company_covers_all_companies_and_every_day(
    upstream: DemoUpstream, client: httpx.Client
) -> None:
    end = DAY + timedelta(days=2)
    jobs = schedule(client, end=end).json()["Result"]
    assert {job["JobDate"][:10] for job in jobs} == {"2025-03-14", "2025-03-15", "2025-03-16"}
    assert jobs == upstream.world.schedule(DAY, end)


def test_query_parameters_are_case_insensitive(client: httpx.Client) -> None:
    params = {"startdate": "2025-03-14", "ENDDATE": "2025-03-14", "servicecompanyid": "1002"}
    assert (
        client.get("/api/dr-schedule", params=params).json()
        == schedule(client, company="1002").json()
    )


def test_users_envelope(upstream: DemoUpstream, client: httpx.Client) -> None:
    body = client.get("/api/dr-schedule/users").json()
    assert body["IsSuccess"] is True
    assert body["Result"] == upstream.world.users_result()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic demo-key"}]
)
def test_missing_or_wrong_key_is_401(upstream: DemoUpstream, headers: dict[str, str]) -> None:
    response = httpx.get(f"{upstream.url}/api/dr-schedule/users", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["IsSuccess"] is False
    assert upstream.stats()["outcomes"] == {"401": 1}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "startDate is required"),
        ({"startDate": "2025-03-14"}, "endDate is required"),
        ({"startDate": "14/03/2025", "endDate": "2025-03-14"}, "must look like YYYY-MM-DD"),
        ({"startDate": "2025-02-30", "endDate": "2025-03-01"}, "is not a calendar date"),
        ({"startDate": "2025-03-14", "endDate": "2025-03-13"}, "is before startDate"),
        ({"startDate": "2025-03-01", "endDate": "2025-04-01"}, "at most 31 days"),
    ],
)
def test_bad_dates_are_400_envelopes(
    client: httpx.Client, params: dict[str, str], message: str
) -> None:
    response = client.get("/api/dr-schedule", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["IsSuccess"] is False and body["StatusCode"] == 400
    assert message in body["Message"]


def test_a_31_day_range_is_allowed(client: httpx.Client) -> None:
    response = schedule(client, end=DAY + timedelta(days=30), company="1001")
    assert response.status_code == 200


def test_unknown_company_and_unknown_path_are_404(client: httpx.Client) -> None:
    response = schedule(client, company="9999")
    assert response.status_code == 404 and "9999" in response.json()["Message"]
    assert client.get("/api/nowhere").status_code == 404


# -- faults -------------------------------------------------------------------------------------


def test_error_rate_gives_500_envelopes(upstream: DemoUpstream, client: httpx.Client) -> None:
    upstream.faults.error_rate = 1.0
    response = schedule(client)
    assert response.status_code == 500
    assert response.json()["IsSuccess"] is False


def test_rate_limit_gives_429_with_retry_after(
    upstream: DemoUpstream, client: httpx.Client
) -> None:
    upstream.faults.rate_limit_rate = 1.0
    upstream.faults.retry_after_s = 7
    response = client.get("/api/dr-schedule/users")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"


def test_timeout_hangs_past_the_client_timeout(upstream: DemoUpstream) -> None:
    upstream.faults.timeout_rate = 1.0
    upstream.faults.hang_s = 10.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{upstream.url}/api/dr-schedule/users", headers=AUTH, timeout=0.2)
    assert upstream.stats()["outcomes"] == {"timeout": 1}


def test_short_hang_then_answers(upstream: DemoUpstream, client: httpx.Client) -> None:
    upstream.faults.timeout_rate = 1.0
    upstream.faults.hang_s = 0.2
    started = time.monotonic()
    response = client.get("/api/dr-schedule/users")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


def test_hang_ends_when_the_server_stops() -> None:
    server = DemoUpstream(companies=1, faults=FaultSettings(timeout_rate=1.0, hang_s=30.0))
    url = server.start()
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx.get(f"{url}/api/dr-schedule/users", headers=AUTH, timeout=30.0)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: server.stats()["outcomes"].get("timeout") == 1, timeout_s=5)
    started = time.monotonic()
    server.stop()
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert time.monotonic() - started < 2
    assert len(errors) == 1  # dropped unanswered, not answered late


def test_malformed_body_is_truncated_json_with_200(
    upstream: DemoUpstream, client: httpx.Client
) -> None:
    upstream.faults.malformed_rate = 1.0
    response = schedule(client, company="1001")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def test_failure_rate_gives_200_with_is_success_false(
    upstream: DemoUpstream, client: httpx.Client
) -> None:
    upstream.faults.failure_rate = 1.0
    response = schedule(client)
    assert response.status_code == 200
    body = response.json()
    assert body["IsSuccess"] is False and body["Message"] and body["Result"] is None


def observed_fault(client: httpx.Client, company: str) -> str | None:
    """The fault kind a request for ``company`` met, or None when it was answered honestly."""
    try:
        response = client.get("/api/dr-schedule", params=day_params(company=company))
    except httpx.ReadTimeout:
        return "timeout"
    if response.status_code in (429, 500):
        return str(response.status_code)
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "malformed"
    return None if body["IsSuccess"] else "unsuccessful"


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_failing_company_only_hits_that_company(upstream: DemoUpstream, kind: str) -> None:
    upstream.faults.failing_companies = {"1002": kind}
    upstream.faults.hang_s = 10.0
    with httpx.Client(base_url=upstream.url, headers=AUTH, timeout=0.5) as client:
        assert observed_fault(client, "1002") == kind
        assert observed_fault(client, "1001") is None
        assert schedule(client).json()["IsSuccess"] is True  # all companies: nobody named
    assert upstream.stats()["companies"] == {"1002": 1, "1001": 1, "all": 1}


def test_fault_draws_are_seeded_and_roughly_at_rate() -> None:
    def outcomes(server: DemoUpstream) -> list[int]:
        with server, httpx.Client(base_url=server.url, headers=AUTH) as client:
            return [client.get("/api/dr-schedule/users").status_code for _ in range(200)]

    first = outcomes(DemoUpstream(companies=1, seed=4, faults=FaultSettings(error_rate=0.3)))
    second = outcomes(DemoUpstream(companies=1, seed=4, faults=FaultSettings(error_rate=0.3)))
    assert first == second
    assert 0.15 < first.count(500) / len(first) < 0.45


def test_latency_knob_delays_answers(upstream: DemoUpstream, client: httpx.Client) -> None:
    upstream.faults.latency_ms = 80
    started = time.monotonic()
    client.get("/api/dr-schedule/users")
    assert time.monotonic() - started >= 0.08


# -- determinism and revisions ------------------------------------------------------------------


def fetch_all(server: DemoUpstream) -> tuple[bytes, bytes]:
    with httpx.Client(base_url=server.url, headers=AUTH) as client:
        days = client.get("/api/dr-schedule", params=day_params(end=DAY + timedelta(days=3)))
        return days.content, client.get("/api/dr-schedule/users").content


def test_two_servers_with_the_same_seed_answer_the_same_bytes() -> None:
    with DemoUpstream(seed=11) as one, DemoUpstream(seed=11) as two, DemoUpstream(seed=12) as other:
        assert fetch_all(one) == fetch_all(two)
        assert fetch_all(one)[0] != fetch_all(other)[0]


def test_revision_changes_the_data_and_back(upstream: DemoUpstream, client: httpx.Client) -> None:
    original = schedule(client, company="1004").content
    response = client.post("/_demo/faults", json={"revision": 1})
    assert response.status_code == 200 and response.json()["revision"] == 1
    revised = schedule(client, company="1004").content
    assert revised != original
    old_ids = [job["JobInformationId"] for job in orjson.loads(original)["Result"]]
    assert [job["JobInformationId"] for job in orjson.loads(revised)["Result"]] == old_ids
    upstream.faults.revision = 0
    assert schedule(client, company="1004").content == original


# -- stats and admin endpoints ------------------------------------------------------------------


def test_stats_count_requests_per_endpoint_outcome_and_company(
    upstream: DemoUpstream, client: httpx.Client
) -> None:
    schedule(client, company="1001")
    schedule(client, company="1001")
    schedule(client)
    client.get("/api/dr-schedule/users")
    client.get("/api/dr-schedule", params={"startDate": "nope"})
    upstream.faults.error_rate = 1.0
    client.get("/api/dr-schedule/users")
    stats = upstream.stats()
    assert stats["requests"] == 6
    assert stats["endpoints"] == {"dr-schedule": 4, "users": 2}
    assert stats["outcomes"] == {"ok": 4, "400": 1, "500": 1}
    assert stats["by_endpoint"]["users"] == {"ok": 1, "500": 1}
    assert stats["companies"] == {"1001": 2, "all": 2}
    assert stats["bytes_sent"] > 100_000
    upstream.reset_stats()
    assert upstream.stats()["requests"] == 0


def test_admin_endpoints_need_no_auth_and_mirror_the_object(upstream: DemoUpstream) -> None:
    with httpx.Client(base_url=upstream.url) as admin:
        httpx.get(f"{upstream.url}/api/dr-schedule/users", headers=AUTH)
        assert admin.get("/_demo/stats").json() == upstream.stats()
        assert admin.post("/_demo/stats/reset").json()["requests"] == 0
        changed = admin.post(
            "/_demo/faults", json={"error_rate": 0.5, "failing_companies": {"1003": "429"}}
        )
        assert changed.status_code == 200
        assert upstream.faults.error_rate == 0.5
        assert upstream.faults.failing_companies == {"1003": "429"}
        assert admin.get("/_demo/faults").json() == upstream.faults.as_dict()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error_rate": 2}, "between 0 and 1"),
        ({"error_rate": True}, "between 0 and 1"),
        ({"no_such_knob": 1}, "unknown fault setting"),
        ({"failing_companies": {"1001": "explode"}}, "must be one of"),
        ({"revision": -1}, "whole number"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_fault_updates_are_refused(upstream: DemoUpstream, body: Any, message: str) -> None:
    response = httpx.post(f"{upstream.url}/_demo/faults", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert upstream.faults == FaultSettings()


# -- lifecycle and CLI --------------------------------------------------------------------------


def test_stop_closes_the_port_and_kept_alive_connections() -> None:
    server = DemoUpstream(companies=1)
    url = server.start()
    with httpx.Client(base_url=url, headers=AUTH) as client:
        assert client.get("/api/dr-schedule/users").status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/api/dr-schedule/users")
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    server.stop()  # idempotent


def test_run_refuses_bad_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--error-rate", "1.5"])) == 2
    assert "error_rate" in capsys.readouterr().err


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_module_entry_point_serves_until_signalled(stop_signal: signal.Signals) -> None:
    command = [sys.executable, "-m", "opsdash.demo", "--port", "0", "--companies", "2"]
    with subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        users = httpx.get(f"{url}/api/dr-schedule/users", headers=AUTH).json()["Result"]
        groups = users["ServiceCompanyGroups"]
        assert sum(len(group["ServiceCompanies"]) for group in groups) == 2
        process.send_signal(stop_signal)
        assert process.wait(timeout=5) == 0
