"""Invariants of the ledger, checked against the database with aggregate queries.

Each check recomputes a figure from the immutable transfers (or from the
records that tie transfers to lots and holds) and compares it with what the
ledger cached. ``verify`` reports every problem it finds; an empty report
means no credit was lost, minted or spent twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.engine import Engine

from . import database
from .schema import BALANCE_NEUTRAL_KINDS, accounts, hold_lots, holds, lot_movements, lots, transfers

#: Problems listed per check at most; the count is always exact.
MAX_EXAMPLES = 20


@dataclass
class CheckResult:
    problems: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.problems += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    @property
    def ok(self) -> bool:
        return self.problems == 0


@dataclass
class VerifyReport:
    checks: dict[str, CheckResult]
    transfers: int
    accounts: int
    seconds: float

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "transfers": self.transfers,
            "accounts": self.accounts,
            "seconds": round(self.seconds, 3),
            "checks": {
                name: {"ok": check.ok, "problems": check.problems, "examples": check.examples}
                for name, check in self.checks.items()
            },
        }


def _grouped(conn, query) -> dict:
    return {key: int(value) for key, value in conn.execute(query)}


def verify(engine: Engine) -> VerifyReport:
    started = time.perf_counter()
    checks = {name: CheckResult() for name in (
        "balances_sum_to_zero", "cached_balances", "no_overdraft", "reserved_matches_holds",
        "holds_resolved_once", "keys_applied_once", "reversals_once", "lots")}
    with database.read_transaction(engine) as conn:
        account_rows = conn.execute(select(accounts.c.id, accounts.c.name, accounts.c.kind,
                                           accounts.c.balance, accounts.c.reserved,
                                           accounts.c.lifetime_earned,
                                           accounts.c.lifetime_spent)).all()
        moving = transfers.c.kind.not_in(BALANCE_NEUTRAL_KINDS)
        legs = union_all(
            select(transfers.c.credit_account_id.label("account_id"),
                   transfers.c.amount.label("amount")).where(moving),
            select(transfers.c.debit_account_id.label("account_id"),
                   (-transfers.c.amount).label("amount")).where(moving),
        ).subquery()
        computed = _grouped(conn, select(legs.c.account_id, func.sum(legs.c.amount))
                            .group_by(legs.c.account_id))
        credited_owner = _grouped(conn, select(transfers.c.credit_account_id,
                                               func.sum(transfers.c.amount))
                                  .where(moving).group_by(transfers.c.credit_account_id))
        pending = _grouped(conn, select(holds.c.account_id, func.sum(holds.c.amount))
                           .where(holds.c.state == "pending").group_by(holds.c.account_id))
        lot_totals = {row.account_id: row for row in conn.execute(
            select(lots.c.account_id, func.sum(lots.c.amount).label("amount"),
                   func.sum(lots.c.remaining).label("remaining"),
                   func.sum(lots.c.reserved).label("reserved"))
            .group_by(lots.c.account_id))}
        earned, spent = _lifetime_totals(conn)

        # 1. Double entry: the balances the ledger reports (cached for owners,
        # summed for system accounts) add up to zero.
        total = sum(computed.get(row.id, 0) if row.kind == "system" else row.balance
                    for row in account_rows)
        if total != 0:
            checks["balances_sum_to_zero"].add(f"balances sum to {total} units, not 0")

        for row in account_rows:
            computed_balance = computed.get(row.id, 0)
            if row.kind == "system":
                continue
            # 2. Cached owner balances equal the sum of their transfers.
            if row.balance != computed_balance:
                checks["cached_balances"].add(
                    f"{row.name}: cached balance {row.balance} != {computed_balance} from transfers")
            # 2b. So do its cached lifetime totals.
            for label, cached, computed_total in (
                    ("lifetime_earned", row.lifetime_earned, earned.get(row.id, 0)),
                    ("lifetime_spent", row.lifetime_spent, spent.get(row.id, 0))):
                if cached != computed_total:
                    checks["cached_balances"].add(
                        f"{row.name}: cached {label} {cached} != {computed_total} from transfers")
            # 3. Nobody spends what they do not have, counting reservations.
            if row.reserved < 0 or row.balance - row.reserved < 0:
                checks["no_overdraft"].add(
                    f"{row.name}: balance {row.balance} with {row.reserved} reserved")
            # 4. Reserved equals the sum of pending holds.
            if row.reserved != pending.get(row.id, 0):
                checks["reserved_matches_holds"].add(
                    f"{row.name}: reserved {row.reserved} != pending holds "
                    f"{pending.get(row.id, 0)}")
            # 8a. The account's lots hold exactly its credits.
            lot = lot_totals.get(row.id)
            lot_amount, lot_remaining, lot_reserved = (
                (int(lot.amount), int(lot.remaining), int(lot.reserved)) if lot else (0, 0, 0))
            if lot_amount != credited_owner.get(row.id, 0):
                checks["lots"].add(f"{row.name}: lots total {lot_amount} != credits received "
                                   f"{credited_owner.get(row.id, 0)}")
            if lot_remaining != row.balance or lot_reserved != row.reserved:
                checks["lots"].add(
                    f"{row.name}: lots remaining/reserved {lot_remaining}/{lot_reserved} != "
                    f"balance/reserved {row.balance}/{row.reserved}")
        for account_id, amount in computed.items():
            if account_id not in {row.id for row in account_rows}:  # pragma: no cover
                checks["cached_balances"].add(f"transfers name unknown account {account_id}")

        _check_holds(conn, checks["holds_resolved_once"])
        _check_keys(conn, checks["keys_applied_once"], checks["reversals_once"])
        _check_lots(conn, checks["lots"])
        transfer_count = conn.execute(select(func.count()).select_from(transfers)).scalar()
    return VerifyReport(checks, int(transfer_count), len(account_rows),
                        time.perf_counter() - started)


def _lifetime_totals(conn) -> tuple[dict, dict]:
    """Each owner's earned and spent totals from its transfers ({account id: units} twice).

    Earned: earn transfers credited, less the reversals of earns (which debit what they
    took back). Spent: post transfers debited, less the reversals of posts.
    """
    original = transfers.alias("original")
    earned = _grouped(conn, select(transfers.c.credit_account_id, func.sum(transfers.c.amount))
                      .where(transfers.c.kind == "earn").group_by(transfers.c.credit_account_id))
    spent = _grouped(conn, select(transfers.c.debit_account_id, func.sum(transfers.c.amount))
                     .where(transfers.c.kind == "post").group_by(transfers.c.debit_account_id))
    for totals, kind, owner in ((earned, "earn", transfers.c.debit_account_id),
                                (spent, "post", transfers.c.credit_account_id)):
        for account_id, amount in conn.execute(
                select(owner, func.sum(transfers.c.amount))
                .join(original, original.c.id == transfers.c.reversal_of)
                .where(transfers.c.kind == "reverse", original.c.kind == kind)
                .group_by(owner)):
            totals[account_id] = totals.get(account_id, 0) - int(amount)
    return earned, spent


def _check_holds(conn, check: CheckResult) -> None:
    """Each hold is resolved at most once, by transfers that add up to it."""
    resolutions = (
        select(transfers.c.pending_id.label("hold_id"),
               func.sum(literal(1)).filter(transfers.c.kind == "post").label("posts"),
               func.sum(literal(1)).filter(transfers.c.kind == "void").label("voids"),
               func.coalesce(func.sum(transfers.c.amount).filter(transfers.c.kind == "post"), 0)
               .label("posted"),
               func.coalesce(func.sum(transfers.c.amount), 0).label("resolved"))
        .where(transfers.c.pending_id.is_not(None))
        .group_by(transfers.c.pending_id)
        .subquery()
    )
    rows = conn.execute(
        select(holds.c.transfer_id, holds.c.state, holds.c.amount, holds.c.posted,
               transfers.c.kind, transfers.c.amount.label("hold_amount"),
               func.coalesce(resolutions.c.posts, 0).label("posts"),
               func.coalesce(resolutions.c.voids, 0).label("voids"),
               func.coalesce(resolutions.c.posted, 0).label("posted_sum"),
               func.coalesce(resolutions.c.resolved, 0).label("resolved"))
        .join(transfers, transfers.c.id == holds.c.transfer_id)
        .outerjoin(resolutions, resolutions.c.hold_id == holds.c.transfer_id)
        .where((holds.c.state != "pending") | (resolutions.c.hold_id.is_not(None))
               | (holds.c.amount != transfers.c.amount) | (transfers.c.kind != "hold"))
    )
    for row in rows:
        label = f"hold {row.transfer_id}"
        if row.kind != "hold" or row.amount != row.hold_amount:
            check.add(f"{label}: does not match its transfer")
        elif row.posts > 1 or row.voids > 1:
            check.add(f"{label}: resolved {row.posts} times by post, {row.voids} by void")
        elif row.state == "pending" and row.resolved:
            check.add(f"{label}: pending but has resolving transfers")
        elif row.state != "pending" and row.resolved != row.amount:
            check.add(f"{label}: {row.state} but resolutions add up to {row.resolved}, "
                      f"not {row.amount}")
        elif row.state == "posted" and (row.posts != 1 or row.posted_sum != row.posted):
            check.add(f"{label}: posted {row.posted} but post transfers say {row.posted_sum}")
        elif row.state == "voided" and row.posts:
            check.add(f"{label}: voided but also posted")
    orphans = conn.execute(
        select(transfers.c.id).where(transfers.c.kind.in_(("post", "void")),
                                     transfers.c.pending_id.is_(None)).limit(MAX_EXAMPLES)).all()
    for (transfer_id,) in orphans:
        check.add(f"transfer {transfer_id}: post/void without a hold")


def _check_keys(conn, keys: CheckResult, reversals: CheckResult) -> None:
    for key, count in conn.execute(
            select(transfers.c.key, func.count()).where(transfers.c.key.is_not(None))
            .group_by(transfers.c.key).having(func.count() > 1).limit(MAX_EXAMPLES)):
        keys.add(f"key {key!r} applied {count} times")
    for original, count in conn.execute(
            select(transfers.c.reversal_of, func.count()).where(transfers.c.reversal_of.is_not(None))
            .group_by(transfers.c.reversal_of).having(func.count() > 1).limit(MAX_EXAMPLES)):
        reversals.add(f"transfer {original} reversed {count} times")
    original = transfers.alias("original")
    # A reversed grant or earn gives back what was still free of its lot (Ledger.reverse):
    # up to its amount. Any other reversal moves exactly the original's amount.
    partial = original.c.kind.in_(("grant", "earn"))
    for reversal_id, in conn.execute(
            select(transfers.c.id)
            .join(original, original.c.id == transfers.c.reversal_of)
            .where((partial & (transfers.c.amount > original.c.amount))
                   | (~partial & (transfers.c.amount != original.c.amount))
                   | (transfers.c.debit_account_id != original.c.credit_account_id)
                   | (transfers.c.credit_account_id != original.c.debit_account_id)
                   | (transfers.c.kind != "reverse"))
            .limit(MAX_EXAMPLES)):
        reversals.add(f"reversal {reversal_id} does not mirror its original")


def _check_lots(conn, check: CheckResult) -> None:
    """Each lot's remainder is its amount less what was drawn; reservations match holds."""
    drawn = (select(lot_movements.c.lot_id, func.sum(lot_movements.c.amount).label("drawn"))
             .group_by(lot_movements.c.lot_id).subquery())
    reserved = (select(hold_lots.c.lot_id, func.sum(hold_lots.c.amount).label("reserved"))
                .join(holds, holds.c.transfer_id == hold_lots.c.hold_id)
                .where(holds.c.state == "pending")
                .group_by(hold_lots.c.lot_id).subquery())
    for row in conn.execute(
            select(lots.c.id, lots.c.amount, lots.c.remaining, lots.c.reserved,
                   func.coalesce(drawn.c.drawn, 0).label("drawn"),
                   func.coalesce(reserved.c.reserved, 0).label("held"))
            .outerjoin(drawn, drawn.c.lot_id == lots.c.id)
            .outerjoin(reserved, reserved.c.lot_id == lots.c.id)
            .where((lots.c.remaining != lots.c.amount - func.coalesce(drawn.c.drawn, 0))
                   | (lots.c.reserved != func.coalesce(reserved.c.reserved, 0))
                   | (lots.c.remaining < lots.c.reserved) | (lots.c.reserved < 0))):
        check.add(f"lot {row.id}: amount {row.amount}, drawn {row.drawn}, remaining "
                  f"{row.remaining}; reserved {row.reserved} vs pending holds {row.held}")
    # Every debit of an owner account drew exactly its amount from that account's lots.
    drawn_by_transfer = (select(lot_movements.c.transfer_id,
                                func.sum(lot_movements.c.amount).label("drawn"))
                         .group_by(lot_movements.c.transfer_id).subquery())
    debit_account = accounts.alias("debit_account")
    for row in conn.execute(
            select(transfers.c.id, transfers.c.amount,
                   func.coalesce(drawn_by_transfer.c.drawn, 0).label("drawn"))
            .join(debit_account, debit_account.c.id == transfers.c.debit_account_id)
            .outerjoin(drawn_by_transfer, drawn_by_transfer.c.transfer_id == transfers.c.id)
            .where(debit_account.c.kind != "system",
                   transfers.c.kind.not_in(BALANCE_NEUTRAL_KINDS),
                   transfers.c.amount != func.coalesce(drawn_by_transfer.c.drawn, 0))
            .limit(MAX_EXAMPLES)):
        check.add(f"transfer {row.id}: debited {row.amount} but drew {row.drawn} from lots")
