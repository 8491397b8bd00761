"""Paid notebook sessions: opened with a hold, billed from ready, settled exactly once.

A session's money lives in ledger holds keyed ``<session key>:hold:<n>``
(the first when it starts, one more per extension). Settlement posts what the
ready time cost across those holds and voids the rest, under keys
``<session key>:settle:<n>``, so a settlement that is interrupted and run
again — by the spawner, the meter or a restarted hub — changes nothing the
second time. The state moves ``starting → running → settling → ended``; only
the writer that moves a session into ``settling`` decides its end time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..catalog.pricing import cost_of_seconds, paid_seconds
from ..ledger import Ledger
from ..ledger import database
from ..ledger.errors import HoldNotPending, IdempotencyConflict, LedgerError, UnknownTransfer
from .schema import OPEN_STATES, gpu_assignments, session_holds, sessions

#: A hold outlives the time it pays for by this much before the ledger's sweep
#: may void it: only a hub and credits service both down that long lose a settlement.
HOLD_GRACE = timedelta(days=1)


class SessionError(Exception):
    """A session operation that cannot be done (shown to the user)."""


class SessionConflict(SessionError):
    """The named server already has an open session."""


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
    warnings: list | None
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


def _seconds(delta: timedelta) -> Decimal:
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micros) / Decimal(1_000_000)


def _session(row) -> Session:
    return Session(**{name: row._mapping[name] for name in Session.__dataclass_fields__})


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
            return conn.execute(select(func.count()).select_from(sessions).where(
                sessions.c.user == user, sessions.c.state.in_(OPEN_STATES),
                sessions.c.gpus > 0)).scalar()

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
              gpus: int, rate_per_hour: int, hold_units: int, actor: str) -> Session:
        """Open a session and place its first hold; refused (nothing kept) if the hold is."""
        now = self.clock()
        key = f"session:{uuid.uuid4().hex}"
        try:
            with database.write_transaction(self.engine) as conn:
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
            row = conn.execute(select(sessions.c.held, sessions.c.rate_per_hour)
                               .where(sessions.c.key == key, sessions.c.state == "starting")
                               ).first()
            if row is not None:
                conn.execute(update(sessions).where(sessions.c.key == key).values(
                    state="running", ready_at=at, billed_until=at,
                    paid_until=at + timedelta(seconds=paid_seconds(row.rate_per_hour, row.held))))
        return self.get(key)

    def extend(self, key: str, hold_units: int, *, actor: str) -> Session:
        """Buy more time for a running session with one more hold."""
        session = self.get(key)
        if session is None or session.state not in ("starting", "running"):
            raise SessionError("this session has ended and cannot be extended")
        with database.read_transaction(self.engine) as conn:
            seq = conn.execute(select(func.coalesce(func.max(session_holds.c.seq), -1) + 1)
                               .where(session_holds.c.session_id == session.id)).scalar()
        self._add_hold(key, seq, session.account, hold_units, session.rate_per_hour, actor,
                       "session extension")
        return self.get(key)

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
        left = charge
        with database.read_transaction(self.engine) as conn:
            holds = conn.execute(select(session_holds.c.seq, session_holds.c.hold_key,
                                        session_holds.c.amount)
                                 .where(session_holds.c.session_id == session.id)
                                 .order_by(session_holds.c.seq)).all()
        for seq, hold_key, amount in holds:
            take = min(left, amount)
            left -= take
            settle_key = f"{key}:settle:{seq}"
            try:
                if take:
                    self.ledger.post(hold_key, take, key=settle_key, actor=actor,
                                     reason=f"session {session.end_reason}",
                                     metadata={"session": key})
                else:
                    self.ledger.void(hold_key, key=settle_key, actor=actor,
                                     reason=f"session {session.end_reason}",
                                     metadata={"session": key})
            except (HoldNotPending, UnknownTransfer):
                # Voided by the ledger's timeout sweep long ago, or never placed
                # (a crash between recording and placing it): nothing to take.
                charge -= take
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
                  actor: str, reason: str) -> None:
        hold_key = f"{key}:hold:{seq}"
        # The hold's record comes first, so a crash right after placing the hold
        # still leaves settlement a way to find (and post or void) it.
        with database.write_transaction(self.engine) as conn:
            # Locked: settlement moves the session to 'settling' under the same row lock.
            session_id = conn.execute(
                select(sessions.c.id).where(sessions.c.key == key,
                                            sessions.c.state.in_(("starting", "running")))
                .with_for_update()).scalar()
            if session_id is None:
                raise SessionError("this session has ended and cannot be extended")
            conn.execute(insert(session_holds).values(session_id=session_id, seq=seq,
                                                      hold_key=hold_key, amount=amount))
        timeout = timedelta(seconds=paid_seconds(rate_per_hour, amount)) + HOLD_GRACE
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

    def _finish_unheld(self, key: str, reason: str) -> None:
        with database.write_transaction(self.engine) as conn:
            conn.execute(update(sessions).where(sessions.c.key == key).values(
                state="ended", end_reason=reason, ended_at=self.clock(), charged=0))
