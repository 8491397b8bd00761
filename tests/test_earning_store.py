"""The earning service on real databases (SQLite and PostgreSQL): events stored with their
outcomes, earned once through the ledger, bounded against forged claims."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from jupyterhub_credits.earning import EarningError, EarningService, ledger_key, parse_earning
from jupyterhub_credits.earning.schema import events
from jupyterhub_credits.ledger import UNITS_PER_CREDIT, Ledger, parse_amount
from jupyterhub_credits.ledger.errors import InvalidRequest
from jupyterhub_credits.sessions.store import SessionStore

CREDIT = UNITS_PER_CREDIT


@pytest.fixture
def service(ledger, clock):
    clock.now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday
    return EarningService(ledger)


@pytest.fixture
def sessions(ledger):
    return SessionStore(ledger)


def start_session(ledger, sessions, user, server_name="", hours=10, gpus=1):
    """A running session (``gpus`` GPUs, 1 credit an hour) paid for ``hours``, from a separate
    grant."""
    ledger.grant(user, hours * CREDIT,
                 key=f"float:{user}:{ledger.clock().isoformat()}:{server_name}",
                 reason="test float", actor="test")
    session = sessions.start(user=user, server_name=server_name, account=user, image="tf",
                             gpu_type="t4" if gpus else "none", gpus=gpus, rate_per_hour=CREDIT,
                             hold_units=hours * CREDIT, actor="test")
    return sessions.mark_ready(session.key)


def earned_units(ledger, user) -> int:
    return sum(t.amount for t in ledger.transfers() if t.kind == "earn"
               and t.credit_account == f"user:{user}")


def gpu(minute, util=90):
    return {"minute": minute.isoformat(), "gpus": [{"index": 0, "util": util, "mem_used_mb": 1}]}


def test_a_retried_batch_earns_once(service, ledger, clock):
    batch = [{"kind": "signup", "key": "signup"},
             {"kind": "login", "key": "login-2026-03-02", "time": clock().isoformat()}]
    first = service.record("alice", batch, source="hub")
    assert [(a["outcome"], a["points"], a["rule"]) for a in first] == [
        ("earned", "75.00", "signup"), ("earned", "1.00", "daily_login")]
    again = service.record("alice", batch, source="hub")
    assert [a["outcome"] for a in again] == ["duplicate", "duplicate"]
    assert again[0]["units"] == 0 and "already recorded (earned, 75.00 credits)" in again[0]["reason"]
    assert ledger.balance("alice").total == 76 * CREDIT
    transfer = ledger.get_transfer(ledger_key("alice", "signup"))
    assert transfer.kind == "earn" and transfer.actor == "rule:signup"
    assert transfer.metadata == {"rule": "signup", "event": "signup", "kind": "signup"}
    # The same key twice in one batch: the second is the duplicate.
    twice = service.record("alice", [{"kind": "login", "key": "x"}, {"kind": "login", "key": "x"}],
                           source="hub")
    assert [a["outcome"] for a in twice] == ["capped", "duplicate"]
    # Keys are per user: bob's "signup" is his own.
    assert service.record("bob", batch[:1], source="hub")[0]["outcome"] == "earned"


def test_every_event_is_stored_with_its_outcome(service, ledger, clock):
    answers = service.record("alice", [
        {"kind": "login", "key": "l1"},
        {"kind": "login", "key": "l2"},
        {"kind": "nonsense", "key": "n1", "payload": {"a": 1}},
        {"kind": "login"},  # no key: answered, not stored
    ], source="hub")
    assert [a["outcome"] for a in answers] == ["earned", "capped", "rejected", "rejected"]
    history = service.history("alice")
    assert [(h["key"], h["outcome"]) for h in history] == [
        ("n1", "rejected"), ("l2", "capped"), ("l1", "earned")]
    assert history[0]["payload"] == {"a": 1} and "unknown event kind" in history[0]["reason"]
    assert history[2]["transfer_id"] == ledger.get_transfer(ledger_key("alice", "l1")).id
    assert history[1]["transfer_id"] is None and history[1]["source"] == "hub"
    assert [h["key"] for h in service.history("alice", limit=1, before_id=history[0]["id"])] == ["l2"]


def test_claims_earn_only_while_the_user_has_a_running_session(service, ledger, sessions, clock):
    activity = {"kind": "notebook_activity", "key": "a1", "payload": {"active_minutes": 10}}
    before = service.record("alice", [activity], source="server")[0]
    assert before["outcome"] == "rejected" and "no running session" in before["reason"]
    start_session(ledger, sessions, "bob")  # someone else's session does not count
    assert service.record("alice", [dict(activity, key="a2")], source="server")[0]["outcome"] \
        == "rejected"
    session = start_session(ledger, sessions, "alice")
    clock.advance(minutes=30)
    answer = service.record("alice", [dict(activity, key="a3")], source="server")[0]
    assert (answer["outcome"], answer["units"]) == ("earned", 100)
    sessions.settle(session.key, reason="stopped")
    clock.advance(minutes=10)
    late = service.record("alice", [dict(activity, key="a4")], source="server")[0]
    assert late["outcome"] == "rejected"
    assert earned_units(ledger, "alice") == 100


def test_a_training_run_with_busy_gpus_earns_its_efficiency_bonus_once(service, ledger, sessions,
                                                                       clock):
    start_session(ledger, sessions, "alice")
    clock.advance(minutes=2)
    start = clock()
    samples = []
    for minute in range(10):
        samples.append({"kind": "gpu_utilization", "key": f"gpu-{minute}",
                        "payload": gpu(start + timedelta(minutes=minute))})
        clock.advance(minutes=1)
        if minute % 3 == 2:  # the sampler sends every few minutes
            answers = service.record("alice", samples, source="server")
            assert {(a["outcome"], a["units"]) for a in answers} == {("earned", 0)}
            samples = []
    service.record("alice", samples, source="server")
    run = {"kind": "training_run", "key": "run-1",
           "payload": {"epochs": 3, "steps": 300, "duration_s": 600, "metrics": {"loss": 0.2},
                       "logdir": "/home/alice/logs"}}
    answer = service.record("alice", [run], source="server")[0]
    assert (answer["outcome"], answer["rule"], answer["units"]) == ("earned", "training_run", 1000)
    assert answer["bonus"] == {"outcome": "earned", "points": "0.50", "units": 500,
                               "rule": "efficiency_bonus", "reason": ""}
    retry = service.record("alice", [run], source="server")[0]
    assert retry["outcome"] == "duplicate" and "1.00 credits" in retry["reason"]
    assert earned_units(ledger, "alice") == 1000
    bonus = ledger.get_transfer(ledger_key("alice", "run-1#efficiency_bonus"))
    assert bonus.metadata["rule"] == "efficiency_bonus"


def test_too_short_runs_and_runs_longer_than_the_session_earn_nothing(service, ledger, sessions,
                                                                      clock):
    start_session(ledger, sessions, "alice")
    clock.advance(minutes=20)
    answers = service.record("alice", [
        {"kind": "training_run", "key": "short", "payload": {"duration_s": 120}},
        {"kind": "training_run", "key": "long", "payload": {"duration_s": 7200}},
    ], source="server")
    assert [a["outcome"] for a in answers] == ["rejected", "rejected"]
    assert "too short" in answers[0]["reason"] and "longer than the session" in answers[1]["reason"]
    assert earned_units(ledger, "alice") == 0


def test_hub_only_events_are_refused_from_single_user_servers(service, ledger, sessions):
    start_session(ledger, sessions, "alice")
    answers = service.record("alice", [{"kind": k, "key": k} for k in (
        "signup", "login", "model_published", "model_reused", "model_liked")], source="server")
    assert {a["outcome"] for a in answers} == {"rejected"}
    assert all("from the hub only" in a["reason"] for a in answers)
    published = service.record("alice", [{"kind": "model_published", "key": "m1",
                                          "payload": {"model": "cnn"}}], source="hub")
    assert published[0]["points"] == "20.00"


def test_forging_thousands_of_claims_earns_at_most_the_daily_bound(service, ledger, sessions,
                                                                   clock):
    start_session(ledger, sessions, "mallory", hours=30)
    clock.advance(hours=11)  # 20:00, a session up for 11 hours
    sent = 0
    for batch_number in range(12):
        batch = []
        for i in range(200):
            n = batch_number * 200 + i
            batch.append([
                {"kind": "notebook_activity", "key": f"f{n}", "payload": {"active_minutes": 1440}},
                {"kind": "training_run", "key": f"f{n}", "payload": {"duration_s": 3600}},
                {"kind": "gpu_utilization", "key": f"f{n}",
                 "payload": gpu(clock() - timedelta(minutes=n % 60), 100)},
            ][n % 3])
        answers = service.record("mallory", batch, source="server")
        sent += len(batch)
        assert sum("rate limit" in a["reason"] for a in answers) == 200 - 120
        clock.advance(seconds=61)
    assert sent == 2400
    today = service.today("mallory")
    assert today["claims"]["units"] == earned_units(ledger, "mallory") == 4 * CREDIT
    assert today["claims"]["max_points"] == "4.00"
    with service.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(events)
                              .where(events.c.kind != "efficiency_bonus")).scalar()
    assert stored == 12 * 120  # rate-limited events are not kept
    rules = {entry["rule"]: entry["units"] for entry in today["rules"]}
    assert rules["notebook_activity"] == CREDIT and rules["training_run"] == 4 * 500
    assert rules["efficiency_bonus"] < 4 * 500  # the bound cut the forged bonuses short
    # The next day the bound starts again.
    clock.now = datetime(2026, 3, 3, 9, 0, tzinfo=timezone.utc)
    service.record("mallory", [{"kind": "training_run", "key": "next-day",
                                "payload": {"duration_s": 3600}}], source="server")
    assert earned_units(ledger, "mallory") == 4 * CREDIT + 500


def test_a_rate_limited_event_is_decided_afresh_when_sent_again(service, ledger, sessions, clock):
    svc = EarningService(ledger, parse_earning({"rate_limit_per_minute": 2}))
    start_session(ledger, sessions, "alice")
    clock.advance(minutes=30)
    batch = [{"kind": "notebook_activity", "key": f"a{i}", "payload": {"active_minutes": 5}}
             for i in range(3)]
    assert [a["outcome"] for a in svc.record("alice", batch, source="server")] == [
        "earned", "earned", "rejected"]
    clock.advance(minutes=1, seconds=1)
    assert [a["outcome"] for a in svc.record("alice", batch, source="server")] == [
        "duplicate", "duplicate", "earned"]


def test_a_frozen_user_earns_nothing_until_unfrozen(service, ledger):
    service.freeze("alice", actor="admin:root", reason="investigating")
    assert service.is_frozen("alice") and service.today("alice")["frozen"]
    answer = service.record("alice", [{"kind": "login", "key": "l1"}], source="hub")[0]
    assert (answer["outcome"], answer["reason"]) == ("rejected", "earning frozen")
    service.unfreeze("alice", actor="admin:root")
    assert not service.is_frozen("alice")
    assert service.record("alice", [{"kind": "login", "key": "l2"}], source="hub")[0]["outcome"] \
        == "earned"
    assert earned_units(ledger, "alice") == CREDIT


def test_today_shows_earnings_per_rule_against_caps(service, ledger, clock):
    service.record("alice", [{"kind": "signup", "key": "s"}, {"kind": "login", "key": "l"}],
                   source="hub")
    today = service.today("alice")
    assert today["day"] == "2026-03-02" and today["units"] == 76 * CREDIT
    rules = {entry["rule"]: entry for entry in today["rules"]}
    assert rules["daily_login"]["count"] == 1 and rules["daily_login"]["max_per_day"] == 1
    assert rules["notebook_activity"]["max_points_per_day"] == "1.00"
    assert rules["training_run"]["units"] == 0 and today["claims"]["units"] == 0
    clock.advance(days=1)
    assert service.today("alice")["units"] == 0


def test_signup_credits_expire_after_thirty_days(service, ledger, clock):
    service.record("alice", [{"kind": "signup", "key": "signup"}], source="hub")
    clock.advance(days=30, seconds=1)
    ledger.sweep()
    assert ledger.balance("alice").total == 0


def test_the_leaderboard_ranks_earnings_without_signup_or_reversed_ones(service, ledger, clock):
    for user, models in (("alice", 1), ("bob", 2), ("carol", 0)):
        service.record(user, [{"kind": "signup", "key": "s"}, {"kind": "login", "key": "l"}]
                       + [{"kind": "model_reused", "key": f"r{i}"} for i in range(models)],
                       source="hub")
    board = service.leaderboard(since=clock() - timedelta(days=7))
    assert board == [
        {"rank": 1, "user": "bob", "points": "5.00", "units": 5 * CREDIT},
        {"rank": 2, "user": "alice", "points": "3.00", "units": 3 * CREDIT},
        {"rank": 3, "user": "carol", "points": "1.00", "units": CREDIT},
    ]
    ledger.reverse(ledger_key("bob", "r0"), key="fix-bob", actor="admin", reason="self-reuse")
    assert [(e["user"], e["units"]) for e in service.leaderboard(limit=2)] == [
        ("alice", 3 * CREDIT), ("bob", 3 * CREDIT)]
    assert service.leaderboard(since=clock() + timedelta(seconds=1)) == []


def test_an_earning_interrupted_before_the_ledger_is_finished_by_a_retry(service, ledger, clock,
                                                                         monkeypatch):
    real_earn = Ledger.earn

    def failing(self, *args, **kwargs):
        raise InvalidRequest("database went away")

    monkeypatch.setattr(Ledger, "earn", failing)
    answer = service.record("alice", [{"kind": "signup", "key": "signup"}], source="hub")[0]
    assert answer["outcome"] == "earned"  # decided and stored; the transfer is still to make
    monkeypatch.setattr(Ledger, "earn", real_earn)
    assert service.record("alice", [{"kind": "signup", "key": "signup"}],
                          source="hub")[0]["outcome"] == "duplicate"
    assert ledger.balance("alice").total == 75 * CREDIT
    assert service.history("alice")[0]["transfer_id"] is not None
    # And the sweep for such leftovers finds nothing more to do.
    monkeypatch.setattr(Ledger, "earn", failing)
    service.record("bob", [{"kind": "signup", "key": "signup"}], source="hub")
    monkeypatch.setattr(Ledger, "earn", real_earn)
    assert service.pay_pending() == 1 and service.pay_pending() == 0
    assert ledger.balance("bob").total == 75 * CREDIT


def test_requests_refused_as_a_whole(service):
    with pytest.raises(EarningError, match="source"):
        service.record("alice", [], source="browser")
    with pytest.raises(EarningError, match="at most 1000"):
        service.record("alice", [{}] * 1001, source="hub")
    with pytest.raises(EarningError, match="cannot have a credits account"):
        service.record(" alice", [], source="hub")
    with pytest.raises(EarningError, match="must be a list"):
        service.record("alice", {"kind": "login"}, source="hub")


def test_a_week_of_genuine_use_through_the_service(service, ledger, sessions, clock):
    """The calibration scenario (see test_earning_rules) end to end: about 120 credits."""
    monday = clock()
    for day in range(7):
        clock.now = monday + timedelta(days=day)
        hub = [{"kind": "login", "key": f"login-{day}"}]
        if day == 0:
            hub.insert(0, {"kind": "signup", "key": "signup"})
        if day == 2:
            hub.append({"kind": "model_published", "key": "model-mnist"})
        service.record("alice", hub, source="hub")
        session = start_session(ledger, sessions, "alice")
        for run, minutes in ((1, 8), (2, 7)):
            clock.advance(minutes=25)
            samples = [{"kind": "gpu_utilization", "key": f"gpu-{day}-{run}-{m}",
                        "payload": gpu(clock() + timedelta(minutes=m), 85)}
                       for m in range(minutes)]
            clock.advance(minutes=minutes)
            report = samples + [
                {"kind": "training_run", "key": f"run-{day}-{run}",
                 "payload": {"epochs": 5, "steps": 500, "duration_s": minutes * 60}},
                {"kind": "notebook_activity", "key": f"nb-{day}-{run}",
                 "payload": {"active_minutes": 30}}]
            answers = service.record("alice", report, source="server")
            assert answers[-2]["units"] == 1000, answers[-2]
        clock.advance(minutes=10)
        sessions.settle(session.key, reason="stopped")
    total = earned_units(ledger, "alice")
    assert total == parse_amount("120.2")
    assert abs(total - 120 * CREDIT) <= 12 * CREDIT


def test_concurrent_batches_of_one_user_keep_caps_and_earn_each_event_once(service, ledger,
                                                                           sessions, clock):
    from concurrent.futures import ThreadPoolExecutor

    start_session(ledger, sessions, "alice")
    clock.advance(hours=5)
    batches = [[{"kind": "notebook_activity", "key": f"a{(t * 7 + i) % 40}",
                 "payload": {"active_minutes": 30}} for i in range(10)] for t in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(
            lambda batch: service.record("alice", batch, source="server"), batches) for a in batch]
    # 40 distinct keys, each decided once; one credit a day at most for notebook activity.
    assert sum(a["outcome"] != "duplicate" for a in answers) == 40
    assert sum(a["units"] for a in answers) == earned_units(ledger, "alice") == CREDIT
    with service.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar() == 40
