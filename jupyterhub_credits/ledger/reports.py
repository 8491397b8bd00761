"""Read models for the credits pages and API: history, lots, the account list, daily flows.

Each function is one read transaction (``database.read_transaction``: one snapshot,
never blocking a writer) of SQLAlchemy Core queries shaped for the indexes of
migration 0006, so that a page stays fast at 100,000 accounts and 1,000,000
transfers: a history page reads ``limit`` index entries per side of the account
(``(debit_account_id, id)``, ``(credit_account_id, id)``), the audit log of one kind
reads ``(kind, id)``, and the account list reads ``(kind, <sorted column>)``.
Nothing here writes; money moves only through ``Ledger``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Sequence

from sqlalchemy import DateTime, func, select, type_coerce, union_all

from ..quoting import quote_input
from . import database
from .core import ISSUANCE, USAGE, USER_PREFIX, Ledger, Transfer, _transfer, _transfer_query
from .core import account_name as _account_name
from .errors import InvalidRequest
from .schema import accounts, lots, transfers

#: The transfer kinds each history filter shows (the contract's "history kinds").
HISTORY_KINDS: dict[str, tuple[str, ...]] = {
    "grants": ("grant", "deduct"),
    "earnings": ("earn",),
    "sessions": ("hold", "post", "void"),
    "expiry": ("expire",),
    "reversals": ("reverse",),
}
#: The most rows one page may ask for (the API allows fewer).
MAX_PAGE = 1000
#: What the account list sorts by: sort name -> column.
ACCOUNT_SORTS = {
    "balance": accounts.c.balance,
    "spent": accounts.c.lifetime_spent,
    "earned": accounts.c.lifetime_earned,
    "name": accounts.c.name,
}
ORDERS = ("desc", "asc")
#: The most days a flow or usage report covers (ten years).
MAX_DAYS = 3660


# --- history ------------------------------------------------------------------------------


def history_kinds(kind: str | None) -> tuple[str, ...] | None:
    """The transfer kinds of a history filter (None: all), or InvalidRequest naming the filters."""
    if kind is None:
        return None
    if not isinstance(kind, str) or kind not in HISTORY_KINDS:
        raise InvalidRequest(f"unknown history kind {quote_input(kind)}: one of "
                             f"{', '.join(HISTORY_KINDS)}")
    return HISTORY_KINDS[kind]


def _check_limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE}, "
                             f"not {quote_input(limit)}")
    return limit


def _check_before(before) -> int | None:
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise InvalidRequest(f"before must be a transfer id, not {quote_input(before)}")
    return before


def history_page(ledger: Ledger, account: str | None, *, kind: str | None = None,
                 before: int | None = None, limit: int = 50
                 ) -> tuple[list[Transfer], int | None]:
    """One page of transfers, newest first: ``(transfers, next_before)``.

    ``account``: an account name (``user:alice``, ``group:lab``; a bare name reads as a
    user, as ``Ledger.history`` does), or None for the whole audit log. ``kind``: a key of
    ``HISTORY_KINDS``. ``before``: show transfers with smaller ids (keyset pagination:
    a page costs the same however far back it is, and transfers written meanwhile never
    shift it). ``next_before`` is the ``before`` of the next page, None on the last.
    An account that does not exist has an empty history.
    """
    kinds = history_kinds(kind)
    before = _check_before(before)
    limit = _check_limit(limit)
    name = None if account is None else _account_name(account)
    with database.read_transaction(ledger.engine) as conn:
        if name is None:
            sides = [None]
        else:
            account_id = conn.execute(select(accounts.c.id).where(accounts.c.name == name)
                                      ).scalar()
            if account_id is None:
                return [], None
            sides = [transfers.c.debit_account_id == account_id,
                     transfers.c.credit_account_id == account_id]
        # One newest-first index range per (side, kind), each cut at limit + 1, merged:
        # PostgreSQL reads at most limit + 1 entries from each instead of every match.
        ranges = []
        for side in sides:
            for one_kind in (kinds if name is None and kinds else [None]):
                conditions = []
                if side is not None:
                    conditions.append(side)
                if one_kind is not None:
                    conditions.append(transfers.c.kind == one_kind)
                elif kinds:
                    conditions.append(transfers.c.kind.in_(kinds))
                if before is not None:
                    conditions.append(transfers.c.id < before)
                ranges.append(select(transfers.c.id).where(*conditions)
                              .order_by(transfers.c.id.desc()).limit(limit + 1))
        if len(ranges) == 1:
            ids = ranges[0]
        else:
            merged = union_all(*(select(r.subquery().c.id) for r in ranges)).subquery()
            ids = select(merged.c.id).order_by(merged.c.id.desc()).limit(limit + 1)
        rows = conn.execute(_transfer_query().where(transfers.c.id.in_(ids))
                            .order_by(transfers.c.id.desc())).all()
    page = [_transfer(row) for row in rows[:limit]]
    return page, (page[-1].id if len(rows) > limit else None)


# --- lots ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LotView:
    """One lot of an account's credits as a person sees it."""

    id: int
    amount: int
    remaining: int
    reserved: int
    expires_at: datetime | None
    created_at: datetime
    #: The crediting transfer's kind (``grant``, ``earn``, ``reverse``) and reason.
    kind: str
    reason: str

    @property
    def available(self) -> int:
        return self.remaining - self.reserved


def lots_of(ledger: Ledger, account: str) -> list[LotView]:
    """The account's lots that still hold credits, soonest expiry first, non-expiring last.

    A lot past its expiry that the sweep has not reached yet keeps only what pending holds
    reserve (the rest is no longer spendable, as ``Ledger.balance`` says), so the lots
    always add up to the balance. An unknown account has none.
    """
    name = _account_name(account)
    now = ledger.clock().astimezone(timezone.utc).replace(tzinfo=None)
    # Naive UTC as stored, made aware below: a heavy earner has hundreds of live lots.
    expires_at = type_coerce(lots.c.expires_at, DateTime())
    with database.read_transaction(ledger.engine) as conn:
        rows = conn.execute(
            select(lots.c.id, lots.c.amount, lots.c.remaining, lots.c.reserved, expires_at,
                   type_coerce(transfers.c.created_at, DateTime()), transfers.c.kind,
                   transfers.c.reason)
            .join(accounts, accounts.c.id == lots.c.account_id)
            .join(transfers, transfers.c.id == lots.c.transfer_id)
            .where(accounts.c.name == name, lots.c.remaining > 0)
            .order_by(lots.c.expires_at.is_(None), lots.c.expires_at, lots.c.id)).all()
    views = []
    for lot_id, amount, remaining, reserved, expires, created, kind, reason in rows:
        if expires is not None:
            if expires <= now:
                remaining = reserved
                if remaining == 0:
                    continue
            expires = expires.replace(tzinfo=timezone.utc)
        views.append(LotView(lot_id, int(amount), int(remaining), int(reserved), expires,
                             created.replace(tzinfo=timezone.utc), kind, reason))
    return views


def expiring_within(lots_: Sequence[LotView], now: datetime, days: int) -> int:
    """Units of ``lots_`` that expire within ``days`` days of ``now`` unless spent first.

    What pending holds reserve is left out: a hold spends it or, voided, gives it back.
    """
    until = now + timedelta(days=days)
    return sum(lot.available for lot in lots_
               if lot.expires_at is not None and now < lot.expires_at <= until)


# --- the account list -----------------------------------------------------------------------


@dataclass(frozen=True)
class AccountRow:
    """A user account in the admin's list (units)."""

    name: str  # the hub name
    account: str  # ``user:`` + the hub name
    balance: int
    reserved: int
    earned: int
    spent: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


def escape_like(text: str, escape: str = "\\") -> str:
    """``text`` for a LIKE pattern, matching itself only (``%``, ``_`` and ``\\`` escaped)."""
    return (text.replace(escape, escape * 2).replace("%", escape + "%")
            .replace("_", escape + "_"))


def accounts_page(ledger: Ledger, *, search: str = "", sort: str = "balance",
                  order: str = "desc", offset: int = 0, limit: int = 50
                  ) -> tuple[list[AccountRow], int]:
    """One page of user accounts and how many match: ``(rows, total)``.

    ``search``: a case-insensitive substring of the hub name (``%`` and ``_`` mean
    themselves). ``sort``: ``balance``, ``spent``, ``earned`` or ``name``; ``order``:
    ``desc`` or ``asc``; equal values are listed by name (A to Z). The figures are the
    cached ones of each account's row, so neither the page nor the count reads transfers.
    """
    if sort not in ACCOUNT_SORTS:
        raise InvalidRequest(f"unknown sort {quote_input(sort)}: one of "
                             f"{', '.join(ACCOUNT_SORTS)}")
    if order not in ORDERS:
        raise InvalidRequest(f"order must be desc or asc, not {quote_input(order)}")
    if not isinstance(search, str):
        raise InvalidRequest("search must be text")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidRequest(f"offset must be a whole number from 0, not {quote_input(offset)}")
    limit = _check_limit(limit)
    conditions = [accounts.c.kind == "user"]
    if search:
        hub_name = func.substr(accounts.c.name, len(USER_PREFIX) + 1)
        conditions.append(func.lower(hub_name).like(
            f"%{escape_like(search.lower())}%", escape="\\"))
    column = ACCOUNT_SORTS[sort]
    ordering = [column.desc() if order == "desc" else column.asc()]
    if sort != "name":
        ordering.append(accounts.c.name.asc())
    with database.read_transaction(ledger.engine) as conn:
        # The page walks the sorted index and stops after offset + limit rows; the count is
        # its own statement: an index-only scan of (kind, ...) (~10 ms at 100,000 users),
        # or with a search one pass over the names (~50-100 ms). Counting in the page's
        # statement (count(*) OVER ()) would make it read and sort every match instead.
        rows = conn.execute(
            select(accounts.c.name, accounts.c.balance, accounts.c.reserved,
                   accounts.c.lifetime_earned, accounts.c.lifetime_spent)
            .where(*conditions).order_by(*ordering).offset(offset).limit(limit)).all()
        if offset == 0 and len(rows) < limit:
            total = len(rows)  # the whole list is on this page: no count needed
        else:
            total = conn.execute(select(func.count()).select_from(accounts)
                                 .where(*conditions)).scalar_one()
    return [AccountRow(name=row.name[len(USER_PREFIX):], account=row.name,
                       balance=int(row.balance), reserved=int(row.reserved),
                       earned=int(row.lifetime_earned), spent=int(row.lifetime_spent))
            for row in rows], int(total)


def account_summary(ledger: Ledger, account: str) -> AccountRow | None:
    """One owner account's row of figures (balance, reserved, lifetime totals), or None.

    The exact account, unlike a search: for a user's own page. Works for groups too (their
    ``name`` is the group name).
    """
    name = _account_name(account)
    with database.read_transaction(ledger.engine) as conn:
        row = conn.execute(select(accounts.c.kind, accounts.c.balance, accounts.c.reserved,
                                  accounts.c.lifetime_earned, accounts.c.lifetime_spent)
                           .where(accounts.c.name == name)).first()
    if row is None or row.kind == "system":
        return None
    return AccountRow(name=name.partition(":")[2], account=name, balance=int(row.balance),
                      reserved=int(row.reserved), earned=int(row.lifetime_earned),
                      spent=int(row.lifetime_spent))


# --- flows over time --------------------------------------------------------------------------


def _check_days(days) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidRequest(f"days must be a whole number from 1 to {MAX_DAYS}, "
                             f"not {quote_input(days)}")
    return days


def day_window(days: int, now: datetime) -> tuple[list[date], datetime]:
    """The last ``days`` UTC days up to and including ``now``'s, and the start of the first."""
    _check_days(days)
    if now.tzinfo is None:
        raise InvalidRequest("now must be timezone-aware")
    today = now.astimezone(timezone.utc).date()
    dates = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    return dates, datetime.combine(dates[0], time(0), tzinfo=timezone.utc)


def _as_date(value) -> date:
    # PostgreSQL's date() gives a date, SQLite's the text 'YYYY-MM-DD'.
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def daily_flows(ledger: Ledger, *, days: int, now: datetime) -> list[tuple[date, int, int]]:
    """``(UTC day, issued units, spent units)`` for each of the last ``days`` days, oldest first.

    Issued: grants and earns out of ``system:issuance``; spent: posts into ``system:usage``
    (session charges). Days without either are listed with zeros.
    """
    dates, start = day_window(days, now)
    day = func.date(transfers.c.created_at)
    with database.read_transaction(ledger.engine) as conn:
        issuance = ledger._existing_id(conn, ISSUANCE)
        usage = ledger._existing_id(conn, USAGE)
        issued = (transfers.c.kind.in_(("grant", "earn"))
                  & (transfers.c.debit_account_id == issuance))
        spent = (transfers.c.kind == "post") & (transfers.c.credit_account_id == usage)
        rows = conn.execute(
            select(day.label("day"),
                   func.coalesce(func.sum(transfers.c.amount).filter(issued), 0),
                   func.coalesce(func.sum(transfers.c.amount).filter(spent), 0))
            .where(transfers.c.kind.in_(("grant", "earn", "post")),
                   transfers.c.created_at >= start, transfers.c.created_at <= now)
            .group_by(day)).all()
    found = {_as_date(d): (int(i), int(s)) for d, i, s in rows}
    return [(d, *found.get(d, (0, 0))) for d in dates]


def top_consumers(ledger: Ledger, *, days: int, now: datetime, limit: int = 10
                  ) -> list[tuple[str, int]]:
    """The users whose sessions were charged most in the last ``days`` UTC days.

    ``(hub name, units)``, most first (equal amounts by name). Charges later reversed (an
    admin's refund) do not count; a group pool's charges are not a user's.
    """
    _, start = day_window(days, now)
    limit = _check_limit(limit)
    reversal = transfers.alias("reversal")
    total = func.sum(transfers.c.amount).label("units")
    with database.read_transaction(ledger.engine) as conn:
        usage = ledger._existing_id(conn, USAGE)
        rows = conn.execute(
            select(accounts.c.name, total)
            .select_from(transfers)
            .join(accounts, accounts.c.id == transfers.c.debit_account_id)
            .outerjoin(reversal, reversal.c.reversal_of == transfers.c.id)
            .where(transfers.c.kind == "post", transfers.c.credit_account_id == usage,
                   transfers.c.created_at >= start, transfers.c.created_at <= now,
                   accounts.c.kind == "user", reversal.c.id.is_(None))
            .group_by(accounts.c.name)
            .order_by(total.desc(), accounts.c.name)
            .limit(limit)).all()
    return [(name[len(USER_PREFIX):], int(units)) for name, units in rows]


__all__ = [
    "ACCOUNT_SORTS", "HISTORY_KINDS", "MAX_PAGE", "AccountRow", "LotView", "account_summary",
    "accounts_page",
    "daily_flows", "day_window", "escape_like", "expiring_within", "history_kinds",
    "history_page", "lots_of", "top_consumers",
]
