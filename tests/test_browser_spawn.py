"""The spawn page in a real browser, as a new user meets it on the demo hub.

A real hub (tests/realhub.py) whose logins earn as on the demo hub: each new
user starts with 76 credits (the 75-credit signup bonus and a daily login).
Each test logs in a user of its own through the hub's login form, uses the
form as a person does (types in the boxes, picks from the lists, clicks
Start) and stops what it started.
"""

from __future__ import annotations

import pytest

from tests.browser import type_hours

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.browser,
              pytest.mark.hub(logins_earn=True)]

#: JupyterLab is ready when its shell is in the page (the URL changes much earlier).
LAB_READY_MS = 120_000
SIGNUP_AND_LOGIN = 76_000  # units: 75 credits of signup bonus and 1 of daily login


def start_button(page):
    return page.get_by_role("button", name="Start")


def wait_for_jupyterlab(page) -> None:
    """JupyterLab has loaded: its shell is there and its splash screen gone."""
    expect(page.locator(".jp-LabShell")).to_be_visible(timeout=LAB_READY_MS)
    expect(page.locator("#jupyterlab-splash")).to_have_count(0, timeout=LAB_READY_MS)


def valid(locator) -> bool:
    return locator.evaluate("input => input.checkValidity()")


def test_a_new_user_types_one_hour_and_lands_in_jupyterlab_on_cpu(
        hub, hub_ledger, person, logged_in, screenshot):
    page = logged_in(hub, person)
    assert page.url.endswith("/hub/spawn"), page.url
    expect(page.locator(".credits-balance")).to_contain_text("76.00 credits available")
    hours = type_hours(page, "1")
    assert valid(hours), hours.evaluate("input => input.validationMessage")
    expect(page.locator("#credits-gpu-type")).to_have_value("none")
    expect(page.locator("#credits-cost")).to_have_text("1.00")
    screenshot("form")

    start_button(page).click()
    wait_for_jupyterlab(page)
    assert f"/user/{person}/lab" in page.url
    screenshot("lab")

    session = hub.sessions.open_session(person)
    assert (session.image, session.gpu_type, session.gpus) == ("tf-2.21", "none", 0)
    assert session.held == 1_000  # one CPU hour, 1 credit
    assert hub_ledger.balance(person).reserved == 1_000


def test_half_an_hour_on_two_a100s_lands_in_jupyterlab_and_reserves_15_credits(
        hub, hub_ledger, person, logged_in, screenshot):
    page = logged_in(hub, person)
    type_hours(page, "0.5")
    page.select_option("#credits-gpu-type", "a100")
    gpus = page.locator("#credits-gpus")
    expect(gpus).to_be_enabled()
    gpus.fill("2")
    gpus.press("Tab")  # leaving the box commits the change, as for a person
    expect(page.locator("#credits-rate")).to_have_text("30.00")
    expect(page.locator("#credits-cost")).to_have_text("15.00")
    assert valid(page.locator("#credits-hours")) and valid(gpus)
    screenshot("form")

    start_button(page).click()
    wait_for_jupyterlab(page)
    screenshot("lab")

    me = hub.credits_api("GET", "/me", token=hub.user_token(person))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["reserved"] == "15.00"  # 2 GPUs x 15 credits x 0.5 hour
    assert body["available"] == "61.00"
    (session,) = body["sessions"]
    assert (session["image"], session["gpu_type"], session["gpus"]) == ("tf-2.21", "a100", 2)
    assert len(hub.live_devices(hub.sessions.open_session(person).id)) == 2


def test_more_hours_than_the_balance_buys_are_refused_in_words_and_start_nothing(
        hub, hub_ledger, person, logged_in, screenshot):
    page = logged_in(hub, person)
    type_hours(page, "24")
    page.select_option("#credits-gpu-type", "a100")
    page.locator("#credits-gpus").fill("2")
    page.locator("#credits-gpus").press("Tab")
    # The page already says what the balance buys.
    expect(page.locator("#credits-affordable")).to_have_text("2.53")
    start_button(page).click()

    # The hub shows the refusal on the spawn page (or, if the start took long, on the
    # spawn-pending page): the admission's own words.
    refusal = page.locator(".spawn-error-msg, #progress-message").filter(has_text="balance")
    expect(refusal).to_be_visible()
    text = refusal.inner_text()
    assert "720.00 credits" in text and "your balance is 76.00 credits" in text, text
    assert "Choose at most 2.53 hours" in text, text
    screenshot("refused")
    if page.locator("#credits-hours").count():
        # Back on the form: what the person chose is still chosen, to be corrected.
        expect(page.locator("#credits-hours")).to_have_value("24")
        expect(page.locator("#credits-gpu-type")).to_have_value("a100")
        expect(page.locator("#credits-gpus")).to_have_value("2")

    assert hub.server(person) is None
    assert hub.sessions.open_session(person) is None
    assert hub.user_sessions(person) == []  # refused before anything was held
    balance = hub_ledger.balance(person)
    assert (balance.available, balance.reserved) == (SIGNUP_AND_LOGIN, 0)


def test_an_image_without_gpus_leaves_no_gpu_to_choose(hub, person, logged_in, screenshot):
    page = logged_in(hub, person)
    gpu_type, gpus = page.locator("#credits-gpu-type"), page.locator("#credits-gpus")
    page.select_option("#credits-gpu-type", "a100")
    expect(gpus).to_have_value("1")

    page.select_option("#credits-image", "tf-2.21-cpu")
    expect(gpu_type).to_be_disabled()
    expect(gpu_type).to_have_value("none")
    expect(gpus).to_be_disabled()
    expect(gpus).to_have_value("0")
    for gpu_id in ("t4", "a100", "h100"):
        option = gpu_type.locator(f'option[value="{gpu_id}"]')
        assert option.evaluate("option => option.disabled && option.hidden"), gpu_id
    expect(page.locator("#credits-rate")).to_have_text("1.00")
    screenshot("cpu-image")

    # Back on a GPU image, the GPU types this hub has are offered again.
    page.select_option("#credits-image", "tf-2.21")
    expect(gpu_type).to_be_enabled()
    assert gpu_type.locator('option[value="a100"]').evaluate("option => !option.disabled")
    # This hub has no H100: listed, not selectable.
    assert gpu_type.locator('option[value="h100"]').evaluate("option => option.disabled")


def test_the_browser_accepts_every_hours_value_the_server_does(hub, person, logged_in, screenshot):
    page = logged_in(hub, person)
    hours, slider = page.locator("#credits-hours"), page.locator("#credits-hours-range")
    limits = hours.evaluate("input => [input.min, input.max, input.step, Number(input.min),"
                            " Number(input.max)]")
    assert limits == ["0.0167", "24", "any", 0.0167, 24]

    for text, slider_value in [("0.05", "0.25"), ("0.5", "0.5"), ("1", "1"), ("2.25", "2.25"),
                               ("0.0167", "0.25"), ("1.3", "1.25"), ("24", "24")]:
        type_hours(page, text)
        assert valid(hours), (text, hours.evaluate("input => input.validationMessage"))
        # The slider follows as closely as its quarter hours allow.
        expect(slider).to_have_value(slider_value)

    # Moving the slider sets the box.
    type_hours(page, "1")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(hours).to_have_value("1.25")
    expect(page.locator("#credits-cost")).to_have_text("1.25")

    # Below the minimum: the browser refuses, says why, and nothing is sent.
    type_hours(page, "0.01")
    assert not valid(hours)
    assert "0.0167" in hours.evaluate("input => input.validationMessage")
    start_button(page).click()
    expect(hours).to_be_focused()  # the browser stopped the submit at the invalid box
    assert page.url.endswith("/hub/spawn") and hub.server(person) is None
    screenshot("below-minimum")

    # Finer than the server's precision: the browser lets it through, the server says why.
    type_hours(page, "1.23456")
    assert valid(hours)
    start_button(page).click()
    refusal = page.locator(".spawn-error-msg")
    expect(refusal).to_contain_text("at most 4 decimal places")
    assert hub.server(person) is None and hub.user_sessions(person) == []


def test_a_name_that_cannot_hold_credits_is_told_so_and_starts_nothing(
        hub, logged_in, screenshot):
    name = "n" * 201  # the hub takes it; an account name holds at most 200 characters
    page = logged_in(hub, name)
    expect(page.locator(".credits-balance")).to_contain_text("This user name cannot hold credits")
    screenshot("form")
    start_button(page).click()
    refusal = page.locator(".spawn-error-msg, #progress-message").filter(has_text="200")
    expect(refusal).to_be_visible()
    screenshot("refused")
    assert hub.server(name) is None
    assert hub.user_sessions(name) == []
