"""Alerts delivered to a real HTTP receiver and a real SMTP server, on SQLite and Postgres:
dedupe, escalation, reminders, resolve, summaries, retries while the receiver is down,
the database's own outage, and exactly-once delivery from two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from opsdash.config import Settings
from opsdash.engine.alerting import outbox
from opsdash.engine.alerting.service import AlertService, StorageHealth
from opsdash.engine.db import Database, connect, create_schema
from opsdash.engine.models import BackgroundJob, Company, JobStatus, JobType, ScheduleData
from tests.alert_receivers import SmtpReceiver, WebhookReceiver
from tests.conftest import PostgresSchemas

NOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)
TODAY = date(2026, 11, 28)
DAYS = 2


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def alert_settings(db_url: str, tmp_path: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "database_url": db_url,
        "demo": True,  # a test database, no MaidCentral: the demo asked for
        "data_dir": tmp_path / "data",
        "days_ahead": DAYS,
        "freshness_cadence_s": 3600,
        "freshness_grace_s": 900,
        "alert_retry_base_s": 10,
        "alert_summary_threshold": 3,
        "alert_outage_s": 60,
    }
    return Settings(**{**defaults, **values})


def add(db: Database, *rows: Any) -> None:
    with db.session() as session:
        session.add_all(rows)
        session.commit()


def company(name: str, service_id: str) -> Company:
    return Company(
        name=name, service_company_id=service_id, timezone="UTC", created_at=NOW - timedelta(days=9)
    )


def synced(db: Database, owner: Company, at: datetime) -> None:
    """Every day of the company's window confirmed by a sync at ``at``."""
    with db.session() as session:
        for offset in range(DAYS):
            day = TODAY + timedelta(days=offset)
            row = session.exec(
                select(ScheduleData).where(
                    ScheduleData.company_id == owner.id, ScheduleData.date == day
                )
            ).first()
            if row is None:
                row = ScheduleData(
                    company_id=owner.id,
                    date=day,
                    storage_path=f"{owner.service_company_id}/{day}/schedule.json",
                    file_size_kb=1.0,
                    checksum="0" * 64,
                    updated_at=at,
                )
            row.synced_at = at
            session.add(row)
        session.commit()


def service(db: Database, settings: Settings, clock: Clock, **health: Any) -> AlertService:
    return AlertService(
        db,
        settings,
        storage_health=lambda: StorageHealth(**{"reachable": True, **health}),
        clock=clock,
    )


def events(bodies: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    return [(body["event"], [alert["subject"] for alert in body["alerts"]]) for body in bodies]


def test_nothing_is_sent_or_recorded_unless_a_channel_is_configured(
    db: Database, tmp_path: Path
) -> None:
    acme = company("Acme", "1001")
    add(db, acme)
    synced(db, acme, NOW - timedelta(hours=3))
    alerts = service(db, alert_settings("sqlite://", tmp_path), Clock(NOW))
    assert not alerts.enabled
    assert alerts.tick().transitions is None
    assert outbox.recent(db) == []


def test_a_company_turning_late_is_sent_once_reminded_escalated_and_resolved(
    db: Database, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    clock = Clock(NOW)
    settings = alert_settings("sqlite://", tmp_path, alert_webhook_url=webhook.url)
    acme = company("Acme", "1001")
    add(db, acme)
    synced(db, acme, NOW - timedelta(minutes=80))  # past one cadence plus the grace
    alerts = service(db, settings, clock)

    alerts.tick()
    alerts.tick()  # the same condition again: no second message
    assert events(webhook.bodies) == [("opened", ["Acme (1001) is late"])]
    body = webhook.bodies[0]
    assert body["alerts"][0]["detail"]["company"] == "1001"
    assert body["text"].startswith("ALERT: Acme (1001) is late")

    clock.advance(hours=1)  # now older than two cadences: failing
    alerts.tick()
    assert events(webhook.bodies)[-1] == ("escalated", ["Acme (1001) is failing"])

    clock.advance(hours=6)  # the reminder interval
    alerts.tick()
    alerts.tick()
    assert [event for event, _ in events(webhook.bodies)] == ["opened", "escalated", "reminder"]

    synced(db, acme, clock.now)
    alerts.tick()
    alerts.tick()
    assert events(webhook.bodies)[-1] == ("resolved", ["Acme (1001) is failing"])
    assert len(webhook.bodies) == 4


def test_many_companies_failing_at_once_send_one_summary(
    db: Database, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    clock = Clock(NOW)
    settings = alert_settings("sqlite://", tmp_path, alert_webhook_url=webhook.url)
    owners = [company(f"Company {n}", f"{2000 + n}") for n in range(8)]
    add(db, *owners)
    for owner in owners:
        synced(db, owner, NOW - timedelta(hours=5))
    alerts = service(db, settings, clock)
    alerts.tick()
    assert len(webhook.bodies) == 1
    (summary,) = webhook.bodies
    assert summary["summary"] is True and summary["event"] == "opened"
    assert len(summary["alerts"]) == 8
    assert "8 alerts" in summary["text"]

    for owner in owners:
        synced(db, owner, clock.now)
    alerts.tick()
    assert [(body["event"], body["summary"]) for body in webhook.bodies][-1] == ("resolved", True)


def test_failed_and_rescued_jobs_raise_alerts_that_clear(
    db: Database, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    clock = Clock(NOW)
    settings = alert_settings(
        "sqlite://", tmp_path, alert_webhook_url=webhook.url, alert_summary_threshold=10
    )
    acme = company("Acme", "1001")
    add(db, acme)
    synced(db, acme, NOW - timedelta(minutes=5))
    failed = BackgroundJob(
        job_type=JobType.SYNC_SCHEDULE,
        company_id=acme.id,
        status=JobStatus.FAILED,
        params={"date": TODAY.isoformat()},
        attempts=3,
        error_message="HTTP 500 from MaidCentral",
        created_at=NOW - timedelta(minutes=3),
        scheduled_at=NOW - timedelta(minutes=3),
    )
    rescued = BackgroundJob(
        job_type=JobType.SYNC_USERS,
        status=JobStatus.COMPLETED,
        rescue_count=1,
        created_at=NOW - timedelta(minutes=4),
        scheduled_at=NOW - timedelta(minutes=2),
    )
    add(db, failed, rescued)
    alerts = service(db, settings, clock)
    alerts.tick()
    subjects = sorted(subject for _, names in events(webhook.bodies) for subject in names)
    assert subjects == [
        "1 job(s) rescued after their worker lost its lease",
        "Acme (1001) is failing",
        f"sync of Acme (1001) for {TODAY} failed",
    ]
    job_alert = next(b for b in webhook.bodies if b["alerts"][0]["kind"] == "job_failed")
    assert job_alert["alerts"][0]["detail"]["error"] == "HTTP 500 from MaidCentral"

    add(
        db,
        BackgroundJob(
            job_type=JobType.SYNC_SCHEDULE,
            company_id=acme.id,
            status=JobStatus.COMPLETED,
            params={"date": TODAY.isoformat()},
            created_at=NOW - timedelta(minutes=1),
            scheduled_at=NOW - timedelta(minutes=1),
        ),
    )
    clock.advance(minutes=20)  # past the rescue alert's quiet period
    synced(db, acme, clock.now)
    alerts.tick()
    resolved = [names for event, names in events(webhook.bodies) if event == "resolved"]
    assert sorted(name for names in resolved for name in names) == subjects


def test_storage_down_longer_than_the_setting_and_a_public_bucket_alert(
    db: Database, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    clock = Clock(NOW)
    settings = alert_settings("sqlite://", tmp_path, alert_webhook_url=webhook.url)
    health: dict[str, Any] = {"reachable": False, "reason": "ConnectError: refused"}
    alerts = AlertService(db, settings, storage_health=lambda: StorageHealth(**health), clock=clock)
    alerts.tick()
    assert webhook.bodies == []  # not yet down for alert_outage_s
    clock.advance(seconds=61)
    alerts.tick()
    assert events(webhook.bodies) == [
        ("opened", ["storage unreachable since 2026-11-28 12:30:00 UTC"])
    ]
    health.update(reachable=True, reason="", public_bucket="schedule-data")
    clock.advance(seconds=30)
    alerts.tick()
    assert sorted(events(webhook.bodies)[1:]) == [
        ("opened", ["storage bucket 'schedule-data' is public: anyone can read the schedules"]),
        ("resolved", ["storage unreachable since 2026-11-28 12:30:00 UTC"]),
    ]


def test_delivery_is_retried_with_backoff_while_the_receiver_is_down(
    db: Database, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    clock = Clock(NOW)
    settings = alert_settings("sqlite://", tmp_path, alert_webhook_url=webhook.url)
    acme = company("Acme", "1001")
    add(db, acme)
    synced(db, acme, NOW - timedelta(hours=5))
    alerts = service(db, settings, clock)

    webhook.stop()
    assert alerts.tick().failed == 1
    second = alerts.tick()  # backing off: not due yet
    assert (second.sent, second.failed) == (0, 0)
    (delivery,) = outbox.recent(db)
    assert delivery.status == "pending" and delivery.attempts == 1
    assert "ConnectError" in (delivery.error or "")

    webhook.status = 503
    webhook.start()
    clock.advance(seconds=20)
    result = alerts.tick()
    assert (result.sent, result.failed) == (0, 1)
    assert outbox.recent(db)[0].error == "HTTP 503 <html>bad gateway</html>"

    webhook.status = 200
    clock.advance(minutes=15)
    assert alerts.tick().sent == 1
    assert events(webhook.bodies) == [("opened", ["Acme (1001) is failing"])]
    assert outbox.recent(db)[0].status == "sent"
    clock.advance(minutes=15)
    assert alerts.tick().sent == 0


def test_alerts_by_email_over_smtp(db: Database, tmp_path: Path, smtp: SmtpReceiver) -> None:
    clock = Clock(NOW)
    settings = alert_settings(
        "sqlite://",
        tmp_path,
        alert_email_to="ops@example.com, oncall@example.com",
        smtp_url=smtp.url,
        alert_email_from="opsdash@example.com",
    )
    acme = company("Acme", "1001")
    add(db, acme)
    synced(db, acme, NOW - timedelta(minutes=80))
    assert service(db, settings, clock).tick().sent == 1
    (mail,) = smtp.wait_for(1)
    assert mail["Subject"] == "[opsdash] ALERT: Acme (1001) is late"
    assert mail["To"] == "ops@example.com, oncall@example.com"
    assert "company: 1001" in mail.get_payload()


def test_a_long_database_outage_is_announced_directly_and_its_end_too(
    tmp_path: Path, webhook: WebhookReceiver, pg_schemas: PostgresSchemas
) -> None:
    from tests.test_console_outage import TcpProxy

    proxy = TcpProxy(("127.0.0.1", 5432))
    url = pg_schemas.new_url().replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    db = connect(url)
    create_schema(db)
    try:
        clock = Clock(NOW)
        alerts = service(db, alert_settings(url, tmp_path, alert_webhook_url=webhook.url), clock)
        alerts.tick()
        proxy.cut()
        alerts.tick()
        clock.advance(seconds=30)
        alerts.tick()
        assert webhook.bodies == []
        clock.advance(seconds=31)
        alerts.tick()
        alerts.tick()
        assert events(webhook.bodies) == [
            ("opened", ["database unreachable since 2026-11-28 12:30:00 UTC"])
        ]
        proxy.restore()
        clock.advance(seconds=30)
        alerts.tick()
        assert [event for event, _ in events(webhook.bodies)] == ["opened", "resolved"]
    finally:
        proxy.cut()
        db.dispose()


EVALUATOR = """
import sys, time
from datetime import timedelta
from opsdash.config import Settings
from opsdash.engine.alerting.service import AlertService, StorageHealth
from opsdash.engine.db import connect

settings = Settings(database_url=sys.argv[1], demo=True, alert_webhook_url=sys.argv[2],
                    days_ahead=2, freshness_cadence_s=3600, alert_summary_threshold=100)
db = connect(settings.effective_database_url)
alerts = AlertService(db, settings, storage_health=lambda: StorageHealth(True))
print("ready", flush=True)
sys.stdin.readline()  # both processes start evaluating together
for _ in range(int(sys.argv[3])):
    alerts.tick()
db.dispose()
"""


@pytest.mark.slow
def test_two_processes_send_each_alert_exactly_once(
    db_url: str, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    db = connect(db_url)
    create_schema(db)
    now = datetime.now(UTC)
    owners = [company(f"Company {n}", f"{3000 + n}") for n in range(12)]
    for owner in owners:
        owner.created_at = now - timedelta(days=3)
    add(db, *owners)
    with db.session() as session:
        for owner in owners:
            for offset in range(-1, 3):  # covers the window whatever the UTC hour
                day = now.date() + timedelta(days=offset)
                session.add(
                    ScheduleData(
                        company_id=owner.id,
                        date=day,
                        storage_path=f"{owner.service_company_id}/{day}/schedule.json",
                        file_size_kb=1.0,
                        checksum="0" * 64,
                        updated_at=now - timedelta(hours=5),
                    )
                )
        session.commit()
    db.dispose()

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EVALUATOR, db_url, webhook.url, "15"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        assert process.wait(timeout=120) == 0
    subjects = [subject for _, names in events(webhook.bodies) for subject in names]
    assert sorted(subjects) == sorted(f"Company {n} ({3000 + n}) is failing" for n in range(12))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opsdash", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _cli_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSDASH_", "DATABASE_"))}
    return {**env, "OPSDASH_DATA_DIR": str(tmp_path / "data"), **values}


def test_alerts_test_reaches_every_channel(
    tmp_path: Path, webhook: WebhookReceiver, smtp: SmtpReceiver
) -> None:
    env = _cli_env(
        tmp_path,
        OPSDASH_ALERT_WEBHOOK_URL=webhook.url,
        OPSDASH_ALERT_EMAIL_TO="ops@example.com",
        OPSDASH_SMTP_URL=smtp.url,
    )
    result = _cli("alerts", "test", env=env)
    assert result.returncode == 0, result.stderr
    assert f"✓ webhook http://127.0.0.1:{webhook.port}" in result.stdout
    assert "secret-path" not in result.stdout  # a webhook's path is its secret
    assert f"✓ e-mail to ops@example.com via 127.0.0.1:{smtp.port}" in result.stdout
    assert webhook.bodies[0]["event"] == "test"
    assert smtp.wait_for(1)[0]["Subject"] == "[opsdash] TEST: alerts reach this channel"


def test_alerts_test_fails_when_a_channel_fails_or_none_is_configured(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    webhook.stop()
    failing = _cli("alerts", "test", env=_cli_env(tmp_path, OPSDASH_ALERT_WEBHOOK_URL=webhook.url))
    assert failing.returncode == 1
    assert "✗ webhook" in failing.stdout and "ConnectError" in failing.stdout
    none = _cli("alerts", "test", env=_cli_env(tmp_path))
    assert none.returncode == 2
    assert "no alert channel configured" in none.stdout
    half = _cli("alerts", "test", env=_cli_env(tmp_path, OPSDASH_ALERT_EMAIL_TO="a@example.com"))
    assert half.returncode == 2
    assert "OPSDASH_SMTP_URL is not" in half.stdout
