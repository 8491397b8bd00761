"""Exact moments: a timer per running session at its next warning or at its paid time's end.

The tick alone would stop a server up to one interval late. The meter knows
every ``paid_until`` soon enough (each tick reads the sessions ending within
its look-ahead, ``Meter.due``), so it arms one event-loop timer per such
session for its next moment: the next warning threshold not yet given, else
``paid_until`` itself. When a timer fires the meter re-reads that session
under its lock and attends to it as a tick would (``Meter.attend``): an
extension or auto-extension that moved ``paid_until`` meanwhile is simply
seen, and the session is planned again. Nothing here is stored: after a
restart the first tick reads the same rows and arms the same timers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta

from ...sessions.store import Session
from .common import MeterJob

#: A timer that fires a hair early (the event loop's clock is not the wall clock) is
#: armed again at least this much later, so it can never spin.
MIN_DELAY_S = 0.005


def next_moment(session: Session, thresholds: Iterable[int], now: datetime) -> datetime | None:
    """When ``session`` next needs the meter: its soonest warning not yet given that is
    still ahead, else the end of its paid time; None when it is not running on paid time."""
    if session.state != "running" or session.paid_until is None:
        return None
    given = set(session.warned_thresholds or ())
    warnings = [session.paid_until - timedelta(seconds=t) for t in set(thresholds)
                if t not in given and session.paid_until - timedelta(seconds=t) > now]
    return min([*warnings, session.paid_until])


class Schedule(MeterJob):
    """The armed timers, by session key. Armed only while the meter runs in real time
    (``Meter.start``): a test that drives ticks with its own clock gets no timers."""

    def __init__(self, meter):
        super().__init__(meter)
        self.armed = False
        #: Session key → (the moment, its timer).
        self.timers: dict[str, tuple[datetime, asyncio.TimerHandle]] = {}
        self._running: set[asyncio.Task] = set()  # keeps fired attendances from being collected

    def plan(self, session: Session) -> None:
        """Arm (or move, or drop) the timer of ``session`` for its next moment."""
        if not self.armed:
            return
        now = self.meter.clock()
        moment = next_moment(session, self.meter.warning_thresholds, now)
        current = self.timers.get(session.key)
        if current is not None and current[0] == moment:
            return
        self.cancel(session.key)
        if moment is None:
            return
        delay = max((moment - now).total_seconds(), 0)
        handle = asyncio.get_running_loop().call_later(delay, self._fire, session.key, moment)
        self.timers[session.key] = (moment, handle)

    def cancel(self, key: str) -> None:
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def clear(self) -> None:
        for key in list(self.timers):
            self.cancel(key)

    def moment_of(self, key: str) -> datetime | None:
        """The moment armed for a session (tests, logs), or None."""
        timer = self.timers.get(key)
        return timer[0] if timer else None

    def _fire(self, key: str, moment: datetime) -> None:
        if self.timers.get(key, (None,))[0] == moment:
            del self.timers[key]
        early = (moment - self.meter.clock()).total_seconds()
        if early > 0:  # the loop's clock ran ahead of the wall clock: wait for the moment
            handle = asyncio.get_running_loop().call_later(max(early, MIN_DELAY_S), self._fire,
                                                           key, moment)
            self.timers[key] = (moment, handle)
            return
        task = asyncio.ensure_future(self.meter.attend(key))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
