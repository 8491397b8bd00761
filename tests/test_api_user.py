"""The user-side and session endpoints of the credits API, against a real hub.

History and lots (filters, pages, another user's refused), the caller's
sessions, extend with an idempotency key, stopping a session now (by its
owner and by an admin: settled once, server gone), the admin's session list
and stats, and the spec served in both formats. One hub for the module
(tests/realhub.py); two single-user servers are started in all.
"""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import requests
import yaml
from sqlalchemy import select

from jupyterhub_credits.ledger.records import iso
from jupyterhub_credits.ledger.schema import transfers
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.store import Session

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CPU = {"image": "tf-2.21-cpu", "gpu_type": "none", "hours": "1"}
A100 = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}


def running(hub, user: str, **options) -> Session:
    """``user``'s open, ready session on the default server (started if there is none)."""
    session = hub.sessions.open_session(user)
    if session is not None and session.state == "running":
        return session
    return hub.running_server(user, **options)


def holds_of(hub, session_key: str) -> list:
    with hub.ledger.engine.connect() as conn:
        return conn.execute(select(transfers.c.id).where(
            transfers.c.key.like(f"{session_key}:hold:%"))).all()


def posts_of(hub, session_key: str) -> list:
    """The ledger's settlement transfers (post/void) of one session."""
    with hub.ledger.engine.connect() as conn:
        return conn.execute(select(transfers.c.kind, transfers.c.actor).where(
            transfers.c.key.like(f"{session_key}:settle:%"))).all()


@pytest.fixture(scope="module")
def admin(hub):
    return hub.user_token("admin")


@pytest.fixture(scope="module")
def bob(hub):
    return hub.user_token("bob")


@pytest.fixture(scope="module")
def erin(hub, hub_ledger):
    """erin: two grants (one expiring in 10 days, one in 90), an earning and a reversed grant."""
    now = datetime.now(timezone.utc)
    hub_ledger.grant("erin", 5_000, key="erin:soon", reason="course credit", actor="test",
                     expires_at=now + timedelta(days=10))
    hub_ledger.grant("erin", 7_000, key="erin:later", reason="later", actor="test",
                     expires_at=now + timedelta(days=90))
    hub_ledger.grant("erin", 3_000, key="erin:forever", reason="no expiry", actor="test")
    hub_ledger.earn("erin", 500, key="erin:earn", rule="notebook_activity")
    mistake = hub_ledger.grant("erin", 1_000, key="erin:mistake", reason="oops", actor="test")
    hub_ledger.reverse(mistake.transfer.id, key="erin:undo", reason="oops", actor="test")
    return hub.user_token("erin")


# --- history and lots ---------------------------------------------------------------------------


def test_lots_soonest_expiry_first_with_what_expires_soon(hub, erin):
    response = hub.credits_api("GET", "/me/lots", token=erin)
    assert response.status_code == 200, response.text
    body = response.json()
    lots = body["lots"]
    # The reversed grant's lot is empty and left out; never-expiring lots come last.
    assert [lot["remaining"] for lot in lots][:2] == ["5.00", "7.00"]
    assert lots[0]["expires_at"] < lots[1]["expires_at"]
    assert all(lot["expires_at"] is None for lot in lots[2:])
    assert {lot["reason"] for lot in lots} >= {"course credit", "later", "no expiry"}
    assert lots[0]["kind"] == "grant" and "earn" in {lot["kind"] for lot in lots}
    assert set(lots[0]) == {"id", "amount", "remaining", "reserved", "available", "expires_at",
                            "created_at", "kind", "reason"}
    assert lots[0]["available"] == "5.00" and lots[0]["reserved"] == "0.00"
    assert (body["expiring_soon"], body["soon_days"]) == ("5.00", 30)


def test_history_pages_newest_first_and_filters_by_kind(hub, erin):
    everything = hub.credits_api("GET", "/me/history", token=erin).json()
    ids = [t["id"] for t in everything["transfers"]]
    assert len(ids) == 6 and ids == sorted(ids, reverse=True)
    assert everything["next_before"] is None
    assert everything["transfers"][0]["kind"] == "reverse"
    assert everything["transfers"][0]["change"] == "-1.00"
    # Pages of two, chained by next_before, give the same transfers.
    seen, before = [], None
    for _ in range(5):
        params = {"limit": 2, **({"before": before} if before else {})}
        page = hub.credits_api("GET", "/me/history", token=erin, params=params).json()
        seen += [t["id"] for t in page["transfers"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == ids
    kinds = {
        "grants": {"grant"}, "earnings": {"earn"}, "reversals": {"reverse"}, "expiry": set(),
        "sessions": set(),
    }
    for kind, expected in kinds.items():
        page = hub.credits_api("GET", "/me/history", token=erin, params={"kind": kind}).json()
        assert {t["kind"] for t in page["transfers"]} == expected, kind
    grants = hub.credits_api("GET", "/me/history", token=erin, params={"kind": "grants"}).json()
    assert len(grants["transfers"]) == 4 and all(t["change"].startswith("+")
                                                 for t in grants["transfers"])


@pytest.mark.parametrize("params, words", [
    ({"kind": "bogus"}, "grants, earnings, sessions, expiry, reversals"),
    ({"limit": "0"}, "between 1 and 200"),
    ({"limit": "201"}, "between 1 and 200"),
    ({"before": "abc"}, "whole number"),
    ({"before": "-5"}, "between 1 and"),
])
def test_history_refuses_bad_arguments_naming_what_is_allowed(hub, erin, params, words):
    response = hub.credits_api("GET", "/me/history", token=erin, params=params)
    assert response.status_code == 400, response.text
    assert words in response.json()["message"]


def test_another_users_lots_history_and_earnings_are_refused(hub, erin, bob, admin):
    for what in ("lots", "history", "earnings"):
        refused = hub.credits_api("GET", f"/users/erin/{what}", token=bob)
        assert refused.status_code == 403, refused.text
        assert "custom:credits:read" in refused.json()["message"]
        assert "erin:" not in refused.text and "course credit" not in refused.text
        # Not even whether a user exists.
        assert hub.credits_api("GET", f"/users/nobody-here/{what}", token=bob).status_code == 403
        own = hub.credits_api("GET", f"/users/erin/{what}", token=erin)
        assert own.status_code == 200, own.text
        by_admin = hub.credits_api("GET", f"/users/erin/{what}", token=admin)
        assert by_admin.status_code == 200
        if what != "earnings":
            assert by_admin.json() == own.json()
        assert hub.credits_api("GET", f"/users/nobody-here/{what}", token=admin).status_code \
            == 404
    # bob's own history has nothing of erin's.
    mine = hub.credits_api("GET", "/me/history", token=bob).json()
    assert mine == {"transfers": [], "next_before": None}
    assert hub.credits_api("GET", "/me/lots", token=bob).json()["lots"] == []
    # The admin's filtered read works like the user's own.
    page = hub.credits_api("GET", "/users/erin/history", token=admin,
                           params={"kind": "earnings"}).json()
    assert [t["kind"] for t in page["transfers"]] == ["earn"]


# --- the caller's sessions: list, extend with a key, stop ---------------------------------------


def test_extend_with_the_same_key_twice_extends_once(hub, hub_ledger):
    hub.grant("carol", 20)
    session = running(hub, "carol", **CPU)
    token = hub.user_token("carol")
    listed = hub.credits_api("GET", "/sessions", token=token).json()["sessions"]
    assert [(s["id"], s["state"]) for s in listed] == [(session.id, "running")]
    key = uuid.uuid4().hex
    first = hub.credits_api("POST", "/sessions/default/extend", token=token,
                            json={"hours": "0.5", "key": key})
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    held = hub.sessions.get(session.key).held
    assert held == session.held + 500
    again = hub.credits_api("POST", "/sessions/default/extend", token=token,
                            json={"hours": "0.5", "key": key})
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True and "already applied" in again.json()["message"]
    assert again.json()["session"]["paid_until"] == first.json()["session"]["paid_until"]
    assert hub.sessions.get(session.key).held == held
    assert hub_ledger.balance("carol").reserved == held
    other = hub.credits_api("POST", "/sessions/default/extend", token=token,
                            json={"hours": "0.5", "key": uuid.uuid4().hex})
    assert other.json()["duplicate"] is False and hub.sessions.get(session.key).held == held + 500
    for bad in ("", "x" * 101, 12):
        refused = hub.credits_api("POST", "/sessions/default/extend", token=token,
                                  json={"hours": "0.5", "key": bad})
        assert refused.status_code == 400 and '"key"' in refused.json()["message"]
    assert hub.credits_api("GET", "/sessions", token=hub.user_token("bob")).json() == \
        {"sessions": []}


def test_stop_settles_once_and_the_server_goes_away(hub, hub_ledger):
    hub.grant("carol", 20)
    session = running(hub, "carol", **CPU)
    token = hub.user_token("carol")
    bob = hub.user_token("bob")
    assert hub.credits_api("POST", "/sessions/default/stop", token=bob).status_code == 404
    assert hub.sessions.get(session.key).state == "running"  # bob has no session there

    response = hub.credits_api("POST", "/sessions/default/stop", token=token)
    assert response.status_code == 200, response.text
    body = response.json()
    stopped = body["session"]
    assert (stopped["state"], stopped["end_reason"], stopped["seconds_left"]) == (
        "ended", "user", 0)
    ended = hub.sessions.get(session.key)
    assert (ended.state, ended.end_reason) == ("ended", "user")
    assert stopped["charged"] == stopped["cost_so_far"] == f"{Decimal(ended.charged) / 1000:.2f}"
    assert stopped["ended_at"] == iso(ended.ended_at)
    returned = Decimal(ended.held - ended.charged) / 1000
    assert re.fullmatch(r"Stopped\. Charged \d+\.\d\d credits; [\d.]+ returned to your balance\.",
                        body["message"]), body["message"]
    assert f"{returned:.2f} returned" in body["message"]
    # Asked of the hub at once: the server is gone within seconds.
    hub.wait_gone("carol", timeout=20)
    # Settled exactly once, by carol; only the time used is charged.
    settlements = posts_of(hub, session.key)
    assert {actor for _, actor in settlements} == {"user:carol"}
    assert len(settlements) == len(holds_of(hub, session.key))  # each hold resolved once
    again = hub.credits_api("POST", "/sessions/default/stop", token=token)
    assert again.status_code == 409 and "already ended" in again.json()["message"]
    assert len(posts_of(hub, session.key)) == len(settlements)
    assert hub.sessions.get(session.key).charged == ended.charged
    balance = hub_ledger.balance("carol")
    assert balance.reserved == 0
    assert hub.credits_api("GET", "/sessions", token=token).json() == {"sessions": []}
    assert hub.credits_api("POST", "/sessions/other/stop", token=token).status_code == 404
    assert verify(hub_ledger.engine).ok


# --- admin: sessions, stop, stats ----------------------------------------------------------------


def test_admin_lists_sessions_and_stops_one_exactly_once(hub, hub_ledger, admin, bob):
    hub.grant("dave", 40)
    session = running(hub, "dave", **A100)
    dave = hub.user_token("dave")
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    sample = {"kind": "gpu_utilization", "key": f"gpu-{uuid.uuid4().hex}", "time": now,
              "payload": {"minute": now, "gpus": [{"index": 0, "util": 42, "mem_used_mb": 1}]}}
    reported = hub.credits_api("POST", "/events", token=dave, json=[sample])
    assert reported.status_code == 200, reported.text

    assert hub.credits_api("GET", "/admin/sessions", token=bob).status_code == 403
    listed = hub.credits_api("GET", "/admin/sessions", token=admin)
    assert listed.status_code == 200, listed.text
    [row] = [s for s in listed.json()["sessions"] if s["id"] == session.id]
    assert (row["user"], row["gpu_type"], row["state"]) == ("dave", "a100", "running")
    assert row["gpu_utilization"] == 42

    refused = hub.credits_api("POST", "/admin/sessions/dave/default/stop", token=bob, json={})
    assert refused.status_code == 403 and hub.sessions.get(session.key).state == "running"
    # Two at once: one settles, the other is told it already has.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: hub.credits_api(
            "POST", "/admin/sessions/dave/default/stop", token=admin,
            json={"reason": "maintenance"}), range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    [done] = [a.json() for a in answers if a.status_code == 200]
    assert (done["session"]["end_reason"], done["session"]["user"]) == ("admin", "dave")
    assert "returned to dave's balance" in done["message"]
    ended = hub.sessions.get(session.key)
    assert (ended.state, ended.end_reason) == ("ended", "admin")
    settlements = posts_of(hub, session.key)
    assert {actor for _, actor in settlements} == {"user:admin"}
    later = hub.credits_api("POST", "/admin/sessions/dave/default/stop", token=admin)
    assert later.status_code == 409 and "stopped by an administrator" in later.json()["message"]
    assert posts_of(hub, session.key) == settlements
    hub.wait_gone("dave", timeout=20)
    # The spawner's post-stop hook frees the GPU once the process is gone.
    hub.stop_server("dave")
    assert hub_ledger.balance("dave").reserved == 0
    assert hub.credits_api("POST", "/admin/sessions/nobody/default/stop",
                           token=admin).status_code == 404


def test_stats_has_a_row_per_day_and_the_top_consumers(hub, admin, bob, erin):
    assert hub.credits_api("GET", "/admin/stats", token=bob).status_code == 403
    for days in ("0", "367", "x"):
        assert hub.credits_api("GET", "/admin/stats", token=admin,
                               params={"days": days}).status_code == 400
    response = hub.credits_api("GET", "/admin/stats", token=admin, params={"days": 3})
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["days"] == 3 and set(stats) == {"days", "flows", "gpu_hours", "top_consumers"}
    dates = [row["date"] for row in stats["flows"]]
    today = datetime.now(timezone.utc).date()
    assert dates == [(today - timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    assert Decimal(stats["flows"][-1]["issued"]) >= Decimal("16.50")  # erin's alone
    assert all(set(row) == {"date", "issued", "spent"} for row in stats["flows"])
    for row in stats["gpu_hours"]:
        assert set(row) == {"date", "gpu_type", "hours"} and re.fullmatch(r"\d+\.\d\d",
                                                                          row["hours"])
    assert len(stats["top_consumers"]) <= 10
    for row in stats["top_consumers"]:
        assert set(row) == {"user", "spent"} and not row["user"].startswith("user:")
    default = hub.credits_api("GET", "/admin/stats", token=admin).json()
    assert default["days"] == 30 and len(default["flows"]) == 30


# --- the spec -----------------------------------------------------------------------------------


def test_the_spec_is_served_without_login_in_both_formats(hub):
    base = f"{hub.url}/services/credits/api"
    as_yaml = requests.get(f"{base}/openapi.yaml", timeout=10)
    assert as_yaml.status_code == 200
    assert as_yaml.headers["Content-Type"].startswith("text/yaml")
    document = yaml.safe_load(as_yaml.text)
    as_json = requests.get(f"{base}/openapi.json", timeout=10)
    assert as_json.status_code == 200
    assert as_json.headers["Content-Type"].startswith("application/json")
    assert as_json.json() == document
    for path in ("/api/me/lots", "/api/me/history", "/api/sessions", "/api/sessions/{server}/stop",
                 "/api/admin/sessions", "/api/admin/sessions/{user}/{server}/stop",
                 "/api/admin/stats", "/api/openapi.json", "/api/users/{user}/earnings"):
        assert path in document["paths"], path
    assert requests.post(f"{base}/openapi.json", timeout=10).status_code == 405
