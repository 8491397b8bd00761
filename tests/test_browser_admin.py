"""The admin panel in a real browser, as a credits administrator uses it.

A real hub (tests/realhub.py) whose admin user is "admin"; credits are granted
through the hub's ledger (logins earn nothing here, so a balance is what a test
gave). Each test logs the admin in through the hub's login form, opens the
panel and types, picks and clicks as a person does; what moved is then checked
in the ledger, the hub and the sessions table. Screenshots of each step are in
test-artifacts/screenshots/.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest

from jupyterhub_credits.ledger.core import user_account
from jupyterhub_credits.ledger.reports import lots_of
from tests.waiting import wait_for

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.browser,
              # A course group with a pool account and a quota of its own (the catalog tab).
              pytest.mark.hub(catalog={"quotas": {"groups": {
                  "dl101": {"pool": True, "max_gpus_per_session": 1}}}})]

ADMIN = "admin"


def units(hub, user: str) -> int:
    """``user``'s available balance in units (0 without an account)."""
    try:
        return hub.ledger.balance(user_account(user)).available
    except Exception:  # noqa: BLE001 - no account yet
        return 0


def make_users(hub, *names: str) -> None:
    response = hub.api("POST", "/users", json={"usernames": list(names)})
    assert response.status_code in (201, 409), response.text


def open_panel(page, hub, tab: str | None = None, *, path: str = "admin"):
    url = f"{hub.url}/services/credits/{path}" + (f"?tab={tab}" if tab else "")
    response = page.goto(url)
    expect(page.locator("#credits-admin")).to_be_visible()
    return response


def dialog_open(page, text: str) -> None:
    """The panel's confirmation dialog has opened (fully: its first box has the focus),
    saying ``text``."""
    expect(page.locator("#admin-confirm-text")).to_contain_text(text)
    expect(page.locator("#admin-confirm-reason, #admin-confirm-ok").and_(
        page.locator(":focus"))).to_have_count(1)


def confirm(page) -> None:
    """Click Confirm in the panel's dialog and wait until it has closed (backdrop and all)."""
    page.click("#admin-confirm-ok")
    expect(page.locator("#admin-confirm")).to_be_hidden()
    expect(page.locator(".modal-backdrop")).to_have_count(0)


@pytest.fixture
def admin_page(hub, logged_in):
    return logged_in(hub, ADMIN)


def test_a_non_admin_gets_a_403_page_in_the_hubs_look(hub, logged_in, screenshot):
    page = logged_in(hub, "nadia")
    response = page.goto(f"{hub.url}/services/credits/admin")
    assert response.status == 403
    expect(page.locator("#credits-error")).to_contain_text("403")
    message = page.locator("#credits-error-message")
    expect(message).to_contain_text("custom:credits:admin")
    expect(message).to_contain_text("nadia")
    expect(page.locator("#jupyterhub-logo")).to_be_visible()  # the hub's navigation bar
    assert page.locator("#credits-admin").count() == 0
    screenshot("forbidden")
    # A user's page of the panel too.
    assert page.goto(f"{hub.url}/services/credits/admin/users/nadia").status == 403


def test_the_admin_grants_to_each_member_of_a_hub_group(hub, admin_page, screenshot):
    members = ["grp-ada", "grp-bo", "grp-cy"]
    make_users(hub, *members)
    response = hub.api("POST", "/groups/dl101", json={"users": members})
    assert response.status_code in (201, 409), response.text
    page = admin_page
    open_panel(page, hub, "grant")
    page.select_option("#admin-target-kind", "group")
    page.fill("#admin-target-group", "dl101")
    page.fill("#admin-amount", "5")
    page.click("#admin-preview-button")
    # No reason: refused next to the reason box, nothing sent.
    expect(page.locator("#admin-reason-error")).to_contain_text("reason")
    expect(page.locator("#admin-preview")).to_be_hidden()
    page.fill("#admin-reason", "Course DL101 starter credits")
    screenshot("form")

    page.click("#admin-preview-button")
    expect(page.locator("#admin-preview")).to_be_visible()
    summary = page.locator("#admin-preview-summary")
    expect(summary).to_have_text("Grant to each of the 3 members of hub group “dl101”: "
                                 "3 users × 5.00 credits = 15.00 credits.")
    lines = page.locator("#admin-preview-lines tbody tr")
    expect(lines).to_have_count(3)
    assert sorted(lines.locator("td:nth-child(2)").all_inner_texts()) == members
    assert all(units(hub, user) == 0 for user in members)  # a preview moves nothing
    screenshot("preview")

    page.click("#admin-apply-button")
    expect(page.locator("#admin-results")).to_be_visible()
    expect(page.locator("#admin-results-summary")).to_have_text("3 lines applied.")
    expect(page.locator("#admin-result-lines tbody tr[data-status=applied]")).to_have_count(3)
    screenshot("applied")
    assert [units(hub, user) for user in members] == [5_000] * 3
    transfer = hub.ledger.history(user_account("grp-ada"))[0]
    assert (transfer.kind, transfer.actor, transfer.reason) == (
        "grant", f"user:{ADMIN}", "Course DL101 starter credits")

    # The group's pool account is a target of its own: one grant, with an expiry.
    page.click("#admin-grant-again")
    page.select_option("#admin-target-kind", "pool")
    page.fill("#admin-target-pool", "dl101")
    page.fill("#admin-amount", "50")
    page.fill("#admin-expires", "30")
    page.fill("#admin-reason", "DL101 GPU pool")
    page.click("#admin-preview-button")
    expect(page.locator("#admin-preview-lines tbody tr")).to_have_text(
        re.compile("pool of group dl101.*50.00"))
    page.click("#admin-apply-button")
    expect(page.locator("#admin-results-summary")).to_have_text("1 line applied.")
    pool = hub.ledger.balance("group:dl101")
    assert pool.available == 50_000
    (lot,) = [lot for lot in lots_of(hub.ledger, "group:dl101")]
    assert lot.expires_at is not None


def test_a_csv_with_one_bad_line_applies_the_rest_and_reports_it(
        hub, admin_page, tmp_path, screenshot):
    make_users(hub, "csv-ann", "csv-ben", "csv-cat")
    upload = tmp_path / "grants.csv"
    upload.write_text("user,amount,reason\n"
                      "csv-ann,2.5,Tutor\n"
                      "csv-ben,two,Typo here\n"
                      "csv-cat,4,\n")
    page = admin_page
    open_panel(page, hub, "grant")
    page.select_option("#admin-target-kind", "csv")
    page.set_input_files("#admin-target-csv", str(upload))
    page.fill("#admin-reason", "Spring tutors")
    page.click("#admin-preview-button")
    lines = page.locator("#admin-preview-lines tbody tr")
    expect(lines).to_have_count(3)
    expect(lines.nth(1)).to_have_class(re.compile("table-danger"))
    expect(lines.nth(1).locator("td").nth(4)).not_to_be_empty()
    expect(page.locator("#admin-preview-summary")).to_contain_text("6.50 credits in total")
    expect(page.locator("#admin-preview-summary")).to_contain_text("1 line cannot apply")
    # The empty reason cell takes the form's.
    expect(lines.nth(2).locator("td").nth(3)).to_have_text("Spring tutors")
    screenshot("preview")

    page.click("#admin-apply-button")
    expect(page.locator("#admin-results-summary")).to_have_text(
        "2 lines applied, 1 line failed (nothing of them applied).")
    failed = page.locator("#admin-result-lines tbody tr[data-status=error]")
    expect(failed).to_have_count(1)
    expect(failed.locator("td").nth(1)).to_have_text("csv-ben")
    screenshot("applied")
    assert (units(hub, "csv-ann"), units(hub, "csv-ben"), units(hub, "csv-cat")) == (
        2_500, 0, 4_000)


def test_the_admin_reverses_a_transfer_from_the_audit_log(hub, admin_page, screenshot):
    make_users(hub, "rev-dan")
    hub.grant("rev-dan", 7, key="test-grant:rev-dan:reverse-me")
    transfer = hub.ledger.history(user_account("rev-dan"))[0]
    page = admin_page
    open_panel(page, hub, "audit")
    row = page.locator(f"#admin-transfers tr[data-transfer-id='{transfer.id}']")
    expect(row).to_contain_text("7.00")
    row.get_by_role("button", name="Reverse").click()
    dialog_open(page, f"#{transfer.id}")
    page.click("#admin-confirm-ok")  # no reason yet
    expect(page.locator("#admin-confirm-reason-error")).to_contain_text("reason")
    page.fill("#admin-confirm-reason", "Granted to the wrong person")
    screenshot("confirm")
    confirm(page)
    expect(row.locator(".admin-reversed")).to_contain_text("reversed by #")
    screenshot("reversed")
    assert units(hub, "rev-dan") == 0
    reversal = hub.ledger.history(user_account("rev-dan"))[0]
    assert (reversal.kind, reversal.reversal_of, reversal.actor, reversal.reason) == (
        "reverse", transfer.id, f"user:{ADMIN}", "Granted to the wrong person")

    # The reversal is in the log, filtered by kind.
    page.click(".admin-kind-filters a[data-kind=reversals]")
    expect(page.locator(f"#admin-transfers tr[data-transfer-id='{reversal.id}']")).to_be_visible()


def test_the_admin_freezes_a_users_earning_on_their_page(hub, admin_page, screenshot):
    make_users(hub, "frosty")
    hub.grant("frosty", 12)
    page = admin_page
    open_panel(page, hub, "users")
    page.fill("#admin-user-search", "frost")
    page.click("#admin-user-search-button")
    expect(page.locator("#admin-users tbody tr")).to_have_count(1)
    screenshot("search")
    page.get_by_role("link", name="frosty").click()
    expect(page.locator("#admin-user-name")).to_have_text("frosty")
    expect(page.locator("#login_widget")).to_contain_text(ADMIN)  # the viewer, not the user shown
    expect(page.locator("#admin-user-available")).to_have_text("12.00")
    expect(page.locator("#admin-freeze-state")).to_have_text("earning")
    page.click("#admin-freeze")
    dialog_open(page, "frosty")
    page.fill("#admin-confirm-reason", "Scripted activity")
    confirm(page)
    expect(page.locator("#admin-freeze-state")).to_have_text("earning frozen")
    expect(page.locator("#admin-unfreeze")).to_be_visible()
    screenshot("frozen")
    state = hub.credits_api("GET", "/accounts/frosty/freeze").json()
    assert state["frozen"] is True
    page.reload()
    expect(page.locator("#admin-freeze-state")).to_have_text("earning frozen")

    # A grant from the user's own page: asked, confirmed, said.
    page.click("#admin-user-grant summary")
    page.fill("#admin-user-amount", "3")
    page.click("#admin-user-grant-button")
    expect(page.locator("#admin-user-reason-error")).to_contain_text("reason")
    page.fill("#admin-user-reason", "Helped at the workshop")
    page.click("#admin-user-grant-button")
    dialog_open(page, "Grant 3.00 credits to frosty")
    confirm(page)
    expect(page.locator("#admin-user-grant-result")).to_contain_text("Granted 3.00 credits")
    assert units(hub, "frosty") == 15_000


def test_the_admin_stops_another_users_live_session(hub, admin_page, screenshot):
    hub.grant("runner", 20)
    session = hub.running_server("runner", image="tf-2.21", gpu_type="a100", gpus=1, hours="1")
    try:
        page = admin_page
        open_panel(page, hub, "sessions")
        row = page.locator("#admin-sessions tr[data-session-user=runner]")
        expect(row).to_contain_text("a100 × 1")
        expect(row).to_contain_text("15.00")
        expect(row.locator(".credits-countdown")).to_contain_text(re.compile(r"\d+ min"))
        screenshot("sessions")
        row.get_by_role("button", name="Stop").click()
        dialog_open(page, "runner")
        screenshot("confirm")
        confirm(page)
        expect(row.locator(".admin-stopped")).to_contain_text("Charged")
        expect(row.locator(".credits-countdown")).to_have_text("stopped")
        screenshot("stopped")
        hub.wait_gone("runner")
        ended = wait_for(lambda: (s := hub.sessions.get(session.key)).state == "ended" and s,
                         what="runner's session to be settled")
        assert ended.end_reason == "admin"
        assert 0 < ended.charged < 15_000
    finally:
        hub.stop_server("runner")


def finished_gpu_session(hub, user: str, *, hours: float, gpus: int) -> None:
    """A T4 session of ``user`` that ran ``hours`` until now (written as the spawner would)."""
    hub.grant(user, 100)
    store = hub.sessions
    now = store.clock()
    session = store.start(user=user, server_name="past", account=user_account(user),
                          image="tf-2.21", gpu_type="t4", gpus=gpus, rate_per_hour=5_000 * gpus,
                          hold_units=5_000 * gpus * 4, actor="test")
    store.mark_ready(session.key, at=now - timedelta(hours=hours))
    store.settle(session.key, reason="expired", end=now)


def test_the_charts_draw_from_the_ledger(hub, admin_page, screenshot):
    # Earlier tests granted credits (issued) and stopped an A100 session after seconds; here a
    # user ran 2 T4s for 1.5 hours (3 GPU-hours, 15 credits).
    make_users(hub, "chartist")
    finished_gpu_session(hub, "chartist", hours=1.5, gpus=2)
    page = admin_page
    open_panel(page, hub, "charts")
    flows = page.locator("#admin-chart-flows svg.credits-chart")
    expect(flows).to_be_visible()
    expect(flows.locator("rect.credits-bar[data-series=issued]")).to_have_count(30)
    today = flows.locator("rect.credits-bar[data-series=spent]").last
    assert "15.0" in today.locator("title").text_content()
    gpu = page.locator("#admin-chart-gpu-hours svg")
    # One bar a day: a session that began before midnight (UTC) has two.
    now = hub.sessions.clock()
    days = 1 if (now - timedelta(hours=1.5)).date() == now.date() else 2
    bars = gpu.locator("rect.credits-bar[data-series=t4]")
    expect(bars).to_have_count(days)
    titles = bars.locator("title").all_text_contents()
    hours = [float(re.search(r"([\d.]+) GPU-hours on T4", title).group(1)) for title in titles]
    assert round(sum(hours), 2) == 3.00, titles
    expect(gpu).to_contain_text("GPU-hours")  # the y axis' name
    top = page.locator("#admin-chart-top svg")
    expect(top.locator("rect.credits-bar")).to_have_count(2)  # chartist, then runner
    expect(top.locator("rect.credits-bar title").first).to_have_text(
        "chartist: 15.00 credits spent")
    screenshot("charts")


def test_the_admin_exports_csv_with_defused_cells_and_runs_verify(hub, admin_page, screenshot):
    make_users(hub, "sheet")
    hub.ledger.grant(user_account("sheet"), 1_000, key="test-export:formula",
                     reason='=HYPERLINK("http://evil.example","click")', actor="test")
    page = admin_page
    open_panel(page, hub, "export")
    expect(page.locator("#admin-verify-state")).not_to_contain_text("Loading")
    with page.expect_download() as download:
        page.click("#admin-export-link")
    text = open(download.value.path(), encoding="utf-8").read()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and "reason" in rows[0]
    (formula,) = [row for row in rows if row["key"] == "test-export:formula"]
    assert formula["reason"] == '\'=HYPERLINK("http://evil.example","click")'

    # Dates the wrong way round: said next to the box.
    page.fill("#admin-export-until", "2000-01-01")
    expect(page.locator("#admin-export-until-error")).to_contain_text("before")
    screenshot("export")

    page.click("#admin-verify-button")
    expect(page.locator("#admin-verify-state")).to_contain_text("consistent", timeout=60_000)
    expect(page.locator("#admin-verify-detail time")).to_have_count(2)
    screenshot("verified")


def test_the_panel_in_dark_theme(hub, admin_page, screenshot):
    page = admin_page
    open_panel(page, hub, "users")
    page.click("#dark-theme-toggle")
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
    expect(page.locator("#admin-users tbody tr").first).to_be_visible()
    # Sorting is the server's: by lifetime spent, the chartist (15 credits of sessions) first.
    page.click("#admin-sort-spent")
    expect(page.locator("#admin-users tbody tr").first).to_have_attribute("data-user", "chartist")
    screenshot("users-dark")
    # Pages are the server's too.
    page.goto(f"{hub.url}/services/credits/admin?tab=users&sort=spent&per_page=2")
    page.get_by_role("link", name="Next").click()
    expect(page.locator("#admin-users-count")).to_contain_text("Users 3–4 of")
    expect(page.locator("#admin-users tbody tr")).to_have_count(2)
    open_panel(page, hub, "charts")
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
    # Chart text takes the theme's body colour, not a fixed dark grey.
    colour = page.locator("#admin-chart-flows svg text").first.evaluate(
        "node => getComputedStyle(node).fill")
    assert colour != "rgb(0, 0, 0)", colour
    screenshot("charts-dark")
    open_panel(page, hub, "catalog")
    expect(page.locator("#admin-catalog-gpus tr[data-gpu-type=a100]")).to_contain_text("15.00")
    expect(page.locator("#admin-catalog-quotas thead")).to_contain_text("Group dl101 pool")
    expect(page.locator("#admin-catalog-quotas tbody tr").first).to_contain_text(
        re.compile(r"GPUs per session, at most\s+3\s+1"))
    screenshot("catalog-dark")


def test_bad_query_arguments_are_error_pages_in_words(hub, admin_page, screenshot):
    page = admin_page
    for query, status, words in [
        ("admin?tab=users&sort=bogus", 400, "sort must be one of balance, spent, earned, name"),
        ("admin?tab=users&page=0", 400, "page must be a whole number"),
        ("admin?tab=audit&kind=refunds", 400, "kind must be one of grants"),
        ("admin?tab=nothing", 404, "no section 'nothing'"),
        ("admin/users/nobody-at-all", 404, "The hub has no user 'nobody-at-all'"),
    ]:
        response = page.goto(f"{hub.url}/services/credits/{query}")
        assert response.status == status, query
        expect(page.locator("#credits-error-message")).to_contain_text(words)
    screenshot("unknown-user")
