"""Paid notebook sessions: opened with a hold, billed from ready, settled exactly once.

A session's money lives in ledger holds keyed ``<session key>:hold:<n>``
(the first when it starts, one more per extension; an extension asked for with
an idempotency key is keyed ``<session key>:hold:request-<hash of it>``
instead, so the same request twice holds once). Settlement posts what the
ready time cost across those holds and voids the rest, in one ledger
transaction and under keys ``<session key>:settle:<n>``, so a settlement that
is interrupted and run again — by the spawner, the meter or a restarted hub —
changes nothing the second time. The state moves
``starting → running → settling → ended``; only the writer that moves a
session into ``settling`` decides its end time.

Every open hold of a session times out (may be voided by the ledger's sweep)
no earlier than ``paid_until + HOLD_GRACE``: whenever ``paid_until`` moves (at
ready, at each extension) the timeouts of all the session's holds move with it,
in the same transaction. The alternative — holds without a timeout, left to the
meter's reconciliation — would lose the ledger's own safety net for a hub and a
credits service both down for good.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import BigInteger, case, delete, func, insert, literal, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..catalog.admission import too_many_gpu_sessions
from ..catalog.pricing import cost_of_seconds, paid_seconds
from ..ledger import Ledger
from ..ledger import database
from ..ledger.core import HoldResolution
from ..ledger.errors import HoldNotPending, IdempotencyConflict, LedgerError
from .schema import OPEN_STATES, gpu_assignments, session_holds, sessions

#: A session's holds outlive its paid time by this much before the ledger's sweep
#: may void them: only a hub and credits service both down that long lose a settlement.
HOLD_GRACE = timedelta(days=1)


class SessionError(Exception):
    """A session operation that cannot be done (shown to the user)."""


class SessionConflict(SessionError):
    """The named server already has an open session."""


class ConcurrentSessionLimit(SessionError):
    """The user already runs the most GPU sessions allowed at once (a quota refusal)."""


class DuplicateExtension(SessionError):
    """An extension whose request key was already applied (nothing more was held)."""


def extension_hold_key(session_key: str, request_key: str) -> str:
    """The hold key of the extension asked for with ``request_key``: one per (session, key).

    Hashed, so any key a client sends (up to 100 characters of anything) makes a
    short ledger key of known characters.
    """
    digest = hashlib.sha256(request_key.encode()).hexdigest()[:32]
    return f"{session_key}:hold:request-{digest}"


@dataclass(frozen=True)
class Session:
    id: int
    key: str
    user: str
    server_name: str
    account: str
    image: str
    gpu_type: str
    gpus: int
    rate_per_hour: int
    held: int
    state: str
    requested_at: datetime
    ready_at: datetime | None
    paid_until: datetime | None
    billed_until: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    charged: int | None
    auto_extend: bool
    #: The warning thresholds (seconds before ``paid_until``) already given; the
    #: column (and the JSON field of ``/api/me``) is ``warnings``.
    warned_thresholds: list | None
    devices: list | None

    def cost_until(self, moment: datetime) -> int:
        """What the ready time up to ``moment`` costs, never more than is held."""
        if self.ready_at is None or moment <= self.ready_at:
            return 0
        return min(self.held, cost_of_seconds(self.rate_per_hour, _seconds(moment - self.ready_at)))

    def seconds_left(self, now: datetime) -> int | None:
        if self.paid_until is None:
            return None
        return max(0, int((self.paid_until - now).total_seconds()))


@dataclass(frozen=True)
class SessionSummary:
    """The few columns reconciliation compares with the hub (cheap to read by the thousand)."""

    id: int
    key: str
    user: str
    server_name: str
    state: str
    billed_until: datetime | None
    end_reason: str | None


@dataclass(frozen=True)
class SessionUptime:
    """When one session was up and with how many GPUs: what a user's claims are checked against."""

    ready_at: datetime
    #: When it ended; for a session still open, when its paid time ends (its latest end).
    ends_at: datetime | None
    gpus: int


def uptimes_query(user: str, since: datetime):
    """The statement behind ``SessionStore.uptimes`` (its index is chosen for it)."""
    ends_at = func.coalesce(sessions.c.ended_at, sessions.c.paid_until)
    return (select(sessions.c.ready_at, ends_at, sessions.c.gpus)
            .where(sessions.c.user == user, sessions.c.ready_at.is_not(None), ends_at >= since)
            .order_by(sessions.c.ready_at))


def _seconds(delta: timedelta) -> Decimal:
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micros) / Decimal(1_000_000)


#: Session fields whose column has another name.
_COLUMN_OF = {"warned_thresholds": "warnings"}


def _session(row) -> Session:
    return Session(**{name: row._mapping[_COLUMN_OF.get(name, name)]
                      for name in Session.__dataclass_fields__})


def _open_gpu_sessions(user: str):
    """How many GPU sessions ``user`` has open (the concurrency quota counts these)."""
    return select(func.count()).select_from(sessions).where(
        sessions.c.user == user, sessions.c.state.in_(OPEN_STATES), sessions.c.gpus > 0)


def _user_lock_id(user: str) -> int:
    """A stable 63-bit id for PostgreSQL's advisory lock on one user's session starts."""
    digest = hashlib.sha256(f"jupyterhub-credits:sessions:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SessionStore:
    """Sessions in the ledger's database. Inner layer: no JupyterHub imports."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.engine = ledger.engine

    @property
    def clock(self):
        return self.ledger.clock

    # --- reading --------------------------------------------------------------

    def get(self, key: str) -> Session | None:
        with database.read_transaction(self.engine) as conn:
            row = conn.execute(select(sessions).where(sessions.c.key == key)).first()
        return _session(row) if row else None

    def open_session(self, user: str, server_name: str = "") -> Session | None:
        with database.read_transaction(self.engine) as conn:
            row = conn.execute(select(sessions).where(
                sessions.c.user == user, sessions.c.server_name == server_name,
                sessions.c.state.in_(OPEN_STATES))).first()
        return _session(row) if row else None

    def open_sessions(self, user: str | None = None) -> list[Session]:
        query = select(sessions).where(sessions.c.state.in_(OPEN_STATES)).order_by(sessions.c.id)
        if user is not None:
            query = query.where(sessions.c.user == user)
        with database.read_transaction(self.engine) as conn:
            return [_session(row) for row in conn.execute(query)]

    def running_gpu_sessions(self, user: str) -> int:
        with database.read_transaction(self.engine) as conn:
            return conn.execute(_open_gpu_sessions(user)).scalar()

    def uptimes(self, user: str, since: datetime, *,
                connection: Connection | None = None) -> list[SessionUptime]:
        """``user``'s sessions that became ready and were up at some moment from ``since`` on,
        by ready time (a range of the (user, ready_at) index).

        Read in ``connection`` when given, so a caller's transaction sees them with the rest.
        """
        query = uptimes_query(user, since)
        if connection is not None:
            return [SessionUptime(*row) for row in connection.execute(query)]
        with database.read_transaction(self.engine) as conn:
            return [SessionUptime(*row) for row in conn.execute(query)]

    def expired(self, now: datetime) -> list[Session]:
        """Running sessions whose paid time is over."""
        with database.read_transaction(self.engine) as conn:
            return [_session(row) for row in conn.execute(
                select(sessions).where(sessions.c.state == "running",
                                       sessions.c.paid_until <= now).order_by(sessions.c.id))]

    def open_session_summaries(self) -> list[SessionSummary]:
        """Every open session, only the columns reconciliation needs (about 10x faster to read)."""
        columns = [sessions.c[name] for name in SessionSummary.__dataclass_fields__]
        with database.read_transaction(self.engine) as conn:
            return [SessionSummary(*row) for row in conn.execute(
                select(*columns).where(sessions.c.state.in_(OPEN_STATES)).order_by(sessions.c.id))]

    def ending_by(self, moment: datetime) -> list[Session]:
        """Running sessions whose paid time ends at or before ``moment``, soonest first.

        The meter's list of what needs attention (expiry, warnings, auto-extend):
        a range scan of the (state, paid_until) index, however many sessions run.
        """
        with database.read_transaction(self.engine) as conn:
            return [_session(row) for row in conn.execute(
                select(sessions).where(sessions.c.state == "running",
                                       sessions.c.paid_until <= moment)
                .order_by(sessions.c.paid_until, sessions.c.id))]

    def ended_holding_gpus(self) -> list[Session]:
        """Ended sessions whose GPU assignments are still live (``settle(release_gpus=False)``)."""
        live = select(gpu_assignments.c.session_id).where(gpu_assignments.c.released_at.is_(None))
        with database.read_transaction(self.engine) as conn:
            return [_session(row) for row in conn.execute(
                select(sessions).where(sessions.c.state == "ended", sessions.c.id.in_(live))
                .order_by(sessions.c.id))]

    # --- lifecycle --------------------------------------------------------------

    def start(self, *, user: str, server_name: str, account: str, image: str, gpu_type: str,
              gpus: int, rate_per_hour: int, hold_units: int, actor: str,
              max_concurrent_gpu_sessions: int | None = None) -> Session:
        """Open a session and place its first hold; refused (nothing kept) if the hold is.

        With ``max_concurrent_gpu_sessions``, a GPU session is refused
        (``ConcurrentSessionLimit``) when the user already has that many open:
        counted and inserted under one per-user lock, so concurrent starts of
        several named servers cannot all pass a count read before any inserts.
        """
        now = self.clock()
        key = f"session:{uuid.uuid4().hex}"
        try:
            with database.write_transaction(self.engine) as conn:
                if gpus > 0 and max_concurrent_gpu_sessions is not None:
                    self._check_concurrent_gpu_sessions(conn, user, max_concurrent_gpu_sessions)
                conn.execute(insert(sessions).values(
                    key=key, user=user, server_name=server_name, account=account, image=image,
                    gpu_type=gpu_type, gpus=gpus, rate_per_hour=rate_per_hour, held=0,
                    state="starting", requested_at=now, auto_extend=False))
        except IntegrityError:
            raise SessionConflict(
                f"{user}'s server {server_name or '(default)'} already has an open session"
            ) from None
        try:
            self._add_hold(key, 0, account, hold_units, rate_per_hour, actor, "session start")
        except LedgerError:
            self._finish_unheld(key, "refused")
            raise
        return self.get(key)

    def mark_ready(self, key: str, at: datetime | None = None) -> Session:
        """Billing starts now: the server answered."""
        at = at or self.clock()
        with database.write_transaction(self.engine) as conn:
            row = conn.execute(select(sessions.c.id, sessions.c.held, sessions.c.rate_per_hour)
                               .where(sessions.c.key == key, sessions.c.state == "starting")
                               .with_for_update()).first()
            if row is not None:
                paid_until = at + timedelta(seconds=paid_seconds(row.rate_per_hour, row.held))
                conn.execute(update(sessions).where(sessions.c.key == key).values(
                    state="running", ready_at=at, billed_until=at, paid_until=paid_until))
                # A slow start moved paid_until past what the holds were placed for.
                self._postpone_hold_timeouts(conn, row.id, paid_until)
        return self.get(key)

    def extend(self, key: str, hold_units: int, *, actor: str,
               request_key: str | None = None) -> Session:
        """Buy more time for a running session with one more hold.

        With ``request_key`` (the caller's idempotency key) the hold's key is
        derived from it (``extension_hold_key``), so the same request twice
        places one hold: the second raises ``DuplicateExtension``.
        """
        session = self.get(key)
        if session is None or session.state not in ("starting", "running"):
            raise SessionError("this session has ended and cannot be extended")
        hold_key = extension_hold_key(key, request_key) if request_key is not None else None
        if hold_key is not None and self.has_hold(key, hold_key):
            raise DuplicateExtension("this extension was already applied")
        with database.read_transaction(self.engine) as conn:
            seq = conn.execute(select(func.coalesce(func.max(session_holds.c.seq), -1) + 1)
                               .where(session_holds.c.session_id == session.id)).scalar()
        try:
            self._add_hold(key, seq, session.account, hold_units, session.rate_per_hour, actor,
                           "session extension", hold_key=hold_key)
        except IntegrityError:
            # A concurrent request took the same key (or the same seq) first.
            if hold_key is not None and self.has_hold(key, hold_key):
                raise DuplicateExtension("this extension was already applied") from None
            raise SessionError("the session changed at the same time; try again") from None
        return self.get(key)

    def has_hold(self, key: str, hold_key: str) -> bool:
        """Whether session ``key`` has a hold recorded under ``hold_key``."""
        with database.read_transaction(self.engine) as conn:
            return conn.execute(
                select(session_holds.c.seq)
                .join(sessions, sessions.c.id == session_holds.c.session_id)
                .where(sessions.c.key == key, session_holds.c.hold_key == hold_key)
            ).first() is not None

    def set_auto_extend(self, key: str, enabled: bool) -> None:
        with database.write_transaction(self.engine) as conn:
            conn.execute(update(sessions).where(sessions.c.key == key)
                         .values(auto_extend=enabled))

    def record_billing(self, now: datetime | None = None) -> int:
        """One statement: every running session is billed up to now (or its paid end)."""
        now = now or self.clock()
        with database.write_transaction(self.engine) as conn:
            result = conn.execute(
                update(sessions).where(sessions.c.state == "running").values(
                    billed_until=case((sessions.c.paid_until < now, sessions.c.paid_until),
                                      else_=now)))
        return result.rowcount

    def mark_warned(self, key: str, threshold_s: int) -> bool:
        """Record that a warning was given; False if it already had been."""
        with database.write_transaction(self.engine) as conn:
            warnings = conn.execute(select(sessions.c.warnings).where(sessions.c.key == key)
                                    ).scalar() or []
            if threshold_s in warnings:
                return False
            conn.execute(update(sessions).where(sessions.c.key == key)
                         .values(warnings=[*warnings, threshold_s]))
        return True

    def settle(self, key: str, *, reason: str, end: datetime | None = None,
               actor: str = "system:sessions", release_gpus: bool = True) -> Session:
        """End a session: post what its ready time cost, void the rest, release its GPUs.

        Safe to call from anywhere, any number of times: the first caller fixes
        the end time; later calls (or a rerun after a crash) finish the same
        settlement and change nothing else.

        ``release_gpus=False`` keeps the session's GPU assignments: the meter
        settles an expired session *before* its server is stopped, and the
        devices stay taken until the process is gone (the spawner's post-stop
        hook, or the meter's reconciliation, releases them then).
        """
        end = end or self.clock()
        with database.write_transaction(self.engine) as conn:
            conn.execute(update(sessions).where(
                sessions.c.key == key, sessions.c.state.in_(("starting", "running"))).values(
                state="settling", end_reason=reason,
                # A session that never became ready ends when it is settled;
                # a running one is billed to ``end`` but never past what it paid for.
                ended_at=case((sessions.c.paid_until < end, sessions.c.paid_until), else_=end)))
        session = self.get(key)
        if session is None:
            raise SessionError(f"unknown session {key}")
        if session.state == "ended":
            return session
        charge = session.cost_until(session.ended_at)
        with database.read_transaction(self.engine) as conn:
            holds = conn.execute(select(session_holds.c.seq, session_holds.c.hold_key,
                                        session_holds.c.amount)
                                 .where(session_holds.c.session_id == session.id)
                                 .order_by(session_holds.c.seq)).all()
        # The charge is taken from the holds in order, each hold's part fixed by the
        # amounts alone, so a rerun asks for exactly the same posts and voids.
        settlements, left = [], charge
        for seq, hold_key, amount in holds:
            take = min(left, amount)
            left -= take
            settlements.append(HoldResolution(hold_key, take, f"{key}:settle:{seq}"))
        outcomes = self.ledger.resolve_holds(settlements, actor=actor,
                                            reason=f"session {session.end_reason}",
                                            metadata={"session": key})
        for settlement, outcome in zip(settlements, outcomes):
            if outcome is None:
                # Voided by the ledger's timeout sweep long ago, or never placed
                # (a crash between recording and placing it): nothing was taken.
                charge -= settlement.amount
        with database.write_transaction(self.engine) as conn:
            if release_gpus:
                conn.execute(update(gpu_assignments).where(
                    gpu_assignments.c.session_id == session.id,
                    gpu_assignments.c.released_at.is_(None)).values(released_at=session.ended_at))
            conn.execute(update(sessions).where(sessions.c.key == key,
                                                sessions.c.state == "settling")
                         .values(state="ended", charged=charge,
                                 billed_until=session.ended_at if session.ready_at else None))
        return self.get(key)

    def reset_warnings(self, key: str, now: datetime | None = None) -> None:
        """Forget the warnings whose threshold lies ahead again (after an extension).

        A warning given at "600 s left" is given again when the session, now
        paid for longer, once more gets within 600 s of its end.
        """
        now = now or self.clock()
        with database.write_transaction(self.engine) as conn:
            row = conn.execute(select(sessions.c.warnings, sessions.c.paid_until)
                               .where(sessions.c.key == key)).first()
            if row is None or not row.warnings or row.paid_until is None:
                return
            left = (row.paid_until - now).total_seconds()
            kept = [threshold for threshold in row.warnings if threshold >= left]
            if kept != list(row.warnings):
                conn.execute(update(sessions).where(sessions.c.key == key)
                             .values(warnings=kept or None))

    def release_gpus(self, key: str, at: datetime | None = None) -> int:
        """Release the live GPU assignments of a session whose server is gone; how many."""
        at = at or self.clock()
        with database.write_transaction(self.engine) as conn:
            session_id = conn.execute(select(sessions.c.id).where(sessions.c.key == key)).scalar()
            if session_id is None:
                return 0
            return conn.execute(update(gpu_assignments).where(
                gpu_assignments.c.session_id == session_id,
                gpu_assignments.c.released_at.is_(None)).values(released_at=at)).rowcount

    # --- internals ------------------------------------------------------------------

    def _add_hold(self, key: str, seq: int, account: str, amount: int, rate_per_hour: int,
                  actor: str, reason: str, *, hold_key: str | None = None) -> None:
        hold_key = hold_key or f"{key}:hold:{seq}"
        # The hold's record comes first, so a crash right after placing the hold
        # still leaves settlement a way to find (and post or void) it.
        with database.write_transaction(self.engine) as conn:
            # Locked: settlement moves the session to 'settling' under the same row lock.
            current = conn.execute(
                select(sessions.c.id, sessions.c.held, sessions.c.ready_at).where(
                    sessions.c.key == key, sessions.c.state.in_(("starting", "running")))
                .with_for_update()).first()
            if current is None:
                raise SessionError("this session has ended and cannot be extended")
            session_id = current.id
            conn.execute(insert(session_holds).values(session_id=session_id, seq=seq,
                                                      hold_key=hold_key, amount=amount))
        # The new paid_until + grace: the hold pays for time after all the earlier
        # holds, not from its own placement. Before ready, from now (mark_ready moves it).
        paid_for = timedelta(seconds=paid_seconds(rate_per_hour, current.held + amount))
        since = current.ready_at if current.ready_at is not None else self.clock()
        timeout = max(since + paid_for + HOLD_GRACE - self.clock(), HOLD_GRACE)
        try:
            self.ledger.hold(account, amount, key=hold_key, actor=actor, reason=reason,
                             timeout=timeout, metadata={"session": key})
        except LedgerError:
            with database.write_transaction(self.engine) as conn:
                conn.execute(delete(session_holds).where(session_holds.c.hold_key == hold_key))
            raise
        with database.write_transaction(self.engine) as conn:
            state, ready_at = conn.execute(
                select(sessions.c.state, sessions.c.ready_at).where(sessions.c.id == session_id)
                .with_for_update()).one()
            ended_meanwhile = state not in ("starting", "running")
            if not ended_meanwhile:
                held = conn.execute(select(func.sum(session_holds.c.amount))
                                    .where(session_holds.c.session_id == session_id)).scalar()
                values = {"held": held}
                if ready_at is not None:
                    values["paid_until"] = ready_at + timedelta(
                        seconds=paid_seconds(rate_per_hour, held))
                    # The earlier holds now pay for time up to the new paid_until.
                    self._postpone_hold_timeouts(conn, session_id, values["paid_until"])
                conn.execute(update(sessions).where(sessions.c.id == session_id).values(**values))
        if ended_meanwhile:
            # Settled while this hold was being placed, possibly without it: release it
            # under the key settlement uses, unless settlement already did.
            try:
                self.ledger.void(hold_key, key=f"{key}:settle:{seq}", actor=actor,
                                 reason="session ended during extension",
                                 metadata={"session": key})
            except (HoldNotPending, IdempotencyConflict):
                pass
            raise SessionError("this session ended while it was being extended; nothing was held")

    def _postpone_hold_timeouts(self, conn, session_id: int, paid_until: datetime) -> None:
        """In ``conn``'s transaction: no hold of the session times out before paid_until + grace."""
        hold_keys = conn.execute(select(session_holds.c.hold_key)
                                 .where(session_holds.c.session_id == session_id)).scalars().all()
        self.ledger.postpone_timeouts(hold_keys, paid_until + HOLD_GRACE, connection=conn)

    def _check_concurrent_gpu_sessions(self, conn, user: str, limit: int) -> None:
        """In ``conn``'s transaction: refuse when ``user`` has ``limit`` GPU sessions open.

        The count and the insert that follows must not interleave with another
        start of the same user's: SQLite's ``BEGIN IMMEDIATE`` already
        serialises writers; PostgreSQL takes a per-user advisory lock, held to
        the end of the transaction (no row to lock exists for every user).
        """
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(
                literal(_user_lock_id(user), BigInteger))))
        running = conn.execute(_open_gpu_sessions(user)).scalar()
        if running >= limit:
            raise ConcurrentSessionLimit(too_many_gpu_sessions(running, limit))

    def _finish_unheld(self, key: str, reason: str) -> None:
        with database.write_transaction(self.engine) as conn:
            conn.execute(update(sessions).where(sessions.c.key == key).values(
                state="ended", end_reason=reason, ended_at=self.clock(), charged=0))

    # --- reconciliation a few users at a time (the meter's rolling check) -------------------

    def open_session_summaries_of(self, users: list[str]) -> list[SessionSummary]:
        """The open sessions of ``users`` (a range of the open-server partial index each)."""
        if not users:
            return []
        columns = [sessions.c[name] for name in SessionSummary.__dataclass_fields__]
        with database.read_transaction(self.engine) as conn:
            return [SessionSummary(*row) for row in conn.execute(
                select(*columns).where(sessions.c.state != "ended",
                                       sessions.c.user.in_(sorted(set(users))))
                .order_by(sessions.c.id))]

    def users_with_open_sessions_after(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` names of users with an open session, in name order, after ``after``
        (a walk over the open-server partial index, however many sessions ended)."""
        query = select(sessions.c.user).where(sessions.c.state != "ended")
        if after is not None:
            query = query.where(sessions.c.user > after)
        with database.read_transaction(self.engine) as conn:
            return list(conn.execute(query.distinct().order_by(sessions.c.user).limit(limit))
                        .scalars())

    def settling_summaries(self) -> list[SessionSummary]:
        """Sessions whose settlement was interrupted (state ``settling``; the state index)."""
        columns = [sessions.c[name] for name in SessionSummary.__dataclass_fields__]
        with database.read_transaction(self.engine) as conn:
            return [SessionSummary(*row) for row in conn.execute(
                select(*columns).where(sessions.c.state == "settling").order_by(sessions.c.id))]

    def open_keys(self, keys: set[str]) -> set[str]:
        """Which of ``keys`` name a session still open (by the unique key index, 500 a query)."""
        keys, found = sorted(set(keys)), set()
        with database.read_transaction(self.engine) as conn:
            for start in range(0, len(keys), 500):
                found.update(conn.execute(select(sessions.c.key).where(
                    sessions.c.key.in_(keys[start:start + 500]),
                    sessions.c.state != "ended")).scalars())
        return found
