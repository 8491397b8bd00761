"""Earning through the credits API, against one real hub (proxy, service, local servers).

Logins go through the hub's login form (the hub records them itself: trusted);
claims come from a running single-user server with the server's own token
(``JUPYTERHUB_API_TOKEN`` from its environment), or from a user's token.

The hub's catalog is the shipped one with two earning knobs loosened
(training runs: no minimum interval or daily count; a high rate limit), so that
2,000 forged training runs reach the bound that matters: ``max_claims_per_day``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import requests
import yaml
from sqlalchemy import update

from jupyterhub_credits.earning import EarningService
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.schema import sessions
from tests.hub import CATALOG
from tests.realhub import log_in

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.hub(logins_earn=True, catalog={
    "earning": {"rate_limit_per_minute": 100_000,
                "rules": {"training_run": {"max_per_day": None, "min_interval_s": 0}}}})]

BOUND = 4_000  # max_claims_per_day in the shipped catalog, in units
RUN = {"epochs": 3, "steps": 300, "duration_s": 300, "metrics": {"loss": 0.1}}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def run_event(key: str, duration_s: float = 300) -> dict:
    return {"kind": "training_run", "key": key, "time": now_iso(),
            "payload": {**RUN, "duration_s": duration_s}}


@pytest.fixture(scope="module")
def sam(hub, hub_ledger):
    """sam runs a CPU server; (sam's server token, sam's own token)."""
    hub.grant("sam", 10)
    session = hub.running_server("sam", image="tf-2.21-cpu", gpu_type="none", gpus=0, hours="1")
    # A run counts only if the session was up as long: sam's server has been up ten minutes.
    earlier = timedelta(minutes=10)
    with hub_ledger.engine.begin() as conn:
        conn.execute(update(sessions).where(sessions.c.key == session.key).values(
            ready_at=session.ready_at - earlier, paid_until=session.paid_until - earlier,
            billed_until=session.ready_at - earlier))
    return hub.server_environment("sam")["JUPYTERHUB_API_TOKEN"], hub.user_token("sam")


def post_events(hub, token, events, **kwargs):
    return hub.credits_api("POST", "/events", token=token, json=events, **kwargs)


def test_a_login_earns_the_signup_bonus_once_and_the_daily_login_once_a_day(hub, hub_ledger):
    _, response = log_in(hub.url, "newbie")
    assert response.ok, response.text[-2000:]
    assert hub_ledger.balance("newbie").available == 76_000  # 75 signup + 1 daily login
    _, response = log_in(hub.url, "newbie")
    assert response.ok, response.text[-2000:]
    assert hub_ledger.balance("newbie").available == 76_000
    token = hub.user_token("newbie")
    mine = hub.credits_api("GET", "/me/earnings", token=token)
    assert mine.status_code == 200, mine.text
    history = mine.json()["history"]
    assert sorted((e["kind"], e["outcome"], e["points"], e["source"]) for e in history) == [
        ("login", "earned", "1.00", "hub"), ("signup", "earned", "75.00", "hub")]
    assert any(e["key"].startswith("login:") for e in history)
    rules = {rule["rule"]: rule for rule in mine.json()["rules"]}
    assert rules["daily_login"]["count"] == 1 and rules["daily_login"]["max_per_day"] == 1
    assert rules["signup"]["points"] == "75.00"
    expiring = hub_ledger.get_transfer("earn:newbie:signup")
    assert expiring.kind == "earn"


def test_server_token_claims_get_one_outcome_each_in_order_and_retries_earn_nothing(
        hub, hub_ledger, sam):
    server_token, _ = sam
    before = hub_ledger.balance("sam").available
    batch = [
        run_event("run-1"),
        run_event("run-short", duration_s=10),
        {"kind": "notebook_activity", "key": "nb-1", "time": now_iso(),
         "payload": {"active_minutes": 5}},
        {"kind": "login", "key": "login:forged", "time": now_iso(), "payload": {}},
        {"kind": "signup", "key": "signup", "payload": {}},
        {"kind": "gpu_utilization", "key": "gpu-1", "time": now_iso(),
         "payload": {"minute": now_iso(), "gpus": [{"index": 0, "util": 90, "mem_used_mb": 10}]}},
        {"kind": "no_such_kind", "key": "odd-1"},
        "not an event",
    ]
    response = post_events(hub, server_token, batch)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["key"] for a in answers] == ["run-1", "run-short", "nb-1", "login:forged",
                                           "signup", "gpu-1", "odd-1", None]
    outcomes = [(a["outcome"], a["points"]) for a in answers]
    assert outcomes[0] == ("earned", "0.50") and outcomes[2] == ("earned", "0.05")
    assert all(outcomes[i][0] == "rejected" for i in (1, 3, 4, 5))
    assert "without GPUs" in answers[5]["reason"]  # sam's server is a CPU one
    assert [o for o, _ in outcomes[6:]] == ["rejected", "rejected"]
    assert "too short" in answers[1]["reason"]
    assert "hub only" in answers[3]["reason"] and "hub only" in answers[4]["reason"]
    assert all(a["points"] == "0.00" for a in answers[3:])
    assert hub_ledger.balance("sam").available == before + 550

    again = post_events(hub, server_token, batch).json()
    assert [a["outcome"] for a in again[:7]] == ["duplicate"] * 7
    assert all(a["points"] == "0.00" for a in again)
    assert hub_ledger.balance("sam").available == before + 550


def test_events_are_always_the_callers_own(hub, hub_ledger, sam):
    _, sam_token = sam
    newbie = hub.user_token("newbie")
    # Naming another user anywhere changes nothing: the token says whose events they are.
    response = hub.credits_api("POST", "/events?user=newbie", token=sam_token,
                               json=[run_event("run-mine")])
    assert response.status_code == 200 and response.json()[0]["outcome"] == "earned"
    smuggled = post_events(hub, sam_token, [{**run_event("run-smuggled"), "user": "newbie"}])
    assert smuggled.json()[0]["outcome"] == "rejected"
    assert "unknown field 'user'" in smuggled.json()[0]["reason"]
    newbie_keys = {e["key"] for e in hub.credits_api("GET", "/me/earnings",
                                                     token=newbie).json()["history"]}
    assert not newbie_keys & {"run-mine", "run-smuggled"}
    sam_keys = {e["key"] for e in hub.credits_api("GET", "/me/earnings",
                                                  token=sam_token).json()["history"]}
    assert {"run-mine", "run-smuggled"} <= sam_keys
    # Without a running session a claim earns nothing.
    lonely = post_events(hub, newbie, [run_event("run-no-session")]).json()
    assert lonely[0]["outcome"] == "rejected" and "no running session" in lonely[0]["reason"]
    # A service has no events of its own.
    assert post_events(hub, None, [run_event("svc")]).status_code == 403


def test_forged_events_earn_at_most_the_daily_bound(hub, hub_ledger, sam):
    assert yaml.safe_load(CATALOG.read_text())["earning"]["max_claims_per_day"] * 1000 == BOUND
    server_token, _ = sam
    earned_before = EarningService(hub_ledger).today("sam")["claims"]["units"]
    assert 0 < earned_before < BOUND
    total = 0
    for batch in range(2):
        forged = [run_event(f"forged-{batch}-{i}") for i in range(1000)]
        response = post_events(hub, server_token, forged, timeout=120)
        assert response.status_code == 200, response.text
        answers = response.json()
        assert len(answers) == 1000
        assert {a["outcome"] for a in answers} <= {"earned", "capped"}
        total += sum(a["units"] for a in answers)
    assert total == BOUND - earned_before
    today = hub.credits_api("GET", "/me/earnings", token=server_token).json()
    assert today["claims"]["units"] == BOUND and today["claims"]["max_points"] == "4.00"
    capped = post_events(hub, server_token, [run_event("one-more")]).json()[0]
    assert capped["outcome"] == "capped" and "daily bound" in capped["reason"]
    assert verify(hub_ledger.engine).ok


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b'{"kind": "training_run"}', 400, "must be a JSON list"),
    (b'"events"', 400, "must be a JSON list"),
    (b"[" + b",".join([b"{}"] * 1001) + b"]", 413, "at most 1000 events"),
])
def test_malformed_bodies_get_a_json_error(hub, sam, body, status, words):
    _, sam_token = sam
    response = hub.credits_api("POST", "/events", token=sam_token, data=body)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status and words in response.json()["message"]


def test_an_admin_freezes_earning_and_others_may_not(hub, hub_ledger, sam):
    server_token, sam_token = sam
    refused = hub.credits_api("POST", "/accounts/sam/freeze", token=hub.user_token("newbie"))
    assert refused.status_code == 403 and "custom:credits:admin" in refused.json()["message"]
    assert hub.credits_api("POST", "/accounts/sam/freeze", token=sam_token).status_code == 403
    assert hub.credits_api("POST", "/accounts/nobody-here/freeze").status_code == 404
    frozen = hub.credits_api("POST", "/accounts/sam/freeze", json={"reason": "farming"})
    assert frozen.status_code == 200 and frozen.json()["frozen"] is True
    answer = post_events(hub, server_token, [run_event("after-freeze")]).json()[0]
    assert (answer["outcome"], answer["reason"]) == ("rejected", "earning frozen")
    assert hub.credits_api("GET", "/me/earnings", token=sam_token).json()["frozen"] is True
    thawed = hub.credits_api("DELETE", "/accounts/sam/freeze")
    assert thawed.status_code == 200 and thawed.json()["frozen"] is False
    assert hub.credits_api("GET", "/accounts/sam/freeze").json()["frozen"] is False


def test_my_earnings_and_the_leaderboard(hub, hub_ledger, sam):
    _, sam_token = sam
    mine = hub.credits_api("GET", "/me/earnings?limit=2", token=sam_token)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert {"user", "day", "frozen", "points", "rules", "claims", "history",
            "next_before"} <= set(body)
    assert body["user"] == "sam" and len(body["history"]) == 2
    page = hub.credits_api("GET", f"/me/earnings?limit=2&before={body['next_before']}",
                           token=sam_token).json()["history"]
    assert page[0]["id"] < body["history"][-1]["id"]
    assert hub.credits_api("GET", "/me/earnings?limit=0", token=sam_token).status_code == 400
    assert hub.credits_api("GET", "/me/earnings?before=x", token=sam_token).status_code == 400

    board = hub.credits_api("GET", "/leaderboard?days=7&limit=10",
                            token=hub.user_token("newbie"))
    assert board.status_code == 200, board.text
    leaders = board.json()["leaders"]
    assert leaders[0] == {"rank": 1, "user": "sam", "points": "4.00"}
    # The signup bonus is left out: newbie's daily login is all that counts.
    assert {"rank": 2, "user": "newbie", "points": "1.00"} in leaders
    assert all(set(row) == {"rank", "user", "points"} for row in leaders)
    assert board.json()["days"] == 7
    assert hub.credits_api("GET", "/leaderboard?days=0", token=sam_token).status_code == 400
    assert hub.credits_api("GET", "/leaderboard").status_code == 200  # tester: admin
    assert requests.get(f"{hub.url}/services/credits/api/leaderboard",
                        timeout=10).status_code == 401
    assert Decimal(leaders[0]["points"]) <= Decimal(BOUND) / 1000
