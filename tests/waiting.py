"""Bounded, described waits: the one way tests wait for something to happen.

Every wait names what it waits for and gives up after a bound with that name
and, when given, a description of what it saw last, so a failure reads as a
sentence instead of a bare ``assert False``. Waits poll a condition; none
sleeps a guessed amount and hopes. Modelled on harlequin's test helpers
(``wait_for_workers`` awaits the app's workers instead of sleeping).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import httpx

if TYPE_CHECKING:
    from textual.app import App
    from textual.pilot import Pilot

T = TypeVar("T")

POLL_S = 0.05
# Bounds are generous on purpose: they only matter when something is broken, and a CI
# machine shared with other jobs can be many times slower than a laptop.


class WaitTimeout(AssertionError):
    """A described wait ran out of time (an AssertionError, so pytest shows it as a failure)."""


def describe(condition: Callable[..., object]) -> str:
    """A condition's own words: the source line of a lambda, or a function's name."""
    name = getattr(condition, "__name__", repr(condition))
    if name != "<lambda>":
        return name
    try:
        line = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return "a condition"
    start = line.find("lambda")
    text = line[start:] if start >= 0 else line
    while text.count(")") > text.count("(") and text.endswith(")"):
        text = text[:-1]  # the closing parenthesis of the call the lambda was passed to
    return text.rstrip(", ")


def _message(what: str, timeout_s: float, seen: Callable[[], object] | None) -> str:
    message = f"timed out after {timeout_s:g} s waiting for {what}"
    if seen is not None:
        try:
            message += f"; last seen: {seen()}"
        except Exception as error:  # the description must never hide the timeout
            message += f"; (describing the state failed: {error!r})"
    return message


def answers_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` answers 200 now; a refused, reset or silent connection is a no."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(
    condition: Callable[[], T],
    *,
    what: str | None = None,
    timeout_s: float = 30.0,
    poll_s: float = POLL_S,
    seen: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value.

    Raises :class:`WaitTimeout` naming ``what`` (default: the condition's source)
    and ``seen()``, the state last observed, once ``timeout_s`` has passed. The
    condition is checked one last time at the deadline, so a slow poll never
    loses a late success.
    """
    what = what or describe(condition)
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(_message(what, timeout_s, seen))
        time.sleep(min(poll_s, remaining))


async def settle_until(
    pilot: Pilot,
    condition: Callable[[], T],
    *,
    what: str | None = None,
    timeout_s: float = 60.0,
    seen: Callable[[], object] | None = None,
) -> T:
    """``wait_until`` for a running Textual app: the app keeps processing while we poll."""
    what = what or describe(condition)
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout_s, seen))
        await pilot.pause(POLL_S)


async def wait_for_workers(app: App[object]) -> None:
    """Wait for every worker the app runs now to finish (harlequin's helper)."""
    workers = list(app.workers)
    if workers:
        await app.workers.wait_for_complete(workers)
