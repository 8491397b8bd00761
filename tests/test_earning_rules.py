"""Earning rules and the pure earning decision: no database, no hub, an injected clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyterhub_credits.catalog import CatalogError, load_catalog
from jupyterhub_credits.earning import (
    CAPPED,
    EARNED,
    HUB,
    REJECTED,
    SERVER,
    RuleUsage,
    SessionSpan,
    UserState,
    apply,
    decide,
    default_rules,
    earning_rules,
    parse_earning,
    parse_event,
)
from jupyterhub_credits.ledger import UNITS_PER_CREDIT, parse_amount

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "catalog.yaml"
RULES = default_rules()
CREDIT = UNITS_PER_CREDIT


class Replay:
    """One user's events decided in order, as the store does, with the day's counters
    starting afresh at midnight UTC and the rate limit counting the last minute."""

    def __init__(self, clock, rules=RULES, sessions=()):
        self.clock = clock
        self.rules = rules
        self.state = UserState(sessions=tuple(sessions))
        self.day = clock().date()
        self.claim_times: list[datetime] = []
        self.earned: dict[str, int] = {}
        self.count = 0

    def open_session(self, ready_at=None, ended_at=None, gpus=1):
        span = SessionSpan(ready_at or self.clock(), ended_at, gpus)
        self.state = replace(self.state, sessions=self.state.sessions + (span,))
        return span

    def close_sessions(self):
        now = self.clock()
        self.state = replace(self.state, sessions=tuple(
            replace(span, ended_at=span.ended_at or now) for span in self.state.sessions))

    def send(self, kind, payload=None, *, source=SERVER, key=None, time=None):
        now = self.clock()
        if now.date() != self.day:
            self.day = now.date()
            self.state = replace(
                self.state, claims_today=0, active_minutes_today=0,
                usage={rule: RuleUsage(0, 0, usage.last_at, usage.ever)
                       for rule, usage in self.state.usage.items()})
        self.claim_times = [t for t in self.claim_times if t > now - timedelta(minutes=1)]
        self.state = replace(self.state, recent_claims=len(self.claim_times))
        self.count += 1
        raw = {"kind": kind, "key": key or f"{kind}-{self.count}", "payload": payload or {}}
        if time is not None:
            raw["time"] = time
        event = parse_event(raw, now)
        outcome = decide(event, source, self.rules, self.state, now)
        self.state = apply(self.state, event, source, outcome, now)
        if outcome.stored and source == SERVER:
            self.claim_times.append(now)
        for part in (outcome, outcome.bonus):
            if part is not None and part.outcome == EARNED and part.points:
                self.earned[part.rule] = self.earned.get(part.rule, 0) + part.points
        return outcome

    def gpu(self, util, minute=None):
        minute = minute or self.clock()
        return self.send("gpu_utilization", {"minute": minute.isoformat(), "gpus": [
            {"index": 0, "util": util, "mem_used_mb": 9000}]})

    def run(self, minutes, util=None):
        """Train for ``minutes`` (GPU samples each minute when ``util``), then report the run."""
        for _ in range(minutes):
            if util is not None:
                self.gpu(util)
            self.clock.advance(minutes=1)
        return self.send("training_run", {"epochs": 5, "steps": 500, "duration_s": minutes * 60,
                                          "metrics": {"loss": 0.1}, "logdir": None})

    @property
    def total(self):
        return sum(self.earned.values())


@pytest.fixture
def replay(clock):
    clock.now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday
    return Replay(clock)


# --- the calibration: a week of genuine use earns about 120 credits --------------------


def test_a_week_of_genuine_use_earns_about_120_credits_signup_included(replay, clock):
    """The reference scenario, replayed day by day against the default rules.

    Each day: log in at 09:00, start a session, train twice (8 and 7 minutes,
    GPUs 80-85 % busy), an hour of notebook activity reported in three parts;
    on Wednesday publish a model. Expected, in credits:

        signup             75                 =  75
        daily_login         7 days x 1        =   7
        training_run       14 runs x 0.5      =   7
        efficiency_bonus   14 runs x 0.5      =   7
        notebook_activity   7 x 60 min x 0.01 =   4.2
        model_published     1 x 20            =  20
                                                -----
                                                120.2  (signup included; 45.2 without)
    """
    monday = clock()
    for day in range(7):
        clock.now = monday + timedelta(days=day)
        if day == 0:
            assert replay.send("signup", source=HUB, key="signup").outcome == EARNED
        assert replay.send("login", source=HUB).outcome == EARNED
        replay.open_session()
        clock.advance(minutes=10)                       # 09:10
        assert replay.run(8, util=85).bonus.outcome == EARNED
        clock.advance(minutes=12)                       # 09:30
        assert replay.send("notebook_activity", {"active_minutes": 20}).outcome == EARNED
        clock.advance(minutes=30)                       # 10:00
        assert replay.run(7, util=80).bonus.outcome == EARNED
        clock.advance(minutes=3)                        # 10:10
        replay.send("notebook_activity", {"active_minutes": 20})
        clock.advance(minutes=40)                       # 10:50
        replay.send("notebook_activity", {"active_minutes": 20})
        if day == 2:
            assert replay.send("model_published", {"model": "mnist-cnn"}, source=HUB).points \
                == 20 * CREDIT
        clock.advance(minutes=10)
        replay.close_sessions()

    assert replay.earned == {
        "signup": 75 * CREDIT,
        "daily_login": 7 * CREDIT,
        "training_run": 14 * 500,
        "efficiency_bonus": 14 * 500,
        "notebook_activity": 7 * 60 * 10,
        "model_published": 20 * CREDIT,
    }
    assert replay.total == parse_amount("120.2")
    assert abs(replay.total - 120 * CREDIT) <= 12 * CREDIT  # within 10 % of 120


def test_the_shipped_catalog_configures_the_default_rules():
    assert earning_rules(load_catalog(SHIPPED)) == RULES
    assert RULES["signup"].points == 75 * CREDIT and RULES["signup"].expires_after_days == 30
    assert RULES["model_published"].points == 20 * CREDIT


# --- parsing the earning section ---------------------------------------------------------


def test_settings_merge_over_the_defaults():
    rules = parse_earning({"max_claims_per_day": "2.5", "rules": {
        "training_run": {"points": Decimal("1.5"), "max_per_day": None},
        "model_liked": {"enabled": False},
        "notebook_activity": {"expires_after_days": 90},
    }})
    assert rules.max_claims_per_day == 2500
    assert rules["training_run"].points == 1500 and rules["training_run"].max_per_day is None
    assert rules["training_run"].min_duration_s == 300  # kept from the defaults
    assert not rules["model_liked"].enabled
    assert rules["notebook_activity"].expires_after_days == 90
    assert rules["daily_login"] == RULES["daily_login"]
    assert parse_earning(None) == parse_earning({}) == RULES


# fmt: off
EARNING_ERRORS = [
    ({"rules": {"training_runs": {}}}, "earning.rules.training_runs", "unknown rule; did you mean 'training_run'?"),
    ({"rules": {"training_run": {"point": 1}}}, "earning.rules.training_run.point", "did you mean 'points'"),
    ({"rules": {"notebook_activity": {"points": 1}}}, "earning.rules.notebook_activity.points", "unknown key"),
    ({"rules": {"signup": {"max_per_day": 2}}}, "earning.rules.signup.max_per_day", "unknown key"),
    ({"rules": {"daily_login": {"trusted_only": False}}}, "earning.rules.daily_login.trusted_only", "unknown key"),
    ({"rules": {"training_run": {"points": 0.5}}}, "earning.rules.training_run.points", "not a float"),
    ({"rules": {"training_run": {"points": "-1"}}}, "earning.rules.training_run.points", "must not be negative"),
    ({"rules": {"training_run": {"points": "0.0001"}}}, "earning.rules.training_run.points", "at most 3 decimal places"),
    ({"rules": {"training_run": {"max_per_day": 0}}}, "earning.rules.training_run.max_per_day", "at least 1"),
    ({"rules": {"training_run": {"min_interval_s": "60"}}}, "earning.rules.training_run.min_interval_s", "whole number"),
    ({"rules": {"efficiency_bonus": {"min_utilization": 101}}}, "earning.rules.efficiency_bonus.min_utilization", "at most 100"),
    ({"rules": {"model_liked": {"enabled": "no"}}}, "earning.rules.model_liked.enabled", "true or false"),
    ({"rules": {"model_liked": []}}, "earning.rules.model_liked", "expected a mapping"),
    ({"max_claims_per_day": 0}, "earning.max_claims_per_day", "greater than zero"),
    ({"rate_limit_per_minute": 0}, "earning.rate_limit_per_minute", "at least 1"),
    ({"rule": {}}, "earning.rule", "did you mean 'rules'"),
]
# fmt: on


@pytest.mark.parametrize("section, path, words", EARNING_ERRORS)
def test_every_mistake_names_the_file_the_key_and_the_problem(section, path, words):
    with pytest.raises(CatalogError) as raised:
        parse_earning(section, source="catalog.yaml")
    assert raised.value.source == "catalog.yaml"
    assert raised.value.path == path
    assert words in raised.value.problem


# --- events as they arrive -----------------------------------------------------------


@pytest.mark.parametrize("raw, words", [
    ("login", "JSON object"),
    ({"kind": "login"}, "needs a key"),
    ({"kind": "login", "key": "has space"}, "needs a key"),
    ({"kind": "login", "key": "a#b"}, "needs a key"),
    ({"kind": "login", "key": "k" * 201}, "needs a key"),
    ({"kind": "lgoin", "key": "k"}, "unknown event kind 'lgoin'"),
    ({"kind": "login", "key": "k", "extra": 1}, "unknown field 'extra'"),
    ({"kind": "login", "key": "k", "time": "yesterday"}, "not an ISO 8601 timestamp"),
    ({"kind": "login", "key": "k", "time": "2026-03-02T10:00:00Z"}, "lies in the future"),
    ({"kind": "login", "key": "k", "time": "2026-02-27T09:00:00Z"}, "more than a day old"),
    ({"kind": "login", "key": "k", "payload": [1]}, "payload must be a JSON object"),
    ({"kind": "notebook_activity", "key": "k", "payload": {}}, "active_minutes is missing"),
    ({"kind": "notebook_activity", "key": "k", "payload": {"active_minutes": 2.5}}, "whole number"),
    ({"kind": "notebook_activity", "key": "k", "payload": {"active_minutes": 5000}}, "between 1 and 1440"),
    ({"kind": "training_run", "key": "k", "payload": {"duration_s": True}}, "must be a number"),
    ({"kind": "training_run", "key": "k", "payload": {"duration_s": 0}}, "greater than 0"),
    ({"kind": "training_run", "key": "k", "payload": {"duration_s": 600, "metrics": 3}}, "metrics"),
    ({"kind": "gpu_utilization", "key": "k", "payload": {"gpus": []}}, "minute"),
    ({"kind": "gpu_utilization", "key": "k", "payload": {
        "minute": "2026-03-02T08:59:00Z", "gpus": [{"index": 0, "util": 101}]}}, "gpus[0].util must be between"),
])
def test_malformed_events_say_what_is_wrong(raw, words, replay, clock):
    event = parse_event(raw, clock())
    assert words in event.problem
    outcome = decide(event, SERVER, RULES, UserState(), clock())
    assert outcome.outcome == REJECTED and words in outcome.reason
    # Without a usable key nothing can be stored (and so nothing deduplicated).
    assert outcome.stored == (event.key is not None)


def test_claimed_time_is_parsed_in_utc(clock):
    clock.now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    event = parse_event({"kind": "login", "key": "k", "time": "2026-03-02T10:30:00+02:00"}, clock())
    assert event.problem is None and event.time == datetime(2026, 3, 2, 8, 30, tzinfo=timezone.utc)


# --- trust -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["signup", "login", "model_published", "model_reused",
                                  "model_liked"])
def test_hub_events_are_refused_from_a_single_user_server(kind, replay):
    replay.open_session()
    outcome = replay.send(kind)
    assert outcome.outcome == REJECTED and "from the hub only" in outcome.reason
    assert replay.send(kind, source=HUB).outcome == EARNED


def test_signup_is_granted_once_ever_and_expires(replay, clock):
    first = replay.send("signup", source=HUB, key="signup")
    assert first.points == 75 * CREDIT
    assert first.expires_at == clock() + timedelta(days=30)
    clock.advance(days=40)
    again = replay.send("signup", source=HUB, key="signup-again")
    assert again.outcome == CAPPED and "once per user" in again.reason


def test_daily_login_once_a_day(replay, clock):
    assert replay.send("login", source=HUB).outcome == EARNED
    clock.advance(hours=5)
    assert replay.send("login", source=HUB).outcome == CAPPED
    clock.advance(hours=10)  # the next day (UTC)
    assert replay.send("login", source=HUB).outcome == EARNED
    assert replay.earned["daily_login"] == 2 * CREDIT


def test_a_frozen_user_earns_nothing(replay):
    replay.state = replace(replay.state, frozen=True)
    for kind, source in (("login", HUB), ("notebook_activity", SERVER)):
        outcome = replay.send(kind, {"active_minutes": 5}, source=source)
        assert (outcome.outcome, outcome.reason) == (REJECTED, "earning frozen")
        assert outcome.stored


def test_a_rule_switched_off_earns_nothing():
    rules = parse_earning({"rules": {"model_liked": {"enabled": False}}})
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    event = parse_event({"kind": "model_liked", "key": "k"}, now)
    outcome = decide(event, HUB, rules, UserState(), now)
    assert outcome.outcome == REJECTED and "switched off" in outcome.reason


# --- claims: only what a running session could have done -----------------------------


def test_claims_without_a_running_session_earn_nothing(replay, clock):
    for kind, payload in (("notebook_activity", {"active_minutes": 5}),
                          ("training_run", {"duration_s": 600})):
        outcome = replay.send(kind, payload)
        assert outcome.outcome == REJECTED and "no running session" in outcome.reason
    replay.open_session(ready_at=clock() - timedelta(hours=2), ended_at=clock() - timedelta(hours=1))
    assert "no running session" in replay.send("training_run", {"duration_s": 600}).reason
    assert replay.total == 0


def test_a_claim_sent_as_the_session_stops_still_counts(replay, clock):
    replay.open_session(ready_at=clock() - timedelta(minutes=30), ended_at=clock())
    clock.advance(seconds=RULES.session_grace_s)
    assert replay.send("notebook_activity", {"active_minutes": 10}).outcome == EARNED
    clock.advance(seconds=1)
    assert replay.send("notebook_activity", {"active_minutes": 10}).outcome == REJECTED


def test_active_minutes_never_exceed_the_minutes_the_session_was_up(replay, clock):
    replay.open_session()
    clock.advance(minutes=15)
    first = replay.send("notebook_activity", {"active_minutes": 60})
    assert first.outcome == EARNED and first.minutes == 15 and first.points == 15 * 10
    assert "15 of 60 active minutes" in first.reason
    again = replay.send("notebook_activity", {"active_minutes": 60})
    assert again.outcome == REJECTED and "no session time left" in again.reason
    clock.advance(minutes=5)
    assert replay.send("notebook_activity", {"active_minutes": 60}).minutes == 5


def test_notebook_activity_is_capped_per_day(replay, clock):
    replay.open_session(ready_at=clock() - timedelta(hours=8))
    first = replay.send("notebook_activity", {"active_minutes": 90})
    second = replay.send("notebook_activity", {"active_minutes": 90})
    assert first.points == 900 and second.points == 100  # 1 credit a day at most
    assert "daily cap" in second.reason
    assert replay.send("notebook_activity", {"active_minutes": 90}).outcome == CAPPED


def test_training_runs_count_only_from_the_minimum_length_and_within_the_session(replay, clock):
    replay.open_session()
    clock.advance(minutes=30)
    short = replay.send("training_run", {"duration_s": 299})
    assert short.outcome == REJECTED and "run too short" in short.reason
    longer = replay.send("training_run", {"duration_s": 3600})
    assert longer.outcome == REJECTED and "longer than the session" in longer.reason
    ok = replay.send("training_run", {"duration_s": 1800, "epochs": 3})
    assert ok.outcome == EARNED and ok.points == 500
    assert ok.bonus.outcome == REJECTED  # no GPU utilisation was reported


def test_training_runs_have_a_minimum_interval_and_a_daily_cap(replay, clock):
    replay.open_session(ready_at=clock() - timedelta(hours=4))
    assert replay.send("training_run", {"duration_s": 600}).outcome == EARNED
    clock.advance(seconds=30)
    too_soon = replay.send("training_run", {"duration_s": 600})
    assert too_soon.outcome == CAPPED and "too soon" in too_soon.reason
    for _ in range(3):
        clock.advance(minutes=2)
        assert replay.send("training_run", {"duration_s": 600}).outcome == EARNED
    clock.advance(minutes=2)
    capped = replay.send("training_run", {"duration_s": 600})
    assert capped.outcome == CAPPED and "at most 4 times a day" in capped.reason


def test_the_efficiency_bonus_needs_busy_gpus_sampled_during_the_run(replay, clock):
    replay.open_session()
    busy = replay.run(10, util=90)
    assert busy.bonus.outcome == EARNED and busy.total_points == 1000
    clock.advance(minutes=5)
    idle = replay.run(10, util=20)
    assert idle.outcome == EARNED and idle.bonus.outcome == REJECTED
    assert "20% is below 60%" in idle.bonus.reason
    clock.advance(minutes=5)
    for _ in range(10):  # samples for 4 of 10 minutes only
        if _ < 4:
            replay.gpu(95)
        clock.advance(minutes=1)
    sparse = replay.send("training_run", {"duration_s": 600})
    assert sparse.bonus.outcome == REJECTED and "4 of the run's 10 minutes; 5 needed" \
        in sparse.bonus.reason


def test_gpu_utilization_is_recorded_and_earns_nothing(replay, clock):
    outside = replay.gpu(99)
    assert outside.outcome == REJECTED and "no running session" in outside.reason
    replay.open_session()
    inside = replay.gpu(99)
    assert inside.outcome == EARNED and inside.points == 0 and inside.sample.utilization == 99
    assert replay.total == 0


def test_the_rate_limit_refuses_floods_without_storing_them(replay, clock):
    replay.open_session()
    outcomes = [replay.gpu(50) for _ in range(RULES.rate_limit_per_minute + 5)]
    assert all(o.outcome == EARNED for o in outcomes[:RULES.rate_limit_per_minute])
    flooded = outcomes[-1]
    assert flooded.outcome == REJECTED and "rate limit" in flooded.reason
    assert not flooded.stored  # so the same event sent later is decided afresh
    clock.advance(minutes=1, seconds=1)
    assert replay.gpu(50).outcome == EARNED


def test_hub_events_are_not_rate_limited(replay):
    replay.state = replace(replay.state, recent_claims=10_000)
    assert replay.send("login", source=HUB).outcome == EARNED


CLAIMS = st.one_of(
    st.tuples(st.just("notebook_activity"), st.integers(1, 1440)),
    st.tuples(st.just("training_run"), st.integers(1, 100_000)),
    st.tuples(st.just("gpu_utilization"), st.integers(0, 100)),
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(CLAIMS, st.integers(0, 4 * 3600)), max_size=120),
       session_minutes=st.integers(0, 24 * 60))
def test_no_sequence_of_forged_claims_exceeds_the_daily_bound(steps, session_minutes):
    from conftest import FakeClock

    clock = FakeClock(datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc))
    replay = Replay(clock)
    replay.open_session(ended_at=clock() + timedelta(minutes=session_minutes))
    per_day: dict = {}
    for (kind, value), wait in steps:
        clock.advance(seconds=wait)
        before = replay.total
        if kind == "notebook_activity":
            replay.send(kind, {"active_minutes": value})
        elif kind == "training_run":
            replay.send(kind, {"duration_s": value})
        else:
            replay.gpu(value)
        per_day[clock().date()] = per_day.get(clock().date(), 0) + replay.total - before
    assert all(units <= RULES.max_claims_per_day for units in per_day.values())
    assert replay.earned.get("notebook_activity", 0) <= session_minutes * 10
