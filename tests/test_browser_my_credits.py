"""The My credits page in a real browser, as a person on the demo hub uses it.

A real hub (tests/realhub.py) whose logins earn as on the demo hub: each new
user starts with 76 credits (the 75-credit signup bonus, expiring in 30 days,
and 1 for the day's login). Each test logs in a user of its own through the
hub's login form, reaches the page from the hub's navigation bar, and uses it
as a person does: reads, clicks, types, confirms. Whatever a test starts is
stopped afterwards.
"""

from __future__ import annotations

import re

import pytest

from jupyterhub_credits.ledger import format_amount
from tests.browser import type_hours

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.browser,
              pytest.mark.hub(logins_earn=True)]


def open_credits(page):
    """Click "Credits" in the hub's navigation bar."""
    with page.expect_navigation():
        page.locator("nav").get_by_role("link", name="Credits", exact=True).click()
    expect(page.get_by_role("heading", name="My credits")).to_be_visible()
    return page


def seconds_left(session) -> int:
    return int(session.locator(".credits-countdown").get_attribute("data-seconds") or -1)


def test_a_new_user_sees_the_balance_the_signup_bonus_and_how_to_earn(
        hub, person, logged_in, screenshot):
    page = open_credits(logged_in(hub, person))
    assert page.url.endswith("/services/credits/"), page.url
    expect(page.locator("#login_widget")).to_contain_text(person)  # the hub's bar, as at home
    expect(page.locator("#credits-available")).to_have_text("76.00")
    expect(page.locator("#credits-reserved")).to_have_text("0.00")
    expect(page.locator("#credits-expiring")).to_have_text("75.00")
    expect(page.locator("#credits-expiring-lots")).to_contain_text("75.00 from signup bonus")
    expect(page.locator("#credits-sessions-empty")).to_have_text(
        re.compile(r"No sessions running\.\s+Start a server from the Home page\."))
    history = page.locator(".credits-transfer")
    expect(history).to_have_count(2)
    expect(history.first).to_contain_text("Earned: daily login")
    expect(history.nth(1)).to_contain_text("Earned: signup bonus")
    expect(history.nth(1)).to_contain_text("+75.00")
    # Dates are in the viewer's zone, not the server's ISO text.
    assert "T" not in page.locator(".credits-transfer time").first.inner_text()
    expect(page.locator('#credits-earned-today [data-rule="daily_login"]')).to_contain_text(
        "1 of 1 a day")
    expect(page.locator('#credits-how-to-earn [data-rule="daily_login"]')).to_contain_text(
        "1.00 credits for logging in; at most once a day.")
    expect(page.locator("#credits-leaderboard")).to_contain_text(f"{person} (you)")
    screenshot("balance")

    # Filtered by kind on the server; a filter with nothing in it says so in words.
    page.locator("#credits-history-filters").get_by_role("link", name="Expiry").click()
    expect(page.locator("#credits-history-empty")).to_have_text("No expiry in your history.")
    assert page.url.endswith("?kind=expiry")
    # The navigation bar on the credits page leads back to it (unfiltered).
    open_credits(page)
    assert page.url.endswith("/services/credits/"), page.url

    # A bad filter is an error page in the hub's look that names the filters, never a 500.
    response = page.goto(f"{hub.url}/services/credits/?kind=%3Cb%3Ebogus")
    assert response.status == 400
    expect(page.locator("#credits-error-message")).to_contain_text(
        "the filters are grants, earnings, sessions, expiry, reversals")
    expect(page.locator("#credits-error-message")).to_contain_text("<b>bogus")
    screenshot("bad-filter")


def test_a_session_counts_down_is_extended_refused_and_stopped_from_the_page(
        hub, person, logged_in, screenshot):
    page = logged_in(hub, person)
    assert page.url.endswith("/hub/spawn"), page.url
    type_hours(page, "1")
    expect(page.locator("#credits-gpu-type")).to_have_value("none")  # CPU: the quickest
    page.get_by_role("button", name="Start").click()
    hub.wait_ready(person)
    page.goto(f"{hub.url}/hub/home")
    open_credits(page)
    screenshot("running")

    session = page.locator(".credits-session")
    expect(session).to_have_count(1)
    expect(session.locator(".credits-hardware")).to_have_text("CPU only")
    expect(session.locator(".credits-rate")).to_have_text("1.00")
    expect(session.locator(".credits-held")).to_have_text("1.00")
    expect(page.locator("#credits-reserved")).to_have_text("1.00")
    # The time left counts down in the browser, second by second.
    countdown = session.locator(".credits-countdown")
    expect(countdown).to_have_attribute("data-seconds", re.compile(r"\d"))
    first = seconds_left(session)
    assert 3500 < first <= 3600, first
    expect(countdown).not_to_have_attribute("data-seconds", str(first))
    assert seconds_left(session) < first
    expect(countdown).to_have_text(re.compile(r"^5\d min \d+ s$"))

    # Extend by a quarter of an hour: the cost shows as one types, then a Confirm step.
    session.get_by_role("button", name="Extend").click()
    extend_hours = session.locator(".credits-extend-hours")
    expect(extend_hours).to_be_focused()
    extend_hours.fill("")
    extend_hours.press_sequentially("0.25")
    expect(session.locator(".credits-extend-cost")).to_have_text(
        "costs 0.25 credits (1.00 per hour)")
    screenshot("extend-hours")
    session.get_by_role("button", name="Continue").click()
    expect(session.locator(".credits-extend-question")).to_have_text(
        "Add 0.25 h to server default for 0.25 credits?")
    screenshot("extend-confirm")
    session.get_by_role("button", name="Confirm").click()
    result = session.locator(".credits-session-result")
    expect(result).to_contain_text("Holding 0.25 credits for 0.25 hours more. Paid until")
    expect(session.locator(".credits-held")).to_have_text("1.25")
    assert seconds_left(session) > 3600 + 700
    expect(countdown).to_have_text(re.compile(r"^1 h 1[0-4] min \d+ s$"))
    expect(page.locator("#credits-reserved")).to_have_text("1.25")
    expect(page.locator("#credits-available")).to_have_text("74.75")
    expect(page.locator("#credits-expiring")).to_have_text("73.75")  # held from the bonus first
    screenshot("extended")
    assert hub.sessions.open_session(person).held == 1_250

    # Too much: the hub's quota refuses, and the page says why next to the hours box.
    session.get_by_role("button", name="Extend").click()
    extend_hours.fill("")
    extend_hours.press_sequentially("30")
    session.get_by_role("button", name="Continue").click()
    session.get_by_role("button", name="Confirm").click()
    refusal = page.locator(f"#{extend_hours.get_attribute('id')}-error")
    expect(refusal).to_contain_text("would exceed the limit of 24 hours per session")
    expect(extend_hours).to_be_visible()
    expect(extend_hours).to_have_class(re.compile(r"\bis-invalid\b"))
    screenshot("refused")
    assert hub.sessions.open_session(person).held == 1_250  # nothing more held

    # Stop: a confirm step, then the charge in words.
    session.get_by_role("button", name="Stop", exact=True).click()
    screenshot("stop-confirm")
    session.get_by_role("button", name="Stop now").click()
    # The answer comes once the hub has been asked to stop the server: a few seconds.
    expect(result).to_contain_text(re.compile(
        r"Stopped\. Charged \d+\.\d\d credits; \d+\.\d\d returned to your balance\."),
        timeout=30_000)
    expect(countdown).to_have_text("stopped")
    expect(session.get_by_role("button", name="Extend")).to_be_hidden()
    expect(page.locator("#credits-reserved")).to_have_text("0.00")
    screenshot("stopped")
    hub.wait_gone(person)
    ended = hub.user_sessions(person)[-1]
    assert (ended.state, ended.end_reason) == ("ended", "user")

    # The history shows the session's transfers when filtered by "sessions".
    page.reload()
    expect(page.locator("#credits-sessions-empty")).to_be_visible()
    page.locator("#credits-history-filters").get_by_role("link", name="Sessions").click()
    rows = page.locator(".credits-transfer")
    expect(rows.filter(has_text="Charged for a session: you stopped it")).to_have_count(1)
    expect(rows.filter(has_text="Reserved for a session")).to_have_count(2)  # start + extension
    kinds = {row.get_attribute("data-kind") for row in rows.all()}
    assert kinds <= {"hold", "post", "void"} and "post" in kinds, kinds
    # What the session used (seconds at 1 credit an hour) is gone; the rest is available again.
    assert ended.charged is not None and ended.charged < 1_000
    expect(page.locator("#credits-available")).to_have_text(
        format_amount(76_000 - ended.charged))
    screenshot("history-sessions")

    # The same page in the hub's dark theme.
    page.locator("#dark-theme-toggle").click()
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
    screenshot("dark")


def test_a_name_that_cannot_hold_credits_gets_a_page_that_says_so(hub, logged_in, screenshot):
    name = "n" * 201  # the hub takes it; an account name holds at most 200 characters
    page = logged_in(hub, name)
    response = page.goto(f"{hub.url}/services/credits/")
    assert response.status == 200
    expect(page.locator("#credits-cannot-hold")).to_contain_text(
        "This user name cannot hold credits.")
    expect(page.locator("#credits-cannot-hold")).to_contain_text("200")
    screenshot("cannot-hold")
