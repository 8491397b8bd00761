"""The earning store under hostile or unlucky input: unambiguous ledger keys, no endless retry,
claims bounded by what the session could have done, bounded storage of rejected events, the
sessions read through the session store (and its index), a cached leaderboard."""

from __future__ import annotations

import ast
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text

import jupyterhub_credits.earning.store as earning_store
from jupyterhub_credits.earning import (
    EARNED,
    REJECTED,
    SERVER,
    EarningError,
    EarningService,
    SessionSpan,
    UserState,
    decide,
    default_rules,
    ledger_key,
    parse_event,
)
from jupyterhub_credits.earning.schema import events
from jupyterhub_credits.earning.store import (
    LEADERBOARD_TTL,
    MAX_CACHED_LEADERBOARDS,
    MAX_REASON_CHARS,
    MAX_REJECTED_PAYLOAD_BYTES,
)
from jupyterhub_credits.ledger import UNITS_PER_CREDIT, Ledger
from jupyterhub_credits.ledger import database
from jupyterhub_credits.ledger.errors import InvalidRequest
from jupyterhub_credits.sessions.store import SessionStore, uptimes_query

CREDIT = UNITS_PER_CREDIT
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
INDEX = "ix_credits_sessions_user_ready_at"


@pytest.fixture
def service(ledger, clock):
    clock.now = NOW
    return EarningService(ledger)


@pytest.fixture
def sessions(ledger):
    return SessionStore(ledger)


def start_session(ledger, sessions, user, gpus=1, hours=10):
    ledger.grant(user, hours * CREDIT, key=f"float:{user}:{ledger.clock().isoformat()}",
                 reason="test float", actor="test")
    session = sessions.start(user=user, server_name="", account=user, image="tf",
                             gpu_type="a100" if gpus else "none", gpus=gpus,
                             rate_per_hour=CREDIT, hold_units=hours * CREDIT, actor="test")
    return sessions.mark_ready(session.key)


def unsettled(service) -> int:
    with service.engine.connect() as conn:
        return len(conn.execute(earning_store._unpaid_query()).all())


# --- ledger keys ------------------------------------------------------------------------------

PARTS = st.text(alphabet="ab:%/", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(first=st.tuples(PARTS, PARTS), second=st.tuples(PARTS, PARTS))
def test_ledger_keys_tell_every_user_and_event_apart(first, second):
    if first != second:
        assert ledger_key(*first) != ledger_key(*second)


def test_ledger_keys_stay_unambiguous_and_short_when_long():
    long_key = "k" * 200
    keys = {ledger_key(user, event) for user, event in [
        ("a", "b:" + long_key), ("a:b", long_key), ("a" * 200, long_key),
        ("a:" * 100, long_key), ("a", "b:c"), ("a:b", "c")]}
    assert len(keys) == 6 and all(len(key) <= 255 for key in keys)
    # Users without ':' keep the keys they always had.
    assert ledger_key("a", "b:c") == "earn:a:b:c"


def test_a_and_a_colon_b_both_earn_what_looked_like_one_key(service, ledger):
    assert service.record("a", [{"kind": "login", "key": "b:c"}], source="hub")[0]["outcome"] \
        == EARNED
    assert service.record("a:b", [{"kind": "login", "key": "c"}], source="hub")[0]["outcome"] \
        == EARNED
    assert ledger.balance("user:a").total == ledger.balance("user:a:b").total == CREDIT
    assert unsettled(service) == 0


def test_an_event_whose_ledger_key_is_taken_is_recorded_not_retried_forever(service, ledger):
    # Someone else's transfer already holds the key alice's signup will need.
    ledger.grant("mallory", CREDIT, key=ledger_key("alice", "signup"), reason="x", actor="admin")
    answer = service.record("alice", [{"kind": "signup", "key": "signup"}], source="hub")[0]
    assert answer["outcome"] == EARNED  # decided before the ledger was asked
    assert unsettled(service) == 0 and service.pay_pending() == 0
    stored = service.history("alice")[0]
    assert (stored["outcome"], stored["units"], stored["transfer_id"]) == (REJECTED, 0, None)
    assert "ledger key is taken" in stored["reason"]
    assert ledger.balance("mallory").total == CREDIT
    again = service.record("alice", [{"kind": "signup", "key": "signup"}], source="hub")[0]
    assert again["outcome"] == "duplicate" and "rejected" in again["reason"]


def record_unpaid(service, user: str, events: list) -> None:
    """Record ``events`` as if the process stopped before their ledger transfers were made."""
    def failing_earn(self, *args, **kwargs):
        raise InvalidRequest("database went away")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(Ledger, "earn", failing_earn)
        service.record(user, events, source="hub")


def test_an_events_own_earlier_transfer_is_linked_not_earned_again(service, ledger):
    record_unpaid(service, "alice", [{"kind": "signup", "key": "signup"}])
    # Earned already (with the wording of an older release), but not yet linked.
    made = ledger.earn("alice", 75 * CREDIT, key=ledger_key("alice", "signup"), rule="signup",
                       reason="older wording", metadata={"event": "signup", "kind": "signup"})
    assert service.pay_pending() == 1 and unsettled(service) == 0
    assert service.history("alice")[0]["transfer_id"] == made.transfer.id
    assert ledger.balance("alice").total == 75 * CREDIT


def test_an_event_earned_under_the_old_ambiguous_key_is_not_earned_twice(service, ledger):
    record_unpaid(service, "a:b", [{"kind": "signup", "key": "signup"}])
    # Before the upgrade, a:b's signup was earned under "earn:a:b:signup"; the link was lost.
    made = ledger.earn("user:a:b", 75 * CREDIT, key="earn:a:b:signup", rule="signup",
                       reason="signup bonus", metadata={"event": "signup", "kind": "signup"})
    assert service.pay_pending() == 1
    assert service.history("a:b")[0]["transfer_id"] == made.transfer.id
    assert ledger.balance("user:a:b").total == 75 * CREDIT


# --- claims bounded by what the session could have done ------------------------------------


def claim(kind, payload, *, sessions, time=None, now=NOW):
    raw = {"kind": kind, "key": "k", "payload": payload}
    if time is not None:
        raw["time"] = time.isoformat()
    return decide(parse_event(raw, now), SERVER, default_rules(),
                  UserState(sessions=tuple(sessions)), now)


def sample(gpus=1, minute=NOW - timedelta(minutes=1)):
    return {"minute": minute.isoformat(),
            "gpus": [{"index": i, "util": 95} for i in range(gpus)]}


def test_gpu_samples_count_only_from_a_session_with_that_many_gpus():
    cpu = SessionSpan(NOW - timedelta(hours=1), None, gpus=0)
    two = SessionSpan(NOW - timedelta(hours=1), None, gpus=2)
    refused = claim("gpu_utilization", sample(), sessions=[cpu])
    assert refused.outcome == REJECTED and "without GPUs" in refused.reason
    assert claim("gpu_utilization", sample(2), sessions=[two]).outcome == EARNED
    assert claim("gpu_utilization", sample(2), sessions=[cpu, two]).outcome == EARNED
    too_many = claim("gpu_utilization", sample(3), sessions=[two])
    assert too_many.outcome == REJECTED and "reports 3 GPUs" in too_many.reason


@pytest.mark.parametrize(("up_s", "counted"), [(0, False), (299, False), (300, True)])
def test_a_training_run_counts_only_if_the_session_was_up_as_long(up_s, counted):
    span = SessionSpan(NOW - timedelta(seconds=up_s), None, gpus=1)
    outcome = claim("training_run", {"duration_s": 300}, sessions=[span])
    assert (outcome.outcome == EARNED) is counted, outcome
    if not counted:
        assert "longer than the session" in outcome.reason


def test_a_run_counts_the_sessions_uptime_at_the_runs_claimed_end():
    span = SessionSpan(NOW - timedelta(minutes=10), None, gpus=1)
    # Ended 8 minutes ago after 5 minutes: the session had then been up for 2.
    early = claim("training_run", {"duration_s": 300}, sessions=[span],
                  time=NOW - timedelta(minutes=8))
    assert early.outcome == REJECTED and "had been up 120 s" in early.reason
    # A claimed end in the future (within the allowed skew) buys no extra uptime.
    late = claim("training_run", {"duration_s": 660}, sessions=[span],
                 time=NOW + timedelta(minutes=2))
    assert late.outcome == REJECTED
    assert claim("training_run", {"duration_s": 600}, sessions=[span],
                 time=NOW + timedelta(minutes=2)).outcome == EARNED


def test_a_cpu_session_earns_no_efficiency_bonus(service, ledger, sessions, clock):
    start_session(ledger, sessions, "carl", gpus=0)
    start = clock()
    answers = service.record("carl", [
        {"kind": "gpu_utilization", "key": f"g{m}",
         "payload": sample(minute=start + timedelta(minutes=m))} for m in range(6)],
        source="server")
    assert {a["outcome"] for a in answers} == {REJECTED}
    clock.advance(minutes=6)
    run = service.record("carl", [{"kind": "training_run", "key": "run",
                                   "payload": {"duration_s": 300}}], source="server")[0]
    assert run["outcome"] == EARNED and run["bonus"]["outcome"] == REJECTED
    assert run["units"] == 500


def test_the_store_gives_decisions_each_sessions_gpus(service, ledger, sessions, clock):
    start_session(ledger, sessions, "gina", gpus=2)
    clock.advance(minutes=1)
    answers = service.record("gina", [
        {"kind": "gpu_utilization", "key": "two", "payload": sample(2, NOW)},
        {"kind": "gpu_utilization", "key": "three", "payload": sample(3, NOW)}], source="server")
    assert [a["outcome"] for a in answers] == [EARNED, REJECTED]


# --- what is kept of rejected events -------------------------------------------------------


def stored_rows(service, user):
    with service.engine.connect() as conn:
        return {row.key: row for row in conn.execute(
            select(events.c.key, events.c.payload, events.c.reason, events.c.outcome)
            .where(events.c.user == user))}


def test_rejected_events_keep_at_most_a_small_summary(service, ledger, sessions, clock):
    start_session(ledger, sessions, "rita")
    clock.advance(minutes=30)
    big = {f"field{i}": "x" * 100 for i in range(150)}  # about 16 KB
    answers = service.record("rita", [
        {"kind": "nonsense", "key": "big", "payload": big},
        {"kind": "nonsense", "key": "small", "payload": {"a": 1}},
        {"kind": "k" * 10_000, "key": "long-kind", "payload": {}},
        {"kind": "training_run", "key": "kept", "payload": {
            "duration_s": 600, "metrics": {f"m{i}": 0.5 for i in range(600)}}},
    ], source="server")
    assert [a["outcome"] for a in answers] == [REJECTED, REJECTED, REJECTED, EARNED]
    assert all(len(a["reason"]) <= MAX_REASON_CHARS for a in answers)
    rows = stored_rows(service, "rita")
    summary = rows["big"].payload
    assert len(json.dumps(summary).encode()) <= MAX_REJECTED_PAYLOAD_BYTES
    assert summary["truncated"] is True and summary["bytes"] > 15_000
    assert summary["fields"][:2] == ["field0", "field1"]
    assert rows["small"].payload == {"a": 1}
    assert len(rows["long-kind"].reason) <= MAX_REASON_CHARS
    assert len(json.dumps(rows["kept"].payload)) > 5_000  # what earned is kept whole


# --- sessions through the session store, on an index ---------------------------------------


def test_the_earning_store_reads_sessions_only_through_the_session_store():
    tree = ast.parse(Path(earning_store.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "sessions.schema" not in imported and "sessions.store" in imported


def test_session_uptimes_are_what_the_earning_decisions_need(ledger, sessions, clock):
    old = start_session(ledger, sessions, "ursula", gpus=2, hours=1)
    sessions.settle(old.key, reason="stopped", end=clock() + timedelta(minutes=10))
    clock.advance(hours=2)
    new = start_session(ledger, sessions, "ursula", gpus=0, hours=1)
    sessions.start(user="ursula", server_name="never-ready", account="ursula", image="tf",
                   gpu_type="none", gpus=0, rate_per_hour=CREDIT, hold_units=100,
                   actor="test")
    everything = sessions.uptimes("ursula", clock() - timedelta(days=1))
    assert [(u.ready_at, u.ends_at, u.gpus) for u in everything] == [
        (old.ready_at, old.ready_at + timedelta(minutes=10), 2),
        (new.ready_at, new.paid_until, 0)]
    assert [u.gpus for u in sessions.uptimes("ursula", clock() - timedelta(minutes=1))] == [0]
    assert sessions.uptimes("someone-else", clock() - timedelta(days=1)) == []


def _index_migration(script: ScriptDirectory):
    return next(rev for rev in script.walk_revisions()
                if rev.path and rev.path.endswith("_sessions_user_ready_at.py"))


def _session_indexes(engine) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes("credits_sessions")}


def test_the_user_index_migrates_up_and_down_and_serves_the_query(db_url):
    engine = database.make_engine(db_url)
    try:
        assert INDEX in _session_indexes(engine)
        revision = _index_migration(ScriptDirectory.from_config(database.alembic_config()))
        with engine.begin() as connection:
            command.downgrade(database.alembic_config(connection), revision.down_revision)
        assert INDEX not in _session_indexes(engine)
        database.upgrade(engine)
        assert INDEX in _session_indexes(engine)
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table
                explain = "EXPLAIN "
            else:
                explain = "EXPLAIN QUERY PLAN "
            statement = uptimes_query("someone", NOW).compile(
                connection, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row) for row in connection.execute(text(explain + str(statement))))
        assert INDEX in plan, plan
    finally:
        engine.dispose()


# --- the leaderboard's cache --------------------------------------------------------------


def test_the_leaderboard_is_computed_once_a_minute_per_question(service, ledger, clock,
                                                                monkeypatch):
    computed = []
    real = service.leaderboard

    def counting(since, limit):
        computed.append((since, limit))
        return real(since, limit)

    monkeypatch.setattr(service, "leaderboard", counting)
    service.record("lea", [{"kind": "login", "key": "l1"}], source="hub")
    since, first = service.recent_leaders(7, 10)
    assert since == NOW - timedelta(days=7) and [row["user"] for row in first] == ["lea"]
    service.record("max", [{"kind": "model_published", "key": "m1"}], source="hub")
    clock.advance(seconds=LEADERBOARD_TTL.total_seconds() - 1)
    assert service.recent_leaders(7, 10) == (since, first) and len(computed) == 1
    service.recent_leaders(30, 10)
    service.recent_leaders(7, 5)
    assert len(computed) == 3
    clock.advance(seconds=1)
    since, fresh = service.recent_leaders(7, 10)
    assert len(computed) == 4 and [row["user"] for row in fresh] == ["max", "lea"]
    assert since == clock() - timedelta(days=7)
    for days in range(1, 100):  # odd questions cannot grow the cache without bound
        service.recent_leaders(days, 3)
    assert len(service._leaderboards) <= MAX_CACHED_LEADERBOARDS


@pytest.mark.parametrize("days", [0, -1, 367, 10**9, True, "7"])
def test_the_leaderboard_looks_back_one_to_366_days(service, days):
    with pytest.raises(EarningError, match="1 to 366"):
        service.recent_leaders(days, 10)


def test_a_long_enough_year_is_allowed(service):
    assert service.recent_leaders(366, 10) == (NOW - timedelta(days=366), [])
