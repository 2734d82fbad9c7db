"""Rows queued by the original system's ``hourly-sync`` Edge Function run on opsdash workers.

The rows are inserted with plain SQL, as the old function writes them: none of
opsdash's added columns (no ``dedup_key``, ``locked_by``, lease), sometimes no
``company_id``, and ``params`` in the old spellings. The engine's workers must
pick them up beside their own jobs and complete them, so the old cron can keep
running during a cut-over.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from opsdash.demo.server import DemoUpstream
from opsdash.engine import jobparams
from opsdash.engine.models import Company, ScheduleData
from opsdash.engine.runtime import Engine
from tests.conftest import engine_settings

FAR = date.today() + timedelta(days=20)  # outside opsdash's own 7-day window


def legacy_insert(engine: Engine, job_type: str, params: object, company_id: object = None) -> str:
    """One row as the old function inserts it; returns its id."""
    with engine.db.write() as conn:
        return str(
            conn.execute(
                text(
                    "INSERT INTO background_jobs (job_type, company_id, status, params) "
                    "VALUES (:job_type, :company_id, 'pending', CAST(:params AS jsonb)) "
                    "RETURNING id"
                ),
                {"job_type": job_type, "company_id": company_id, "params": json.dumps(params)},
            ).scalar_one()
        )


def job_row(engine: Engine, job_id: str) -> dict[str, object]:
    with engine.db.read() as conn:
        row = conn.execute(
            text(
                "SELECT status, attempts, result, error_message, dedup_key "
                "FROM background_jobs WHERE id = :id"
            ),
            {"id": job_id},
        ).one()
    return dict(row._mapping)


@pytest.mark.postgres
def test_workers_complete_the_rows_the_old_hourly_sync_queues(
    pg_url: str, tmp_path: Path, demo_upstream: DemoUpstream
) -> None:
    engine = Engine(engine_settings(pg_url, tmp_path / "data", demo_upstream.url))
    try:
        engine.sync()  # opsdash's own run: discovers the companies, syncs 7 days
        engine.start(scheduler=False)
        assert engine.wait_idle(timeout_s=60, poll_s=0.1)
        engine.pause()  # the old function's rows all go in before any is claimed
        with engine.db.session() as session:
            companies = {
                c.service_company_id: c for c in session.execute(select(Company)).scalars()
            }
        first, second, third = sorted(companies)[:3]
        d = [FAR + timedelta(days=n) for n in range(4)]
        rows = {
            "snake, company column": legacy_insert(
                engine,
                "sync_schedule",
                {"company_id": str(companies[first].id), "date": d[0].isoformat()},
                company_id=companies[first].id,
            ),
            "camel, no company column": legacy_insert(
                engine, "sync_schedule", {"serviceCompanyId": second, "date": d[1].isoformat()}
            ),
            "snake range, no company column": legacy_insert(
                engine,
                "sync_schedule",
                {
                    "service_company_id": third,
                    "start_date": d[1].isoformat(),
                    "end_date": d[3].isoformat(),
                },
            ),
            "json text params": legacy_insert(
                engine,
                "sync_schedule",
                json.dumps({"companyId": str(companies[second].id), "date": d[2].isoformat()}),
            ),
            "users": legacy_insert(engine, "sync_users", {}),
        }
        broken = legacy_insert(engine, "sync_schedule", {"serviceCompanyId": first})
        unknown = legacy_insert(
            engine, "sync_schedule", {"serviceCompanyId": "9999", "date": d[0].isoformat()}
        )
        engine.resume()
        engine.wake_workers()
        if not engine.wait_idle(timeout_s=60, poll_s=0.1):
            with engine.db.read() as conn:
                left = conn.execute(
                    text(
                        "SELECT job_type, status, params, attempts, errors FROM background_jobs "
                        "WHERE status IN ('pending', 'running')"
                    )
                ).all()
            raise AssertionError(f"legacy rows were left pending: {left}")

        for name, job_id in rows.items():
            row = job_row(engine, job_id)
            assert row["status"] == "completed", f"{name}: {row}"
            assert row["attempts"] == 1 and row["dedup_key"] is None
        range_result = job_row(engine, rows["snake range, no company column"])["result"]
        assert isinstance(range_result, dict) and range_result["days"] == 3

        with engine.db.session() as session:
            paths = {
                (row.company_id, row.date): row.storage_path
                for row in session.execute(
                    select(ScheduleData).where(ScheduleData.date >= FAR)  # type: ignore[arg-type]
                ).scalars()
            }
        stored = set(paths)
        assert stored == {
            (companies[first].id, d[0]),
            (companies[second].id, d[1]),
            (companies[second].id, d[2]),
            (companies[third].id, d[1]),
            (companies[third].id, d[2]),
            (companies[third].id, d[3]),
        }
        for (company_id, day), path in paths.items():
            service_id = next(k for k, c in companies.items() if c.id == company_id)
            assert path.startswith(f"{service_id}/{day.isoformat()}/")
            assert engine.blobs.get(path)

        bad = job_row(engine, broken)
        assert bad["status"] == "failed" and bad["attempts"] == 1
        assert bad["error_message"] == "bad job params: job params have no date"
        lost = job_row(engine, unknown)
        assert lost["status"] == "failed" and lost["error_message"] == "unknown company '9999'"
    finally:
        engine.stop()


@pytest.mark.parametrize(
    ("params", "company", "service", "days"),
    [
        ({"date": "2026-12-01"}, "column", None, 1),
        (
            {"company_id": "c0ffee00-0000-4000-8000-000000000001", "date": "2026-12-01"},
            "p",
            None,
            1,
        ),
        ({"serviceCompanyId": "1001", "date": "2026-12-01T00:00:00Z"}, None, "1001", 1),
        (
            {"ServiceCompanyId": 1001, "startDate": "2026-12-01", "endDate": "2026-12-07"},
            None,
            "1001",
            7,
        ),
        ({"company": "1001", "dates": ["2026-12-02", "2026-12-01", "2026-12-02"]}, None, "1001", 2),
        ('{"service-company-id": "1001", "start": "2026-12-01"}', None, "1001", 1),
    ],
)
def test_old_and_new_params_name_the_same_work(
    params: object, company: str | None, service: str | None, days: int
) -> None:
    column = uuid.UUID("c0ffee00-0000-4000-8000-000000000000") if company == "column" else None
    work = jobparams.schedule_work(column, params)
    assert len(work.days) == days and work.days == tuple(sorted(work.days))
    assert work.service_company_id == service
    if company == "column":
        assert work.company_id == column
    elif company == "p":
        assert work.company_id == uuid.UUID("c0ffee00-0000-4000-8000-000000000001")


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"serviceCompanyId": "1001"}, "no date"),
        ({"serviceCompanyId": "1001", "date": "tomorrow"}, "not a date"),
        (
            {"serviceCompanyId": "1001", "startDate": "2026-12-07", "endDate": "2026-12-01"},
            "before",
        ),
        (
            {"serviceCompanyId": "1001", "startDate": "2026-01-01", "endDate": "2026-12-31"},
            "more than 62",
        ),
        ({"date": "2026-12-01"}, "names no company"),
        (["2026-12-01"], "not a JSON object"),
    ],
)
def test_bad_params_say_what_is_wrong(params: object, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        jobparams.schedule_work(None, params)
