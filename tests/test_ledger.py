"""Focused ledger tests, each run on every path that writes transfers (SQLite, PostgreSQL
through its server functions, PostgreSQL through the Python path) by the ``ledger`` fixture.

Every test ends with ``verify()`` reporting a consistent ledger
(the ``ledger_verifies_after`` fixture of tests/conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from jupyterhub_credits.ledger import (
    EXPIRED,
    ISSUANCE,
    USAGE,
    Balance,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
    NotReversible,
    TransferResult,
    UnknownAccount,
    UnknownTransfer,
    account_name,
)
from jupyterhub_credits.ledger.schema import holds, lots
from test_ledger_paths import DEPLOYED_PATHS, ledger_path_over
from test_ledger_paths import db_url, ledger, ledger_options  # noqa: F401

ledger_path = ledger_path_over(DEPLOYED_PATHS)

C = 1000  # units per credit


pytestmark = pytest.mark.usefixtures("ledger_verifies_after")


def grant(ledger, account, amount, key, **kw):
    kw.setdefault("reason", "test grant")
    kw.setdefault("actor", "admin")
    return ledger.grant(account, amount, key=key, **kw)


def deduct(ledger, account, amount, key, **kw):
    kw.setdefault("reason", "test deduct")
    kw.setdefault("actor", "admin")
    return ledger.deduct(account, amount, key=key, **kw)


def hold(ledger, account, amount, key, **kw):
    kw.setdefault("actor", "spawner")
    return ledger.hold(account, amount, key=key, **kw)


def post(ledger, hold_key, amount=None, *, key, **kw):
    kw.setdefault("actor", "spawner")
    return ledger.post(hold_key, amount, key=key, **kw)


def void(ledger, hold_key, *, key, **kw):
    kw.setdefault("actor", "spawner")
    return ledger.void(hold_key, key=key, **kw)


def reverse(ledger, ref, key, **kw):
    kw.setdefault("reason", "mistake")
    kw.setdefault("actor", "admin")
    return ledger.reverse(ref, key=key, **kw)


def bal(ledger, account):
    b = ledger.balance(account)
    return (b.total, b.reserved, b.available)


def lot_rows(ledger, account):
    """(transfer key, remaining, reserved) of each lot of ``account``, by lot id."""
    from jupyterhub_credits.ledger.schema import accounts, transfers

    with ledger.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(transfers.c.key, lots.c.remaining, lots.c.reserved)
            .join(transfers, transfers.c.id == lots.c.transfer_id)
            .join(accounts, accounts.c.id == lots.c.account_id)
            .where(accounts.c.name == account_name(account))
            .order_by(lots.c.id))]


def lot_id(ledger, transfer_id):
    with ledger.engine.connect() as conn:
        return conn.execute(select(lots.c.id).where(lots.c.transfer_id == transfer_id)).scalar_one()


def n_transfers(ledger):
    return len(list(ledger.transfers()))


# --- accounts and names ------------------------------------------------------------


@pytest.mark.parametrize(("given", "canonical"), [
    ("alice", "user:alice"), ("user:alice", "user:alice"), ("  alice ", "user:alice"),
    ("group:physics", "group:physics"), ("system:issuance", "system:issuance"),
    ("User:alice", "user:User:alice"), ("a:b", "user:a:b"),
])
def test_account_name(given, canonical):
    assert account_name(given) == canonical


@pytest.mark.parametrize("bad", ["", "   ", "al ice", "group:", "user:", "tab\there", None, 5,
                                 "x" * 201])
def test_account_name_refused(bad):
    with pytest.raises(InvalidRequest):
        account_name(bad)


def test_system_accounts_exist_and_start_at_zero(ledger):
    for name in (ISSUANCE, USAGE, EXPIRED):
        assert ledger.balance(name) == Balance(name, 0, 0)
    assert ledger.account_names() == [ISSUANCE, USAGE, EXPIRED]


def test_unknown_accounts(ledger):
    for call in (
        lambda: ledger.balance("bob"),
        lambda: ledger.history("bob"),
        lambda: deduct(ledger, "bob", 1, "d"),
        lambda: hold(ledger, "bob", 1, "h"),
        lambda: ledger.balance("system:nonsense"),
    ):
        with pytest.raises(UnknownAccount):
            call()
    # Refused requests store nothing, not even the account.
    assert ledger.account_names() == [ISSUANCE, USAGE, EXPIRED]
    assert n_transfers(ledger) == 0


@pytest.mark.parametrize("system", [ISSUANCE, USAGE, EXPIRED])
def test_system_accounts_hold_no_credits(ledger, system):
    grant(ledger, "alice", 10 * C, "g")
    with pytest.raises(InvalidRequest, match="system account"):
        grant(ledger, system, C, "g2")
    with pytest.raises(InvalidRequest, match="system account"):
        ledger.earn(system, C, key="e2", rule="r")
    with pytest.raises(InvalidRequest, match="system account"):
        deduct(ledger, system, C, "d2")
    with pytest.raises(InvalidRequest, match="system account"):
        hold(ledger, system, C, "h2")
    assert n_transfers(ledger) == 1


# --- grant, earn, deduct ------------------------------------------------------------


def test_grant_creates_account_and_credits(ledger, clock):
    result = grant(ledger, "alice", 12_500, "g1", reason="welcome", actor="admin:root",
                   metadata={"ticket": 7})
    assert isinstance(result, TransferResult) and result.duplicate is False
    t = result.transfer
    assert (t.key, t.kind, t.debit_account, t.credit_account, t.amount) == (
        "g1", "grant", ISSUANCE, "user:alice", 12_500)
    assert (t.actor, t.reason, t.metadata, t.created_at) == ("admin:root", "welcome", {"ticket": 7},
                                                            clock.now)
    assert t.pending_id is None and t.reversal_of is None
    assert ledger.balance("alice") == Balance("user:alice", 12_500, 0)
    assert ledger.balance("user:alice").available == 12_500
    assert ledger.balance(ISSUANCE).total == -12_500
    grant(ledger, "user:alice", 500, "g2")
    assert bal(ledger, "alice") == (13_000, 0, 13_000)
    assert ledger.balance(ISSUANCE).total == -13_000
    assert "user:alice" in ledger.account_names()


def test_group_accounts(ledger):
    grant(ledger, "group:physics", 5 * C, "g")
    hold(ledger, "group:physics", 2 * C, "h")
    assert bal(ledger, "group:physics") == (5 * C, 2 * C, 3 * C)
    with pytest.raises(UnknownAccount):
        ledger.balance("physics")  # a bare name is a user


def test_earn(ledger):
    t = ledger.earn("alice", 3 * C, key="e1", rule="daily-login").transfer
    assert (t.kind, t.debit_account, t.credit_account, t.amount) == (
        "earn", ISSUANCE, "user:alice", 3 * C)
    assert t.metadata == {"rule": "daily-login"}
    assert t.actor == "rule:daily-login" and t.reason == "daily-login"
    t2 = ledger.earn("alice", C, key="e2", rule="r", actor="bot", reason="why",
                     metadata={"x": 1}).transfer
    assert (t2.actor, t2.reason, t2.metadata) == ("bot", "why", {"rule": "r", "x": 1})
    assert bal(ledger, "alice") == (4 * C, 0, 4 * C)


def test_grant_kind_must_be_grant_or_earn(ledger):
    with pytest.raises(InvalidRequest):
        grant(ledger, "alice", C, "g", kind="deduct")


def test_deduct(ledger):
    grant(ledger, "alice", 10 * C, "g")
    t = deduct(ledger, "alice", 3_250, "d1").transfer
    assert (t.kind, t.debit_account, t.credit_account, t.amount) == (
        "deduct", "user:alice", ISSUANCE, 3_250)
    assert bal(ledger, "alice") == (6_750, 0, 6_750)
    assert ledger.balance(ISSUANCE).total == -6_750
    deduct(ledger, "alice", 6_750, "d2")  # down to exactly zero
    assert bal(ledger, "alice") == (0, 0, 0)
    with pytest.raises(InsufficientFunds, match="0.000 credits available"):
        deduct(ledger, "alice", 1, "d3")


def test_insufficient_funds_stores_nothing_and_frees_the_key(ledger):
    grant(ledger, "alice", 5 * C, "g")
    before = n_transfers(ledger)
    with pytest.raises(InsufficientFunds, match=r"user:alice has 5\.000 credits available, "
                                                r"6\.000 needed"):
        deduct(ledger, "alice", 6 * C, "d")
    assert n_transfers(ledger) == before
    assert bal(ledger, "alice") == (5 * C, 0, 5 * C)
    with pytest.raises(UnknownTransfer):
        ledger.get_transfer("d")
    # The refused request's key is free for a (different) request later.
    assert deduct(ledger, "alice", 5 * C, "d").duplicate is False
    assert bal(ledger, "alice") == (0, 0, 0)


@pytest.mark.parametrize("amount", [0, -1, 1.5, "10", True, None, 10**15 + 1])
def test_amounts_must_be_positive_int_units(ledger, amount):
    grant(ledger, "alice", C, "g")
    with pytest.raises(InvalidAmount):
        grant(ledger, "alice", amount, "g2")
    with pytest.raises(InvalidAmount):
        deduct(ledger, "alice", amount, "d2")
    with pytest.raises(InvalidAmount):
        hold(ledger, "alice", amount, "h2")
    assert n_transfers(ledger) == 1


@pytest.mark.parametrize("key", ["", "   ", None, 17, "k" * 256])
def test_keys_are_required(ledger, key):
    grant(ledger, "alice", C, "g")
    with pytest.raises(InvalidRequest):
        deduct(ledger, "alice", 1, key)
    with pytest.raises(InvalidRequest):
        hold(ledger, "alice", 1, key)
    assert n_transfers(ledger) == 1


def test_refused_grant_creates_no_account(ledger):
    # "A refused request stores nothing": not even the account it would have created.
    grant(ledger, "alice", C, "g")
    with pytest.raises(InvalidRequest):
        grant(ledger, "carol", C, "")  # no idempotency key
    with pytest.raises(IdempotencyConflict):
        grant(ledger, "bob", C, "g")  # key already used for alice
    assert ledger.account_names() == [ISSUANCE, USAGE, EXPIRED, "user:alice"]
    with pytest.raises(UnknownAccount):
        deduct(ledger, "bob", 1, "d")


def test_expires_at_must_be_aware(ledger):
    with pytest.raises(InvalidRequest):
        grant(ledger, "alice", C, "g", expires_at=datetime(2030, 1, 1))


# --- holds -------------------------------------------------------------------------


def test_hold_reserves_and_blocks_overspending(ledger):
    grant(ledger, "alice", 10 * C, "g")
    t = hold(ledger, "alice", 4 * C, "h1", reason="server").transfer
    assert (t.kind, t.debit_account, t.credit_account, t.amount) == (
        "hold", "user:alice", USAGE, 4 * C)
    assert bal(ledger, "alice") == (10 * C, 4 * C, 6 * C)
    assert ledger.balance(USAGE).total == 0  # a hold moves nothing yet
    with pytest.raises(InsufficientFunds):
        deduct(ledger, "alice", 6 * C + 1, "d1")
    with pytest.raises(InsufficientFunds):
        hold(ledger, "alice", 6 * C + 1, "h2")
    hold(ledger, "alice", 6 * C, "h3")
    assert bal(ledger, "alice") == (10 * C, 10 * C, 0)
    with pytest.raises(InsufficientFunds):
        deduct(ledger, "alice", 1, "d2")
    with pytest.raises(InsufficientFunds):
        hold(ledger, "alice", 1, "h4")


def test_hold_timeout_must_be_positive(ledger):
    grant(ledger, "alice", C, "g")
    for timeout in (timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(InvalidRequest):
            hold(ledger, "alice", 1, "h", timeout=timeout)


def test_post_full(ledger):
    grant(ledger, "alice", 10 * C, "g")
    h = hold(ledger, "alice", 4 * C, "h").transfer
    t = post(ledger, "h", key="p").transfer
    assert (t.kind, t.debit_account, t.credit_account, t.amount, t.pending_id) == (
        "post", "user:alice", USAGE, 4 * C, h.id)
    assert bal(ledger, "alice") == (6 * C, 0, 6 * C)
    assert ledger.balance(USAGE).total == 4 * C
    assert [x.kind for x in ledger.history("alice")] == ["post", "hold", "grant"]


def test_partial_post_posts_exactly_and_voids_the_rest(ledger):
    grant(ledger, "alice", 10 * C, "g")
    h = hold(ledger, "alice", 4 * C, "h").transfer
    t = post(ledger, "h", 1_250, key="p").transfer
    assert t.amount == 1_250 and t.kind == "post" and t.pending_id == h.id
    assert bal(ledger, "alice") == (10 * C - 1_250, 0, 10 * C - 1_250)
    assert ledger.balance(USAGE).total == 1_250
    newest = ledger.history("alice", limit=2)
    rest = newest[0]
    assert (rest.kind, rest.key, rest.pending_id, rest.amount) == (
        "void", None, h.id, 4 * C - 1_250)
    assert (rest.debit_account, rest.credit_account) == ("user:alice", USAGE)
    assert newest[1].id == t.id
    # The remainder's void is part of this one resolution.
    with pytest.raises(HoldNotPending):
        void(ledger, "h", key="v")
    with pytest.raises(HoldNotPending):
        post(ledger, "h", 1, key="p2")


def test_post_exact_amount_leaves_no_void(ledger):
    grant(ledger, "alice", 10 * C, "g")
    hold(ledger, "alice", 4 * C, "h")
    post(ledger, "h", 4 * C, key="p")
    assert [x.kind for x in ledger.history("alice")] == ["post", "hold", "grant"]


def test_void_releases(ledger):
    grant(ledger, "alice", 10 * C, "g")
    h = hold(ledger, "alice", 4 * C, "h").transfer
    t = void(ledger, "h", key="v", reason="never started").transfer
    assert (t.kind, t.amount, t.pending_id, t.key) == ("void", 4 * C, h.id, "v")
    assert bal(ledger, "alice") == (10 * C, 0, 10 * C)
    assert ledger.balance(USAGE).total == 0
    deduct(ledger, "alice", 10 * C, "d")  # everything is spendable again


@pytest.mark.parametrize("first", ["post", "partial", "void"])
@pytest.mark.parametrize("second", ["post", "partial", "void"])
def test_hold_resolves_exactly_once(ledger, first, second):
    grant(ledger, "alice", 10 * C, "g")
    hold(ledger, "alice", 4 * C, "h")

    def resolve(how, key):
        if how == "post":
            return post(ledger, "h", key=key)
        if how == "partial":
            return post(ledger, "h", C, key=key)
        return void(ledger, "h", key=key)

    first_result = resolve(first, "r1")
    after = bal(ledger, "alice")
    count = n_transfers(ledger)
    with pytest.raises(HoldNotPending, match="already"):
        resolve(second, "r2")  # a new key does not make it a new resolution
    assert bal(ledger, "alice") == after and n_transfers(ledger) == count
    # The same key again is the same request: answered with the first transfer.
    again = resolve(first, "r1")
    assert again.duplicate is True and again.transfer == first_result.transfer
    assert n_transfers(ledger) == count
    # r2 was refused, so it is free.
    assert grant(ledger, "alice", 1, "r2").duplicate is False


def test_post_more_than_held_is_refused(ledger):
    grant(ledger, "alice", 10 * C, "g")
    hold(ledger, "alice", 4 * C, "h")
    with pytest.raises(InvalidRequest, match="reserves only"):
        post(ledger, "h", 4 * C + 1, key="p")
    assert bal(ledger, "alice") == (10 * C, 4 * C, 6 * C)
    post(ledger, "h", 4 * C, key="p")  # still pending, and the key is free
    assert bal(ledger, "alice") == (6 * C, 0, 6 * C)


def test_post_and_void_need_a_hold(ledger):
    grant(ledger, "alice", 10 * C, "g")
    with pytest.raises(UnknownTransfer):
        post(ledger, "nope", key="p")
    with pytest.raises(UnknownTransfer):
        void(ledger, "nope", key="v")
    with pytest.raises(InvalidRequest, match="not a hold"):
        post(ledger, "g", key="p")
    with pytest.raises(InvalidRequest, match="not a hold"):
        void(ledger, "g", key="v")
    with pytest.raises(InvalidRequest):
        post(ledger, "", key="p")
    hold(ledger, "alice", C, "h")
    with pytest.raises(InvalidAmount):
        post(ledger, "h", 0, key="p")
    assert n_transfers(ledger) == 2


# --- timeouts and the sweep ----------------------------------------------------------


def test_sweep_voids_timed_out_holds(ledger, clock):
    grant(ledger, "alice", 10 * C, "g")
    h = hold(ledger, "alice", 4 * C, "h", timeout=timedelta(minutes=30)).transfer
    h_forever = hold(ledger, "alice", C, "h-forever").transfer
    clock.advance(minutes=29, seconds=59)
    report = ledger.sweep()
    assert report.holds_voided == [] and report.lots_expired == []
    assert bal(ledger, "alice") == (10 * C, 5 * C, 5 * C)
    clock.advance(seconds=1)  # exactly at the timeout
    report = ledger.sweep()
    assert report.holds_voided == [h.id]
    assert bal(ledger, "alice") == (10 * C, C, 9 * C)
    t = ledger.get_transfer(f"timeout:hold-{h.id}")
    assert (t.kind, t.pending_id, t.amount, t.actor) == ("void", h.id, 4 * C, "system:sweep")
    assert ledger.sweep().holds_voided == []  # once
    with pytest.raises(HoldNotPending):
        post(ledger, "h", key="p")
    clock.advance(days=365)
    assert ledger.sweep().holds_voided == []  # no timeout: never voided by the sweep
    assert post(ledger, "h-forever", key="p2").transfer.pending_id == h_forever.id
    assert bal(ledger, "alice") == (9 * C, 0, 9 * C)


def test_sweep_skips_holds_resolved_before_it(ledger, clock):
    grant(ledger, "alice", 10 * C, "g")
    hold(ledger, "alice", 4 * C, "h", timeout=timedelta(minutes=5))
    post(ledger, "h", C, key="p")
    clock.advance(hours=1)
    assert ledger.sweep().holds_voided == []
    assert bal(ledger, "alice") == (9 * C, 0, 9 * C)


def test_lapsed_lots_are_not_spendable_before_the_sweep(ledger, clock):
    grant(ledger, "alice", 10 * C, "g-exp", expires_at=clock.now + timedelta(hours=1))
    grant(ledger, "alice", 3 * C, "g-keep")
    assert bal(ledger, "alice") == (13 * C, 0, 13 * C)
    clock.advance(hours=1)  # expires_at == now: lapsed
    assert bal(ledger, "alice") == (3 * C, 0, 3 * C)
    with pytest.raises(InsufficientFunds):
        deduct(ledger, "alice", 3 * C + 1, "d")
    with pytest.raises(InsufficientFunds):
        hold(ledger, "alice", 3 * C + 1, "h")
    assert ledger.balance(EXPIRED).total == 0  # nothing moved yet
    report = ledger.sweep()
    assert report.expired_units == 10 * C and len(report.lots_expired) == 1
    assert bal(ledger, "alice") == (3 * C, 0, 3 * C)
    assert ledger.balance(EXPIRED).total == 10 * C
    assert ledger.sweep().expired_units == 0


def test_grant_already_expired(ledger, clock):
    grant(ledger, "alice", 2 * C, "g", expires_at=clock.now - timedelta(seconds=1))
    assert bal(ledger, "alice") == (0, 0, 0)
    with pytest.raises(InsufficientFunds):
        deduct(ledger, "alice", 1, "d")
    assert ledger.sweep().expired_units == 2 * C


def test_expired_remainder_moves_to_expired_with_its_own_transfer(ledger, clock):
    g = grant(ledger, "alice", 10 * C, "g", expires_at=clock.now + timedelta(days=1)).transfer
    deduct(ledger, "alice", 4 * C, "d")
    clock.advance(days=2)
    report = ledger.sweep(actor="cron")
    lot = lot_id(ledger, g.id)
    assert report.lots_expired == [lot] and report.expired_units == 6 * C
    t = ledger.get_transfer(f"expire:lot-{lot}:{6 * C}")
    assert (t.kind, t.debit_account, t.credit_account, t.amount, t.actor) == (
        "expire", "user:alice", EXPIRED, 6 * C, "cron")
    assert t.metadata == {"lot": lot}
    assert ledger.history("alice", limit=1)[0] == t
    assert ledger.balance(EXPIRED) == Balance(EXPIRED, 6 * C, 0)
    assert bal(ledger, "alice") == (0, 0, 0)
    assert ledger.balance(ISSUANCE).total == -6 * C


def test_spending_draws_soonest_expiring_first(ledger, clock):
    now = clock.now
    grant(ledger, "alice", 100, "late", expires_at=now + timedelta(hours=2))
    grant(ledger, "alice", 60, "soon", expires_at=now + timedelta(hours=1))
    grant(ledger, "alice", 100, "never")
    deduct(ledger, "alice", 80, "d")  # all of "soon", then 20 of "late"
    assert lot_rows(ledger, "alice") == [("late", 80, 0), ("soon", 0, 0), ("never", 100, 0)]
    clock.advance(hours=1, minutes=30)
    assert ledger.sweep().expired_units == 0  # "soon" was used up
    assert bal(ledger, "alice") == (180, 0, 180)
    clock.advance(hours=1)
    assert ledger.sweep().expired_units == 80
    assert bal(ledger, "alice") == (100, 0, 100)


def test_non_expiring_credits_are_spent_last_and_ties_go_by_lot(ledger, clock):
    at = clock.now + timedelta(hours=1)
    grant(ledger, "alice", 50, "never")
    grant(ledger, "alice", 50, "a", expires_at=at)
    grant(ledger, "alice", 50, "b", expires_at=at)
    hold(ledger, "alice", 70, "h")  # all of "a", 20 of "b"
    assert lot_rows(ledger, "alice") == [("never", 50, 0), ("a", 50, 50), ("b", 50, 20)]
    post(ledger, "h", 60, key="p")  # soonest first, then by lot: "a" 50, "b" 10
    assert lot_rows(ledger, "alice") == [("never", 50, 0), ("a", 0, 0), ("b", 40, 0)]
    clock.advance(hours=1)
    assert ledger.sweep().expired_units == 40
    assert bal(ledger, "alice") == (50, 0, 50)


def test_reserved_credits_survive_expiry_and_can_be_posted(ledger, clock):
    g = grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1)).transfer
    hold(ledger, "alice", 60, "h")
    clock.advance(hours=2)
    assert bal(ledger, "alice") == (60, 60, 0)  # the unreserved 40 lapsed
    report = ledger.sweep()
    assert report.expired_units == 40
    lot = lot_id(ledger, g.id)
    assert ledger.get_transfer(f"expire:lot-{lot}:100").amount == 40
    assert bal(ledger, "alice") == (60, 60, 0)
    post(ledger, "h", key="p")
    assert bal(ledger, "alice") == (0, 0, 0)
    assert ledger.balance(USAGE).total == 60 and ledger.balance(EXPIRED).total == 40
    assert ledger.sweep().expired_units == 0


def test_voided_reservation_of_a_lapsed_lot_expires_at_the_next_sweep(ledger, clock):
    g = grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1)).transfer
    grant(ledger, "alice", 10, "keep")
    hold(ledger, "alice", 100, "h")  # the expiring lot first
    clock.advance(hours=2)
    assert ledger.sweep().expired_units == 0
    assert bal(ledger, "alice") == (110, 100, 10)
    post(ledger, "h", 30, key="p")  # posts 30, voids 70 of a lapsed lot
    assert bal(ledger, "alice") == (10, 0, 10)  # the freed 70 are not shown
    with pytest.raises(InsufficientFunds):
        deduct(ledger, "alice", 11, "d")
    report = ledger.sweep()
    lot = lot_id(ledger, g.id)
    assert report.lots_expired == [lot] and report.expired_units == 70
    assert ledger.get_transfer(f"expire:lot-{lot}:70").amount == 70
    assert bal(ledger, "alice") == (10, 0, 10)
    assert ledger.balance(EXPIRED).total == 70


def test_sweep_times_out_holds_before_expiring(ledger, clock):
    grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1))
    hold(ledger, "alice", 100, "h", timeout=timedelta(minutes=30))
    clock.advance(hours=1)
    report = ledger.sweep()  # the void frees the lot, which then expires in the same sweep
    assert len(report.holds_voided) == 1 and report.expired_units == 100
    assert bal(ledger, "alice") == (0, 0, 0)


# --- reversals ---------------------------------------------------------------------


def test_reverse_grant_by_id_and_by_key(ledger):
    g1 = grant(ledger, "alice", 10 * C, "g1").transfer
    grant(ledger, "alice", 5 * C, "g2")
    r = reverse(ledger, g1.id, "r1", reason="typo").transfer
    assert (r.kind, r.debit_account, r.credit_account, r.amount, r.reversal_of, r.reason) == (
        "reverse", "user:alice", ISSUANCE, 10 * C, g1.id, "typo")
    assert bal(ledger, "alice") == (5 * C, 0, 5 * C)
    r2 = reverse(ledger, "g2", "r2").transfer
    assert r2.reversal_of == ledger.get_transfer("g2").id
    assert bal(ledger, "alice") == (0, 0, 0)
    assert ledger.balance(ISSUANCE).total == 0


def test_reverse_earn(ledger):
    ledger.earn("alice", 3 * C, key="e", rule="r")
    reverse(ledger, "e", "r")
    assert bal(ledger, "alice") == (0, 0, 0)


def test_reverse_deduct_credits_a_non_expiring_lot(ledger, clock):
    grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1))
    d = deduct(ledger, "alice", 30, "d").transfer
    r = reverse(ledger, "d", "r").transfer
    assert (r.debit_account, r.credit_account, r.amount, r.reversal_of) == (
        ISSUANCE, "user:alice", 30, d.id)
    assert bal(ledger, "alice") == (100, 0, 100)
    clock.advance(hours=2)
    assert ledger.sweep().expired_units == 70
    assert bal(ledger, "alice") == (30, 0, 30)


def test_reverse_post_refunds_usage(ledger):
    grant(ledger, "alice", 100, "g")
    hold(ledger, "alice", 60, "h")
    post(ledger, "h", 40, key="p")
    r = reverse(ledger, "p", "r").transfer
    assert (r.debit_account, r.credit_account, r.amount) == (USAGE, "user:alice", 40)
    assert bal(ledger, "alice") == (100, 0, 100)
    assert ledger.balance(USAGE).total == 0


def test_reverse_expire_is_refused(ledger, clock):
    # Given back as a lot without expiry, expired credits would last for ever
    # (tests/test_reverse_rules.py has the rest of the rule).
    g = grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1)).transfer
    clock.advance(hours=1)
    ledger.sweep()
    lot = lot_id(ledger, g.id)
    count = n_transfers(ledger)
    with pytest.raises(NotReversible, match="expired credits"):
        reverse(ledger, f"expire:lot-{lot}:100", "r")
    assert n_transfers(ledger) == count
    assert bal(ledger, "alice") == (0, 0, 0)
    assert ledger.balance(EXPIRED).total == 100


def test_reverse_grant_draws_its_own_lot_first(ledger, clock):
    grant(ledger, "alice", 100, "own")
    grant(ledger, "alice", 100, "soon", expires_at=clock.now + timedelta(hours=1))
    reverse(ledger, "own", "r")  # not soonest-first: the grant's own credits go
    assert lot_rows(ledger, "alice") == [("own", 0, 0), ("soon", 100, 0)]
    clock.advance(hours=1)
    assert ledger.sweep().expired_units == 100
    assert bal(ledger, "alice") == (0, 0, 0)


def test_reverse_grant_takes_from_its_lapsed_lot(ledger, clock):
    grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1))
    grant(ledger, "alice", 50, "keep")
    clock.advance(hours=2)
    assert bal(ledger, "alice") == (50, 0, 50)
    reverse(ledger, "g", "r")
    assert bal(ledger, "alice") == (50, 0, 50)
    assert lot_rows(ledger, "alice") == [("g", 0, 0), ("keep", 50, 0)]
    assert ledger.sweep().expired_units == 0


def test_reverse_grant_after_partial_spend_takes_only_what_its_lot_has_left(ledger, clock):
    now = clock.now
    grant(ledger, "alice", 100, "g")
    deduct(ledger, "alice", 70, "d")  # g has 30 left
    grant(ledger, "alice", 50, "later", expires_at=now + timedelta(hours=3))
    grant(ledger, "alice", 50, "never")
    grant(ledger, "alice", 50, "sooner", expires_at=now + timedelta(hours=2))
    r = reverse(ledger, "g", "r").transfer  # the 30 left of g; the other lots are not touched
    assert r.amount == 30
    assert lot_rows(ledger, "alice") == [("g", 0, 0), ("later", 50, 0), ("never", 50, 0),
                                         ("sooner", 50, 0)]
    assert bal(ledger, "alice") == (150, 0, 150)


def test_reverse_refused_when_nothing_of_the_grants_lot_is_free(ledger):
    grant(ledger, "alice", 100, "g")
    deduct(ledger, "alice", 100, "d")
    with pytest.raises(NotReversible, match=r"0\.100 were spent"):
        reverse(ledger, "g", "r")
    reverse(ledger, "d", "r-d")  # back as a lot of its own: not g's
    with pytest.raises(NotReversible, match="nothing is left"):
        reverse(ledger, "g", "r")
    grant(ledger, "alice", 100, "g2")
    hold(ledger, "alice", 200, "h")  # reserved credits are the hold's, not taken back
    with pytest.raises(NotReversible, match=r"0\.100 are reserved"):
        reverse(ledger, "g2", "r")
    void(ledger, "h", key="v")
    assert reverse(ledger, "g2", "r").transfer.amount == 100  # refusals stored nothing
    assert bal(ledger, "alice") == (100, 0, 100)


def test_reverse_refusals(ledger):
    grant(ledger, "alice", 100, "g")
    hold(ledger, "alice", 10, "h1")
    hold(ledger, "alice", 10, "h2")
    void(ledger, "h1", key="v1")
    post(ledger, "h2", 4, key="p2")  # leaves a remainder void with no key
    remainder = ledger.history("alice", limit=1)[0]
    assert remainder.kind == "void" and remainder.key is None
    r = reverse(ledger, "p2", "r-p2").transfer
    count = n_transfers(ledger)
    for ref, match in [("h1", "hold"), ("h2", "hold"), ("v1", "void"), (remainder.id, "void"),
                       ("r-p2", "reversal"), (r.id, "reversal"), ("p2", "already reversed")]:
        with pytest.raises(NotReversible, match=match):
            reverse(ledger, ref, f"new-{ref}")
    assert n_transfers(ledger) == count
    with pytest.raises(UnknownTransfer):
        reverse(ledger, 999_999, "x")
    with pytest.raises(UnknownTransfer):
        reverse(ledger, "nope", "x")
    for bad in (True, "", None, 1.0):
        with pytest.raises(InvalidRequest):
            reverse(ledger, bad, "x")
    with pytest.raises(UnknownTransfer):
        ledger.get_transfer(999_999)


def test_reverse_once_even_with_a_new_key(ledger):
    grant(ledger, "alice", 100, "g")
    reverse(ledger, "g", "r1")
    with pytest.raises(NotReversible, match="already reversed"):
        reverse(ledger, "g", "r2")
    grant(ledger, "alice", 1, "r2")  # r2 was refused: free


# --- idempotency -----------------------------------------------------------------------


def _replays(ledger, clock):
    """(name, call) pairs: each call applied once, then replayed by the test."""
    exp = clock.now + timedelta(days=3)
    return [
        ("grant", lambda: grant(ledger, "alice", 100 * C, "k-grant", expires_at=exp,
                                metadata={"a": [1, 2]})),
        ("earn", lambda: ledger.earn("alice", C, key="k-earn", rule="daily")),
        ("grant-group", lambda: grant(ledger, "group:g", C, "k-group")),
        ("deduct", lambda: deduct(ledger, "alice", C, "k-deduct")),
        ("hold", lambda: hold(ledger, "alice", 10 * C, "k-hold", timeout=timedelta(hours=1))),
        ("hold2", lambda: hold(ledger, "alice", 10 * C, "k-hold2")),
        ("hold3", lambda: hold(ledger, "alice", 10 * C, "k-hold3")),
        ("post", lambda: post(ledger, "k-hold", 3 * C, key="k-post")),
        ("post-all", lambda: post(ledger, "k-hold3", key="k-post3")),
        ("void", lambda: void(ledger, "k-hold2", key="k-void")),
        ("reverse-deduct", lambda: reverse(ledger, "k-deduct", "k-rev-deduct")),
        ("reverse-grant", lambda: reverse(ledger, "k-group", "k-rev-group")),
    ]


def test_replays_are_duplicates(ledger, clock):
    calls = _replays(ledger, clock)
    firsts = {}
    for name, call in calls:
        result = call()
        assert result.duplicate is False, name
        firsts[name] = result.transfer
    balances = {a: ledger.balance(a) for a in ("alice", "group:g", ISSUANCE, USAGE)}
    count = n_transfers(ledger)
    clock.advance(minutes=5)  # a retry later is still the same request
    failures = []
    for name, call in calls:
        try:
            again = call()
        except Exception as error:  # noqa: BLE001 - collect every kind that misbehaves
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        if not (again.duplicate is True and again.transfer == firsts[name]):
            failures.append(f"{name}: {again}")
    assert failures == []
    assert {a: ledger.balance(a) for a in balances} == balances
    assert n_transfers(ledger) == count


def test_replay_of_a_reversal_is_a_duplicate(ledger):
    grant(ledger, "alice", 100, "g")
    first = reverse(ledger, "g", "r").transfer
    again = reverse(ledger, "g", "r")  # e.g. a client retrying after a lost response
    assert again.duplicate is True and again.transfer == first


def test_replay_is_a_duplicate_even_when_it_could_no_longer_apply(ledger):
    grant(ledger, "alice", 100, "g")
    hold(ledger, "alice", 100, "h")  # all funds reserved now
    assert hold(ledger, "alice", 100, "h").duplicate is True
    post(ledger, "h", key="p")  # the hold is resolved and the account is empty
    first = ledger.get_transfer("h")
    again = hold(ledger, "alice", 100, "h")
    assert again.duplicate is True and again.transfer == first
    assert post(ledger, "h", key="p").duplicate is True
    assert bal(ledger, "alice") == (0, 0, 0)


@pytest.mark.parametrize("other", [
    lambda l, c: grant(l, "alice", 101, "k"),
    lambda l, c: grant(l, "alice", 100, "k", reason="other"),
    lambda l, c: grant(l, "alice", 100, "k", expires_at=c.now + timedelta(days=1)),
    lambda l, c: grant(l, "alice", 100, "k", metadata={"x": 1}),
    lambda l, c: ledger_earn(l, "k"),
    lambda l, c: deduct(l, "alice", 100, "k"),
    lambda l, c: hold(l, "alice", 100, "k"),
    lambda l, c: reverse(l, "g0", "k"),
], ids=["amount", "reason", "expiry", "metadata", "earn", "deduct", "hold", "reverse"])
def test_same_key_different_request_conflicts(ledger, clock, other):
    grant(ledger, "alice", 500, "g0")
    original = grant(ledger, "alice", 100, "k").transfer
    count = n_transfers(ledger)
    with pytest.raises(IdempotencyConflict, match="already used"):
        other(ledger, clock)
    assert n_transfers(ledger) == count
    assert ledger.get_transfer("k") == original
    assert bal(ledger, "alice") == (600, 0, 600)


def ledger_earn(ledger, key):
    return ledger.earn("alice", 100, key=key, rule="r", reason="test grant", actor="admin")


def test_hold_key_conflicts(ledger):
    grant(ledger, "alice", 500, "g")
    hold(ledger, "alice", 100, "h")
    hold(ledger, "alice", 100, "h2")
    post(ledger, "h", 50, key="p")
    with pytest.raises(IdempotencyConflict):
        post(ledger, "h", 60, key="p")
    with pytest.raises(IdempotencyConflict):
        post(ledger, "h", key="p")
    with pytest.raises(IdempotencyConflict):
        void(ledger, "h2", key="p")
    with pytest.raises(IdempotencyConflict):
        hold(ledger, "alice", 100, "h", timeout=timedelta(minutes=1))
    void(ledger, "h2", key="v")
    with pytest.raises(IdempotencyConflict):
        void(ledger, "h2", key="v", reason="different")


# --- reading: history and the audit log -------------------------------------------------------


def test_history_newest_first_with_limit(ledger, clock):
    grant(ledger, "alice", 100, "g")
    grant(ledger, "bob", 100, "g-bob")
    clock.advance(minutes=1)
    deduct(ledger, "alice", 10, "d")
    hold(ledger, "alice", 20, "h")
    post(ledger, "h", 5, key="p")
    reverse(ledger, "d", "r")
    history = ledger.history("alice")
    assert [(t.kind, t.key) for t in history] == [
        ("reverse", "r"), ("void", None), ("post", "p"), ("hold", "h"), ("deduct", "d"),
        ("grant", "g")]
    assert [t.id for t in history] == sorted((t.id for t in history), reverse=True)
    assert ledger.history("user:alice", limit=2) == history[:2]
    assert [t.key for t in ledger.history("bob")] == ["g-bob"]
    assert [t.key for t in ledger.history(USAGE)] == [None, "p", "h"]
    assert [t.key for t in ledger.history(ISSUANCE)] == ["r", "d", "g-bob", "g"]
    with pytest.raises(InvalidRequest):
        ledger.history("alice", limit=0)


def test_transfers_audit_log(ledger, clock):
    start = clock.now
    grant(ledger, "alice", 100, "g", expires_at=start + timedelta(hours=1))
    hold(ledger, "alice", 30, "h", timeout=timedelta(minutes=10))
    clock.advance(minutes=10)
    middle = clock.now
    ledger.sweep()
    clock.advance(hours=1)
    ledger.sweep()
    log = list(ledger.transfers())
    assert [t.kind for t in log] == ["grant", "hold", "void", "expire"]
    assert [t.id for t in log] == sorted(t.id for t in log)
    assert [t.created_at for t in log] == [start, start, middle, clock.now]
    assert log[2].key.startswith("timeout:hold-") and log[3].key.startswith("expire:lot-")
    assert [t.kind for t in ledger.transfers(since=middle)] == ["void", "expire"]
    assert list(ledger.transfers(since=clock.now + timedelta(seconds=1))) == []
    assert list(ledger.transfers(batch=1)) == log
    assert ledger.get_transfer(log[0].id) == log[0] == ledger.get_transfer("g")


def test_balance_is_exact_across_a_full_scenario(ledger, clock):
    now = clock.now
    grant(ledger, "alice", 10_000, "g1", expires_at=now + timedelta(days=1))
    ledger.earn("alice", 2_500, key="e1", rule="r")
    grant(ledger, "group:lab", 7_000, "g-lab")
    hold(ledger, "alice", 4_000, "h1", timeout=timedelta(hours=2))
    hold(ledger, "group:lab", 1_000, "h-lab")
    deduct(ledger, "alice", 1_000, "d1")
    post(ledger, "h-lab", 999, key="p-lab")
    clock.advance(hours=3)
    ledger.sweep()
    clock.advance(days=1)
    ledger.sweep()
    assert bal(ledger, "alice") == (2_500, 0, 2_500)
    assert bal(ledger, "group:lab") == (6_001, 0, 6_001)
    assert ledger.balance(EXPIRED).total == 9_000
    assert ledger.balance(USAGE).total == 999
    assert ledger.balance(ISSUANCE).total == -(10_000 + 2_500 + 7_000) + 1_000
    total = sum(ledger.balance(a).total for a in ("alice", "group:lab", ISSUANCE, USAGE, EXPIRED))
    assert total == 0


def test_sweep_hold_timeout_key_and_status(ledger, clock):
    grant(ledger, "alice", 100, "g")
    h = hold(ledger, "alice", 100, "h", timeout=timedelta(seconds=1)).transfer
    clock.advance(seconds=1)
    ledger.sweep()
    with ledger.engine.connect() as conn:
        state = conn.execute(select(holds.c.state, holds.c.posted, holds.c.resolved_at)
                             .where(holds.c.transfer_id == h.id)).one()
    assert (state.state, state.posted) == ("voided", 0)
    assert state.resolved_at == clock.now


def test_clock_is_the_injected_one(ledger, clock):
    clock.advance(days=40)
    t = grant(ledger, "alice", 1, "g").transfer
    assert t.created_at == clock.now
    assert t.created_at.tzinfo is not None
    assert t.created_at == datetime(2026, 2, 10, 12, 0, tzinfo=UTC)


def test_expiry_in_another_timezone_lapses_at_the_same_instant(ledger, clock):
    plus5 = timezone(timedelta(hours=5))
    grant(ledger, "alice", 100, "g", expires_at=(clock.now + timedelta(hours=1)).astimezone(plus5))
    clock.advance(minutes=59, seconds=59)
    assert bal(ledger, "alice") == (100, 0, 100)
    assert ledger.sweep().expired_units == 0
    clock.advance(seconds=1)
    assert bal(ledger, "alice") == (0, 0, 0)
    assert ledger.sweep().expired_units == 100


# --- keys the sweep derives must not be takeable by callers ---------------------------------


def test_caller_key_shaped_like_a_timeout_key_does_not_break_the_sweep(ledger, clock):
    first = grant(ledger, "alice", 100, "g").transfer
    poisoned = f"timeout:hold-{first.id + 2}"  # the id the next hold will get
    try:
        grant(ledger, "alice", 1, poisoned)
    except InvalidRequest:
        return  # refusing the ledger's own key namespace up front is a fine answer
    h = hold(ledger, "alice", 50, "h", timeout=timedelta(minutes=1)).transfer
    assert h.id == first.id + 2
    grant(ledger, "bob", 10, "g-bob", expires_at=clock.now + timedelta(minutes=1))
    clock.advance(minutes=1)
    report = ledger.sweep()  # must neither raise nor skip the hold
    assert report.holds_voided == [h.id]
    assert bal(ledger, "alice") == (101, 0, 101)
    assert report.expired_units == 10  # and the rest of the sweep still ran


def test_caller_key_shaped_like_an_expire_key_does_not_stop_expiry(ledger, clock):
    g = grant(ledger, "alice", 100, "g", expires_at=clock.now + timedelta(hours=1)).transfer
    lot = lot_id(ledger, g.id)
    try:
        grant(ledger, "bob", 1, f"expire:lot-{lot}:100")
    except InvalidRequest:
        return  # refused up front: fine
    clock.advance(hours=1)
    report = ledger.sweep()
    assert report.expired_units == 100
    assert ledger.balance(EXPIRED).total == 100
