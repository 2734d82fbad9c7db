"""The operator console: a Textual app that hosts the engine and shows the whole system.

``run_console`` builds the Engine, starts its scheduler and workers, runs the app,
and stops the engine when the operator quits, so no job is left ``running``.
The app itself never talks to the database on the UI thread: screens refresh in
thread workers, operator actions run in thread workers, and results come back
as messages (see :mod:`opsdash.screens.base` and :mod:`opsdash.screens.messages`).
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo

from sqlalchemy.exc import SQLAlchemyError
from textual import work
from textual.app import App
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from opsdash.config import Settings
from opsdash.engine import freshness, queries
from opsdash.engine.audit import ConsoleKind
from opsdash.engine.db import describe_error
from opsdash.engine.freshness import Freshness
from opsdash.engine.operator_actions import ActionRefused, OperatorActions
from opsdash.engine.operators import TERMINAL_OPERATOR, Operator, find_operator
from opsdash.engine.runtime import Engine
from opsdash.screens import catalog
from opsdash.screens.actions import hide_state_changing
from opsdash.screens.commands import OpsdashCommands
from opsdash.screens.log import LogScreen
from opsdash.screens.log_handler import AttachedLogHandler, ConsoleLogHandler
from opsdash.screens.messages import (
    ActionDone,
    LogLine,
    LogLinesArrived,
    StatusLoaded,
    SystemStatus,
    TogglesReady,
)
from opsdash.screens.toggles import TogglesScreen
from opsdash.screens.widgets.formatting import printable
from opsdash.screens.widgets.status_bar import SLOW_DATABASE_MS
from opsdash.shared_reads import ConsoleReads, DirectReader, reader_for

LOG_LINES_KEPT = 500
STATUS_GROUP = "status"
ACTION_GROUP = "action"
FRESHNESS_EVERY = timedelta(seconds=15)

Clock = Callable[[], datetime]
OperatorCall = Callable[[OperatorActions], ActionDone]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OpsdashApp(App[None]):
    """The console of one operator: the terminal's (full rights) or a signed-in one's."""

    TITLE = "opsdash"
    CSS_PATH = catalog.stylesheets()
    MODES = catalog.modes()
    DEFAULT_MODE = catalog.DEFAULT_SCREEN
    COMMANDS = App.COMMANDS | {OpsdashCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = catalog.app_bindings()

    system_status: reactive[SystemStatus | None] = reactive(None, always_update=True)

    def __init__(
        self,
        engine: Engine,
        *,
        operator: Operator = TERMINAL_OPERATOR,
        console: ConsoleKind = "terminal",
        clock: Clock = _utc_now,
        display_zone: tzinfo | None = None,
        poll_interval_s: float = 1.0,
        reads: ConsoleReads | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.operator = operator
        self.console_kind: ConsoleKind = console
        self.actions = OperatorActions(engine, operator, console)
        """Every state-changing action goes through here (refused and audited there)."""
        if operator.read_only:
            hide_state_changing(self)
        self.reads = reads or ConsoleReads(DirectReader(engine.db, engine.settings))
        """What the screens read on a refresh (a browser console's come from opsdash web)."""
        self._clock = clock
        self.display_zone = display_zone
        """Where times are shown; None means the operator's local zone."""
        self.poll_interval_s = poll_interval_s
        self.log_lines: deque[LogLine] = deque(maxlen=LOG_LINES_KEPT)
        self._log_handler = ConsoleLogHandler(self)
        self._attached_log = AttachedLogHandler(self._log_handler)
        self._next_status: Timer | None = None
        self._down_since: datetime | None = None
        self._preview_request: tuple[uuid.UUID, date | None] | None = None
        self._status_started: datetime | None = None
        self._freshness: tuple[datetime | None, Counter[Freshness] | None] = (None, None)

    def now(self) -> datetime:
        return self._clock()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast is plain text, control characters escaped, whatever ``markup`` says.

        Toasts name companies and days and carry error messages, all of which come from
        the upstream or the database; none of the console's own toasts uses markup.
        """
        del markup  # screens' ``Widget.notify`` always passes True
        super().notify(
            printable(message, multiline=True),
            title=printable(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    # --- lifecycle -------------------------------------------------------------------

    def on_mount(self) -> None:
        self._attached_log.attach()
        self.refresh_status()
        # A query that hangs never raises; the watchdog notices that the check is overdue.
        self.set_interval(1.0, self._watch_status_check)

    def on_unmount(self) -> None:
        self._attached_log.detach()

    # --- the status in the header ----------------------------------------------------

    def refresh_status(self) -> None:
        if self._next_status is not None:
            self._next_status.stop()
            self._next_status = None
        self._status_started = self.now()
        self._load_status()

    def _watch_status_check(self) -> None:
        status, started = self.system_status, self._status_started
        if status is None or started is None or not status.database_ok:
            return
        # The app's clock, not the machine's: a frozen clock (snapshots) never sees a slow
        # database, however loaded the machine running the test is.
        waited_ms = (self.now() - started).total_seconds() * 1000
        if waited_ms > SLOW_DATABASE_MS:
            self.system_status = replace(status, database_ms=waited_ms)

    @work(thread=True, exclusive=True, group=STATUS_GROUP, exit_on_error=False)
    def _load_status(self) -> None:
        engine, now = self.engine, self.now()
        try:
            self.reads.ping()
            times = self.reads.sync_times(now)
        except SQLAlchemyError as error:
            self.post_message(
                StatusLoaded(
                    SystemStatus(
                        engine=engine.status(),
                        database_ok=False,
                        checked_at=now,
                        database_error=describe_error(error),
                    )
                )
            )
            return
        elapsed_ms = (self.now() - now).total_seconds() * 1000
        status = SystemStatus(
            engine=engine.status(),
            database_ok=True,
            checked_at=now,
            sync_times=times,
            database_ms=elapsed_ms,
            freshness=self._freshness_summary(now),
        )
        self.post_message(StatusLoaded(status))

    def _freshness_summary(self, now: datetime) -> Counter[Freshness] | None:
        """Companies by freshness, read again at most every FRESHNESS_EVERY (it costs more
        than the rest of the status, and changes slowly)."""
        read_at, counts = self._freshness
        if counts is None or read_at is None or now - read_at >= FRESHNESS_EVERY:
            counts = freshness.summary(self.reads.freshness(now))
            self._freshness = (now, counts)
        return counts

    def on_status_loaded(self, message: StatusLoaded) -> None:
        self._status_started = None
        status = message.status
        if status.database_ok:
            if self._down_since is not None:
                self.notify("Database reachable again.")
            self._down_since = None
        elif self._down_since is None:
            self._down_since = status.checked_at
        if not status.database_ok:
            status = replace(status, down_since=self._down_since)
        self.system_status = status

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == STATUS_GROUP and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self._next_status = self.set_timer(self.poll_interval_s, self.refresh_status)
        if worker.group == ACTION_GROUP and event.state == WorkerState.ERROR:
            self.notify(f"Action failed: {_first_line(worker.error)}", severity="error")

    # --- operator actions ------------------------------------------------------------

    def run_operator_action(self, action: OperatorCall) -> None:
        """Run ``action`` with the operator's ``OperatorActions`` off the UI thread; its
        result, or its refusal for a read-only operator, comes back as a toast."""
        self._run_action(action)

    # Actions are not exclusive: two different operator actions must both happen.
    @work(thread=True, exclusive=False, group=ACTION_GROUP, exit_on_error=False)
    def _run_action(self, action: OperatorCall) -> None:
        try:
            done = action(self.actions)
        except ActionRefused as refused:
            done = ActionDone(f"Not allowed: {refused}.", "error")
        self.post_message(done)

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity=message.severity)
        refresh = getattr(self.screen, "refresh_data", None)
        if callable(refresh):
            refresh()
        self.refresh_status()

    def action_sync_now(self) -> None:
        def sync(actions: OperatorActions) -> ActionDone:
            run = actions.sync_now()
            if run.queued == 0:
                return ActionDone(f"Sync run already queued: {run.planned} jobs made due now.")
            return ActionDone(f"Sync run queued: {run.queued} of {run.planned} jobs.")

        self.run_operator_action(sync)

    def action_toggle_pause(self) -> None:
        def toggle(actions: OperatorActions) -> ActionDone:
            paused = actions.toggle_pause()
            if paused is None:
                return ActionDone("This console runs no workers to pause.", "warning")
            if paused:
                return ActionDone("Workers paused: running jobs finish, no new job starts.")
            return ActionDone("Workers resumed.")

        self.run_operator_action(toggle)

    def resync(self, company_id: uuid.UUID, label: str, day: date | None = None) -> None:
        def resync(actions: OperatorActions) -> ActionDone:
            if day is None:
                run = actions.resync_company(company_id)
            else:
                run = actions.resync_day(company_id, day)
            what = f"{label} {day.isoformat()}" if day else f"{label} (all days)"
            if run.planned == 0:
                return ActionDone(f"{label} has sync turned off; nothing queued.", "warning")
            return ActionDone(
                f"Resync queued for {what}: {run.queued} new job(s), {run.planned} planned."
            )

        self.run_operator_action(resync)

    def toggle_sync(self, company_id: uuid.UUID, label: str) -> None:
        def toggle(actions: OperatorActions) -> ActionDone:
            state = "on" if actions.toggle_sync(company_id) else "off"
            return ActionDone(f"Sync turned {state} for {label}.")

        self.run_operator_action(toggle)

    def edit_toggles(self, company_id: uuid.UUID) -> None:
        """Read the company's toggles off the UI thread, then open the editor."""
        self._read_toggles(company_id)

    @work(thread=True, exclusive=True, group="read-toggles", exit_on_error=False)
    def _read_toggles(self, company_id: uuid.UUID) -> None:
        toggles = queries.company_toggles(self.engine.db, company_id)
        if toggles is None:
            self.post_message(ActionDone("That company no longer exists.", "warning"))
            return
        self.post_message(TogglesReady(toggles))

    def on_toggles_ready(self, message: TogglesReady) -> None:
        toggles = message.toggles

        def save(overrides: dict[str, bool] | None) -> None:
            if overrides is None:
                return

            def write(actions: OperatorActions) -> ActionDone:
                actions.save_toggles(toggles.id, overrides)
                count = len(overrides)
                return ActionDone(f"Feature toggles of {toggles.name} saved ({count} override(s)).")

            self.run_operator_action(write)

        self.push_screen(TogglesScreen(toggles, read_only=self.operator.read_only), save)

    def open_preview(self, company_id: uuid.UUID, day: date | None) -> None:
        """Show the technician preview of this company (and day, if given)."""
        self._preview_request = (company_id, day)
        self.switch_mode("preview")

    def take_preview_request(self) -> tuple[uuid.UUID, date | None] | None:
        request, self._preview_request = self._preview_request, None
        return request

    # --- log lines -------------------------------------------------------------------

    def on_log_lines_arrived(self, _message: LogLinesArrived) -> None:
        lines = self._log_handler.drain()
        if not lines:
            return
        self.log_lines.extend(lines)
        if isinstance(self.screen, LogScreen):
            self.screen.show_lines()


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def run_console(
    settings: Settings, *, engine_factory: Callable[[Settings], Engine] = Engine
) -> int:
    """Open the console with its own engine (built by ``engine_factory``); stop the engine
    cleanly on quit.

    With ``OPSDASH_OPERATOR`` set (the browser console's server sets it for the operator
    who signed in), the console acts as that operator, with the role the ``operators``
    table gives them; an unknown or disabled name does not start (exit code 2).
    Otherwise it is the terminal's console, with full rights.
    """
    engine = engine_factory(settings)
    try:
        operator = _operator(settings, engine)
        if operator is None:
            return 2
        if settings.console == "web":
            # The engine runs once, in `opsdash web` (or in `opsdash worker`s): a browser
            # console only looks and acts through the queue.
            engine.start(workers=0, scheduler=False)
        else:
            engine.start()
        OpsdashApp(
            engine,
            operator=operator,
            console=settings.console,
            reads=ConsoleReads(reader_for(settings, engine.db)),
        ).run()
    finally:
        print("opsdash: stopping workers (running jobs finish or are released)…", file=sys.stderr)
        engine.stop()
    return 0


def _operator(settings: Settings, engine: Engine) -> Operator | None:
    if settings.operator is None:
        if settings.console == "web":
            print("opsdash: OPSDASH_CONSOLE=web needs OPSDASH_OPERATOR", file=sys.stderr)
            return None
        return TERMINAL_OPERATOR
    operator = find_operator(engine.db, settings.operator)
    if operator is None:
        print(
            f"opsdash: no enabled operator named {settings.operator!r} "
            "(OPSDASH_OPERATOR; see `opsdash operators list`)",
            file=sys.stderr,
        )
    return operator
