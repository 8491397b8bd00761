"""Hub user names are never read as account names: a user's account is ``user:`` + the hub
name, verbatim, in the spawner, the service, the earning store and the login hook.

JupyterHub allows names with ``:``, ``%``, spaces and unicode (other authenticators
also ``/``): the hub user ``user:bob`` owns ``user:user:bob`` and has his own events,
rate limit and daily bound; bob's stay untouched. The CLI keeps its documented rule
(``NAME`` means ``user:NAME``; ``user:``/``group:``/``system:`` names stay).
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from jupyterhub_credits.catalog import load_catalog
from jupyterhub_credits.earning import EarningService, ledger_key, parse_earning
from jupyterhub_credits.hubconfig import record_login
from jupyterhub_credits.ledger import UNITS_PER_CREDIT, account_name
from jupyterhub_credits.ledger.core import user_account
from jupyterhub_credits.ledger.errors import InvalidRequest
from jupyterhub_credits.service.api.earnings import earnings_snapshot
from jupyterhub_credits.service.api.me import account_snapshot
from jupyterhub_credits.sessions.store import SessionStore
from jupyterhub_credits.spawner.context import CreditsContext
from tests.hub import CATALOG
from tests.realhub import log_in
from tests.spawners import credits_spawner

# The hub this module's last test runs against (tests/realhub.py): logins earn, as on the demo.
pytestmark = pytest.mark.hub(logins_earn=True)

CREDIT = UNITS_PER_CREDIT
#: Hub names that look like account names, or that the old name check refused.
NAMES = ["user:bob", "a:b", "x/y", "50%", "bob smith", "José", "用户", "group:staff",
         "system:usage"]


# --- the names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*NAMES, "bob", "a"])
def test_a_users_account_is_the_hub_name_verbatim(name):
    assert user_account(name) == "user:" + name
    # The ledger reads it back as the same account (every ledger method canonicalises).
    assert account_name(user_account(name)) == user_account(name)


@pytest.mark.parametrize("bad", ["", " bob", "bob ", "a\nb", "tab\there", "nul\x00", "c1\x85",
                                 "x" * 201, None, 5])
def test_only_names_no_account_can_have_are_refused(bad):
    with pytest.raises(InvalidRequest, match="cannot have a credits account"):
        user_account(bad)


def test_refusals_never_echo_unbounded_names():
    for call in (user_account, account_name):
        with pytest.raises(InvalidRequest) as refused:
            call("x" * 100_000 + "\n")
        assert len(str(refused.value)) < 300


def test_the_cli_rule_stays():
    assert account_name("alice") == "user:alice"
    assert account_name(" alice ") == "user:alice"
    assert account_name("user:bob") == "user:bob"
    assert account_name("user:user:bob") == "user:user:bob"
    assert account_name("user:bob smith") == "user:bob smith"
    assert account_name("group:my lab") == "group:my lab"
    assert account_name("system:usage") == "system:usage"
    with pytest.raises(InvalidRequest, match="user:NAME"):
        account_name("bob smith")


def test_existing_users_keep_their_accounts_and_ledger_keys():
    assert user_account("alice") == "user:alice"
    assert ledger_key("alice", "signup") == "earn:alice:signup"
    assert ledger_key("alice", "login:2026-03-02") == "earn:alice:login:2026-03-02"


# --- the earning store ------------------------------------------------------------------


@pytest.fixture
def service(ledger, clock):
    clock.now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    # A small rate limit and daily bound, so that every user reaches both.
    return EarningService(ledger, parse_earning({"rate_limit_per_minute": 3,
                                                 "max_claims_per_day": "0.6"}))


@pytest.fixture
def sessions(ledger):
    return SessionStore(ledger)


def start_gpu_session(ledger, sessions, user):
    """A running one-GPU session of the hub user ``user``, paid by their own account."""
    account = user_account(user)
    ledger.grant(account, 10 * CREDIT, key=f"float:{account}", reason="test float", actor="test")
    session = sessions.start(user=user, server_name="", account=account, image="tf-2.21",
                             gpu_type="a100", gpus=1, rate_per_hour=CREDIT,
                             hold_units=10 * CREDIT, actor=account)
    return sessions.mark_ready(session.key)


def earned_units(ledger, user) -> int:
    return sum(t.amount for t in ledger.transfers() if t.kind == "earn"
               and t.credit_account == user_account(user))


def test_each_hub_name_earns_reads_and_is_bounded_on_its_own(service, ledger, sessions, clock):
    names = [*NAMES, "bob", "a"]
    for name in names:
        start_gpu_session(ledger, sessions, name)
    clock.advance(minutes=30)
    start = clock()
    for index, name in enumerate(names):
        hub = service.record(name, [{"kind": "signup", "key": "signup"}], source="hub")
        assert hub[0]["outcome"] == "earned", (name, hub)
        claims = service.record(name, [
            {"kind": "notebook_activity", "key": "k:1", "payload": {"active_minutes": 30}},
            {"kind": "training_run", "key": "k:2", "payload": {"duration_s": 600}},
            {"kind": "gpu_utilization", "key": "k:3", "payload": {
                "minute": start.isoformat(), "gpus": [{"index": 0, "util": index}]}},
            {"kind": "notebook_activity", "key": "k:4", "payload": {"active_minutes": 1}},
        ], source="server")
        assert [a["outcome"] for a in claims] == ["earned", "earned", "earned", "rejected"], \
            (name, claims)
        assert "limited to the daily bound" in claims[1]["reason"]
        assert "rate limit" in claims[3]["reason"]
    for index, name in enumerate(names):
        assert earned_units(ledger, name) == 75 * CREDIT + 600, name
        assert ledger.balance(user_account(name)).total == 85 * CREDIT + 600
        today = service.today(name)
        assert today["user"] == name and today["claims"]["units"] == 600
        assert {event["key"] for event in service.history(name)} == {"signup", "k:1", "k:2",
                                                                     "k:3"}
        # The meter's idle-GPU evidence: each name's own samples only.
        assert service.gpu_minutes(name, start) == [(start, float(index))]
    assert {row["user"] for row in service.leaderboard(limit=100)} == set(names)


def test_the_hub_user_user_bob_never_touches_bobs_account_or_events(service, ledger, sessions,
                                                                   clock):
    ledger.grant("bob", 5 * CREDIT, key="grant:bob", reason="test", actor="test")
    start_gpu_session(ledger, sessions, "bob")
    clock.advance(minutes=30)
    service.record("bob", [{"kind": "signup", "key": "signup"}], source="hub")
    bob = (ledger.balance("bob"), service.history("bob"), service.today("bob"))
    # bob's running session is not user:bob's: his claims find no session of his own.
    claim = service.record("user:bob", [{"kind": "training_run", "key": "run",
                                         "payload": {"duration_s": 600}}], source="server")
    assert claim[0]["outcome"] == "rejected" and "no running session" in claim[0]["reason"]
    # His signup is his own (bob's would answer "duplicate"), into his own account.
    signup = service.record("user:bob", [{"kind": "signup", "key": "signup"}], source="hub")
    assert signup[0]["outcome"] == "earned"
    assert ledger.get_transfer(ledger_key("user:bob", "signup")).credit_account == "user:user:bob"
    service.freeze("user:bob", actor="admin", reason="test")
    assert not service.is_frozen("bob")
    assert (ledger.balance("bob"), service.history("bob"), service.today("bob")) == bob
    assert ledger.balance("user:user:bob").total == 75 * CREDIT


def test_the_login_hook_records_the_hub_name_verbatim(ledger, clock):
    clock.now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    context = CreditsContext(ledger, SessionStore(ledger), load_catalog(CATALOG))
    ledger.grant("bob", CREDIT, key="grant:bob", reason="test", actor="test")
    outcomes = record_login(context, "user:bob")
    assert [o["outcome"] for o in outcomes] == ["earned", "earned"]
    assert ledger.balance("user:user:bob").total == 76 * CREDIT
    assert ledger.balance("bob").total == CREDIT
    assert [o["outcome"] for o in record_login(context, "bob smith")] == ["earned", "earned"]
    assert ledger.balance("user:bob smith").total == 76 * CREDIT


def test_the_services_account_view_uses_the_hub_name_verbatim(ledger, clock):
    ledger.grant("bob", CREDIT, key="grant:bob", reason="test", actor="test")
    ledger.grant(user_account("user:bob"), 2 * CREDIT, key="grant:user:bob", reason="test",
                 actor="test")
    context = SimpleNamespace(ledger=ledger, sessions=SessionStore(ledger), clock=clock,
                              notices=lambda: {})
    mine = account_snapshot(context, "user:bob")
    assert (mine["user"], mine["account"], mine["available"]) == ("user:bob", "user:user:bob",
                                                                  "2.00")
    assert account_snapshot(context, "bob")["available"] == "1.00"
    earnings = earnings_snapshot(EarningService(ledger), "user:bob", 10, None)
    assert earnings["user"] == "user:bob" and earnings["history"] == []


# --- the spawner ------------------------------------------------------------------------


def spawner_for(db_url, user):
    return credits_spawner(db_url, CATALOG, user, local_gpus="a100:0")


@pytest.mark.asyncio
async def test_the_spawner_holds_on_the_hub_names_own_account(spawner_ledger, db_url):
    spawner_ledger.grant("bob", 20 * CREDIT, key="grant:bob", reason="test", actor="test")
    spawner_ledger.grant("user:user:bob", 20 * CREDIT, key="grant:user:bob", reason="test",
                       actor="test")
    spawner = spawner_for(db_url, "user:bob")
    assert spawner.paying_account(0) == ("user:user:bob", 20 * CREDIT)
    spawner.user_options = {"image": "tf-2.21-cpu", "gpu_type": "none", "gpus": 0, "hours": "1"}
    await spawner.start()
    session = SessionStore(spawner_ledger).open_session("user:bob", "")
    assert session.account == "user:user:bob"
    hold = spawner_ledger.get_transfer(f"{session.key}:hold:0")
    assert (hold.debit_account, hold.actor) == ("user:user:bob", "user:user:bob")
    assert spawner_ledger.balance("bob").reserved == 0
    assert spawner_ledger.balance("user:user:bob").reserved > 0
    await spawner.stop()
    await spawner.run_post_stop_hook()
    assert spawner_for(db_url, "bob smith").paying_account(0) == ("user:bob smith", 0)


# --- through the service's API, against a real hub ------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_user_bob_and_bob_through_the_hub(hub, hub_ledger):
    """Logins earn (the hook), a server is paid and /api/me and /api/me/earnings answer, each
    for the hub name itself."""
    for name in ("bob", "user:bob"):
        _, response = log_in(hub.url, name)
        assert response.ok, response.text[-2000:]
    assert hub_ledger.balance("bob").total == 76 * CREDIT
    assert hub_ledger.balance("user:user:bob").total == 76 * CREDIT
    session = hub.running_server("user:bob", image="tf-2.21-cpu", gpu_type="none", gpus=0,
                                 hours="1")
    assert session.account == "user:user:bob"
    token = hub.user_token("user:bob")
    me = hub.credits_api("GET", "/me", token=token).json()
    assert (me["user"], me["account"]) == ("user:bob", "user:user:bob")
    assert me["reserved"] != "0.00" and [s["account"] for s in me["sessions"]] == ["user:user:bob"]
    assert hub_ledger.balance("bob").reserved == 0
    earnings = hub.credits_api("GET", "/me/earnings", token=token).json()
    assert earnings["user"] == "user:bob"
    assert {e["key"] for e in earnings["history"]} == {"signup", f"login:{me['now'][:10]}"}
    bob = hub.credits_api("GET", "/me", token=hub.user_token("bob")).json()
    assert (bob["account"], bob["reserved"], bob["sessions"]) == ("user:bob", "0.00", [])
    board = hub.credits_api("GET", "/leaderboard?days=366&limit=100", token=token)
    assert board.status_code == 200 and {"user:bob", "bob"} <= {
        row["user"] for row in board.json()["leaders"]}
    assert hub.credits_api("GET", "/leaderboard?days=367", token=token).status_code == 400
    hub.stop_server("user:bob")
