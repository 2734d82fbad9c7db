"""The alerting loop: evaluate the conditions, record the transitions, deliver the outbox.

It runs on the engine's scheduler thread every ``alert_interval_s`` seconds, never
on a worker, so a slow mail server or a dead webhook never slows a sync. With
nothing configured (no webhook, no e-mail) it does nothing at all.

The database decides who sends what, with one exception: while the database
itself is unreachable nothing can be recorded, so each process that sees a
long database outage says so directly, once, and says when it is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from opsdash.config import Settings
from opsdash.engine import freshness, queue
from opsdash.engine.alerting import conditions, episodes, messages, outbox
from opsdash.engine.alerting.channels import (
    Channel,
    DeliveryError,
    EmailChannel,
    Message,
    WebhookChannel,
)
from opsdash.engine.db import Database
from opsdash.engine.sqltypes import utcnow

log = logging.getLogger("opsdash.alerts")

# The kinds whose episodes live in the database (all but the database's own outage).
RECORDED_KINDS = (
    conditions.COMPANY,
    conditions.JOB_FAILED,
    conditions.RESCUED,
    conditions.STORAGE,
    conditions.BUCKET_PUBLIC,
)


def configured_channels(settings: Settings) -> list[Channel]:
    channels: list[Channel] = []
    if settings.alert_webhook_url:
        channels.append(
            WebhookChannel(
                settings.alert_webhook_url, slack=settings.alert_webhook_format == "slack"
            )
        )
    if settings.alert_email_to:
        if not settings.smtp_url:
            raise ValueError("OPSDASH_ALERT_EMAIL_TO is set but OPSDASH_SMTP_URL is not")
        channels.append(
            EmailChannel(settings.smtp_url, settings.alert_email_to, settings.alert_email_from)
        )
    return channels


def send_test(channels: Sequence[Channel], *, now: datetime) -> dict[str, str | None]:
    """Send a test message to every channel now; channel → None, or why it failed."""
    results: dict[str, str | None] = {}
    message = messages.test_message(now=now)
    for channel in channels:
        try:
            channel.send(message)
            results[channel.describe()] = None
        except DeliveryError as error:
            results[channel.describe()] = str(error)
    return results


@dataclass(frozen=True)
class StorageHealth:
    """What the engine knows of its blob store right now."""

    reachable: bool
    reason: str = ""
    public_bucket: str | None = None


class OutageWatch:
    """Since when something has been unreachable, from this process's point of view."""

    def __init__(self) -> None:
        self.down_since: datetime | None = None
        self.reason = ""
        self.announced = False

    def observe(self, ok: bool, now: datetime, reason: str = "") -> None:
        if ok:
            self.down_since = None
            self.reason = ""
        elif self.down_since is None:
            self.down_since, self.reason = now, reason


@dataclass(frozen=True)
class TickResult:
    transitions: episodes.Transitions | None
    sent: int
    failed: int


class AlertService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        storage_health: Callable[[], StorageHealth],
        channels: Sequence[Channel] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.storage_health = storage_health
        self.channels = {
            channel.name: channel
            for channel in (channels if channels is not None else configured_channels(settings))
        }
        self.clock = clock
        self.worker = queue.new_worker_id()
        self.database = OutageWatch()
        self.storage = OutageWatch()
        self.policy = episodes.Policy(
            channels=tuple(self.channels),
            reminder=timedelta(hours=settings.alert_reminder_hours),
            summary_threshold=settings.alert_summary_threshold,
            max_attempts=settings.alert_delivery_attempts,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def tick(self) -> TickResult:
        """One round: evaluate, then deliver what is due. Never raises."""
        if not self.enabled:
            return TickResult(None, 0, 0)
        now = self.clock()
        try:
            transitions = self.evaluate(now)
        except Exception as error:  # the database is down: nothing can be recorded
            self._database_down(now, error)
            return TickResult(None, 0, 0)
        self._database_up(now)
        sent, failed = self.deliver(now)
        return TickResult(transitions, sent, failed)

    def evaluate(self, now: datetime) -> episodes.Transitions:
        rows = freshness.configured(self.db, self.settings, now=now)
        health = self.storage_health()
        self.storage.observe(health.reachable, now, health.reason)
        outage_after = timedelta(seconds=self.settings.alert_outage_s)
        current = [
            *conditions.company_conditions(rows),
            *conditions.failed_job_conditions(self.db, rows, now=now),
            *conditions.rescue_condition(self.db, now=now),
            *conditions.outage_condition(
                conditions.STORAGE,
                "storage",
                self.storage.down_since,
                now=now,
                after=outage_after,
                reason=self.storage.reason,
            ),
            *conditions.bucket_condition(health.public_bucket),
        ]
        transitions = episodes.apply(
            self.db, current, kinds=RECORDED_KINDS, now=now, policy=self.policy
        )
        if transitions.count:
            log.info(
                "alerts: %d opened, %d escalated, %d reminded, %d resolved",
                len(transitions.opened),
                len(transitions.escalated),
                len(transitions.reminded),
                len(transitions.resolved),
            )
        return transitions

    def deliver(self, now: datetime | None = None) -> tuple[int, int]:
        """Send what is due in the outbox; returns (sent, failed attempts)."""
        now = now or self.clock()
        sent = failed = 0
        for delivery in outbox.claim(self.db, self.worker, now=now):
            channel = self.channels.get(delivery.channel)
            try:
                if channel is None:
                    raise DeliveryError(f"channel {delivery.channel!r} is not configured here")
                channel.send(delivery.message)
            except DeliveryError as error:
                failed += 1
                outbox.mark_failed(
                    self.db,
                    delivery,
                    self.worker,
                    str(error),
                    retry_base_s=self.settings.alert_retry_base_s,
                    now=now,
                )
                log.warning(
                    "alert to %s not delivered (attempt %d of %d): %s",
                    delivery.channel,
                    delivery.attempts,
                    delivery.max_attempts,
                    error,
                )
            else:
                sent += 1
                outbox.mark_sent(self.db, delivery, self.worker, now=now)
                log.info("alert sent to %s: %s", delivery.channel, delivery.subject)
        return sent, failed

    # --- the database's own outage, announced by each process that sees it ----------

    def _database_down(self, now: datetime, error: Exception) -> None:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        self.database.observe(False, now, reason)
        down_since = self.database.down_since
        assert down_since is not None
        if self.database.announced or now - down_since < timedelta(
            seconds=self.settings.alert_outage_s
        ):
            return
        condition = conditions.outage_condition(
            conditions.DATABASE, "database", down_since, now=now, after=timedelta(0), reason=reason
        )[0]
        if self._send_directly(
            messages.single("opened", _Episode.of(condition, down_since), now=now)
        ):
            self.database.announced = True

    def _database_up(self, now: datetime) -> None:
        if self.database.announced and self.database.down_since is not None:
            condition = conditions.outage_condition(
                conditions.DATABASE,
                "database",
                self.database.down_since,
                now=now,
                after=timedelta(0),
            )[0]
            episode = _Episode.of(condition, self.database.down_since)
            if not self._send_directly(messages.single("resolved", episode, now=now)):
                return  # try again next round; the outage stays announced
            self.database.announced = False
        self.database.observe(True, now)

    def _send_directly(self, message: Message) -> bool:
        delivered = False
        for channel in self.channels.values():
            try:
                channel.send(message)
                delivered = True
            except DeliveryError as error:
                log.warning("alert to %s not delivered: %s", channel.name, error)
        return delivered


@dataclass(frozen=True)
class _Episode:
    key: str
    kind: str
    subject: str
    level: str
    opened_at: datetime
    detail: dict[str, object]

    @classmethod
    def of(cls, condition: conditions.Condition, opened_at: datetime) -> _Episode:
        return cls(
            condition.key,
            condition.kind,
            condition.subject,
            condition.level,
            opened_at,
            dict(condition.detail),
        )
