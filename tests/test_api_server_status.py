"""``GET /api/sessions/{server}``: the server status every single-user server polls.

Two parts. First the real service (``CreditsService.make_context`` / ``make_app`` /
``make_server``) in this process, on SQLite and on PostgreSQL (``db_url``), with an
injected clock and a stand-in hub that answers "whose token is this?" and counts how
often it is asked: the answer's shape, the stop a session ended with, runs' outcomes,
the earnings cache, refusals, and the number of database statements one poll costs
(``before_cursor_execute`` on the engine), alone and with others arriving together.
Then a real hub (tests/realhub.py): a single-user server's own token reads and extends
its owner's session and nothing of anyone else's; an admin's stop and an expiry decided
by the meter show up as ``stop``.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from sqlalchemy import event, update

from jupyterhub_credits.earning import EarningService, day_start, earning_rules
from jupyterhub_credits.earning.store import TODAY_TTL
from jupyterhub_credits.ledger.records import iso
from jupyterhub_credits.service.api.server_status import MAX_RUNS, StatusReader
from jupyterhub_credits.service.models import session_to_dict
from jupyterhub_credits.sessions.schema import sessions
from jupyterhub_credits.sessions.status import (
    MAX_BATCH,
    ServerStatus,
    StatusRequest,
    server_status,
    server_statuses,
)
from jupyterhub_credits.sessions.store import SessionStore
from tests.service_thread import ACCESS, PREFIX, ServiceThread
from tests.waiting import wait_for, wait_for_async

SERVICE_TOKEN = "service-token-for-status"


def user_model(name: str, *scopes: str, kind: str = "user") -> dict:
    return {"kind": kind, "name": name, "admin": False, "groups": [], "servers": {},
            "scopes": [ACCESS, *scopes]}


#: token → the hub's model of its owner, as the hub expands it for that token.
TOKENS = {
    # What the hub answers for alice's server's token (the server role, filtered to alice).
    "alice-server": user_model("alice", "custom:credits:read!user=alice",
                               "custom:credits:spend!user=alice",
                               "custom:credits:events!user=alice"),
    "bob-token": user_model("bob", "custom:credits:read!user=bob"),
    "no-read": user_model("carol", "custom:credits:events!user=carol"),
    "a-service": user_model("prometheus", "custom:credits:metrics", kind="service"),
}


class LocalService(ServiceThread):
    """The credits service (no meter) and a stand-in hub that counts its questions."""

    def __init__(self, db_url: str, clock):
        super().__init__(db_url, tokens=TOKENS, service_token=SERVICE_TOKEN, clock=clock)
        self.url = f"{self.base_url}{PREFIX}api"

    @property
    def ledger(self):
        return self.context.ledger

    @property
    def store(self) -> SessionStore:
        return self.context.sessions

    def call(self, method: str, path: str, token: str | None = "alice-server", **kwargs):
        headers = {"Authorization": f"token {token}"} if token else {}
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def poll(self, server: str = "default", token: str | None = "alice-server",
             **params) -> dict:
        response = self.call("GET", f"/sessions/{server}", token=token, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def open_session(self, user: str = "alice", server_name: str = "", *, hold: int = 30_000,
                     rate: int = 1_000):
        """A running CPU session (``rate`` units an hour, ``hold`` units held)."""
        session = self.store.start(user=user, server_name=server_name,
                                   account=f"user:{user}", image="tf-2.21-cpu",
                                   gpu_type="none", gpus=0, rate_per_hour=rate,
                                   hold_units=hold, actor="test")
        return self.store.mark_ready(session.key)


@pytest.fixture
def service(db_url, clock):
    with LocalService(db_url, clock) as running:
        yield running


@contextmanager
def statements(engine):
    """The SQL statements sent on ``engine`` meanwhile (transaction control left out)."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)
        # SQLite's BEGIN (the ledger's read transaction) is a statement in this process,
        # not a query; on PostgreSQL the poll runs in autocommit and sends none.
        sent[:] = [s for s in sent if s.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK")]


def notebook_activity(key: str, minutes: int = 1) -> dict:
    return {"kind": "notebook_activity", "key": key, "payload": {"active_minutes": minutes}}


# --- the helper's one statement ---------------------------------------------------------------


def test_server_status_reads_balance_and_newest_session_in_one_statement(ledger, clock):
    store = SessionStore(ledger)
    now = clock()
    assert server_status(ledger.engine, user="alice", account="user:alice", server_name="",
                         now=now) == ServerStatus(None, None)
    # Credits that lapsed and were not swept yet are not available (as Ledger.balance says).
    ledger.grant("alice", 100_000, key="g1", reason="t", actor="t")
    ledger.grant("alice", 7_000, key="g2", reason="t", actor="t", expires_at=now + timedelta(
        hours=1))
    first = store.mark_ready(store.start(user="alice", server_name="", account="user:alice",
                                         image="tf-2.21-cpu", gpu_type="none", gpus=0,
                                         rate_per_hour=1_000, hold_units=2_000,
                                         actor="t").key)
    clock.advance(hours=2)
    with statements(ledger.engine) as sent:
        status = server_status(ledger.engine, user="alice", account="user:alice",
                               server_name="", now=clock())
    assert len(sent) == 1, sent
    assert status.balance == ledger.balance("user:alice")
    # The hold drew on the soonest-expiring lot first: 5 of its 7 credits lapsed unused.
    assert (status.balance.total, status.balance.reserved) == (102_000, 2_000)
    assert status.open_session == store.get(first.key) and status.ended_session is None
    store.settle(first.key, reason="expired")
    status = server_status(ledger.engine, user="alice", account="user:alice", server_name="",
                           now=clock())
    assert status.open_session is None and status.ended_session.key == first.key
    assert status.ended_session.end_reason == "expired"
    # A newer session is the one shown; another server's, never.
    second = store.start(user="alice", server_name="", account="user:alice",
                         image="tf-2.21-cpu", gpu_type="none", gpus=0, rate_per_hour=1_000,
                         hold_units=1_000, actor="t")
    status = server_status(ledger.engine, user="alice", account="user:alice", server_name="",
                           now=clock())
    assert status.open_session.key == second.key and status.ended_session is None
    other = server_status(ledger.engine, user="alice", account="user:alice",
                          server_name="gpu1", now=clock())
    assert other.session is None and other.balance == status.balance
    bob = server_status(ledger.engine, user="bob", account="user:bob", server_name="",
                        now=clock())
    assert bob.balance is None and bob.session is None


def test_server_statuses_answers_many_polls_in_one_statement(ledger, clock):
    store = SessionStore(ledger)
    for index, user in enumerate(("ann", "ben", "cid")):
        ledger.grant(user, 1_000 * (index + 1), key=f"g:{user}", reason="t", actor="t")
    ann = store.mark_ready(store.start(user="ann", server_name="", account="user:ann",
                                       image="tf-2.21-cpu", gpu_type="none", gpus=0,
                                       rate_per_hour=1_000, hold_units=500, actor="t").key)
    gpu = store.start(user="ben", server_name="gpu", account="user:ben", image="tf-2.21-cpu",
                      gpu_type="none", gpus=0, rate_per_hour=1_000, hold_units=500, actor="t")
    store.settle(gpu.key, reason="user")
    wanted = [StatusRequest("ann", "user:ann", ""), StatusRequest("ben", "user:ben", "gpu"),
              StatusRequest("cid", "user:cid", ""), StatusRequest("dan", "user:dan", ""),
              StatusRequest("ann", "user:ann", "gpu")]
    with statements(ledger.engine) as sent:
        statuses = server_statuses(ledger.engine, wanted, clock())  # padded to 8 rows
    assert len(sent) == 1, sent
    assert [s.open_session.key if s.open_session else None for s in statuses] == [
        ann.key, None, None, None, None]
    assert statuses[1].ended_session.end_reason == "user" and statuses[4].session is None
    assert [s.balance.available if s.balance else None for s in statuses] == [
        500, 2_000, 3_000, None, 500]
    # Each answer is what the same question alone gets.
    for request, status in zip(wanted, statuses):
        assert status == server_status(ledger.engine, user=request.user,
                                       account=request.account,
                                       server_name=request.server_name, now=clock())
    with pytest.raises(ValueError):
        server_statuses(ledger.engine, [wanted[0]] * (MAX_BATCH + 1), clock())


def test_polls_that_arrive_while_a_statement_is_out_share_the_next(ledger, clock):
    for user in ("ann", "ben"):
        ledger.grant(user, 1_000, key=f"g:{user}", reason="t", actor="t")
    gate = asyncio.Event()

    async def gated(function, *args):  # the first statement is held until the rest wait
        await gate.wait()
        return await asyncio.to_thread(function, *args)

    async def polls():
        reader = StatusReader(ledger.engine, clock, in_flight=1, run=gated)
        first = asyncio.ensure_future(reader.read(StatusRequest("ann", "user:ann", "")))
        rest = [asyncio.ensure_future(reader.read(StatusRequest(user, f"user:{user}", "")))
                for user in ("ben", "ann", "nobody") * 30]
        await wait_for_async(lambda: reader.polls == 91, what="every poll to be queued")
        assert reader.statements == 1
        gate.set()
        answers = await asyncio.gather(first, *rest)
        return reader, answers

    with statements(ledger.engine) as sent:
        reader, answers = asyncio.run(polls())
    # The first alone, then 64 (the most one statement takes), then the last 26.
    assert reader.statements == 3 and len(sent) == 3, sent
    assert [a.balance.account if a.balance else None for a in answers[:4]] == [
        "user:ann", "user:ben", "user:ann", None]


# --- the endpoint, in this process, on both backends ----------------------------------------


def test_poll_shows_balance_session_thresholds_and_earnings(service, clock):
    service.ledger.grant("alice", 112_500, key="grant:alice", reason="t", actor="t")
    session = service.open_session(hold=30_000)
    clock.advance(minutes=30)
    status = service.poll()
    assert (status["user"], status["server"], status["server_label"]) == ("alice", "", "default")
    assert (status["available"], status["reserved"]) == ("82.50", "30.00")
    assert status["session"] == session_to_dict(service.store.get(session.key), clock())
    assert status["session"]["seconds_left"] == 30 * 3600 - 30 * 60
    assert status["session"]["cost_so_far"] == "0.50"
    assert status["stop"] is None
    assert status["warning_thresholds"] == [600, 60]
    assert status["earnings_today"]["user"] == "alice"
    assert {rule["rule"] for rule in status["earnings_today"]["rules"]} >= {
        "notebook_activity", "training_run"}
    assert status["runs"] == [] and status["now"] == iso(clock())
    # The same session as /api/me shows it.
    me = service.call("GET", "/me").json()
    assert me["sessions"] == [status["session"]]
    assert SERVICE_TOKEN not in json.dumps(status) and "alice-server" not in json.dumps(status)


def test_a_server_never_started_has_no_session_and_no_stop(service):
    status = service.poll("gpu1")
    assert (status["server"], status["server_label"]) == ("gpu1", "gpu1")
    assert status["session"] is None and status["stop"] is None
    assert (status["available"], status["reserved"]) == ("0.00", "0.00")  # no account yet


def test_stop_says_why_after_an_expiry_and_after_an_admin_stop(service, clock):
    service.ledger.grant("alice", 50_000, key="grant:alice", reason="t", actor="t")
    first = service.open_session(hold=1_000)  # one hour
    clock.advance(hours=2)
    ended = service.store.settle(first.key, reason="expired")  # as the meter does
    status = service.poll()
    assert status["session"] is None
    assert status["stop"] == {"reason": "expired", "at": iso(ended.ended_at),
                              "message": "its paid time ended"}
    assert ended.ended_at == first.paid_until  # billed no further than paid
    # Started again: the new session shows, the old stop does not.
    second = service.open_session(hold=2_000)
    status = service.poll()
    assert status["stop"] is None and status["session"]["id"] == second.id
    clock.advance(minutes=5)
    admin_stop = service.store.settle(second.key, reason="admin", actor="user:root")
    status = service.poll()
    assert status["stop"] == {"reason": "admin", "at": iso(admin_stop.ended_at),
                              "message": "it was stopped by an administrator"}
    # Each server its own: a named server's stop is not the default one's.
    named = service.open_session(server_name="gpu1", hold=1_000)
    service.store.settle(named.key, reason="gpu_idle")
    assert service.poll("gpu1")["stop"]["message"] == "its GPUs stayed idle"
    assert service.poll()["stop"]["reason"] == "admin"


def test_one_statement_per_poll_and_one_hub_question_per_token(service, clock):
    service.ledger.grant("alice", 10_000, key="grant:alice", reason="t", actor="t")
    service.open_session(hold=1_000)
    engine = service.ledger.engine
    service.poll()  # the first reads today's earnings too, and asks the hub about the token
    for _ in range(5):
        clock.advance(seconds=10)
        with statements(engine) as sent:
            status = service.poll()
        assert len(sent) == 1, sent
        assert sent[0].lstrip().upper().startswith("SELECT")
        assert status["session"] is not None and status["now"] == iso(clock())
    assert service.asked == {"alice-server": 1}
    # A grant moves the balance, not the earnings: still one statement, the new balance.
    service.ledger.grant("alice", 5_000, key="grant:more", reason="t", actor="t")
    with statements(engine) as sent:
        assert service.poll()["available"] == "14.00"
    assert len(sent) == 1, sent
    # The cached day is read again (its sums, its frozen flag) once TODAY_TTL old, once.
    clock.advance(seconds=TODAY_TTL.total_seconds() + 1)
    with statements(engine) as sent:
        service.poll()
    assert len(sent) == 3 and "credits_earning_users" in sent[2], sent
    with statements(engine) as sent:
        service.poll()
    assert len(sent) == 1, sent


def test_runs_answer_known_outcomes_once_read(service, clock):
    service.ledger.grant("alice", 10_000, key="grant:alice", reason="t", actor="t")
    service.open_session(hold=1_000)
    clock.advance(minutes=10)
    sent_events = [notebook_activity("act-1", 2),
                   {"kind": "training_run", "key": "run-1",
                    "payload": {"epochs": 1, "steps": 10, "duration_s": 5, "metrics": {}}}]
    answers = service.call("POST", "/events", json=sent_events).json()
    assert [a["outcome"] for a in answers] == ["earned", "rejected"], answers
    engine = service.ledger.engine
    service.poll()  # today's earnings cached
    with statements(engine) as sent:
        status = service.poll(runs="run-1,nope,act-1")
    assert len(sent) == 2, sent  # the status, then the outcomes of the keys asked
    expected = [{key: answer[key] for key in ("key", "outcome", "points", "units", "rule",
                                               "reason")} for answer in answers]
    assert status["runs"] == [expected[1], expected[0]]  # in the order asked; unknown left out
    with statements(engine) as sent:
        again = service.poll(runs=["run-1", "act-1"])  # the parameter repeated
    assert len(sent) == 1, sent  # outcomes are final: served from memory
    assert again["runs"] == [expected[1], expected[0]]
    with statements(engine) as sent:
        service.poll(runs="run-1,nope")
    assert len(sent) == 2, sent  # a key not recorded yet is asked again


def test_earnings_today_is_read_again_only_when_the_user_earned(service, clock):
    service.ledger.grant("alice", 10_000, key="grant:alice", reason="t", actor="t")
    service.open_session(hold=1_000)
    clock.advance(minutes=10)
    engine = service.ledger.engine
    assert service.poll()["earnings_today"]["points"] == "0.00"
    answer = service.call("POST", "/events", json=[notebook_activity("act-1", 3)]).json()
    assert answer[0]["outcome"] == "earned" and answer[0]["points"] == "0.03"
    # Right away: recording forgot the cached day.
    assert service.poll()["earnings_today"]["points"] == "0.03"
    # Earned in another process (the hub records logins in its own EarningService):
    # the account's lifetime earnings, read in the poll's one statement, moved.
    elsewhere = EarningService(service.ledger, earning_rules(service.context.catalog))
    elsewhere.record("alice", [notebook_activity("act-2", 2)], source="hub")
    with statements(engine) as sent:
        assert service.poll()["earnings_today"]["points"] == "0.05"
    assert len(sent) == 3, sent  # the status, then the day's sums and frozen flag
    with statements(engine) as sent:
        assert service.poll()["earnings_today"]["points"] == "0.05"
    assert len(sent) == 1, sent
    # Freezing (what the freeze API calls) is part of the day too.
    service.context.earning.freeze("alice", actor="user:root", reason="test")
    assert service.poll()["earnings_today"]["frozen"] is True
    # A new day starts from nothing, whatever was cached.
    clock.now = day_start(clock.now) + timedelta(days=1, seconds=5)
    today = service.poll()["earnings_today"]
    assert today["points"] == "0.00" and today["day"] == clock.now.date().isoformat()


@pytest.mark.parametrize("params, words", [
    ({"runs": ",".join(f"k{i}" for i in range(MAX_RUNS + 1))}, f"at most {MAX_RUNS}"),
    ({"runs": "a b"}, "not an event key"),
    ({"runs": "run#1"}, "not an event key"),
    ({"runs": "x" * 201}, "not an event key"),
])
def test_bad_runs_are_a_400_with_a_message(service, params, words):
    response = service.call("GET", "/sessions/default", params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == 400 and words in body["message"] and len(body["message"]) < 300


def test_bad_server_names_and_callers_are_refused(service):
    long_name = service.call("GET", "/sessions/" + "s" * 256)
    assert long_name.status_code == 400 and "not a server name" in long_name.json()["message"]
    control = service.call("GET", "/sessions/a%0Ab")
    assert control.status_code == 400, control.text
    nul = service.call("GET", "/sessions/a%00b")
    assert nul.status_code == 400, nul.text
    for token in (None, "not-a-token"):
        refused = service.call("GET", "/sessions/default", token=token)
        assert refused.status_code == 401 and refused.json()["status"] == 401
    no_read = service.call("GET", "/sessions/default", token="no-read")
    assert no_read.status_code == 403 and "custom:credits:read" in no_read.json()["message"]
    a_service = service.call("GET", "/sessions/default", token="a-service")
    assert a_service.status_code == 403 and "no credits of its own" in a_service.json()["message"]


def test_another_users_token_reads_only_its_own(service):
    service.ledger.grant("alice", 4_321_987, key="grant:alice", reason="t", actor="t")
    service.open_session(hold=1_000)
    bob = service.call("GET", "/sessions/default", token="bob-token")
    assert bob.status_code == 200
    assert bob.json()["user"] == "bob" and bob.json()["session"] is None
    assert "4320" not in bob.text and "alice" not in bob.text
    # There is no way to name another user: ?user= is not read.
    asked = service.call("GET", "/sessions/default", token="bob-token", params={"user": "alice"})
    assert asked.json()["user"] == "bob" and "alice" not in asked.text


# --- against a real hub ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice_server(hub):
    """alice's running CPU server; (its own token, alice's token)."""
    hub.grant("alice", 100)
    hub.running_server("alice", image="tf-2.21-cpu", gpu_type="none", gpus=0, hours="1")
    return hub.server_environment("alice")["JUPYTERHUB_API_TOKEN"], hub.user_token("alice")


@pytest.mark.postgres
@pytest.mark.slow
def test_a_servers_token_reads_and_extends_its_owner_only(hub, alice_server):
    server_token, alice = alice_server
    hub.grant("bob", 42)
    response = hub.credits_api("GET", "/sessions/default", token=server_token)
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["user"] == "alice" and status["session"]["state"] == "running"
    assert status["session"]["gpu_type"] == "none" and status["stop"] is None
    assert server_token not in response.text and hub.token not in response.text
    # The server role may spend for its owner: extend and auto-extend, from JupyterLab.
    extended = hub.credits_api("POST", "/sessions/default/extend", token=server_token,
                               json={"hours": "0.25", "key": "lab-extend-1"})
    assert extended.status_code == 200, extended.text
    assert extended.json()["session"]["held"] == "1.25"
    toggled = hub.credits_api("POST", "/sessions/default/extend", token=server_token,
                              json={"auto_extend": True})
    assert toggled.status_code == 200 and toggled.json()["session"]["auto_extend"] is True
    assert hub.credits_api("GET", "/sessions/default", token=server_token).json()[
        "session"]["auto_extend"] is True
    # Nothing of anyone else's: bob's account, an admin's stop, another's status.
    assert hub.credits_api("GET", "/users/bob", token=server_token).status_code == 403
    assert hub.credits_api("POST", "/admin/sessions/bob/default/stop", token=server_token,
                           json={}).status_code == 403
    assert hub.credits_api("POST", "/admin/grant", token=server_token, json={
        "user": "alice", "amount": "1", "reason": "x", "key": "k"}).status_code == 403
    bobs = hub.credits_api("GET", "/sessions/default", token=hub.user_token("bob"))
    assert bobs.status_code == 200 and bobs.json()["user"] == "bob"
    assert bobs.json()["available"] == "42.00" and "alice" not in bobs.text


@pytest.mark.postgres
@pytest.mark.slow
def test_an_admin_stop_is_shown_before_the_server_is_gone(hub, alice_server):
    _, alice = alice_server
    stopped = hub.credits_api("POST", "/admin/sessions/alice/default/stop",
                              token=hub.user_token("admin"), json={})
    assert stopped.status_code == 200, stopped.text
    status = hub.credits_api("GET", "/sessions/default", token=alice).json()
    assert status["session"] is None
    assert status["stop"]["reason"] == "admin"
    assert status["stop"]["message"] == "it was stopped by an administrator"
    assert status["stop"]["at"] == stopped.json()["session"]["ended_at"]
    hub.stop_server("alice")


@pytest.mark.postgres
@pytest.mark.slow
def test_an_expiry_decided_by_the_meter_is_the_stop(hub):
    hub.grant("erin", 10)
    session = hub.running_server("erin", image="tf-2.21-cpu", gpu_type="none", gpus=0,
                                 hours="1")
    erin = hub.user_token("erin")
    # Its paid time ends in a second (the catalog sells nothing that short).
    with hub.ledger.engine.begin() as conn:
        conn.execute(update(sessions).where(sessions.c.key == session.key).values(
            paid_until=session.ready_at + timedelta(seconds=1)))

    def stop():
        return hub.credits_api("GET", "/sessions/default", token=erin).json()["stop"]

    seen = wait_for(stop, timeout=60, what="erin's session to expire")
    ended = hub.sessions.get(session.key)
    assert seen == {"reason": "expired", "at": iso(ended.ended_at),
                    "message": "its paid time ended"}
    hub.stop_server("erin")
