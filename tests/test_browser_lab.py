"""Credits inside JupyterLab, in a real browser against a real hub (issue 9).

One real hub for the module (tests/realhub.py) with named servers allowed, the
single-user servers' status cache short (``JUPYTERHUB_CREDITS_STATUS_TTL=2``) and
a 3 s grace after the stop signal, sessions as short as 45 s, and the meter
warning 30 s and 15 s before a session's paid time ends (a config file given to
the credits service). People log
in through the hub's login form and use JupyterLab as a person does: click the
status bar, type hours, click Extend and Confirm, type into a notebook, pick the
dark theme from the Settings menu.

- alice starts her default server from the spawn page (CPU, 2 hours), sees the
  status bar and the panel, extends, trains a tiny Keras model and opens its
  run in TensorBoard; an admin looks at her server (read only), then stops it;
- bob has a 45-second session on a named server: he is warned, his unsaved
  notebook is saved before the stop, and the page says why it stopped.

The tests of one module share alice's server and run in file order (each one
starts her server if an earlier one did not). Every response and WebSocket frame
the browser receives is kept; the last test proves that no hub or service token
is among them. Autosave is off for both people (a user setting written before
their servers start), so a saved document proves the credits extension saved it.
"""

from __future__ import annotations

import os
import re
import signal
import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from jupyterhub_credits.sessions.schema import session_holds
from tests import lab
from tests.browser import SCREENSHOTS, type_hours
from tests.waiting import wait_for

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed")
expect = sync_api.expect

#: bob's short session: 45 s of paid time (the catalog's shortest is lowered from 1 minute to
#: keep the module's time down), warned 30 s and 15 s before it ends (Meter.warning_thresholds).
SHORT_HOURS = "0.0125"
WARNINGS = (30, 15)
STATUS_TTL = 2   # seconds the server extension keeps the service's answer
STOP_GRACE = 3   # seconds the server keeps serving after the stop signal

#: The shipped jupyter-config/ directory, whose jupyter_server_config.d/ enables the server
#: extension. A wheel installs it into <prefix>/etc/jupyter; an editable install (this
#: checkout's venv) does not, so the single-user servers are pointed at it.

HUB_CONFIG = f"""
import os
c.JupyterHub.allow_named_servers = True
c.Spawner.environment = {{**c.Spawner.environment,
                          "JUPYTERHUB_CREDITS_STATUS_TTL": "{STATUS_TTL}",
                          "JUPYTERHUB_CREDITS_STOP_GRACE": "{STOP_GRACE}"}}
# The meter's thresholds are traits of the service: give it a config file of its own.
_meter_config = os.path.join(os.getcwd(), "credits_service_config.py")
with open(_meter_config, "w") as _file:
    _file.write("c.Meter.warning_thresholds = {list(WARNINGS)}\\n")
for _service in c.JupyterHub.services:
    if _service["name"] == "credits":
        _service["command"] = [*_service["command"], "--config=" + _meter_config]
"""

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.browser,
              pytest.mark.hub(catalog={"quotas": {"min_prepaid_minutes": "0.75"}},
                              extra_config=HUB_CONFIG)]

ALICE, BOB, ADMIN = "alice", "bob", "admin"
SHORT = "short"  # bob's named server
ALICE_GRANT, BOB_GRANT = 100, 10  # credits
ALICE_HOURS = 2  # CPU at 1 credit an hour: 2.00 reserved, 98.00 available
TYPED = "print('typed before the stop')"
RUN_DIR = "logs/e2e-fit"  # the TensorBoard log dir of alice's run, under her home

#: Tokens that must never reach a browser, by name; tests add servers' tokens as they start.
SECRETS: dict[str, str] = {}
#: What the browser received in every test of the module.
TRAFFIC: list[lab.BrowserTraffic] = []


@pytest.fixture(scope="module", autouse=True)
def people(hub):
    """Credits for alice and bob, autosave off for both, the service's token remembered."""
    hub.grant(ALICE, ALICE_GRANT)
    hub.grant(BOB, BOB_GRANT)
    for user in (ALICE, BOB):
        lab.disable_autosave(hub, user)
    SECRETS["the credits service's token"] = lab.service_token(hub)
    SECRETS["the hub's admin token of the tests"] = hub.token


@pytest.fixture(autouse=True)
def traffic(page):
    """Keep what this test's browser receives; fail the test if a known token is in it."""
    received = lab.BrowserTraffic().attach(page.context)
    TRAFFIC.append(received)
    yield received
    leaks = received.leaks(SECRETS)
    assert not leaks, leaks


def remember_server_token(hub, user: str) -> None:
    SECRETS[f"{user}'s server token"] = lab.server_token(hub, user)


def alice_server(hub):
    """alice's default server, started (CPU, 2 hours) if an earlier test did not; its session."""
    if hub.server(ALICE) is None:
        hub.running_server(ALICE, image="tf-2.21", gpu_type="none", hours=str(ALICE_HOURS))
    hub.wait_ready(ALICE)
    remember_server_token(hub, ALICE)
    return hub.sessions.open_session(ALICE)


def holds_of(hub, session_id: int) -> int:
    with hub.ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(session_holds)
                            .where(session_holds.c.session_id == session_id)).scalar_one()


def progress_value(panel) -> float:
    """How much of the paid time the panel's progress bar shows as used, 0 to 1."""
    return panel.locator(".jp-credits-session progress").evaluate("bar => bar.value / bar.max")


def test_a_person_starts_a_server_and_finds_balance_and_time_left_in_jupyterlab(
        hub, logged_in, screenshot):
    page = logged_in(hub, ALICE)
    assert page.url.endswith("/hub/spawn"), page.url
    type_hours(page, str(ALICE_HOURS))
    expect(page.locator("#credits-gpu-type")).to_have_value("none")
    page.get_by_role("button", name="Start").click()
    lab.wait_for_lab(page)
    assert f"/user/{ALICE}/lab" in page.url
    remember_server_token(hub, ALICE)

    # The status bar: the balance after the hold, and the paid time left.
    item = lab.status_item(page)
    expect(item).to_be_visible()
    expect(item).to_have_attribute("data-state", "ok")
    expect(item).to_have_text(re.compile(r"^98\.00 cr\s*·\s*(2 h|1 h \d+ min) left$"))

    # A click opens the panel: balance, this server's session, countdown, progress.
    panel = lab.open_panel_from_status_bar(page)
    expect(panel).to_have_class(re.compile(r"\bjp-credits-Panel\b"))
    balance = panel.locator(".jp-credits-balance")
    expect(balance).to_contain_text("98.00")
    expect(balance).to_contain_text("2.00")
    status = lab.server_status(hub, ALICE)
    assert status["session"]["rate_per_hour"] == "1.00", status["session"]
    session = panel.locator(".jp-credits-session")
    expect(session).to_contain_text(re.compile(r"tf-2\.21|TensorFlow 2\.21"))
    expect(session).to_contain_text("1.00")  # the rate per hour
    expect(session).to_contain_text(re.compile(r"\d+\.\d\d"))
    expect(session.locator(".jp-credits-timeLeft")).to_have_text(
        re.compile(r"(2 h|1 h \d+ min)"))
    expect(panel.get_by_role("link", name="My credits")).to_have_attribute(
        "href", re.compile(r"/services/credits/?$"))
    # The countdown runs in the page, between polls and without a reload.
    first = progress_value(panel)
    assert 0 <= first < 0.05, first
    wait_for(lambda: progress_value(panel) != first, timeout=3, what="the progress bar to move")
    screenshot("light")

    lab.choose_theme(page, "JupyterLab Dark")
    expect(panel.locator(".jp-credits-balance")).to_be_visible()
    screenshot("dark")
    # Styles come from JupyterLab's variables: the panel follows the theme.
    background = panel.evaluate("node => getComputedStyle(node).backgroundColor")
    assert background not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), background
    lab.choose_theme(page, "JupyterLab Light")

    leaks = lab.page_secrets_leaks(page, SECRETS)
    assert not leaks, leaks


def test_extend_from_the_panel_moves_paid_until_by_the_hours_typed(hub, logged_in, screenshot):
    before = alice_server(hub)
    page = logged_in(hub, ALICE)
    lab.open_lab(page, hub, ALICE)
    panel = lab.open_panel_from_status_bar(page)
    hours = panel.locator('input[name="hours"]')
    expect(panel.get_by_label("Hours to add")).to_be_visible()

    hours.fill("")
    hours.press_sequentially("0.5")
    expect(panel.locator(".jp-credits-extendCost")).to_contain_text("0.50")
    panel.get_by_role("button", name="Extend", exact=True).click()
    panel.get_by_role("button", name="Confirm", exact=True).click()
    expect(panel.locator('.jp-credits-message[role="status"]')).to_be_visible()
    screenshot("extended")
    after = hub.sessions.open_session(ALICE)
    assert after.paid_until - before.paid_until == timedelta(minutes=30)
    assert after.held - before.held == 500  # half an hour of CPU at 1 credit an hour

    # More than max_hours_per_session (24): refused in words, nothing held.
    hours.fill("")
    hours.press_sequentially("30")
    panel.get_by_role("button", name="Extend", exact=True).click()
    confirm = panel.get_by_role("button", name="Confirm", exact=True)
    error = panel.locator('.jp-credits-error[role="alert"]')
    expect(confirm.or_(error)).to_be_visible()
    if confirm.is_visible():  # the page may leave the refusal to the service
        confirm.click()
    expect(error).to_contain_text("24")
    expect(error).to_contain_text("hours")
    screenshot("refused")
    assert hub.sessions.open_session(ALICE).paid_until == after.paid_until

    # A double click on Confirm extends once: one more hold, a quarter of an hour.
    holds = holds_of(hub, after.id)
    extends = []
    page.on("request", lambda request: extends.append(request)
            if request.method == "POST" and "/credits/extend" in request.url else None)
    hours.fill("")
    hours.press_sequentially("0.25")
    expect(panel.locator(".jp-credits-extendCost")).to_contain_text("0.25")
    panel.get_by_role("button", name="Extend", exact=True).click()
    panel.get_by_role("button", name="Confirm", exact=True).dblclick()
    expect(panel.locator('.jp-credits-message[role="status"]')).to_be_visible()
    # Every extend request the page sent has been answered before the ledger is read.
    wait_for(lambda: extends and all(r.response() is not None for r in extends),
             timeout=10, what="the page's extend requests to be answered")
    assert holds_of(hub, after.id) == holds + 1, f"{len(extends)} extend request(s) sent"
    last = hub.sessions.open_session(ALICE)
    assert last.paid_until - after.paid_until == timedelta(minutes=15)


def test_a_short_session_warns_saves_the_notebook_and_says_why_it_stopped(
        hub, logged_in, screenshot):
    page = logged_in(hub, BOB)
    # 45 s (the catalog's min_prepaid_minutes here) of CPU on a named server.
    response = hub.spawn(BOB, SHORT, image="tf-2.21", gpu_type="none", hours=SHORT_HOURS)
    assert response.status_code in (201, 202), response.text
    hub.wait_ready(BOB, SHORT)
    remember_server_token(hub, BOB)
    session = hub.sessions.open_session(BOB, SHORT)
    assert lab.server_status(hub, BOB, SHORT)["warning_thresholds"] == list(WARNINGS)
    lab.open_lab(page, hub, BOB, SHORT)

    # Under 10 minutes the status bar counts seconds: it ticks without a reload.
    item = lab.status_item(page)
    expect(item).to_have_text(re.compile(r"\d+ s left$"))
    first = item.inner_text()
    expect(item).not_to_have_text(first, timeout=3_000)
    expect(item).to_have_attribute("data-state", "warning")

    notebook = lab.new_notebook(page)
    lab.type_into_cell(page, notebook, TYPED)
    path = lab.home_dir(hub, BOB) / lab.current_document(page)
    assert path.name.endswith(".ipynb"), path
    assert TYPED not in path.read_text()  # autosave is off: only typed, not saved
    assert datetime.now(timezone.utc) < session.paid_until - timedelta(seconds=WARNINGS[0]), \
        "the notebook was typed too late to see the warnings (a slow machine?)"

    # The warning with an "Extend" action, then at the last threshold the save.
    toasts = page.locator(".Toastify__toast").filter(
        has=page.get_by_role("button", name="Extend"))
    warning = toasts.filter(has_text=f"{WARNINGS[0]} s left")
    expect(warning).to_be_visible(timeout=60_000)
    expect(warning).not_to_contain_text(re.compile("saved", re.I))
    expect(warning).to_be_in_viewport(ratio=1)  # slid in
    screenshot("warning")
    saved = toasts.filter(has_text=f"{WARNINGS[1]} s left")
    expect(saved).to_be_visible(timeout=60_000)
    expect(saved).to_contain_text(re.compile(r"saved 1 document\b", re.I))
    wait_for(lambda: TYPED in path.read_text(), timeout=10, what="the notebook to be saved")
    saved_at = datetime.now(timezone.utc)
    assert saved_at < session.paid_until, (saved_at, session.paid_until)
    screenshot("saved")

    # The meter stops the server; the page says why, not a connection error.
    dialog = page.locator(".jp-credits-stopDialog")
    expect(dialog).to_be_visible(timeout=60_000)
    expect(page.locator(".jp-Dialog-header")).to_contain_text("Your server has stopped")
    expect(dialog).to_contain_text("Your paid time ran out")
    expect(dialog).to_contain_text(re.compile("saved", re.I))
    start_again = dialog.locator("a.jp-credits-startAgain")
    expect(start_again).to_have_attribute("href", re.compile(
        re.escape(lab.spawn_path(BOB, SHORT)) + "$"))
    expect(page.get_by_text("Server Connection Error")).to_have_count(0)
    screenshot("stopped")
    leaks = lab.page_secrets_leaks(page, SECRETS)
    assert not leaks, leaks
    ended = hub.user_sessions(BOB)[-1]
    assert (ended.key, ended.end_reason) == (session.key, "expired")
    hub.wait_gone(BOB, SHORT)

    # The link leads to that named server's spawn page.
    start_again.click()
    page.wait_for_url(re.compile(re.escape(lab.spawn_path(BOB, SHORT)) + r"/?$"))
    expect(page.locator("#credits-hours")).to_be_visible()


def test_an_admin_viewing_a_server_reads_credits_but_cannot_spend_them(
        hub, logged_in, screenshot):
    before = alice_server(hub)
    page = logged_in(hub, ADMIN)
    lab.open_lab(page, hub, ALICE)
    expect(lab.status_item(page)).to_contain_text(" cr")
    panel = lab.open_panel_from_status_bar(page)
    expect(panel.locator(".jp-credits-readonly")).to_be_visible()
    expect(panel.locator(".jp-credits-balance")).to_be_visible()
    expect(panel.locator('input[name="hours"]')).to_have_count(0)
    expect(panel.get_by_role("button", name="Extend", exact=True)).to_have_count(0)
    expect(panel.locator('input[name="auto_extend"]:enabled')).to_have_count(0)
    screenshot("read-only")

    # Even a request made by hand from the page (with its XSRF cookie) spends nothing.
    answer = page.evaluate("""async url => {
        const xsrf = document.cookie.split('; ').find(c => c.startsWith('_xsrf='));
        const response = await fetch(url, {method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json',
                      'X-XSRFToken': decodeURIComponent((xsrf || '').slice(6))},
            body: JSON.stringify({hours: '1', key: 'admin-by-hand'})});
        return {status: response.status, body: await response.text()};
    }""", f"{lab.server_path(ALICE)}credits/extend")
    assert answer["status"] == 403, answer
    assert "Only alice can spend alice's credits" in answer["body"], answer
    assert hub.sessions.open_session(ALICE).held == before.held
    # The admin's page holds none of alice's server's secrets either.
    leaks = lab.page_secrets_leaks(page, SECRETS)
    assert not leaks, leaks
    # jupyter_server writes its token (under the hub: alice's server token) into every HTML
    # page it renders, error pages included; the extension blanks it out for every viewer.
    missing = page.goto(f"{hub.url}{lab.server_path(ALICE)}no-such-page")
    assert missing.status == 404
    assert 'data-jupyter-api-token=""' in missing.text()
    assert SECRETS[f"{ALICE}'s server token"] not in missing.text()


def test_a_training_run_appears_in_the_panel_and_opens_in_tensorboard(
        hub, logged_in, screenshot, request):
    alice_server(hub)
    page = logged_in(hub, ALICE)
    lab.open_lab(page, hub, ALICE)
    notebook = lab.new_notebook(page)
    # Typed in the browser and run with Shift+Enter (each line a statement: no indenting).
    code = textwrap.dedent(f"""\
        import numpy as np, keras
        from jupyterhub_credits.keras import CreditsCallback
        x = np.random.rand(300, 4).astype('float32'); y = x.sum(axis=1)
        layers = [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)]
        model = keras.Sequential(layers); model.compile(optimizer='adam', loss='mse')
        board = keras.callbacks.TensorBoard('{RUN_DIR}')
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[CreditsCallback(), board])
        print('fit done', len(history.history['loss']))""")
    lab.type_into_cell(page, notebook, code)
    page.keyboard.press("Shift+Enter")
    expect(notebook.locator(".jp-OutputArea-output", has_text="fit done 2")).to_be_visible(
        timeout=120_000)

    # The run is in the panel (the page polls; its server reads the runs journal).
    panel = lab.open_panel_from_status_bar(page)
    run = panel.locator(".jp-credits-runs li").first
    expect(run).to_be_visible(timeout=60_000)
    status = lab.server_status(hub, ALICE)
    runs = status["runs"]
    assert runs and runs[0]["epochs"] == 2, runs
    assert runs[0]["logdir"] == str(lab.home_dir(hub, ALICE) / RUN_DIR), runs[0]
    link = run.get_by_role("link", name="Open in TensorBoard")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("href", re.compile(
        re.escape(f"{lab.server_path(ALICE)}tensorboard/")))
    with page.context.expect_page() as opened:
        link.click()
    tensorboard = opened.value
    # The proxy answers once TensorBoard is up: its first start imports TensorFlow and the
    # proxy checks at doubling intervals, 10-40 s on 2 cores (Playwright's default is 30 s).
    tensorboard.wait_for_load_state(timeout=120_000)
    assert tensorboard.url.startswith(f"{hub.url}{lab.server_path(ALICE)}tensorboard/"), \
        tensorboard.url
    # Real TensorBoard, started on first use behind the proxy: it lists the run.
    expect(tensorboard.get_by_text(re.compile(re.escape(RUN_DIR))).first).to_be_visible(
        timeout=120_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tensorboard.screenshot(path=str(SCREENSHOTS / f"{request.node.name}-tensorboard.png"))

    # Back in JupyterLab, the run's earning outcome: once the kernel's reporter has sent the
    # event, the service has answered and the page has polled again.
    outcome = wait_for(lambda: lab.server_status(hub, ALICE)["runs"][0]["outcome"],
                       timeout=60, what="the run's earning outcome")
    expect(run).to_contain_text(outcome.get("reason") or outcome["points"], timeout=30_000)
    screenshot("run")


def test_while_the_credits_service_is_down_the_panel_says_so_and_recovers(
        hub, logged_in, screenshot):
    alice_server(hub)
    page = logged_in(hub, ALICE)
    lab.open_lab(page, hub, ALICE)
    panel = lab.open_panel_from_status_bar(page)
    expect(panel.locator(".jp-credits-balance")).to_be_visible()
    expect(panel.locator(".jp-credits-error")).to_have_count(0)
    # The service frozen, not killed: the hub would restart a dead one at once, while a
    # frozen one takes the connection and never answers (the harder case: a timeout).
    pids = hub.service_pids()
    assert pids
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # The server extension's request times out (10 s) and the panel's next poll
        # (every 15 s) shows its words; the last good answer stays on screen.
        error = panel.locator(".jp-credits-error")
        expect(error).to_contain_text("The credits service is not answering", timeout=60_000)
        expect(error).to_contain_text("trying again in")
        expect(panel.locator(".jp-credits-balance")).to_contain_text(" cr")
        expect(lab.status_item(page)).to_contain_text(" cr")
        screenshot("service-down")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    # Back after its backoff (5-6 s) and the page's next poll: the words go away.
    expect(panel.locator(".jp-credits-error")).to_have_count(0, timeout=60_000)
    expect(panel.locator(".jp-credits-balance")).to_be_visible()


def test_an_admin_stop_is_told_to_the_owner_in_words(hub, logged_in, screenshot):
    alice_server(hub)
    page = logged_in(hub, ALICE)
    lab.open_lab(page, hub, ALICE)
    expect(lab.status_item(page)).to_be_visible()
    response = hub.credits_api("POST", f"/admin/sessions/{ALICE}/default/stop", json={})
    assert response.status_code == 200, response.text
    dialog = page.locator(".jp-credits-stopDialog")
    expect(dialog).to_be_visible(timeout=60_000)
    expect(dialog).to_contain_text("An administrator stopped your server")
    expect(dialog.locator("a.jp-credits-startAgain")).to_have_attribute(
        "href", re.compile(re.escape(lab.spawn_path(ALICE)) + "$"))
    screenshot("admin-stopped")
    hub.wait_gone(ALICE)


def test_no_hub_or_service_token_reached_the_browser(hub):
    received = [r for t in TRAFFIC for r in t.responses]
    # The recording saw the credits answers the pages got (or there is nothing to prove).
    statuses = [r for r in received if "/credits/status" in r.url and r.body]
    assert statuses, "no credits/status answer was recorded (run the whole module)"
    assert any(b'"session"' in r.body for r in statuses)
    assert len(SECRETS) >= 4, sorted(SECRETS)  # the service's, the tests', alice's and bob's
    leaks = [leak for t in TRAFFIC for leak in t.leaks(SECRETS)]
    assert not leaks, leaks
