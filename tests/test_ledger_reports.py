"""Read models (ledger.reports, sessions.usage) on SQLite and PostgreSQL, from real transfers."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from conftest import reset_ledger
from sqlalchemy import insert, text

from jupyterhub_credits.earning.schema import events
from jupyterhub_credits.ledger import InvalidRequest, database
from jupyterhub_credits.ledger.reports import (
    HISTORY_KINDS,
    account_summary,
    accounts_page,
    daily_flows,
    escape_like,
    expiring_within,
    history_page,
    lots_of,
    top_consumers,
)
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.schema import sessions
from jupyterhub_credits.sessions.usage import gpu_hours_by_day, latest_gpu_utilization

UTC = timezone.utc


@pytest.fixture
def ledger(ledger):
    """conftest's ledger; whatever a test did, it still verifies afterwards."""
    yield ledger
    report = verify(ledger.engine)
    assert report.ok, report.to_dict()


def grant(ledger, account, amount, key, **kw):
    return ledger.grant(account, amount, key=key, reason=kw.pop("reason", "r"), actor="admin",
                        **kw).transfer


def spend(ledger, account, amount, key, posted=None):
    ledger.hold(account, amount, key=f"{key}-hold", actor="meter")
    return ledger.post(f"{key}-hold", posted, key=key, actor="meter").transfer


# --- history ---------------------------------------------------------------------------------


@pytest.fixture
def busy(ledger, clock):
    """alice with transfers of every kind, interleaved with bob's."""
    grant(ledger, "alice", 10_000, "g1", expires_at=clock.now + timedelta(hours=1))
    grant(ledger, "bob", 5_000, "gb")
    ledger.earn("alice", 500, key="e1", rule="login")
    spend(ledger, "alice", 2_000, "p1", posted=1_500)  # hold, post, void of the remainder
    spend(ledger, "bob", 1_000, "pb")
    ledger.deduct("alice", 100, key="d1", reason="r", actor="admin")
    ledger.reverse("d1", key="r1", reason="r", actor="admin")
    clock.advance(hours=2)
    ledger.sweep()  # expires the rest of g1
    return [t.id for t in ledger.history("alice", limit=100)]


def test_history_pages_an_account_newest_first(ledger, busy):
    assert len(busy) == 8
    seen, before = [], None
    while True:
        page, before = history_page(ledger, "user:alice", before=before, limit=4)
        seen.extend(t.id for t in page)
        assert len(page) <= 4
        if before is None:
            break
        assert before == page[-1].id
    assert seen == busy
    # The last full page says there is nothing more.
    page, nxt = history_page(ledger, "alice", limit=8)
    assert [t.id for t in page] == busy and nxt is None


def test_history_kind_filters(ledger, busy):
    def kinds(kind):
        return [t.kind for t in history_page(ledger, "user:alice", kind=kind)[0]]

    assert kinds("grants") == ["deduct", "grant"]
    assert kinds("earnings") == ["earn"]
    assert kinds("sessions") == ["void", "post", "hold"]
    assert kinds("expiry") == ["expire"]
    assert kinds("reversals") == ["reverse"]
    assert set(HISTORY_KINDS) == {"grants", "earnings", "sessions", "expiry", "reversals"}
    page, nxt = history_page(ledger, "user:alice", kind="sessions", limit=2)
    assert [t.kind for t in page] == ["void", "post"]
    assert history_page(ledger, "user:alice", kind="sessions", before=nxt)[0][0].kind == "hold"


def test_history_of_the_whole_log(ledger, busy):
    everything = [t.id for t in ledger.transfers()][::-1]
    page, nxt = history_page(ledger, None, limit=5)
    assert [t.id for t in page] == everything[:5] and nxt == everything[4]
    page, nxt = history_page(ledger, None, before=nxt, limit=100)
    assert [t.id for t in page] == everything[5:] and nxt is None
    sessions_ = [t.id for t in ledger.transfers() if t.kind in ("hold", "post", "void")][::-1]
    page, nxt = history_page(ledger, None, kind="sessions", limit=3)
    assert [t.id for t in page] == sessions_[:3] and nxt == sessions_[2]
    page, nxt = history_page(ledger, None, kind="sessions", before=nxt)
    assert [t.id for t in page] == sessions_[3:] and nxt is None


def test_history_of_an_unknown_account_is_empty(ledger, busy):
    assert history_page(ledger, "user:nobody") == ([], None)
    assert history_page(ledger, "group:nobody", kind="grants") == ([], None)


@pytest.mark.parametrize("options, message", [
    ({"kind": "bogus"}, "unknown history kind 'bogus'"),
    ({"limit": 0}, "limit must be"),
    ({"limit": 1001}, "limit must be"),
    ({"limit": True}, "limit must be"),
    ({"before": "7"}, "before must be a transfer id"),
])
def test_history_refuses_bad_options(ledger, options, message):
    with pytest.raises(InvalidRequest, match=message):
        history_page(ledger, "user:alice", **options)


# --- lots ------------------------------------------------------------------------------------


def test_lots_soonest_expiry_first_with_their_grant(ledger, clock):
    now = clock.now
    forever = grant(ledger, "alice", 1_000, "forever", reason="welcome")
    late = grant(ledger, "alice", 2_000, "late", expires_at=now + timedelta(days=60))
    soon = ledger.earn("alice", 300, key="soon", rule="login", expires_at=now + timedelta(days=3))
    spent = grant(ledger, "alice", 100, "spent", expires_at=now + timedelta(days=1))
    spend(ledger, "alice", 100, "p")  # empties "spent", the soonest
    ledger.hold("alice", 50, key="h", actor="meter")  # reserves from "soon"
    lots = lots_of(ledger, "user:alice")
    assert [lot.kind for lot in lots] == ["earn", "grant", "grant"]
    assert [lot.reason for lot in lots] == ["login", "r", "welcome"]
    first = lots[0]
    assert (first.amount, first.remaining, first.reserved, first.available) == (300, 300, 50, 250)
    assert first.expires_at == now + timedelta(days=3)
    assert first.created_at == soon.transfer.created_at
    assert lots[-1].expires_at is None
    assert spent.id not in [lot.id for lot in lots] and forever and late
    assert expiring_within(lots, now, 30) == 250
    assert expiring_within(lots, now, 90) == 2_250
    assert expiring_within(lots, now, 2) == 0
    balance = ledger.balance("alice")
    assert sum(lot.remaining for lot in lots) == balance.total


def test_lapsed_lots_keep_only_what_holds_reserve(ledger, clock):
    grant(ledger, "alice", 1_000, "g", expires_at=clock.now + timedelta(hours=1))
    grant(ledger, "alice", 500, "g2", expires_at=clock.now + timedelta(hours=1))
    ledger.hold("alice", 200, key="h", actor="meter")
    clock.advance(hours=2)  # lapsed, not swept yet
    lots = lots_of(ledger, "alice")
    assert [(lot.remaining, lot.reserved) for lot in lots] == [(200, 200)]
    assert sum(lot.remaining for lot in lots) == ledger.balance("alice").total
    assert expiring_within(lots, clock.now, 30) == 0


def test_lots_of_an_unknown_account(ledger):
    assert lots_of(ledger, "user:nobody") == []


# --- the account list ---------------------------------------------------------------------------


@pytest.fixture
def people(ledger):
    """Five users and a group, with balances, earnings and spending."""
    for name, amount in (("carol", 3_000), ("alice", 5_000), ("bob", 5_000), ("dave_x", 1_000),
                         ("Eve%", 2_000)):
        grant(ledger, name, amount, f"g-{name}")
    ledger.earn("carol", 700, key="e-carol", rule="login")
    ledger.earn("dave_x", 200, key="e-dave", rule="login")
    spend(ledger, "bob", 400, "p-bob")
    spend(ledger, "alice", 400, "p-alice")
    ledger.hold("alice", 600, key="h-alice", actor="meter")
    grant(ledger, "group:lab", 99_000, "g-lab")


def names(rows):
    return [row.name for row in rows]


def test_accounts_sorted_by_each_column(ledger, people):
    rows, total = accounts_page(ledger)
    assert total == 5
    assert names(rows) == ["alice", "bob", "carol", "Eve%", "dave_x"]  # alice = bob: by name
    alice = rows[0]
    assert (alice.account, alice.balance, alice.reserved, alice.available, alice.earned,
            alice.spent) == ("user:alice", 4_600, 600, 4_000, 0, 400)
    assert names(accounts_page(ledger, order="asc")[0]) == [
        "dave_x", "Eve%", "carol", "alice", "bob"]
    assert names(accounts_page(ledger, sort="spent")[0])[:2] == ["alice", "bob"]
    assert names(accounts_page(ledger, sort="spent", order="asc")[0])[-2:] == ["alice", "bob"]
    assert names(accounts_page(ledger, sort="earned")[0])[:3] == ["carol", "dave_x", "Eve%"]
    by_name = names(accounts_page(ledger, sort="name", order="asc")[0])
    assert set(by_name) == {"alice", "bob", "carol", "dave_x", "Eve%"}
    assert names(accounts_page(ledger, sort="name", order="desc")[0]) == by_name[::-1]


def test_accounts_page_and_count(ledger, people):
    rows, total = accounts_page(ledger, offset=2, limit=2)
    assert names(rows) == ["carol", "Eve%"] and total == 5
    rows, total = accounts_page(ledger, offset=10)
    assert rows == [] and total == 5


def test_accounts_search_is_a_literal_case_insensitive_substring(ledger, people):
    assert names(accounts_page(ledger, search="AL")[0]) == ["alice"]
    assert names(accounts_page(ledger, search="e")[0]) == ["alice", "Eve%", "dave_x"]
    assert accounts_page(ledger, search="eve")[1] == 1
    # LIKE's wildcards mean themselves.
    assert names(accounts_page(ledger, search="%")[0]) == ["Eve%"]
    assert names(accounts_page(ledger, search="_")[0]) == ["dave_x"]
    assert accounts_page(ledger, search="nobody") == ([], 0)
    # Only the hub name is searched, not the account's prefix; groups are not listed.
    assert accounts_page(ledger, search="user:")[1] == 0
    assert accounts_page(ledger, search="lab")[1] == 0


def test_account_summary_is_the_exact_account(ledger, people):
    alice = account_summary(ledger, "user:alice")
    assert (alice.name, alice.account, alice.balance, alice.reserved, alice.earned,
            alice.spent) == ("alice", "user:alice", 4_600, 600, 0, 400)
    assert account_summary(ledger, "user:ali") is None
    assert account_summary(ledger, "group:lab").name == "lab"
    assert account_summary(ledger, "system:usage") is None


def test_escape_like():
    assert escape_like("50%_a\\b") == "50\\%\\_a\\\\b"


@pytest.mark.parametrize("options", [{"sort": "total"}, {"order": "up"}, {"offset": -1},
                                     {"limit": 0}, {"search": None}])
def test_accounts_page_refuses_bad_options(ledger, options):
    with pytest.raises(InvalidRequest):
        accounts_page(ledger, **options)


# --- flows ----------------------------------------------------------------------------------------


def test_daily_flows_one_row_per_day_with_zeros(ledger, clock):
    day0 = clock.now.date()
    grant(ledger, "alice", 5_000, "g0")
    ledger.earn("bob", 300, key="e0", rule="login")
    spend(ledger, "alice", 1_000, "p0", posted=600)
    ledger.deduct("alice", 100, key="d0", reason="r", actor="admin")  # neither
    clock.advance(days=2)
    grant(ledger, "carol", 1_000, "g2")
    spend(ledger, "alice", 400, "p2")
    flows = daily_flows(ledger, days=4, now=clock.now)
    assert flows == [
        (day0 - timedelta(days=1), 0, 0),
        (day0, 5_300, 600),
        (day0 + timedelta(days=1), 0, 0),
        (day0 + timedelta(days=2), 1_000, 400),
    ]
    assert all(isinstance(d, date) for d, _, _ in flows)
    assert daily_flows(ledger, days=1, now=clock.now) == [(day0 + timedelta(days=2), 1_000, 400)]


def test_top_consumers(ledger, clock):
    for name in ("alice", "bob", "carol", "dave"):
        grant(ledger, name, 10_000, f"g-{name}")
    grant(ledger, "group:lab", 10_000, "g-lab")
    spend(ledger, "alice", 1_000, "a1")
    clock.advance(days=5)
    spend(ledger, "bob", 700, "b1")
    spend(ledger, "carol", 700, "c1")
    spend(ledger, "dave", 2_000, "d1")
    ledger.reverse("d1", key="rd1", reason="refund", actor="admin")
    spend(ledger, "group:lab", 5_000, "l1")
    assert top_consumers(ledger, days=3, now=clock.now) == [("bob", 700), ("carol", 700)]
    assert top_consumers(ledger, days=30, now=clock.now, limit=1) == [("alice", 1_000)]


@pytest.mark.parametrize("days", [0, -1, 3661, True, "7"])
def test_flows_refuse_bad_days(ledger, clock, days):
    with pytest.raises(InvalidRequest):
        daily_flows(ledger, days=days, now=clock.now)


# --- sessions: GPU hours, utilisation ----------------------------------------------------------


def add_session(engine, key, *, user="alice", server="", gpu_type="a100", gpus=1, ready_at=None,
                ended_at=None, billed_until=None, state="ended"):
    with engine.begin() as conn:
        conn.execute(insert(sessions).values(
            key=key, user=user, server_name=server, account=f"user:{user}", image="img",
            gpu_type=gpu_type, gpus=gpus, rate_per_hour=1000, held=0, state=state,
            requested_at=ready_at or datetime(2026, 1, 1, tzinfo=UTC), ready_at=ready_at,
            ended_at=ended_at, billed_until=billed_until, auto_extend=False))


def test_gpu_hours_split_across_days(ledger, clock):
    at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    engine = ledger.engine
    # 22:00 day 0 to 02:00 day 1, 2 GPUs: 4 GPU-hours on day 0, 4 on day 1.
    add_session(engine, "s1", gpus=2, ready_at=at + timedelta(hours=22),
                ended_at=at + timedelta(hours=26))
    # Open, billed to 03:30 on day 1: 1.5 hours.
    add_session(engine, "s2", gpu_type="h100", ready_at=at + timedelta(hours=26),
                billed_until=at + timedelta(hours=27, minutes=30), state="running")
    add_session(engine, "cpu", gpus=0, ready_at=at, ended_at=at + timedelta(hours=5))
    add_session(engine, "never", ready_at=None)
    # Long before the window.
    add_session(engine, "old", ready_at=at - timedelta(days=30),
                ended_at=at - timedelta(days=29))
    now = at + timedelta(days=1, hours=12)
    rows = gpu_hours_by_day(engine, days=2, now=now)
    assert rows == [
        (date(2026, 1, 1), "a100", Decimal("4.00")),
        (date(2026, 1, 2), "a100", Decimal("4.00")),
        (date(2026, 1, 2), "h100", Decimal("1.50")),
    ]
    # A window starting on day 1 counts only day 1's share.
    assert gpu_hours_by_day(engine, days=1, now=now) == rows[1:]
    # Time after ``now`` does not count (a session billed ahead).
    assert gpu_hours_by_day(engine, days=2, now=at + timedelta(hours=23))[0] == (
        date(2026, 1, 1), "a100", Decimal("2.00"))


def add_sample(engine, user, key, minute, utils, received_at, *, outcome="earned"):
    with engine.begin() as conn:
        conn.execute(insert(events).values(
            user=user, kind="gpu_utilization", key=key, time=None, received_at=received_at,
            source="server", outcome=outcome, points=0, reason="",
            payload={"minute": minute, "gpus": [{"index": i, "util": u}
                                                for i, u in enumerate(utils)]}))


def test_latest_gpu_utilization(ledger, clock):
    engine = ledger.engine
    now = clock.now
    add_session(engine, "sess-a", user="alice", server="", state="running", ready_at=now)
    add_session(engine, "sess-b", user="alice", server="big", state="running", ready_at=now)
    add_session(engine, "sess-c", user="carol", state="running", ready_at=now)
    add_session(engine, "sess-d", user="dave", state="running", ready_at=now)

    def minute(m):
        return (now - timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%MZ")

    ago = lambda m: now - timedelta(minutes=m)  # noqa: E731
    add_sample(engine, "alice", f"gpu_utilization:sess-a:{minute(3)}", minute(3), [10, 30], ago(2))
    add_sample(engine, "alice", f"gpu_utilization:sess-a:{minute(2)}", minute(2), [50, 70], ago(1))
    # By user/server (no session key set by the spawner).
    add_sample(engine, "alice", f"gpu_utilization:alice/big:{minute(2)}", minute(2), [90], ago(1))
    # Too old.
    add_sample(engine, "carol", f"gpu_utilization:sess-c:{minute(20)}", minute(20), [5], ago(19))
    # Dave's server id is unknown, but he has one session listed.
    add_sample(engine, "dave", f"gpu_utilization:elsewhere:{minute(1)}", minute(1), [42.25],
               ago(0))
    # Someone else claiming alice's session counts for nothing.
    add_sample(engine, "mallory", f"gpu_utilization:sess-a:{minute(1)}", minute(1), [0], ago(0))
    found = latest_gpu_utilization(engine, ["sess-a", "sess-b", "sess-c", "sess-d", "nope"], now)
    assert found == {"sess-a": 60.0, "sess-b": 90.0, "sess-d": 42.2}
    assert latest_gpu_utilization(engine, [], now) == {}
    assert latest_gpu_utilization(engine, ["sess-c"], now, within_s=3600) == {"sess-c": 5.0}


# --- PostgreSQL plans ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_sorting_user_accounts_reads_an_index(postgres_url):
    """At 20,000 user accounts the top 50 by each figure come from its (kind, column) index."""
    engine = database.make_engine(postgres_url)
    try:
        reset_ledger(engine)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO credits_accounts (name, kind, balance, reserved, created_at, "
                "lifetime_earned, lifetime_spent) "
                "SELECT 'user:u' || i, 'user', (i * 7919) % 100000, 0, now(), i % 1000, "
                "(i * 31) % 5000 FROM generate_series(1, 20000) AS i"))
            conn.execute(text("ANALYZE credits_accounts"))
        for column, index in (("balance", "ix_credits_accounts_kind_balance"),
                              ("lifetime_spent", "ix_credits_accounts_kind_lifetime_spent"),
                              ("lifetime_earned", "ix_credits_accounts_kind_lifetime_earned")):
            with engine.connect() as conn:
                plan = "\n".join(conn.execute(text(
                    f"EXPLAIN SELECT name FROM credits_accounts WHERE kind = 'user' "
                    f"ORDER BY {column} DESC, name LIMIT 50")).scalars())
            assert index in plan, plan
            assert "Seq Scan" not in plan, plan
    finally:
        reset_ledger(engine)
        engine.dispose()
