"""Browser testing: Debian's Chromium driven by Playwright (a pytest plugin, see tests/conftest.py).

Chromium is the system's ``/usr/bin/chromium`` (``scripts/setup.sh`` installs
it); Playwright's own browser download is never used. Where Chromium or the
``playwright`` package is missing, browser tests are skipped with the reason,
and fail under ``CI=true`` (CI must run them).

Fixtures:

- ``browser``: one headless Chromium per test module (not per run: while
  Playwright's sync API is started, its event loop counts as running on the main
  thread, and every asyncio test after it would fail with "cannot be called from a
  running event loop"; so a module of browser tests holds no asyncio tests either);
- ``page``: a fresh context (cookies, storage) and page per test; a screenshot
  of how the test left it is always kept, named ``…-failed`` when it failed;
- ``screenshot``: ``screenshot("form")`` keeps the page as it is now;
- ``logged_in``: ``logged_in(hub, "ada")`` logs a person in through the hub's
  real login form and returns the page where the hub sent them.

Screenshots go to ``test-artifacts/screenshots/<test name>-<step>.png`` at the
repository root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by scripts/setup.sh
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # Nothing outside the test machine answers: keep Chromium from trying.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: How long a page may take to answer a click or show an element (ms).
DEFAULT_TIMEOUT_MS = 30_000


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real Chromium (tests/browser.py)")


#: The reports of a test's phases so far, kept on its item: the page fixture's teardown
#: names the last screenshot "failed" when the test failed.
_outcomes = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(_outcomes, []).append(report)
    return report


def _failed(item) -> bool:
    return any(report.failed for report in item.stash.get(_outcomes, []))


def _missing_browser() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401 - only whether it is installed
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (bash scripts/setup.sh installs Debian's chromium)"
    return None


def _require_browser() -> None:
    """Skip (fail under CI=true) when browser tests cannot run here."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)


def pytest_runtest_setup(item):
    # Before any fixture: a browser test skipped here starts no hub for nothing.
    if item.get_closest_marker("browser"):
        _require_browser()


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


def _artifact_name(item, step: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{item.name}-{step}")


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    yield page
    step = "failed" if _failed(request.node) else "end"
    try:
        _save(page, request.node, step)
    finally:
        context.close()


def _save(page, item, step: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_artifact_name(item, step)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def screenshot(page, request):
    """``screenshot(step)`` keeps the page as it is now; returns the file's path."""
    return lambda step: _save(page, request.node, step)


@pytest.fixture
def logged_in(page):
    """``logged_in(hub, user, password="demo")``: log in through the hub's own login form.

    Returns the page once the hub has sent the person on (to the spawn page when
    they have no server yet).
    """
    def log_in(hub, user: str, password: str = "demo"):
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", user)
        page.fill("#password_input", password)
        with page.expect_navigation():
            page.click("#login_submit")
        if "/hub/login" in page.url:
            error = page.locator(".login_error, .alert").all_inner_texts()
            raise AssertionError(f"{user} could not log in: {' '.join(error) or page.url}")
        return page

    return log_in


@pytest.fixture
def person(hub, request):
    """A user name of this test's own (a module using it has a ``hub`` fixture); whatever
    server it starts is stopped afterwards."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    name = name[:40].strip("-")
    yield name
    hub.stop_server(name)


def type_hours(page, text: str):
    """Clear the spawn form's hours box and type ``text`` key by key, as a person does."""
    hours = page.locator("#credits-hours")
    hours.fill("")
    hours.press_sequentially(text)
    return hours
