"""What a reversal takes back (``Ledger.reverse``), on SQLite and PostgreSQL.

The rule: a reversed grant or earn takes back what is still free in the lot it
created, never credits of the owner's other lots; an ``expire`` is not
reversible. A transfer is reversed at most once, and a reversal never overdraws.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from jupyterhub_credits.ledger import EXPIRED, ISSUANCE, InsufficientFunds, NotReversible

C = 1000  # units per credit


pytestmark = pytest.mark.usefixtures("ledger_verifies_after")


def grant(ledger, amount, key, **kw):
    return ledger.grant("alice", amount, key=key, reason="test", actor="admin", **kw).transfer


def reverse(ledger, ref, key):
    return ledger.reverse(ref, key=key, reason="mistake", actor="admin")


def available(ledger) -> int:
    return ledger.balance("alice").available


def test_a_grant_whose_lot_expired_is_not_taken_again_from_other_lots(ledger, clock):
    grant(ledger, 100 * C, "g", expires_at=clock.now + timedelta(hours=1))
    grant(ledger, 150 * C, "keep")
    clock.advance(hours=2)
    assert ledger.sweep().expired_units == 100 * C
    with pytest.raises(NotReversible, match=r"100\.000 expired, 0\.000 were spent"):
        reverse(ledger, "g", "r")
    assert available(ledger) == 150 * C  # before: the 100 were taken again, from "keep"
    assert ledger.balance(EXPIRED).total == 100 * C


def test_an_earning_partly_spent_then_expired_is_refused_saying_where_it_went(ledger, clock):
    ledger.earn("alice", 100 * C, key="e", rule="training_run",
                expires_at=clock.now + timedelta(hours=1))
    ledger.deduct("alice", 30 * C, key="d", reason="use", actor="admin")
    grant(ledger, 200 * C, "other")
    clock.advance(hours=2)
    ledger.sweep()
    with pytest.raises(NotReversible, match=r"70\.000 expired, 30\.000 were spent"):
        reverse(ledger, "e", "r")
    assert available(ledger) == 200 * C


def test_a_lapsed_but_unswept_grant_gives_back_its_remainder_only(ledger, clock):
    grant(ledger, 100 * C, "g", expires_at=clock.now + timedelta(hours=1))
    ledger.deduct("alice", 40 * C, key="d", reason="use", actor="admin")
    grant(ledger, 500 * C, "keep")
    clock.advance(hours=2)  # g has lapsed; the sweep has not run
    result = reverse(ledger, "g", "r").transfer
    assert (result.amount, result.debit_account, result.credit_account) == (
        60 * C, "user:alice", ISSUANCE)
    assert available(ledger) == 500 * C
    assert ledger.sweep().expired_units == 0  # nothing left in g to expire


def test_credits_a_pending_hold_reserves_stay_with_the_hold(ledger):
    grant(ledger, 100 * C, "g")
    ledger.hold("alice", 60 * C, key="h", actor="spawner")
    result = reverse(ledger, "g", "r").transfer
    assert result.amount == 40 * C
    assert (available(ledger), ledger.balance("alice").reserved) == (0, 60 * C)
    ledger.post("h", 20 * C, key="p", actor="spawner")  # the session used 20; 40 come back
    assert available(ledger) == 40 * C
    with pytest.raises(NotReversible, match="already reversed"):
        reverse(ledger, "g", "r2")  # at most once: what came back later stays
    assert reverse(ledger, "g", "r").duplicate  # the same request again is a replay


def test_reversing_an_expiry_is_refused_and_changes_nothing(ledger, clock):
    grant(ledger, 100 * C, "g", expires_at=clock.now + timedelta(hours=1))
    clock.advance(hours=1)
    ledger.sweep()
    [expiry] = [t for t in ledger.transfers() if t.kind == "expire"]
    for ref in (expiry.id, expiry.key):
        with pytest.raises(NotReversible, match="would give them back without an expiry"):
            reverse(ledger, ref, f"r-{ref}")
    assert available(ledger) == 0
    assert ledger.balance(EXPIRED).total == 100 * C


def test_deducts_and_posts_still_come_back_whole(ledger):
    grant(ledger, 100 * C, "g")
    ledger.deduct("alice", 30 * C, key="d", reason="use", actor="admin")
    ledger.hold("alice", 50 * C, key="h", actor="spawner")
    ledger.post("h", 50 * C, key="p", actor="spawner")
    assert reverse(ledger, "d", "r-d").transfer.amount == 30 * C
    assert reverse(ledger, "p", "r-p").transfer.amount == 50 * C
    assert available(ledger) == 100 * C


def test_a_spend_racing_a_reversal_waits_for_it_and_never_overdraws(ledger, monkeypatch):
    """The owner is locked before the grant's lot is read: a spend that comes in while the
    reversal runs waits for it, then finds the credits gone (no read-then-recheck window)."""
    if ledger.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time: there is no between")
    grant(ledger, 100 * C, "g")
    claim = type(ledger)._claim
    spends, outcome = [], {}

    def spend():
        try:
            ledger.deduct("alice", 30 * C, key="d", reason="use", actor="admin")
            outcome["deduct"] = "applied"
        except InsufficientFunds:
            outcome["deduct"] = "refused"

    def claim_then_spend(self, conn, key, digest, **row):
        transfer_id = claim(self, conn, key, digest, **row)
        if key == "r" and not spends:  # another writer tries to spend from the lot meanwhile
            spender = threading.Thread(target=spend)
            spends.append(spender)
            spender.start()
            spender.join(0.5)
            assert spender.is_alive()  # it waits on the owner the reversal holds
        return transfer_id

    monkeypatch.setattr(type(ledger), "_claim", claim_then_spend)
    result = reverse(ledger, "g", "r").transfer
    spends[0].join(10)
    assert not spends[0].is_alive()
    assert result.amount == 100 * C and outcome == {"deduct": "refused"}
    assert available(ledger) == 0
