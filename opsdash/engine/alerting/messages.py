"""What an alert message says: a subject and plain text for people, a JSON payload for machines."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from opsdash.engine.alerting.channels import Message

# A summary names this many alerts and counts the rest.
SUMMARY_NAMES = 20

HEADLINES = {
    "opened": "ALERT",
    "escalated": "ALERT (worse)",
    "reminder": "STILL OPEN",
    "resolved": "RESOLVED",
    "test": "TEST",
}


class AlertLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def opened_at(self) -> datetime: ...
    @property
    def detail(self) -> dict[str, Any]: ...


def single(event: str, alert: AlertLike, *, now: datetime) -> Message:
    headline = HEADLINES.get(event, event.upper())
    subject = f"[opsdash] {headline}: {alert.subject}"
    lines = [f"{headline}: {alert.subject}", ""]
    lines += [
        f"{name}: {value}" for name, value in alert.detail.items() if value not in (None, [], "")
    ]
    lines += [
        "",
        f"open since {alert.opened_at:%Y-%m-%d %H:%M} UTC",
        f"sent by {socket.gethostname()} at {now:%Y-%m-%d %H:%M:%S} UTC",
    ]
    return Message(subject, "\n".join(lines), _payload(event, [alert], now))


def summary(event: str, alerts: Sequence[AlertLike], *, now: datetime) -> Message:
    """Many alerts at once (an upstream outage): one message, not one per company."""
    headline = HEADLINES.get(event, event.upper())
    kinds: dict[str, int] = {}
    for alert in alerts:
        kinds[alert.kind] = kinds.get(alert.kind, 0) + 1
    counts = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(kinds.items()))
    subject = f"[opsdash] {headline}: {len(alerts)} alerts ({counts})"
    lines = [f"{headline}: {len(alerts)} alerts at once ({counts})", ""]
    lines += [f"- {alert.subject}" for alert in alerts[:SUMMARY_NAMES]]
    if len(alerts) > SUMMARY_NAMES:
        lines.append(f"… and {len(alerts) - SUMMARY_NAMES} more")
    lines += ["", f"sent by {socket.gethostname()} at {now:%Y-%m-%d %H:%M:%S} UTC"]
    return Message(subject, "\n".join(lines), _payload(event, alerts, now, summary=True))


def test_message(*, now: datetime) -> Message:
    subject = "[opsdash] TEST: alerts reach this channel"
    body = (
        "This is a test message from opsdash (`opsdash alerts test`).\n"
        f"sent by {socket.gethostname()} at {now:%Y-%m-%d %H:%M:%S} UTC"
    )
    return Message(
        subject,
        body,
        {"event": "test", "alerts": [], "host": socket.gethostname(), "sent_at": now.isoformat()},
    )


def _payload(
    event: str, alerts: Sequence[AlertLike], now: datetime, *, summary: bool = False
) -> dict[str, Any]:
    return {
        "event": event,
        "summary": summary,
        "host": socket.gethostname(),
        "sent_at": now.isoformat(),
        "alerts": [
            {
                "key": alert.key,
                "kind": alert.kind,
                "subject": alert.subject,
                "level": alert.level,
                "opened_at": alert.opened_at.isoformat(),
                "detail": alert.detail,
            }
            for alert in alerts
        ],
    }
