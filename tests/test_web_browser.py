"""A real browser (Debian's headless Chromium, driven by Playwright) uses ``opsdash web``.

xterm.js draws on a WebGL canvas when it can; Chromium runs with WebGL off here, so
xterm.js falls back to its DOM renderer and the screen's text can be read and waited on.
Every wait is on rendered text or on a page state, never on a fixed delay.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsdash.engine import audit
from opsdash.engine.db import connect
from tests.conftest import migrated
from tests.web_server import WebServer, running_web

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
WAIT_MS = 90_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing browser is a broken run
        pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # Root in a container has no user namespace for the sandbox; WebGL off makes
            # xterm.js render rows as text.
            args=["--no-sandbox", "--disable-webgl", "--disable-gpu"],
        )
        yield launched
        launched.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    database_url = migrated(f"sqlite:///{tmp_path / 'opsdash.db'}")
    with running_web(database_url, tmp_path) as server:
        server.add_operator("ana", PASSWORD)
        server.add_operator("sam", PASSWORD, read_only=True)
        yield server


def screen_shows(page: object, text: str) -> None:
    """Wait until the console's screen contains ``text`` (the terminal draws in pieces)."""
    try:
        page.wait_for_function(  # type: ignore[attr-defined]
            """text => {
                const rows = document.querySelector(".xterm-rows");
                return rows !== null && rows.innerText.replace(/\u00a0/g, " ").includes(text);
            }""",
            arg=text,
            timeout=WAIT_MS,
        )
    except playwright_api.TimeoutError:
        raise AssertionError(f"the screen never showed {text!r}:\n{screen_text(page)}") from None


def screen_text(page: object) -> str:
    return page.evaluate(  # type: ignore[attr-defined, no-any-return]
        "() => (document.querySelector('.xterm-rows')?.innerText ?? '').replace(/\\u00a0/g, ' ')"
    )


def sign_in(page: object, web: WebServer, name: str, password: str) -> None:
    page.goto(web.url + "/")  # type: ignore[attr-defined]
    page.wait_for_url(web.url + "/login")  # type: ignore[attr-defined]
    page.fill("#username", name)  # type: ignore[attr-defined]
    page.fill("#password", password)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]


def test_an_operator_signs_in_sees_the_jobs_and_switches_screen(
    browser: object, web: WebServer
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        sign_in(page, web, "ana", "not the password")
        page.wait_for_selector("text=Wrong name or password.", timeout=WAIT_MS)
        assert page.url == web.url + "/login"

        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(web.url + "/", timeout=WAIT_MS)
        assert page.inner_text("#operator") == "ana"
        screen_shows(page, "newest jobs")
        screen_shows(page, "1 Jobs")

        page.click(".xterm")  # the terminal takes the keyboard
        page.keyboard.press("2")
        screen_shows(page, "companies & storage")

        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["opsdash_session"]
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Strict"

        page.click("text=Sign out")
        page.wait_for_url(web.url + "/login", timeout=WAIT_MS)
        assert "opsdash_session" not in {c["name"] for c in context.cookies()}
    finally:
        context.close()


def test_a_read_only_operator_is_refused_an_action(browser: object, web: WebServer) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        sign_in(page, web, "sam", PASSWORD)
        page.wait_for_url(web.url + "/", timeout=WAIT_MS)
        assert page.inner_text("#operator") == "sam (read-only)"
        screen_shows(page, "newest jobs")
        screen_shows(page, "read-only")  # the console's header says so too

        page.click(".xterm")
        page.keyboard.press("s")  # sync now
        screen_shows(page, "Not allowed")
        screen_shows(page, "refused")
    finally:
        context.close()

    db = connect(web.database_url)
    try:
        entries = audit.recent(db)
    finally:
        db.dispose()
    refused = [e for e in entries if e.operator == "sam"]
    assert [(e.action, e.result, e.console) for e in refused] == [("sync_now", "refused", "web")]
