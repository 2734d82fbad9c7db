"""The status bar on top of every screen: where to go, mode, workers, health, sync times, targets.

A coloured line names the deployment (``OPSDASH_ENVIRONMENT``) and, in a console that is
not the terminal's own, the operator and their rights ("read-only"). A banner line
appears while the database cannot be reached or answers slowly, and while storage is
unusable (down, key refused, bucket made public).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import tzinfo

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Static

from opsdash.engine.freshness import SUMMARY_ORDER, Freshness
from opsdash.screens.messages import SystemStatus
from opsdash.screens.widgets.formatting import (
    NOTHING,
    age,
    clock,
    freshness_text,
    printable,
    safe_text,
    until,
)

SLOW_DATABASE_MS = 2000.0


def environment_class(environment: str) -> str:
    """The banner's colour: production red, staging amber, anything else neutral."""
    name = environment.strip().lower()
    if name.startswith("prod"):
        return "-production"
    if name.startswith("stag"):
        return "-staging"
    return "-other"


def identity_line(environment: str | None, operator: str, read_only: bool, console: str) -> Text:
    """ " PRODUCTION  operator ana (web) · read-only"; empty for the terminal's own console
    on an unnamed deployment."""
    text = Text()
    if environment:
        text.append(f" {printable(environment).upper()} ", style="bold")
    if read_only or console != "terminal":
        if text:
            text.append("  ")
        text.append(f"operator {printable(operator)} ({console})")
        text.append(" · read-only: you can look, not act" if read_only else " · full rights")
    return text


def freshness_line(counts: Counter[Freshness], theme_variables: Mapping[str, str]) -> Text:
    """ "41 on time · 2 late · 1 failing", each count in its state's colour."""
    text = Text()
    for state in SUMMARY_ORDER:
        if not counts[state]:
            continue
        if text:
            text.append(" · ", style="dim")
        styled = freshness_text(state, theme_variables)
        text.append(f"{counts[state]} {state.value}", style=styled.style)
    return text or Text("no companies", style="dim")


def short_database(url: str) -> str:
    """The database URL without noise: the SQLite file, or the Postgres host and name."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            return "sqlite " + url.removeprefix(prefix)
    return url.replace("postgresql+psycopg://", "postgres ")


def short_upstream(description: str) -> str:
    address = description.removeprefix("demo upstream ").removeprefix("MaidCentral ")
    return address.removeprefix("http://")


class StatusBar(Vertical):
    """Watches the app's ``system_status`` and renders it."""

    def compose(self) -> ComposeResult:
        yield Static(id="status-identity")
        with Horizontal(id="status-top"):
            yield Static(id="status-nav")
            yield Static(id="status-health")
        yield Static(id="status-where")
        yield Static(id="status-banner")

    def on_mount(self) -> None:
        self._show_identity()
        self.watch(self.app, "system_status", self._show, init=True)

    def _show_identity(self) -> None:
        engine = getattr(self.app, "engine", None)
        operator = getattr(self.app, "operator", None)
        environment = engine.settings.environment if engine is not None else None
        line = identity_line(
            environment,
            operator.name if operator else "",
            bool(operator and operator.read_only),
            getattr(self.app, "console_kind", "terminal"),
        )
        identity = self.query_one("#status-identity", Static)
        identity.update(line)
        identity.display = bool(line)
        if environment:
            identity.add_class(environment_class(environment))

    def show_latest(self) -> None:
        """Render again (the screen became current: its link in the nav must light up)."""
        self._show(getattr(self.app, "system_status", None))

    def _show(self, status: SystemStatus | None) -> None:
        self.query_one("#status-nav", Static).update(self._nav(status))
        health = self.query_one("#status-health", Static)
        where = self.query_one("#status-where", Static)
        banner = self.query_one("#status-banner", Static)
        if status is None:
            health.update(Text("connecting…", style="dim"))
            where.update("")
            banner.display = False
            return
        zone: tzinfo | None = getattr(self.app, "display_zone", None)
        health.update(self._health(status))
        where.update(self._where(status, zone, self.app.theme_variables))
        problem = self._problem(status, zone)
        banner.display = problem is not None
        banner.update(problem or "")
        self.set_class(not status.database_ok, "-database-down")
        self.set_class(not status.engine.storage.ok, "-storage-down")

    def _nav(self, status: SystemStatus | None) -> str:
        # Imported here: the catalog imports the screens, which import this bar.
        from opsdash.screens.catalog import SCREEN_LIST

        mode = status.engine.mode if status else None
        badge = f"[reverse b] {escape(printable(str(mode).upper()))} [/] " if mode else ""
        current = self.app.current_mode
        links = []
        for entry in SCREEN_LIST:
            style = "b u" if entry.name == current else "dim"
            link = f"app.switch_mode('{entry.name}')"
            links.append(f"[@click={link}][{style}]{entry.key} {entry.label}[/][/]")
        return badge + "  ".join(links)

    @staticmethod
    def _health(status: SystemStatus) -> Text:
        engine = status.engine
        text = Text(justify="right")
        if engine.paused:
            text.append(" workers PAUSED ", style="reverse bold")
        else:
            text.append(f"workers {engine.workers_busy}/{engine.workers_total} busy")
        text.append("  db ", style="dim")
        if status.database_ok:
            text.append("● ok", style="bold")
        else:
            text.append(" ✖ down ", style="bold reverse")
        storage = engine.storage
        if storage.public:
            text.append("  storage ", style="dim")
            text.append(" ✖ bucket PUBLIC ", style="bold reverse")
        elif not storage.ok:
            text.append("  storage ", style="dim")
            text.append(" ✖ down ", style="bold reverse")
        return text

    @staticmethod
    def _where(
        status: SystemStatus, zone: tzinfo | None, theme_variables: Mapping[str, str]
    ) -> Text:
        engine, now, times = status.engine, status.checked_at, status.sync_times
        text = Text()
        next_sync = engine.next_sync_at
        text.append("next sync ", style="dim")
        text.append(f"{clock(next_sync, zone)} ({until(next_sync, now)})" if next_sync else NOTHING)
        text.append(" · last queued ", style="dim")
        last = times.last_queued_at if times else None
        text.append(f"{age(last, now)} ago" if last else NOTHING)
        text.append(" · ", style="dim")
        text.append(printable(short_database(engine.database)))
        text.append(" · upstream ", style="dim")
        text.append(printable(short_upstream(engine.upstream)))
        if status.freshness is not None:
            text.append(" · ", style="dim")
            text.append(freshness_line(status.freshness, theme_variables))
        return text

    @staticmethod
    def _problem(status: SystemStatus, zone: tzinfo | None) -> Text | None:
        if not status.database_ok:
            since = clock(status.down_since, zone) if status.down_since else "now"
            # "database unreachable: …", "disk full: …", "database is locked …": the
            # operator's next step differs, so the kind of trouble leads.
            problem = status.database_error or "database unreachable: no answer"
            return safe_text(
                f"{problem[:1].upper()}{problem[1:]} (since {since}). "
                "Retrying every second; tables show the last data read."
            )
        storage = status.engine.storage
        if not storage.ok:
            since = clock(storage.since, zone) if storage.since else "now"
            what = "Storage bucket is public" if storage.public else "Storage unusable"
            return Text(
                f"{what} since {since}: {storage.reason}. Workers wait and resume by "
                "themselves; no job attempt is spent."
            )
        if status.database_ms > SLOW_DATABASE_MS:
            return Text(
                f"Database slow: the status check took {status.database_ms / 1000:.1f} s "
                "(or is still waiting); tables may lag."
            )
        return None
