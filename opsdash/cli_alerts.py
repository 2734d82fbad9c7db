"""``opsdash alerts test``: prove that every configured alert channel reaches a person."""

from __future__ import annotations

import argparse

from opsdash.config import Settings
from opsdash.engine.alerting.service import configured_channels, send_test
from opsdash.engine.sqltypes import utcnow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    actions.add_parser("test", help="send a test message to every configured channel")


def run(settings: Settings, args: argparse.Namespace) -> int:
    del args  # one action so far: test
    try:
        channels = configured_channels(settings)
    except ValueError as error:
        print(f"opsdash: {error}")
        return 2
    if not channels:
        print(
            "opsdash: no alert channel configured: set OPSDASH_ALERT_WEBHOOK_URL, or "
            "OPSDASH_ALERT_EMAIL_TO with OPSDASH_SMTP_URL"
        )
        return 2
    results = send_test(channels, now=utcnow())
    for channel, failure in results.items():
        print(f"✓ {channel}" if failure is None else f"✗ {channel}: {failure}")
    return 0 if all(failure is None for failure in results.values()) else 1
