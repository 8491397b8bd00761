"""Calling the ledger's PostgreSQL functions: one statement, one round trip per transfer.

Migration 0008 ships ``credits_ledger_grant``, ``_deduct``, ``_hold``, ``_post`` and
``_void``; each does in the server what ``Ledger``'s Python path does statement by
statement. Here each call is ONE ``SELECT`` on a raw psycopg connection in autocommit
(no BEGIN/COMMIT round trips, no SQLAlchemy statement compilation), prepared by
psycopg after its first few uses. Each thread keeps its own such connection, made by
the engine (its URL, connect arguments and events) and then detached from the pool,
so a call does not pay for a pool checkout, a reset and two autocommit switches.

A refusal comes back as an error with a ledger SQLSTATE; ``Refused`` carries its code
and detail so that ``Ledger`` raises exactly the exception its Python path raises.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from datetime import datetime, timezone

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from . import database

log = logging.getLogger(__name__)

#: The functions and their call statements (casts pick the one signature, whatever
#: Python types psycopg sees).
CALLS = {
    "grant": "SELECT credits_ledger_grant(%s, %s, %s, %s, %s, %s::bigint, %s::timestamp, %s, %s, "
             "%s::json, %s::timestamp, %s::timestamp)",
    "deduct": "SELECT credits_ledger_deduct(%s, %s, %s, %s::bigint, %s, %s, %s::json, "
              "%s::timestamp, %s::timestamp)",
    "hold": "SELECT credits_ledger_hold(%s, %s, %s, %s::bigint, %s, %s, %s::json, "
            "%s::timestamp, %s::timestamp, %s::timestamp)",
    "post": "SELECT * FROM credits_ledger_post(%s, %s, %s, %s::bigint, %s, %s, %s::json, "
            "%s::timestamp, %s::timestamp)",
    "void": "SELECT * FROM credits_ledger_void(%s, %s, %s, %s, %s, %s::json, %s::timestamp, "
            "%s::timestamp, %s::timestamp)",
}
FUNCTION_NAMES = tuple(f"credits_ledger_{name}" for name in CALLS)

# The ledger's SQLSTATEs (see migration 0008).
KEY_TAKEN = "CRK01"
UNKNOWN_ACCOUNT = "CRA01"
INSUFFICIENT_FUNDS = "CRF01"
UNKNOWN_HOLD = "CRH01"
NOT_A_HOLD = "CRH02"
POST_EXCEEDS_HOLD = "CRH03"
HOLD_NOT_PENDING = "CRH04"
#: Integrity errors the Python path also meets as IntegrityError.
UNIQUE_VIOLATION = "23505"


class Refused(Exception):
    """A function refused the request (and rolled back): its SQLSTATE and DETAIL."""

    def __init__(self, code: str, detail: str | None):
        super().__init__(code, detail)
        self.code, self.detail = code, detail


def installed(engine: Engine) -> bool:
    """Whether this database has every ledger function (PostgreSQL at revision 0008+)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT count(DISTINCT proname) FROM pg_proc WHERE proname = ANY(:names)"),
            {"names": list(FUNCTION_NAMES)}).scalar()
    return found == len(FUNCTION_NAMES)


def timestamp(value: datetime | None) -> datetime | None:
    """A naive UTC timestamp, as the ledger's columns store it (see schema.UTCDateTime)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the ledger; use timezone-aware UTC")
    return value.astimezone(timezone.utc).replace(tzinfo=None)


class _ThreadConnection:
    """One thread's autocommit connection; closed with the thread's local storage."""

    def __init__(self, engine: Engine):
        self.pid = os.getpid()
        fairy = engine.raw_connection()
        self.connection = fairy.driver_connection
        fairy.detach()  # ours alone: never returned to (or reset by) the pool
        # Every statement its own transaction, committed by the server as it ends.
        self.connection.autocommit = True
        self._finalizer = weakref.finalize(self, fairy.close)

    def close(self, *, broken: bool = False) -> None:
        if broken:
            # The server cut it: closing through the pool would try a rollback on the
            # dead connection first and log a traceback. Close the driver's side only.
            self._finalizer.detach()
            self.connection.close()
            return
        self._finalizer()


class ServerFunctions:
    """Calls the ledger's functions for one ``Ledger``; thread-safe."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._local = threading.local()
        self._open: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()

    def close(self) -> None:
        for thread_connection in list(self._open):
            thread_connection.close()

    def _connection(self) -> _ThreadConnection:
        mine = getattr(self._local, "connection", None)
        # A forked child must not share its parent's connection.
        if mine is None or mine.pid != os.getpid() or mine.connection.closed:
            mine = self._local.connection = _ThreadConnection(self.engine)
            self._open.add(mine)
        return mine

    def call(self, operation: str, params: tuple) -> tuple:
        """Run one ledger function in its own transaction; its result row.

        Retried from scratch, like ``database.run_with_retries``, on a deadlock, a
        serialization failure or a connection the server closed. Raises ``Refused``
        for the ledger's own refusals and for a unique violation (a concurrent
        writer); any other database error as SQLAlchemy's exception, as the Python
        path raises it.
        """
        statement = CALLS[operation]
        for attempt in range(1, database.MAX_ATTEMPTS + 1):
            mine = self._connection()
            try:
                return mine.connection.execute(statement, params).fetchone()
            except psycopg.Error as error:
                sqlstate = error.sqlstate
                if sqlstate is not None and (sqlstate.startswith("CR")
                                             or sqlstate == UNIQUE_VIOLATION):
                    raise Refused(sqlstate, error.diag.message_detail) from None
                broken = mine.connection.closed or (
                    isinstance(error, psycopg.OperationalError) and sqlstate is None)
                if broken:
                    mine.close(broken=True)  # the next attempt connects again
                if attempt == database.MAX_ATTEMPTS or not (
                        broken or sqlstate in database.RETRYABLE_SQLSTATES):
                    raise DBAPIError.instance(statement, params, error, psycopg.Error,
                                              connection_invalidated=broken) from error
                time.sleep(random.uniform(0, 0.002 * attempt))
                log.debug("retrying ledger function after %s (attempt %d)", error, attempt)
        raise AssertionError("unreachable")  # pragma: no cover
