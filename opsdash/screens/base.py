"""What every live screen shares: polling by rescheduling, off the UI thread, only when visible.

A refresh runs ``fetch`` in a thread worker; the worker posts the resulting
message (thread-safe) and, once it has finished one way or another, the next
refresh is scheduled with ``set_timer``. Refreshes therefore never overlap, a
hidden screen does no work (it refreshes when shown again), and a failing
refresh (say, the database is down) just tries again on the next tick: the
header's banner tells the operator why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, cast

from textual import work
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState, get_current_worker

from opsdash.screens.actions import follow_operator
from opsdash.screens.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from opsdash.app import OpsdashApp

REFRESH_GROUP = "refresh"


class LiveScreen(Screen[None]):
    """A screen whose data comes from ``fetch``, every ``POLL_FACTOR`` app poll intervals."""

    POLL_FACTOR = 1.0
    ACTION_TARGET: ClassVar[str] = ""
    """Whose entries of ``screens/actions.py`` are this screen's keys and palette commands."""

    def __init__(
        self, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name, id, classes)
        follow_operator(self)
        self._next_refresh: Timer | None = None
        self.refreshes = 0
        """How many refreshes delivered data (tests wait on it)."""

    @property
    def console(self) -> OpsdashApp:
        return cast("OpsdashApp", self.app)

    def fetch(self) -> Message | None:
        """Read what the screen shows (runs in a worker thread: no widgets here)."""
        raise NotImplementedError

    def refresh_job(self) -> Callable[[], Message | None]:
        """What the refresh worker runs; built on the UI thread when a refresh starts.

        ``fetch`` by default. A screen whose fetch depends on choices the operator makes
        returns a call bound to an immutable request captured here, so the worker never
        reads attributes that the UI thread changes meanwhile.
        """
        return self.fetch

    def on_mount(self) -> None:
        self.refresh_data()

    def on_screen_resume(self) -> None:
        for bar in self.query(StatusBar):
            bar.show_latest()
        self.refresh_data()

    def refresh_data(self) -> None:
        """Refresh now (after an action), or on the next poll tick."""
        if self._next_refresh is not None:
            self._next_refresh.stop()
            self._next_refresh = None
        if not self.is_current:
            return  # resumed screens refresh in on_screen_resume
        self._refresh_worker(self.refresh_job())

    @work(thread=True, exclusive=True, group=REFRESH_GROUP, exit_on_error=False)
    def _refresh_worker(self, job: Callable[[], Message | None]) -> None:
        message = job()
        # A newer refresh superseded this one: its result would be stale.
        if message is not None and not get_current_worker().is_cancelled:
            self.post_message(message)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != REFRESH_GROUP:
            return
        if event.state == WorkerState.SUCCESS:
            self.refreshes += 1
        if event.state == WorkerState.ERROR:
            self.log.warning(f"refresh failed: {worker.error!r}")
        if event.state in (WorkerState.SUCCESS, WorkerState.ERROR) and self.is_mounted:
            self._schedule_next()

    def _schedule_next(self) -> None:
        if self._next_refresh is not None:
            self._next_refresh.stop()
        interval = self.console.poll_interval_s * self.POLL_FACTOR
        self._next_refresh = self.set_timer(interval, self.refresh_data)
