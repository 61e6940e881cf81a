"""Browser tests of the console: Debian's chromium driven by Playwright, against the app served on a
free port in a thread. They skip only when chromium is missing (``apt-get install chromium``)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def chromium_path() -> str | None:
    return CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if chromium_path() is None:
        skip = pytest.mark.skip(reason="chromium is not installed: apt-get install chromium")
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Chromium's own words (file pickers, date fields) in Chinese, as the staff see them; they need
        # Debian's chromium-l10n and stay English without it.
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS,
                                              env={**os.environ, "LANGUAGE": "zh_CN"})
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def live_server(base_app: Any) -> Iterator[str]:
    """The test app served by werkzeug on a free port, in a thread (stopped at the end)."""
    server = make_server("127.0.0.1", 0, base_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="console-live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def page(browser: Any, live_server: str, app: Any) -> Iterator[Any]:
    context = browser.new_context(base_url=live_server, locale="zh-CN", timezone_id="Asia/Shanghai",
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


def sign_in_page(page: Any, username: str, password: str, one_time_code: str) -> None:
    """Sign in on the console's page as a clerk does: username, password, the current TOTP code."""
    page.goto("/console/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.fill("#code", one_time_code)
    page.click("#sign-in")
    page.wait_for_url("**/console/")
