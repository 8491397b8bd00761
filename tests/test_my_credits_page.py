"""The My credits page's data (``build_my_credits``) and its template, without a hub or browser.

A real ledger (SQLite and PostgreSQL), session store and earning service on a
FakeClock; the page's template is rendered with the service's own Jinja
environment, as the handler does, to check what a person reads.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from jupyterhub_credits.catalog import load_catalog
from jupyterhub_credits.earning import EarningService
from jupyterhub_credits.earning.rules import earning_rules
from jupyterhub_credits.ledger.errors import InvalidRequest
from jupyterhub_credits.service.context import ServiceContext
from jupyterhub_credits.service.pages import template_environment
from jupyterhub_credits.service.pages.base import PageUser
from jupyterhub_credits.service.pages.my_credits import (
    KIND_FILTERS,
    PAGE_SIZE,
    build_my_credits,
)
from jupyterhub_credits.sessions.store import SessionStore

CATALOG = Path(__file__).resolve().parent.parent / "config" / "catalog.yaml"


@pytest.fixture
def context(ledger, clock):
    catalog = load_catalog(CATALOG)
    return ServiceContext(ledger=ledger, sessions=SessionStore(ledger), catalog=catalog,
                          hub=None, clock=clock,
                          earning=EarningService(ledger, earning_rules(catalog)))


def signup(context, user: str) -> None:
    context.earning.record(user, [{"kind": "signup", "key": "signup"},
                                  {"kind": "login", "key": "login:today"}], source="hub")


def render(data: dict, **extra) -> str:
    namespace = {
        "base_url": "/hub/", "prefix": "/", "user": PageUser(data["user"]),
        "login_url": "/hub/login", "logout_url": "/hub/logout",
        "static_url": lambda path, include_version=True: f"/hub/static/{path}",
        "version_hash": "", "services": [], "parsed_scopes": set(), "admin_access": False,
        "no_spawner_check": True, "announcement": None, "xsrf_token": "x",
        "credits_prefix": "/services/credits/",
        "credits_static_url": lambda path: f"/services/credits/static/{path}",
        "api_url": "/services/credits/api/", "form_key": lambda: "k" * 32,
        "kinds": KIND_FILTERS, "can_spend": True,
    }
    namespace.update({key: value for key, value in data.items() if key != "user"})
    namespace.update(extra)
    return template_environment().get_template("my_credits.html").render(**namespace)


def words(html: str) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    return re.sub(r" ([.,:;)])", r"\1", text)


def test_a_new_user_sees_the_signup_bonus_its_expiry_and_the_earning_rules(context, clock):
    signup(context, "ada")
    data = build_my_credits(context, "ada")
    assert (data["available"], data["reserved"]) == ("76.00", "0.00")
    assert (data["earned"], data["spent"]) == ("76.00", "0.00")
    # The 75-credit bonus expires in 30 days: "soon"; the daily login never does.
    assert data["expiring_soon"] == "75.00"
    (lot,) = data["expiring_lots"]
    assert lot["available"] == "75.00"
    assert lot["expires_at"] == (clock.now + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    kinds = [t["kind"] for t in data["history"]["transfers"]]
    assert kinds == ["earn", "earn"]
    assert all(t["incoming"] and not t["neutral"] for t in data["history"]["transfers"])
    assert data["sessions"] == []
    today = {row["rule"]: row for row in data["earning_today"]["rules"]}
    assert today["daily_login"]["limit"] == "1 of 1 a day" and today["daily_login"]["capped"]
    rules = {line["rule"]: line["text"] for line in data["how_to_earn"]}
    assert rules["daily_login"] == "1.00 credits for logging in; at most once a day."
    assert rules["signup"].startswith("75.00 credits once") and "30 days" in rules["signup"]
    assert "0.01 credits per minute" in rules["notebook_activity"]

    text = words(render(data))
    assert '<span class="me-1">ada</span>' in render(data)  # the hub's bar
    assert "76.00" in text and "No sessions running. Start a server from the Home page." in text
    assert "Earned: signup bonus" in text and "+75.00" in text


def test_a_running_session_shows_its_hardware_rate_cost_and_time_left(context, clock):
    signup(context, "bob")
    session = context.sessions.start(
        user="bob", server_name="", account="user:bob", image="tf-2.21", gpu_type="a100",
        gpus=2, rate_per_hour=30_000, hold_units=15_000, actor="user:bob")
    context.sessions.mark_ready(session.key)
    clock.advance(minutes=6)
    data = build_my_credits(context, "bob")
    (shown,) = data["sessions"]
    assert shown["hardware"].endswith("× 2") and shown["server_label"] == "default"
    assert (shown["rate_per_hour"], shown["cost_so_far"], shown["held"]) == ("30.00", "3.00",
                                                                             "15.00")
    assert shown["seconds_left"] == 24 * 60 and shown["time_left"] == "24 min"
    assert (data["available"], data["reserved"]) == ("61.00", "15.00")
    hold = data["history"]["transfers"][0]
    assert hold["kind"] == "hold" and hold["neutral"]
    assert hold["reason"] == "paid time at the start"

    html = render(data)
    assert 'data-server="default"' in html and 'data-rate="30.00"' in html
    assert 'data-seconds-left="1440"' in html and 'data-key="' + "k" * 32 in html
    assert "Reserved for a session" in words(html)
    # Without the spend scope the page shows the session but offers no Extend or Stop.
    assert "credits-extend-open" not in render(data, can_spend=False)

    # Stopped after 6 minutes: 3 credits charged, the rest back, in words in the history.
    context.sessions.settle(session.key, reason="user")  # 6 minutes used: 3 credits
    data = build_my_credits(context, "bob")
    assert (data["available"], data["spent"], data["sessions"]) == ("73.00", "3.00", [])
    post = next(t for t in data["history"]["transfers"] if t["kind"] == "post")
    assert (post["what"], post["reason"], post["change"]) == ("Charged for a session",
                                                              "you stopped it", "-3.00")


def test_the_history_pages_by_transfer_id_and_filters_by_kind(context, clock):
    signup(context, "cy")
    for n in range(PAGE_SIZE + 3):
        context.ledger.grant("user:cy", 1_000, key=f"g{n}", reason=f"gift {n}", actor="test")
    first = build_my_credits(context, "cy", kind="grants")
    assert len(first["history"]["transfers"]) == PAGE_SIZE
    assert {t["kind"] for t in first["history"]["transfers"]} == {"grant"}
    before = first["history"]["next_before"]
    assert before is not None
    html = words(render(first))
    assert "Older" in html and "Newest" not in html
    assert f'href="/services/credits/?kind=grants&amp;before={before}"' in render(first)

    second = build_my_credits(context, "cy", kind="grants", before=before)
    assert [t["reason"] for t in second["history"]["transfers"]] == ["gift 2", "gift 1", "gift 0"]
    assert second["history"]["next_before"] is None
    assert "Newest" in words(render(second))

    earnings = build_my_credits(context, "cy", kind="earnings")
    assert [t["kind"] for t in earnings["history"]["transfers"]] == ["earn", "earn"]
    assert "No expiry in your history." in words(render(build_my_credits(context, "cy",
                                                                          kind="expiry")))


@pytest.mark.parametrize("kind, before", [("bogus", None), (None, 0), (None, "12"),
                                          (None, True), ("<script>", None)])
def test_a_bad_filter_or_page_is_refused_in_words(context, kind, before):
    with pytest.raises(InvalidRequest) as refused:
        build_my_credits(context, "dee", kind=kind, before=before)
    assert "grants" in str(refused.value) or "before" in str(refused.value)


def test_a_user_without_an_account_sees_zeros_and_empty_states(context):
    data = build_my_credits(context, "eve")
    assert (data["available"], data["reserved"], data["expiring_soon"]) == ("0.00", "0.00",
                                                                            "0.00")
    text = words(render(data))
    assert "None of your credits expire in the next 30 days." in text
    assert "Nothing yet" in text
    assert "Nobody has earned credits in the last 7 days yet" in text


def test_a_name_that_cannot_hold_credits_gets_a_page_that_says_so(context):
    data = build_my_credits(context, "n" * 201)
    assert data["cannot_hold"] and "200" in data["cannot_hold"]
    text = words(render(data))
    assert "This user name cannot hold credits." in text
    assert "my_credits.js" not in render(data)


def test_the_leaderboard_leaves_out_the_signup_bonus_and_marks_the_viewer(context):
    signup(context, "fay")
    signup(context, "gus")
    data = build_my_credits(context, "fay")
    assert [(row["user"], row["points"], row["me"]) for row in data["leaders"]] == [
        ("fay", "1.00", True), ("gus", "1.00", False)]
    assert "fay (you)" in words(render(data))
