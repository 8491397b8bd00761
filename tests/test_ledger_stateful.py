"""The ledger against a simple in-memory model, driven by Hypothesis, on every path that
writes transfers: SQLite, PostgreSQL's server functions, PostgreSQL's Python path.

The model keeps owners' lots (with optional expiry), holds and which lots they reserve, and
the system accounts' balances. Each rule predicts from the model whether the ledger accepts a
request (and which error it gives otherwise); invariants compare every balance with the model
and, now and then, run ``verify()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FakeClock, reset_ledger
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from jupyterhub_credits.ledger import (
    EXPIRED,
    ISSUANCE,
    USAGE,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
    Ledger,
    NotReversible,
    UnknownAccount,
)
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.ledger.schema import accounts as accounts_table
from jupyterhub_credits.ledger.schema import holds as holds_table
from jupyterhub_credits.ledger.schema import lots as lots_table
from jupyterhub_credits.ledger.verify import verify
from test_ledger_paths import (  # noqa: F401 - fixtures
    db_url,
    empty_postgres_ledger,
    ledger_options,
    ledger_path,
)

USERS = ["user:alice", "user:bob", "group:lab"]
NAMES = {"user:alice": st.sampled_from(["alice", "user:alice"]),
         "user:bob": st.sampled_from(["bob", "user:bob"]),
         "group:lab": st.just("group:lab")}
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
VERIFY_EVERY = 8

amounts = st.integers(min_value=1, max_value=300)
grant_amounts = st.integers(min_value=1, max_value=1_000)
users = st.sampled_from(USERS)
indices = st.integers(min_value=0, max_value=10_000)


@dataclass
class Lot:
    id: int  # the ledger's lot id
    owner: str
    amount: int
    expires_at: datetime | None
    remaining: int = 0
    reserved: int = 0

    def __post_init__(self):
        self.remaining = self.amount


@dataclass
class Hold:
    id: int
    key: str
    owner: str
    amount: int
    timeout_at: datetime | None
    allocations: list[tuple[Lot, int]]
    state: str = "pending"


@dataclass
class Xfer:
    id: int
    key: str | None
    kind: str
    debit: str
    credit: str
    amount: int
    lot: Lot | None = None  # grant/earn: the lot it created
    reversed: bool = False


@dataclass
class Applied:
    """A request the ledger accepted: replaying it must answer with the same transfer."""
    key: str
    call: object
    transfer_id: int
    kind: str = field(default="")


def expiry_order(lot: Lot):
    return (lot.expires_at is None, lot.expires_at or FAR_FUTURE, lot.id)


class LedgerMachine(RuleBasedStateMachine):
    engine = None  # set per path by the test below
    options: dict = {}  # Ledger options of the path

    def __init__(self):
        super().__init__()
        # Fresh database and a fresh Ledger: its account-id cache must not outlive the data.
        if self.engine.dialect.name == "postgresql":
            empty_postgres_ledger(self.engine)  # faster than TRUNCATE: 40 examples a path
        else:
            reset_ledger(self.engine)
        self.clock = FakeClock()
        self.ledger = Ledger(self.engine, clock=self.clock, **self.options)
        self.accounts: set[str] = set()
        self.lots: list[Lot] = []
        self.holds: list[Hold] = []
        self.transfers: list[Xfer] = []
        self.applied: list[Applied] = []
        self.used_keys: list[str] = []
        self.refused_keys: list[str] = []
        self.system = {ISSUANCE: 0, USAGE: 0, EXPIRED: 0}
        # Owners' lifetime totals: {owner: [earned, spent]}.
        self.totals = {owner: [0, 0] for owner in USERS}
        self.counter = 0
        self.steps = 0

    # --- helpers ----------------------------------------------------------------------

    def new_key(self, reuse_refused: bool = False) -> str:
        if reuse_refused and self.refused_keys:
            return self.refused_keys.pop()
        self.counter += 1
        return f"k{self.counter}"

    def refused(self, key: str, error, call):
        with pytest.raises(error) as raised:
            call()
        event(f"refused: {raised.value.__class__.__name__}")
        self.refused_keys.append(key)

    def accepted(self, key: str, call, kind: str):
        result = call()
        assert result.duplicate is False
        t = result.transfer
        assert t.key == key and t.kind == kind
        event(f"accepted: {kind}")
        self.used_keys.append(key)
        self.applied.append(Applied(key, call, t.id, kind))
        return t

    def lot_of(self, transfer_id: int, owner: str, amount: int, expires_at) -> Lot:
        with self.engine.connect() as conn:
            lot_id = conn.execute(select(lots_table.c.id).where(
                lots_table.c.transfer_id == transfer_id)).scalar_one()
        lot = Lot(lot_id, owner, amount, expires_at)
        self.lots.append(lot)
        return lot

    def lapsed(self, lot: Lot) -> bool:
        return lot.expires_at is not None and lot.expires_at <= self.clock.now

    def spendable(self, owner: str, prefer: Lot | None = None) -> list[Lot]:
        found = [lot for lot in self.lots if lot.owner == owner and lot.remaining > lot.reserved
                 and (not self.lapsed(lot) or lot is prefer)]
        return sorted(found, key=lambda lot: (lot is not prefer, *expiry_order(lot)))

    @staticmethod
    def draw(spendable: list[Lot], amount: int) -> list[tuple[Lot, int]]:
        taken, left = [], amount
        for lot in spendable:
            if not left:
                break
            take = min(left, lot.remaining - lot.reserved)
            taken.append((lot, take))
            left -= take
        assert left == 0
        return taken

    def pick_owner(self, data) -> str:
        """Mostly an account that exists; now and then any (maybe unknown) one."""
        if self.accounts and data.draw(st.integers(min_value=0, max_value=4), label="known"):
            return data.draw(st.sampled_from(sorted(self.accounts)), label="owner")
        return data.draw(users, label="owner")

    def free(self, owner: str, prefer: Lot | None = None) -> int:
        return sum(lot.remaining - lot.reserved for lot in self.spendable(owner, prefer))

    def release(self, hold: Hold, state: str) -> None:
        for lot, reserved in hold.allocations:
            lot.reserved -= reserved
        hold.state = state

    # --- money in and out ---------------------------------------------------------------

    @initialize(owner=users, data=st.data(), amount=grant_amounts,
                hours=st.none() | st.integers(min_value=1, max_value=6))
    def first_grant(self, owner, data, amount, hours):
        self.grant(owner, data, amount, hours, earn=False, reuse_refused=False)

    @rule(owner=users, data=st.data(), amount=grant_amounts,
          hours=st.none() | st.integers(min_value=-1, max_value=6),
          earn=st.booleans(), reuse_refused=st.booleans())
    def grant(self, owner, data, amount, hours, earn, reuse_refused):
        name = data.draw(NAMES[owner])
        key = self.new_key(reuse_refused)
        expires_at = None if hours is None else self.clock.now + timedelta(hours=hours)
        if earn:
            call = lambda: self.ledger.earn(name, amount, key=key, rule="r",
                                            expires_at=expires_at)
        else:
            call = lambda: self.ledger.grant(name, amount, key=key, reason="g",
                                             actor="admin", expires_at=expires_at)
        t = self.accepted(key, call, "earn" if earn else "grant")
        assert (t.debit_account, t.credit_account, t.amount) == (ISSUANCE, owner, amount)
        self.accounts.add(owner)
        lot = self.lot_of(t.id, owner, amount, expires_at)
        self.system[ISSUANCE] -= amount
        if earn:
            self.totals[owner][0] += amount
        self.transfers.append(Xfer(t.id, key, t.kind, ISSUANCE, owner, amount, lot=lot))

    def pick_amount(self, data, owner: str) -> int:
        """Any amount, or (mostly) one that the owner's available credits cover."""
        free = self.free(owner) if owner in self.accounts else 0
        if free and data.draw(st.integers(min_value=0, max_value=2), label="fits"):
            return data.draw(st.integers(min_value=1, max_value=free), label="amount")
        return data.draw(amounts, label="amount")

    @rule(data=st.data(), reuse_refused=st.booleans())
    def deduct(self, data, reuse_refused):
        owner = self.pick_owner(data)
        amount = self.pick_amount(data, owner)
        key = self.new_key(reuse_refused)
        call = lambda: self.ledger.deduct(owner, amount, key=key, reason="d",
                                          actor="admin")
        if owner not in self.accounts:
            return self.refused(key, UnknownAccount, call)
        if self.free(owner) < amount:
            return self.refused(key, InsufficientFunds, call)
        t = self.accepted(key, call, "deduct")
        assert (t.debit_account, t.credit_account, t.amount) == (owner, ISSUANCE, amount)
        for lot, take in self.draw(self.spendable(owner), amount):
            lot.remaining -= take
        self.system[ISSUANCE] += amount
        self.transfers.append(Xfer(t.id, key, "deduct", owner, ISSUANCE, amount))

    # --- holds -------------------------------------------------------------------------------

    @rule(data=st.data(), timeout_h=st.none() | st.integers(min_value=1, max_value=4),
          reuse_refused=st.booleans())
    def hold(self, data, timeout_h, reuse_refused):
        owner = self.pick_owner(data)
        amount = self.pick_amount(data, owner)
        key = self.new_key(reuse_refused)
        timeout = None if timeout_h is None else timedelta(hours=timeout_h)
        call = lambda: self.ledger.hold(owner, amount, key=key, actor="spawner",
                                        timeout=timeout)
        if owner not in self.accounts:
            return self.refused(key, UnknownAccount, call)
        if self.free(owner) < amount:
            return self.refused(key, InsufficientFunds, call)
        t = self.accepted(key, call, "hold")
        assert (t.debit_account, t.credit_account, t.amount) == (owner, USAGE, amount)
        allocations = self.draw(self.spendable(owner), amount)
        for lot, take in allocations:
            lot.reserved += take
        self.holds.append(Hold(t.id, key, owner, amount,
                               None if timeout is None else self.clock.now + timeout, allocations))
        self.transfers.append(Xfer(t.id, key, "hold", owner, USAGE, amount))

    def pick_hold(self, i: int, any_state: bool) -> Hold:
        pending = [h for h in self.holds if h.state == "pending"]
        choices = self.holds if any_state or not pending else pending
        return choices[i % len(choices)]

    @precondition(lambda self: self.holds)
    @rule(i=indices, any_state=st.booleans(), data=st.data(),
          how=st.sampled_from(["all", "exact", "partial", "partial", "over"]),
          reuse_refused=st.booleans())
    def post(self, i, any_state, data, how, reuse_refused):
        hold = self.pick_hold(i, any_state)
        amount = {
            "all": lambda: None,
            "exact": lambda: hold.amount,
            "partial": lambda: data.draw(st.integers(min_value=1, max_value=hold.amount)),
            "over": lambda: hold.amount + data.draw(st.integers(min_value=1, max_value=50)),
        }[how]()
        key = self.new_key(reuse_refused)
        call = lambda: self.ledger.post(hold.key, amount, key=key, actor="spawner")
        if amount is not None and amount > hold.amount:
            return self.refused(key, InvalidRequest, call)
        if hold.state != "pending":
            return self.refused(key, HoldNotPending, call)
        posted = hold.amount if amount is None else amount
        t = self.accepted(key, call, "post")
        assert (t.debit_account, t.credit_account, t.amount, t.pending_id) == (
            hold.owner, USAGE, posted, hold.id)
        if posted < hold.amount:
            event("post: partial")
        if any(self.lapsed(lot) for lot, _ in hold.allocations):
            event("post: consumes a lapsed lot's reservation")
        left = posted
        for lot, reserved in sorted(hold.allocations, key=lambda a: expiry_order(a[0])):
            take = min(left, reserved)
            left -= take
            lot.remaining -= take
        self.release(hold, "posted")
        self.system[USAGE] += posted
        self.totals[hold.owner][1] += posted
        self.transfers.append(Xfer(t.id, key, "post", hold.owner, USAGE, posted))
        if posted < hold.amount:
            rest = self.ledger.history(hold.owner, limit=1)[0]
            assert (rest.kind, rest.key, rest.pending_id, rest.amount) == (
                "void", None, hold.id, hold.amount - posted)
            self.transfers.append(Xfer(rest.id, None, "void", hold.owner, USAGE, rest.amount))

    @precondition(lambda self: self.holds)
    @rule(i=indices, any_state=st.booleans(), reuse_refused=st.booleans())
    def void(self, i, any_state, reuse_refused):
        hold = self.pick_hold(i, any_state)
        key = self.new_key(reuse_refused)
        call = lambda: self.ledger.void(hold.key, key=key, actor="spawner")
        if hold.state != "pending":
            return self.refused(key, HoldNotPending, call)
        t = self.accepted(key, call, "void")
        assert (t.amount, t.pending_id) == (hold.amount, hold.id)
        self.release(hold, "voided")
        self.transfers.append(Xfer(t.id, key, "void", hold.owner, USAGE, hold.amount))

    # --- corrections -------------------------------------------------------------------------

    @precondition(lambda self: self.transfers)
    @rule(i=indices, any_transfer=st.booleans(), by_key=st.booleans(),
          reuse_refused=st.booleans())
    def reverse(self, i, any_transfer, by_key, reuse_refused):
        candidates = [t for t in self.transfers if not t.reversed and t.kind in (
            "grant", "earn", "deduct", "post", "expire")]
        if any_transfer or not candidates:
            candidates = self.transfers
        original = candidates[i % len(candidates)]
        ref = original.key if by_key and original.key else original.id
        key = self.new_key(reuse_refused)
        call = lambda: self.ledger.reverse(ref, key=key, reason="undo", actor="admin")
        # Expired credits are not given back (they would come back without an expiry).
        if original.kind in ("hold", "void", "reverse", "expire") or original.reversed:
            return self.refused(key, NotReversible, call)
        if original.kind in ("grant", "earn"):
            # Only what is free in the grant's own lot (lapsed or not), never other lots.
            lot = original.lot
            amount = lot.remaining - lot.reserved
            if amount <= 0:
                return self.refused(key, NotReversible, call)
            t = self.accepted(key, call, "reverse")
            if self.lapsed(lot):
                event("reverse: grant from its lapsed lot")
            if amount < original.amount:
                event("reverse: what is left of a partly spent grant")
            lot.remaining -= amount
            self.system[ISSUANCE] += amount
            if original.kind == "earn":
                self.totals[original.credit][0] -= amount
        else:  # deduct, post: the owner gets the credits back, never expiring
            amount = original.amount
            t = self.accepted(key, call, "reverse")
            self.lot_of(t.id, original.debit, amount, None)
            self.system[original.credit] -= amount
            if original.kind == "post":
                self.totals[original.debit][1] -= amount
        assert (t.debit_account, t.credit_account, t.amount, t.reversal_of) == (
            original.credit, original.debit, amount, original.id)
        original.reversed = True
        self.transfers.append(Xfer(t.id, key, "reverse", original.credit, original.debit,
                                   amount))

    # --- time ----------------------------------------------------------------------------------

    @rule(hours=st.integers(min_value=0, max_value=3), minutes=st.sampled_from([0, 30, 59]))
    def advance(self, hours, minutes):
        self.clock.advance(hours=hours, minutes=minutes)

    @rule()
    def sweep(self):
        now = self.clock.now
        timed_out = sorted((h for h in self.holds
                            if h.state == "pending" and h.timeout_at is not None
                            and h.timeout_at <= now), key=lambda h: h.id)
        report = self.ledger.sweep()
        assert report.holds_voided == [h.id for h in timed_out]
        for hold in timed_out:
            self.release(hold, "voided")
            t = self.ledger.get_transfer(f"timeout:hold-{hold.id}")
            assert (t.kind, t.pending_id, t.amount) == ("void", hold.id, hold.amount)
            self.used_keys.append(t.key)
            self.transfers.append(Xfer(t.id, t.key, "void", hold.owner, USAGE, hold.amount))
        expiring = sorted((lot for lot in self.lots
                           if self.lapsed(lot) and lot.remaining > lot.reserved),
                          key=lambda lot: (lot.expires_at, lot.id))
        assert report.lots_expired == [lot.id for lot in expiring]
        if timed_out:
            event("sweep: timed out a hold")
        if any(lot.reserved for lot in expiring):
            event("sweep: expired a lot with reservations")
        if any(lot.remaining < lot.amount for lot in expiring):
            event("sweep: expired a partly spent lot")
        assert report.expired_units == sum(lot.remaining - lot.reserved for lot in expiring)
        for lot in expiring:
            amount = lot.remaining - lot.reserved
            t = self.ledger.get_transfer(f"expire:lot-{lot.id}:{lot.remaining}")
            assert (t.kind, t.debit_account, t.credit_account, t.amount) == (
                "expire", lot.owner, EXPIRED, amount)
            lot.remaining -= amount
            self.system[EXPIRED] += amount
            self.used_keys.append(t.key)
            self.transfers.append(Xfer(t.id, t.key, "expire", lot.owner, EXPIRED, amount))

    # --- idempotency ---------------------------------------------------------------------------

    @precondition(lambda self: self.applied)
    @rule(i=indices)
    def replay(self, i):
        applied = self.applied[i % len(self.applied)]
        result = applied.call()
        assert result.duplicate is True, applied.kind
        assert result.transfer.id == applied.transfer_id and result.transfer.key == applied.key

    @precondition(lambda self: self.used_keys and self.accounts)
    @rule(i=indices, data=st.data(), op=st.sampled_from(["grant", "deduct", "hold"]))
    def reuse_key_for_another_request(self, i, data, op):
        key = self.used_keys[i % len(self.used_keys)]
        owner = data.draw(st.sampled_from(sorted(self.accounts)))
        method = getattr(self.ledger, op)
        extra = {"actor": "x", "reason": "a different request"}
        # The sweep's own keys are reserved outright; any other key is taken.
        expected = InvalidRequest if key.startswith(("timeout:", "expire:")) else IdempotencyConflict
        with pytest.raises(expected):
            method(owner, 1, key=key, **extra)

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self):
        for owner in USERS:
            if owner not in self.accounts:
                with pytest.raises(UnknownAccount):
                    self.ledger.balance(owner)
                continue
            mine = [lot for lot in self.lots if lot.owner == owner]
            reserved = sum(h.amount for h in self.holds
                           if h.owner == owner and h.state == "pending")
            assert reserved == sum(lot.reserved for lot in mine)  # the model agrees with itself
            total = sum(lot.remaining for lot in mine) - sum(
                lot.remaining - lot.reserved for lot in mine if self.lapsed(lot))
            balance = self.ledger.balance(owner)
            assert (balance.total, balance.reserved, balance.available) == (
                total, reserved, total - reserved), owner
        for name, expected in self.system.items():
            assert self.ledger.balance(name).total == expected, name

    @invariant()
    def lifetime_totals_match_the_model(self):
        with self.engine.connect() as conn:
            found = {row.name: [row.lifetime_earned, row.lifetime_spent] for row in conn.execute(
                select(accounts_table.c.name, accounts_table.c.lifetime_earned,
                       accounts_table.c.lifetime_spent)
                .where(accounts_table.c.kind != "system"))}
        assert found == {owner: self.totals[owner] for owner in self.accounts}

    @invariant()
    def lots_and_holds_match_the_model(self):
        """Which lot paid for what is visible only later (at expiry): compare it now."""
        with self.engine.connect() as conn:
            lots = {row.id: (row.remaining, row.reserved) for row in conn.execute(
                select(lots_table.c.id, lots_table.c.remaining, lots_table.c.reserved))}
            holds = dict(conn.execute(select(holds_table.c.transfer_id, holds_table.c.state)).all())
        assert lots == {lot.id: (lot.remaining, lot.reserved) for lot in self.lots}
        assert holds == {hold.id: hold.state for hold in self.holds}

    @invariant()
    def verifies_now_and_then(self):
        self.steps += 1
        if self.steps % VERIFY_EVERY == 0:
            self.check_verify()

    def check_verify(self):
        report = verify(self.engine)
        assert report.ok, report.to_dict()

    def teardown(self):
        self.check_verify()


# Shrinking replays hundreds of examples against a real database (minutes per backend), so
# by default a failure is reported as found (at most 30 steps); LEDGER_SHRINK=1 shrinks it.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
if os.environ.get("LEDGER_SHRINK"):
    _PHASES += [Phase.shrink, Phase.explain]

STATEFUL_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


#: PostgreSQL's two paths share the examples PostgreSQL had alone (each path draws its own):
#: both are covered within the suite's time budget, and the identical-rows test
#: (tests/test_ledger_paths.py) ties them together.
POSTGRES_PATH_SETTINGS = settings(STATEFUL_SETTINGS, max_examples=20)


def test_ledger_matches_model(db_url, ledger_path, ledger_options):
    engine = ledger_database.make_engine(db_url)
    try:
        machine = type("LedgerModel", (LedgerMachine,),
                       {"engine": engine, "options": ledger_options})
        run_state_machine_as_test(machine, settings=STATEFUL_SETTINGS if ledger_path == "sqlite"
                                  else POSTGRES_PATH_SETTINGS)
    finally:
        engine.dispose()
