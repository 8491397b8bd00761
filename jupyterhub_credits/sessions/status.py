"""Servers' status in one statement: each owner's balance and each server's newest session.

What every single-user server polls (``GET /api/sessions/{server}``, every 30 s per
server: 333 requests/s for 10,000 servers), so it is one SELECT, on SQLite and
PostgreSQL alike, for one poll or for several that arrive together:

- the user account's cached ``balance`` and ``reserved``, less its lapsed lots not yet
  swept (as ``Ledger.balance`` counts them), and its ``lifetime_earned`` (which tells a
  cache of today's earnings whether it is out of date), LEFT JOINed so a user without
  an account still gets a row;
- the server's newest session, LEFT JOINed by id. At most one session of a server is
  open (the partial unique index ``ix_credits_sessions_open_server``), and a new one can
  only be opened once the last has ended, so the newest session is the open one when
  there is one, else the latest ended one (whose end reason is the server's stop).
  The open one is looked up through that partial index; only when there is none does
  the ``max(id)`` of the user's sessions there run (``COALESCE`` evaluates its
  arguments lazily on both backends).

On PostgreSQL the statement runs in autocommit: a single statement is its own
consistent snapshot, and without ``BEGIN``/``ROLLBACK`` it is one round trip instead of
three. SQLite's ``BEGIN`` (the ledger's connection listener issues it) is a statement
in this process, not a round trip.

Inner layer: SQLAlchemy only, no JupyterHub or Tornado.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, String, bindparam, func, literal_column, select, text, union_all
from sqlalchemy.engine import Engine

from ..ledger import database
from ..ledger.core import Balance
from ..ledger.schema import accounts, lots
from .schema import sessions
from .store import Session

#: Session columns, labelled so they cannot clash with the account's in the joined row.
_SESSION_LABELS = {column.name: f"session_{column.name}" for column in sessions.columns}
#: Session fields whose column has another name (as in ``store._COLUMN_OF``).
_COLUMN_OF = {"warned_thresholds": "warnings"}


@dataclass(frozen=True)
class ServerStatus:
    """What one poll reads: the user's balance (None without an account) and the server's
    newest session (None for a server never started)."""

    balance: Balance | None
    session: Session | None
    #: The account's lifetime earnings (units; None without an account): it changes with
    #: every credit earned, so a cache of the user's earnings can tell it is out of date.
    earned: int | None = None

    @property
    def open_session(self) -> Session | None:
        """The server's open session (starting, running or settling), else None."""
        return self.session if self.session is not None and self.session.state != "ended" \
            else None

    @property
    def ended_session(self) -> Session | None:
        """The server's latest session when it has ended and no newer one is open."""
        return self.session if self.session is not None and self.session.state == "ended" \
            else None


#: The most polls one statement answers; a batch is padded to the next power of two (at
#: most 7 statement shapes, each compiled and, on PostgreSQL, prepared once).
MAX_BATCH = 64


@functools.lru_cache(maxsize=None)
def batch_statement(size: int):
    """The one SELECT for ``size`` polls: bind parameters ``user_<i>``, ``account_<i>``,
    ``server_<i>`` for i < size, and ``now``; one row per poll, told apart by ``idx``.

    The polls are a derived table (a UNION ALL of one-row SELECTs: SQLite has no column
    list on a VALUES alias); everything else is looked up per row through indexes.
    """
    rows = [select(literal_column(str(i), Integer).label("idx"),
                   bindparam(f"user_{i}", type_=String).label("user"),
                   bindparam(f"account_{i}", type_=String).label("account"),
                   bindparam(f"server_{i}", type_=String).label("server"))
            for i in range(size)]
    wanted = (union_all(*rows) if size > 1 else rows[0]).subquery("wanted")
    newer = sessions.alias("newer")
    # The literal (not a bind parameter) lets both planners match the partial index's
    # predicate ``state != 'ended'``, also in PostgreSQL's generic plan of a prepared query.
    open_id = (select(newer.c.id)
               .where(newer.c.user == wanted.c.user, newer.c.server_name == wanted.c.server,
                      text("newer.state != 'ended'"))
               .limit(1).correlate(wanted).scalar_subquery())
    latest_id = (select(func.max(newer.c.id))
                 .where(newer.c.user == wanted.c.user, newer.c.server_name == wanted.c.server)
                 .correlate(wanted).scalar_subquery())
    lapsed = (select(func.coalesce(func.sum(lots.c.remaining - lots.c.reserved), 0))
              .where(lots.c.account_id == accounts.c.id, lots.c.expires_at <= bindparam("now"),
                     lots.c.remaining > lots.c.reserved)
              .correlate(accounts).scalar_subquery())
    joined = (wanted
              .outerjoin(accounts, accounts.c.name == wanted.c.account)
              .outerjoin(sessions, sessions.c.id == func.coalesce(open_id, latest_id)))
    return select(
        wanted.c.idx,
        accounts.c.name.label("account_name"), accounts.c.balance.label("account_balance"),
        accounts.c.reserved.label("account_reserved"), lapsed.label("account_lapsed"),
        accounts.c.lifetime_earned.label("account_earned"),
        *[column.label(_SESSION_LABELS[column.name]) for column in sessions.columns],
    ).select_from(joined)


def _session_from(mapping) -> Session | None:
    if mapping[_SESSION_LABELS["id"]] is None:
        return None
    return Session(**{name: mapping[_SESSION_LABELS[_COLUMN_OF.get(name, name)]]
                      for name in Session.__dataclass_fields__})


@dataclass(frozen=True)
class StatusRequest:
    """One poll: ``user``'s server ``server_name``, and their own account (``user_account``)."""

    user: str
    account: str
    server_name: str


def server_statuses(engine: Engine, requests: Sequence[StatusRequest],
                    now: datetime) -> list[ServerStatus]:
    """The status of each of ``requests`` (at most ``MAX_BATCH``), in order, in one statement."""
    if not 1 <= len(requests) <= MAX_BATCH:
        raise ValueError(f"from 1 to {MAX_BATCH} requests at a time, not {len(requests)}")
    size = 1 << (len(requests) - 1).bit_length()
    parameters: dict = {"now": now}
    for i in range(size):
        # Padding asks about nobody: "" is no user, account or session of anyone.
        wanted = requests[i] if i < len(requests) else StatusRequest("", "", "")
        parameters[f"user_{i}"] = wanted.user
        parameters[f"account_{i}"] = wanted.account
        parameters[f"server_{i}"] = wanted.server_name
    statement = batch_statement(size)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = conn.execute(statement, parameters).all()
    else:
        with database.read_transaction(engine) as conn:
            rows = conn.execute(statement, parameters).all()
    found = {}
    for row in rows:
        mapping = row._mapping
        balance = None
        if mapping["account_name"] is not None:
            balance = Balance(mapping["account_name"],
                              mapping["account_balance"] - int(mapping["account_lapsed"]),
                              mapping["account_reserved"])
        found[mapping["idx"]] = ServerStatus(balance, _session_from(mapping),
                                             mapping["account_earned"])
    return [found[i] for i in range(len(requests))]


def server_status(engine: Engine, *, user: str, account: str, server_name: str,
                  now: datetime) -> ServerStatus:
    """``user``'s balance in ``account`` (their own: ``user_account(user)``) and the newest
    session of their server ``server_name``, in one statement."""
    return server_statuses(engine, [StatusRequest(user, account, server_name)], now)[0]
