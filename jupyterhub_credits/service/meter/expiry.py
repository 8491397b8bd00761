"""Expiry and warnings: tell the user before the paid time ends, settle and stop when it has.

Warnings come at each of ``Meter.warning_thresholds`` (default 600 s and 60 s
before ``paid_until``): logged, kept as the meter's notice for ``/api/me``, and
recorded once per threshold on the session (``mark_warned``), so each is given
once — again only after an extension moves the end past it. A session whose
paid time has ended is settled at ``paid_until`` (never at the tick's time: a
late tick bills nothing more) and its server queued for stopping.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ...sessions.store import Session
from ...catalog.wording import duration_text
from .common import MeterJob, server_label

# --- pure helpers ---------------------------------------------------------------------------


def seconds_left(session: Session, now: datetime) -> float:
    """Seconds of paid time left (negative once over); +inf while not yet ready."""
    if session.paid_until is None:
        return float("inf")
    return (session.paid_until - now).total_seconds()


def is_expired(session: Session, now: datetime) -> bool:
    return session.state == "running" and session.paid_until is not None \
        and session.paid_until <= now


def due_warnings(session: Session, now: datetime, thresholds: Iterable[int]) -> list[int]:
    """Thresholds (seconds before ``paid_until``) crossed but not yet warned about, largest first.

    A session bought for less than a threshold crosses it at once: it gets
    one warning (the caller words it for the smallest threshold) and every
    crossed threshold is recorded, so none is given again.
    """
    left = seconds_left(session, now)
    given = set(session.warned_thresholds or ())
    return sorted((t for t in set(thresholds) if left <= t and t not in given), reverse=True)


# --- the job ----------------------------------------------------------------------------------


class Expiry(MeterJob):
    async def warn(self, session: Session, now: datetime) -> bool:
        """Warn about every threshold ``session`` crossed since the last warning; whether any."""
        crossed = due_warnings(session, now, self.meter.warning_thresholds)
        if not crossed:
            return False
        left = seconds_left(session, now)
        message = (f"{duration_text(left)} of paid time left (ends "
                   f"{session.paid_until:%H:%M:%S} UTC): extend the session or save your work; "
                   "the server is stopped when its paid time ends.")
        self.log.info("credits: warning %s (session %s): %s",
                      server_label(session.user, session.server_name), session.key, message)
        for threshold in crossed:
            await self.db(self.sessions.mark_warned, session.key, threshold)
        self.notices[session.key] = message
        return True

    async def expire(self, session: Session) -> bool:
        """Settle at ``paid_until`` (GPUs stay assigned) and queue the server's stop."""
        return await self.meter.stops.settle_and_stop(
            session, reason="expired", end=session.paid_until, why="its paid time ended",
            notice="Paid time ended: the server is being stopped.")
