"""A session's holds: settled together, never timed out under a running session, few and bounded.

Real databases (SQLite and PostgreSQL through ``db_url``) and a fake clock:

- settlement resolves all of a session's holds in ONE ledger transaction,
  each by its own post or void under its own key (so a retry changes nothing);
- every hold of a session times out no earlier than its ``paid_until`` plus
  the grace, however often it was extended, so the ledger's sweep never voids
  a hold a running session still needs;
- an extension buys at least the catalog's ``min_extension_minutes``;
- concurrent starts of one user's named servers never exceed
  ``max_concurrent_gpu_sessions``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
import yaml
from jupyterhub.spawner import SpawnException
from sqlalchemy import event, select

from jupyterhub_credits.catalog import CatalogError, effective_quotas, hold_amount, load_catalog
from jupyterhub_credits.catalog.pricing import cost_of_seconds
from jupyterhub_credits.ledger.core import HoldResolution
from jupyterhub_credits.ledger.schema import holds, transfers
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.service.extension import decide_extension
from jupyterhub_credits.sessions.store import HOLD_GRACE, ConcurrentSessionLimit, SessionStore
from jupyterhub_credits.spawner.context import reset_contexts
from tests import test_meter as meter_tests
from tests.hub import CATALOG
from tests.test_meter import A100, make_meter, running
from tests.test_spawner import spawner_for
from tests.test_spawner import start as spawn

# The meter tests' fixtures: an empty session store, the catalog, the fake hub.
store, catalog, fake_hub = meter_tests.store, meter_tests.catalog, meter_tests.fake_hub


def count_transactions(engine):
    """A list that grows by one at every BEGIN on ``engine`` (a SQLAlchemy event listener)."""
    begins = []
    event.listen(engine, "begin", lambda connection: begins.append(1))
    return begins


def extend(store, session, hours: str, times: int = 1):
    for _ in range(times):
        session = store.extend(session.key, hold_amount(A100, Decimal(hours)), actor="user:x")
    return session


def hold_timeouts(ledger, session) -> list:
    prefix = f"{session.key}:hold:%"
    with ledger.engine.connect() as conn:
        return list(conn.execute(
            select(holds.c.timeout_at).join(transfers, transfers.c.id == holds.c.transfer_id)
            .where(transfers.c.key.like(prefix)).order_by(holds.c.transfer_id)).scalars())


# --- 1. all holds settled in one ledger transaction -------------------------------------------


def test_two_hundred_holds_settle_in_one_ledger_transaction(store, ledger, clock):
    small = running(store, ledger, "bob", hours="1")
    big = running(store, ledger, "ann", hours="1", credits=1_000)
    big = extend(store, big, "0.25", times=199)  # 200 holds: 15.00 + 199 x 3.75 credits
    assert big.held == 15_000 + 199 * 3_750
    clock.advance(hours=10)

    begins = count_transactions(ledger.engine)
    store.settle(small.key, reason="stopped")
    one_hold = len(begins)
    begins.clear()
    ended = store.settle(big.key, reason="stopped")
    # As many transactions as for one hold, not one per hold.
    assert len(begins) == one_hold <= 6

    # Exact: ten hours of A100 from the holds in order (hold 0, then 36 of 3.75), the rest voided.
    assert ended.charged == cost_of_seconds(A100, 36_000) == 150_000 == 15_000 + 36 * 3_750
    balance = ledger.balance("ann")
    assert (balance.total, balance.reserved) == (1_000_000 - 150_000, 0)
    kinds = [t.kind for t in ledger.history("ann", limit=1000) if t.key
             and t.key.startswith(f"{big.key}:settle:")]
    assert kinds.count("post") == 37 and kinds.count("void") == 163
    assert verify(ledger.engine).ok

    # Settled again (a retry, another process): nothing changes.
    begins.clear()
    assert store.settle(big.key, reason="stopped").charged == 150_000
    assert ledger.balance("ann") == balance


def test_settle_holds_is_idempotent_and_skips_holds_resolved_elsewhere(ledger):
    ledger.grant("ann", 100_000, key="grant", reason="test", actor="test")
    for n in range(3):
        ledger.hold("ann", 10_000, key=f"h{n}", actor="test")
    ledger.void("h1", key="voided-by-hand", actor="test")  # e.g. the sweep
    plan = [HoldResolution("h0", 10_000, "s0"), HoldResolution("h1", 5_000, "s1"),
            HoldResolution("h2", 0, "s2"), HoldResolution("missing", 0, "s3")]
    first = ledger.resolve_holds(plan, actor="test", reason="done")
    assert [r and (r.transfer.kind, r.transfer.amount, r.duplicate) for r in first] == [
        ("post", 10_000, False), None, ("void", 10_000, False), None]
    again = ledger.resolve_holds(plan, actor="test", reason="done")
    assert [r and r.duplicate for r in again] == [True, None, True, None]
    assert (ledger.balance("ann").total, ledger.balance("ann").reserved) == (90_000, 0)
    assert verify(ledger.engine).ok


def test_a_settlement_begun_hold_by_hold_is_finished_without_posting_twice(store, ledger, clock):
    # As the per-hold settlement of earlier versions left it after a crash: hold 0 posted.
    session = running(store, ledger, "ann", hours="1")
    session = extend(store, session, "1")
    clock.advance(minutes=90)
    ledger.post(f"{session.key}:hold:0", 15_000, key=f"{session.key}:settle:0",
                actor="system:sessions", reason="session stopped",
                metadata={"session": session.key})
    ended = store.settle(session.key, reason="stopped", actor="system:sessions")
    assert ended.charged == 22_500
    assert (ledger.balance("ann").total, ledger.balance("ann").reserved) == (100_000 - 22_500, 0)


# --- 2. hold timeouts follow paid_until --------------------------------------------------------


def test_the_sweep_never_voids_a_hold_of_a_running_session(store, ledger, clock):
    t0 = clock()
    session = running(store, ledger, "ann", hours="1", credits=1_000)  # the old timeout: t0 + 25 h
    clock.advance(minutes=30)
    session = extend(store, session, "24")
    clock.advance(hours=20)
    session = extend(store, session, "24")
    assert session.paid_until == t0 + timedelta(hours=49)
    assert set(hold_timeouts(ledger, session)) == {session.paid_until + HOLD_GRACE}

    clock.now = t0 + timedelta(hours=30)  # past the first hold's own paid time + a day
    assert ledger.sweep().holds_voided == []
    clock.now = t0 + timedelta(hours=40)
    ended = store.settle(session.key, reason="stopped")
    assert ended.charged == 40 * A100  # all of it: no hold was lost to the sweep
    assert ledger.balance("ann").total == 1_000_000 - 40 * A100
    assert verify(ledger.engine).ok


def test_a_slow_start_moves_the_first_holds_timeout(store, ledger, clock):
    t0 = clock()
    ledger.grant("ann", 100_000, key="grant", reason="test", actor="test")
    session = store.start(user="ann", server_name="", account="user:ann", image="tf-2.21",
                          gpu_type="a100", gpus=1, rate_per_hour=A100, hold_units=A100,
                          actor="user:ann")
    clock.advance(hours=3)  # pulling the image took three hours
    session = store.mark_ready(session.key)
    assert hold_timeouts(ledger, session) == [t0 + timedelta(hours=4) + HOLD_GRACE]
    clock.now = t0 + timedelta(hours=1, seconds=1) + HOLD_GRACE
    assert ledger.sweep().holds_voided == []


def test_an_abandoned_session_still_times_out_a_grace_after_its_paid_time(store, ledger, clock):
    session = running(store, ledger, "ann", hours="1")
    session = extend(store, session, "2")
    clock.now = session.paid_until + HOLD_GRACE - timedelta(seconds=1)
    assert ledger.sweep().holds_voided == []
    clock.advance(seconds=1)
    assert len(ledger.sweep().holds_voided) == 2
    assert ledger.balance("ann").reserved == 0


def test_the_sweep_leaves_a_hold_whose_timeout_moved_after_it_looked(ledger, clock, monkeypatch):
    ledger.grant("ann", 100_000, key="grant", reason="test", actor="test")
    ledger.hold("ann", 10_000, key="h", actor="test", timeout=timedelta(hours=1))
    clock.advance(hours=2)
    void = ledger._void

    def extended_meanwhile(hold_key, **kwargs):
        ledger.postpone_timeouts([hold_key], clock() + timedelta(hours=5))
        return void(hold_key, **kwargs)

    monkeypatch.setattr(ledger, "_void", extended_meanwhile)
    assert ledger.sweep().holds_voided == []
    assert ledger.balance("ann").reserved == 10_000


def test_postpone_timeouts_only_moves_them_later(ledger, clock):
    ledger.grant("ann", 100_000, key="grant", reason="test", actor="test")
    ledger.hold("ann", 1_000, key="h", actor="test", timeout=timedelta(hours=10))
    ledger.hold("ann", 1_000, key="forever", actor="test")
    assert ledger.postpone_timeouts(["h", "forever"], clock() + timedelta(hours=1)) == 0
    assert ledger.postpone_timeouts(["h", "forever"], clock() + timedelta(hours=20)) == 1
    clock.advance(hours=19)
    assert ledger.sweep().holds_voided == []


# --- min_extension_minutes ----------------------------------------------------------------------


def test_an_extension_buys_at_least_the_minimum(catalog):
    quotas = catalog.quotas
    assert quotas.min_extension_minutes == 15  # the default
    tiny = decide_extension(rate=A100, held=A100, hours=Decimal("0.0001"), available=100_000,
                            quotas=quotas)
    assert (tiny.ok, tiny.reason) == (False, "quota")
    assert "at least 15 minutes" in tiny.message and "0.0001 hours is less" in tiny.message
    assert decide_extension(rate=A100, held=A100, hours=Decimal("0.25"), available=100_000,
                            quotas=quotas).ok
    # Less room than the minimum (10 minutes left under a 24 hour limit): nothing to add.
    full = decide_extension(rate=A100, held=hold_amount(A100, Decimal("23.8334")),
                            hours=Decimal("0.25"), available=100_000, quotas=quotas)
    assert not full.ok and full.max_hours == 0 and "No more time" in full.message


def catalog_with(tmp_path, **quotas):
    data = yaml.safe_load(CATALOG.read_text())
    data["quotas"].update(quotas)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_catalog_sets_min_extension_minutes_with_group_overrides(tmp_path):
    loaded = load_catalog(catalog_with(
        tmp_path, min_extension_minutes="30",
        groups={"staff": {"min_extension_minutes": 5}, "guests": {"min_extension_minutes": 60}}))
    assert loaded.quotas.min_extension_minutes == 30
    assert effective_quotas(loaded, ["guests"]).min_extension_minutes == 60
    # In several groups, the smaller minimum is the more generous.
    assert effective_quotas(loaded, ["guests", "staff"]).min_extension_minutes == 5


@pytest.mark.parametrize("value, problem", [
    (0, "greater than zero"),
    ("fifteen", "invalid minutes"),
    ("0.00001", "at most 4 decimal places"),
    (24 * 60 + 1, "no session could ever be extended"),
])
def test_the_catalog_refuses_a_bad_min_extension_minutes(tmp_path, value, problem):
    with pytest.raises(CatalogError) as error:
        load_catalog(catalog_with(tmp_path, min_extension_minutes=value))
    assert "quotas.min_extension_minutes" in str(error.value) and problem in str(error.value)


@pytest.mark.asyncio
async def test_auto_extend_buys_nothing_when_less_than_the_minimum_is_left(
        store, ledger, clock, fake_hub, catalog):
    # 18 credits: 15 held for the first hour; 3 left buy 12 minutes, less than 15.
    session = running(store, ledger, "ann", hours="1", credits=18)
    store.set_auto_extend(session.key, True)
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock, auto_extend_hours="1")
    clock.advance(seconds=3600 - 900)
    assert (await meter.tick()).extended == []
    assert store.get(session.key).held == A100
    assert "No more time can be added now" in meter.notices[session.key]


# --- 5. concurrent starts and max_concurrent_gpu_sessions ---------------------------------------


def test_concurrent_gpu_starts_never_exceed_the_quota(store, ledger):
    ledger.grant("ann", 1_000_000, key="grant", reason="test", actor="test")
    starters = 6
    line_up = threading.Barrier(starters)

    def start(n):
        line_up.wait()  # all at once
        try:
            store.start(user="ann", server_name=f"s{n}", account="user:ann", image="tf-2.21",
                        gpu_type="a100", gpus=1, rate_per_hour=A100, hold_units=A100,
                        actor="user:ann", max_concurrent_gpu_sessions=2)
            return "started"
        except ConcurrentSessionLimit as error:
            assert "the most allowed at once (2)" in str(error)
            return "refused"

    with ThreadPoolExecutor(starters) as pool:
        outcomes = list(pool.map(start, range(starters)))
    assert sorted(outcomes) == ["refused"] * 4 + ["started"] * 2
    assert store.running_gpu_sessions("ann") == 2
    assert ledger.balance("ann").reserved == 2 * A100
    # A CPU session is not a GPU session.
    store.start(user="ann", server_name="cpu", account="user:ann", image="tf-2.21",
                gpu_type="none", gpus=0, rate_per_hour=1_000, hold_units=1_000,
                actor="user:ann", max_concurrent_gpu_sessions=2)


@pytest.mark.asyncio
async def test_the_spawner_refuses_with_403_what_a_stale_count_let_through(
        ledger, db_url, tmp_path, monkeypatch):
    # What a start running beside another sees: a count read before the other inserted.
    monkeypatch.setattr(SessionStore, "running_gpu_sessions", lambda self, user: 0)
    path = catalog_with(tmp_path)
    ledger.grant("max", 500_000, key="grant:max", reason="r", actor="test")
    options = {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"}
    try:
        for server in ("one", "two"):
            await spawn(spawner_for(db_url, path, "max", server=server), **options)
        with pytest.raises(SpawnException) as refused:
            await spawn(spawner_for(db_url, path, "max", server="three"), **options)
        assert refused.value.status_code == 403
        assert "the most allowed at once (2)" in refused.value.message
        assert ledger.balance("max").reserved == 2 * A100
    finally:
        reset_contexts()
