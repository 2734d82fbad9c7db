"""Where alert messages go: a webhook (generic JSON or Slack's ``text`` form) and SMTP e-mail.

A channel sends one message or raises :class:`DeliveryError` with a short reason;
the outbox decides when to try again.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx

WEBHOOK_TIMEOUT_S = 10.0
SMTP_TIMEOUT_S = 15.0


class DeliveryError(RuntimeError):
    """A message could not be delivered; the text is short enough for a log line."""


@dataclass(frozen=True)
class Message:
    subject: str
    body: str
    payload: dict[str, Any]


class Channel(Protocol):
    name: str

    def send(self, message: Message) -> None: ...

    def describe(self) -> str: ...


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, *, slack: bool = False, timeout_s: float = WEBHOOK_TIMEOUT_S):
        self.url = url
        self.slack = slack
        self.timeout_s = timeout_s

    def describe(self) -> str:
        # Only the address: a webhook URL's path is often its secret.
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"webhook {parts.scheme}://{parts.hostname}{port}"

    def send(self, message: Message) -> None:
        text = f"*{message.subject}*\n{message.body}" if self.slack else message.body
        body = {"text": text} if self.slack else {**message.payload, "text": text}
        try:
            response = httpx.post(self.url, json=body, timeout=self.timeout_s)
        except httpx.HTTPError as error:
            raise DeliveryError(f"{type(error).__name__}: {error}") from None
        if response.status_code >= 300:
            first_line = (
                response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
            )
            raise DeliveryError(f"HTTP {response.status_code} {first_line}".strip())


class EmailChannel:
    name = "email"

    def __init__(self, smtp_url: str, recipients: list[str], sender: str | None = None):
        parts = urlsplit(smtp_url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"SMTP URL must be smtp://host[:port] or smtps://…, not {smtp_url!r}")
        self.tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.recipients = recipients
        self.sender = sender or f"opsdash@{socket.gethostname()}"

    def describe(self) -> str:
        return f"e-mail to {', '.join(self.recipients)} via {self.host}:{self.port}"

    def send(self, message: Message) -> None:
        email = EmailMessage()
        email["Subject"] = message.subject
        email["From"] = self.sender
        email["To"] = ", ".join(self.recipients)
        email.set_content(message.body)
        try:
            with self._connect() as smtp:
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(email)
        except (smtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"{type(error).__name__}: {error}") from None

    def _connect(self) -> smtplib.SMTP:
        if self.tls:
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=SMTP_TIMEOUT_S, context=ssl.create_default_context()
            )
        smtp = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_S)
        smtp.ehlo()
        # Port 587 and most relays offer STARTTLS; credentials never go out in clear text.
        if smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        elif self.username:
            smtp.close()
            raise DeliveryError(f"{self.host}:{self.port} offers no STARTTLS; refusing to log in")
        return smtp
