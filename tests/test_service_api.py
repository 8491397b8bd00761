"""The credits REST API: scopes and extension rules alone, then against a real hub.

The hub tests start one real JupyterHub (proxy, credits service, local
servers) per module on a fresh PostgreSQL database and call the service
through the hub's proxy, with users' own hub tokens.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import requests

from jupyterhub_credits.catalog import Quotas
from jupyterhub_credits.service.auth import has_scope
from jupyterhub_credits.service.extension import decide_extension
from jupyterhub_credits.sessions.store import SessionStore

# --- scopes (no hub) ---------------------------------------------------------------------------


def model(name, *scopes, kind="user"):
    return {"kind": kind, "name": name, "scopes": list(scopes)}


def test_has_scope_understands_user_filters():
    alice = model("alice", "custom:credits:read!user=alice", "custom:credits:spend!user=alice")
    assert has_scope(alice, "custom:credits:read", user="alice")
    assert not has_scope(alice, "custom:credits:read", user="bob")
    assert not has_scope(alice, "custom:credits:read")  # unfiltered needed without a user
    assert not has_scope(alice, "custom:credits:events", user="alice")
    # The unexpanded !user form means the model's owner.
    raw = model("alice", "custom:credits:read!user")
    assert has_scope(raw, "custom:credits:read", user="alice")
    assert not has_scope(raw, "custom:credits:read", user="bob")
    assert not has_scope(model("svc", "custom:credits:read!user", kind="service"),
                         "custom:credits:read", user="svc")


def test_has_scope_admin_unfiltered_and_groups():
    admin = model("root", "custom:credits:admin")
    assert has_scope(admin, "custom:credits:read", user="anyone")
    assert has_scope(admin, "custom:credits:spend")
    reader = model("ta", "custom:credits:read")
    assert has_scope(reader, "custom:credits:read", user="x")
    assert not has_scope(reader, "custom:credits:admin")
    teacher = model("t", "custom:credits:read!group=dl101")
    assert has_scope(teacher, "custom:credits:read", user="stu", groups=["dl101"])
    assert not has_scope(teacher, "custom:credits:read", user="stu", groups=["other"])
    assert not has_scope(None, "custom:credits:read", user="x")
    assert not has_scope({"name": "x"}, "custom:credits:read", user="x")


QUOTAS = Quotas(max_gpus_per_session=3, max_hours_per_session=Decimal(24),
                max_concurrent_gpu_sessions=2, min_prepaid_minutes=Decimal(1))


def test_extension_quota_comes_before_balance_and_says_what_fits():
    # 23.5 hours held at 15/hour, broke: the quota speaks first.
    decision = decide_extension(rate=15_000, held=352_500, hours=Decimal(1), available=0,
                                quotas=QUOTAS)
    assert (decision.ok, decision.reason) == (False, "quota")
    assert "23.5 hours" in decision.message and "24 hours per session" in decision.message
    assert decision.max_hours == 0 and "No more time" in decision.message
    decision = decide_extension(rate=15_000, held=15_000, hours=Decimal(2), available=20_000,
                                quotas=QUOTAS)
    assert (decision.ok, decision.reason) == (False, "balance")
    assert "30.00 credits" in decision.message and "20.00 credits" in decision.message
    assert decision.max_hours == Decimal("1.33") and "at most 1.33 hours" in decision.message
    ok = decide_extension(rate=15_000, held=15_000, hours=Decimal("0.5"), available=20_000,
                          quotas=QUOTAS)
    assert ok.ok and ok.hold_units == 7_500


# --- against a real hub --------------------------------------------------------------------

# The module's hub and hub_ledger come from tests/realhub.py.


@pytest.fixture(scope="module")
def alice(hub, hub_ledger):
    """alice (100 credits) running one A100 for an hour; her token."""
    hub_ledger.grant("alice", 100_000, key="grant:alice", reason="test", actor="test")
    token = hub.user_token("alice")
    response = hub.api("POST", "/users/alice/server", json={"user_options": {
        "image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("alice")
    return token


def parse_time(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.fromisoformat(text[:-1] + "+00:00")


@pytest.mark.postgres
@pytest.mark.slow
def test_me_shows_balance_and_the_running_session(hub, alice):
    response = hub.credits_api("GET", "/me", token=alice)
    assert response.status_code == 200, response.text
    me = response.json()
    assert (me["user"], me["available"], me["reserved"]) == ("alice", "85.00", "15.00")
    [session] = me["sessions"]
    contract = {"server", "image", "gpu_type", "gpus", "rate_per_hour", "ready_at", "paid_until",
                "seconds_left", "cost_so_far", "state"}
    assert contract <= set(session)
    assert (session["server"], session["server_label"], session["image"]) == (
        "", "default", "tf-2.21")
    assert (session["gpu_type"], session["gpus"], session["rate_per_hour"]) == ("a100", 1, "15.00")
    assert session["state"] == "running"
    ready, paid = parse_time(session["ready_at"]), parse_time(session["paid_until"])
    assert paid - ready == timedelta(hours=1)
    assert 3500 < session["seconds_left"] <= 3600
    assert Decimal(session["cost_so_far"]) >= 0
    assert session["warnings"] == [] and session["auto_extend"] is False
    assert alice not in response.text and hub.token not in response.text


@pytest.mark.postgres
@pytest.mark.slow
def test_only_the_user_or_an_admin_reads_a_users_credits(hub, alice):
    bob = hub.user_token("bob")
    refused = hub.credits_api("GET", "/users/alice", token=bob)
    assert refused.status_code == 403
    assert refused.json() == {"status": 403, "message": refused.json()["message"]}
    assert "custom:credits:read" in refused.json()["message"]
    own = hub.credits_api("GET", "/users/alice", token=alice)
    assert own.status_code == 200 and own.json()["user"] == "alice"
    admin = hub.credits_api("GET", "/users/alice", token=hub.user_token("admin"))
    assert admin.status_code == 200 and admin.json()["reserved"] == "15.00"
    assert hub.credits_api("GET", "/users/nobody-here").status_code == 404  # tester: admin
    # A service has no credits of its own.
    assert hub.credits_api("GET", "/me").status_code == 403


@pytest.mark.postgres
@pytest.mark.slow
def test_without_credentials_the_api_says_401(hub):
    for headers in ({}, {"Authorization": "token not-a-token"}):
        response = requests.get(f"{hub.url}/services/credits/api/me", headers=headers,
                                timeout=10)
        assert response.status_code == 401
        assert response.json()["status"] == 401 and "authentication" in response.json()["message"]
    post = requests.post(f"{hub.url}/services/credits/api/sessions/default/extend",
                         json={"hours": "1"}, timeout=10)
    assert post.status_code == 401
    # A browser going to the service's page is sent to log in at the hub.
    page = requests.get(f"{hub.url}/services/credits/", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and "/hub/api/oauth2/authorize" in page.headers["Location"]


@pytest.mark.postgres
@pytest.mark.slow
def test_a_browser_logged_in_at_the_hub_reads_its_own_credits(hub, alice):
    browser = requests.Session()
    page = browser.get(f"{hub.url}/hub/login", timeout=10)
    xsrf = browser.cookies.get("_xsrf") or page.text.split('name="_xsrf" value="')[1].split('"')[0]
    browser.post(f"{hub.url}/hub/login", data={"username": "alice", "password": "demo",
                                               "_xsrf": xsrf}, timeout=10)
    # The service's page runs the OAuth dance and lands on My credits with its cookie.
    page = browser.get(f"{hub.url}/services/credits/", timeout=20)
    assert page.status_code == 200 and page.url.endswith("/services/credits/"), page.text
    assert "My credits" in page.text
    me = browser.get(f"{hub.url}/services/credits/api/me", timeout=10)
    assert me.status_code == 200 and me.json()["user"] == "alice"
    other = browser.get(f"{hub.url}/services/credits/api/users/bob", timeout=10)
    assert other.status_code == 403
    # A cookie alone does not make a POST: cross-site requests need the xsrf token.
    forged = browser.post(f"{hub.url}/services/credits/api/sessions/default/extend",
                          json={"hours": "1"}, timeout=10)
    assert forged.status_code in (401, 403)


@pytest.mark.postgres
@pytest.mark.slow
def test_extend_holds_more_and_moves_paid_until(hub, alice, hub_ledger):
    before = hub.credits_api("GET", "/me", token=alice).json()["sessions"][0]
    response = hub.credits_api("POST", "/sessions/default/extend", token=alice,
                               json={"hours": "0.5"})
    assert response.status_code == 200, response.text
    after = response.json()["session"]
    assert parse_time(after["paid_until"]) - parse_time(before["paid_until"]) == \
        timedelta(minutes=30)
    assert after["held"] == "22.50" and "7.50 credits" in response.json()["message"]
    assert hub_ledger.balance("alice").reserved == 22_500
    # A JSON number is read exactly; auto-extend goes on and off on the same endpoint.
    response = hub.credits_api("POST", "/sessions/default/extend", token=alice,
                               json={"hours": 0.25, "auto_extend": True})
    assert response.status_code == 200 and response.json()["session"]["auto_extend"] is True
    assert response.json()["session"]["held"] == "26.25"
    off = hub.credits_api("POST", "/sessions/default/extend", token=alice,
                          json={"auto_extend": False})
    assert off.status_code == 200 and off.json()["session"]["auto_extend"] is False
    session = SessionStore(hub_ledger).open_session("alice")
    assert session.held == 26_250 and not session.auto_extend


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("body, status, words", [
    ({"hours": "30"}, 403, "limit of 24 hours per session"),
    ({"hours": "23"}, 403, "You can add at most"),  # already paid for 1 h or more
    ({"hours": "10"}, 402, "150.00 credits, but the balance available is"),
    ({"hours": "-1"}, 400, "must not be negative"),
    ({"hours": "abc"}, 400, "invalid hours"),
    ({"hours": True}, 400, "invalid hours"),
    ({"hours": "1", "gpus": 3}, 400, "unknown field 'gpus'"),
    ({"auto_extend": "yes"}, 400, "true or false"),
    ({}, 400, "give \"hours\""),
])
def test_extend_refusals_are_clear(hub, alice, hub_ledger, body, status, words):
    held = SessionStore(hub_ledger).open_session("alice").held
    response = hub.credits_api("POST", "/sessions/default/extend", token=alice, json=body)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status and words in response.json()["message"]
    assert SessionStore(hub_ledger).open_session("alice").held == held  # nothing held


@pytest.mark.postgres
@pytest.mark.slow
def test_extend_needs_an_open_session_and_valid_json(hub, alice):
    missing = hub.credits_api("POST", "/sessions/gpu-box/extend", token=alice,
                              json={"hours": "1"})
    assert missing.status_code == 404 and "gpu-box" in missing.json()["message"]
    broken = hub.credits_api("POST", "/sessions/default/extend", token=alice, data=b"{hours")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["message"]
    unknown = hub.credits_api("GET", "/no-such-thing", token=alice)
    assert unknown.status_code == 404 and unknown.json()["status"] == 404


@pytest.mark.postgres
@pytest.mark.slow
def test_catalog_lists_prices_and_free_gpus(hub, alice):
    response = hub.credits_api("GET", "/catalog", token=alice)
    assert response.status_code == 200, response.text
    catalog = response.json()
    assert {"tf-2.21", "tf-2.19", "tf-2.17", "tf-2.21-cpu"} <= {i["id"] for i in catalog["images"]}
    gpus = {g["id"]: g for g in catalog["gpu_types"]}
    assert gpus["a100"]["price_per_gpu_hour"] == "15.00"
    # This hub declares a100:0, a100:1, t4:2; alice's session holds one A100.
    assert (gpus["a100"]["free"], gpus["a100"]["total"]) == (1, 2)
    assert (gpus["t4"]["free"], gpus["h100"]["free"]) == (1, 0)
    assert catalog["cpu"] == {"price_per_hour": "1.00"}
    assert catalog["quotas"]["max_hours_per_session"] == "24"
    assert catalog["quotas"]["min_extension_minutes"] == "15"
