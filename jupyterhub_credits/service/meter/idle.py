"""Idle GPUs (off unless ``Meter.idle_gpu_timeout`` is set): stop servers whose GPUs do nothing.

About once a minute (``IDLE_CHECK_EVERY``): a running GPU session whose user's
stored ``gpu_utilization`` samples cover the last ``idle_gpu_timeout`` seconds
(at least ``IDLE_COVERAGE`` of its minutes) and show every minute below
``idle_gpu_threshold`` % is settled now with reason ``gpu_idle`` (what it did
not use is voided, i.e. refunded) and its server stopped like an expired one.
Missing samples never stop anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from ...earning import EarningService
from ...sessions.store import Session
from ...catalog.wording import duration_text
from .common import MeterJob

#: The share of an idle window's minutes that must have GPU samples before the
#: meter believes the GPUs idle (fewer: unknown, so the server is left alone).
IDLE_COVERAGE = 0.8
#: Seconds between idle-GPU checks (samples come once a minute).
IDLE_CHECK_EVERY = 60.0


def gpus_idle(samples: Iterable[tuple[datetime, float]], *, now: datetime, timeout: float,
              threshold: float, coverage: float = IDLE_COVERAGE) -> bool:
    """Did the GPUs stay idle for the last ``timeout`` seconds, as far as samples show?

    ``samples`` are (minute, mean utilisation %) pairs. Only minutes starting
    within ``[now - timeout, now)`` count. True only if at least ``coverage`` of
    the window's whole minutes have a sample and every sampled minute is below
    ``threshold``; a minute sampled more than once (the user's other servers
    report too) counts by its busiest sample, so an idle verdict is never drawn
    from another server's quiet GPUs while this one's are busy.
    """
    if timeout <= 0:
        return False
    start = now - timedelta(seconds=timeout)
    busiest: dict[datetime, float] = {}
    for minute, utilization in samples:
        if start <= minute < now:
            busiest[minute] = max(utilization, busiest.get(minute, utilization))
    needed = math.ceil(coverage * max(int(timeout // 60), 1))
    return len(busiest) >= needed and all(u < threshold for u in busiest.values())


class IdleGpus(MeterJob):
    def __init__(self, meter, earning: EarningService | None = None):
        super().__init__(meter)
        #: Reads GPU samples (an EarningService; made when first needed).
        self.earning = earning
        self.next_check: datetime | None = None  # None: at the next tick

    def due(self, now: datetime) -> bool:
        """Is a check due now (and the check switched on)? Schedules the next one."""
        if self.meter.idle_gpu_timeout <= 0:
            return False
        if self.next_check is not None and now < self.next_check:
            return False
        self.next_check = now + timedelta(seconds=IDLE_CHECK_EVERY)
        return True

    async def find(self, now: datetime, skip: Iterable[str] = ()) -> list[Session]:
        """Running GPU sessions, ready for at least the timeout, whose GPUs stayed idle.

        Reads only (no lock): one query for the open sessions, one per user
        with candidates for the samples. A failure stops nothing.
        """
        timeout = timedelta(seconds=self.meter.idle_gpu_timeout)
        skipped = set(skip) | set(self.meter.stops.pending)
        try:
            candidates = [s for s in await self.db(self.sessions.open_sessions)
                          if s.state == "running" and s.gpus > 0 and s.ready_at is not None
                          and s.ready_at <= now - timeout and s.key not in skipped]
            if not candidates:
                return []
            if self.earning is None:
                self.earning = EarningService(self.meter.ledger)
            samples = {}
            for user in {s.user for s in candidates}:
                samples[user] = await self.db(self.earning.gpu_minutes, user, now - timeout)
        except Exception:  # noqa: BLE001 - leave everything running; next check tries again
            self.log.exception("credits: idle GPU check failed")
            return []
        return [session for session in candidates
                if gpus_idle(samples[session.user], now=now,
                             timeout=self.meter.idle_gpu_timeout,
                             threshold=self.meter.idle_gpu_threshold)]

    async def stop(self, session: Session, now: datetime) -> bool:
        """Settle an idle session at ``now`` (the rest of its hold is voided) and queue its stop.

        Called under the meter's lock with the session read again there;
        settling only ends a session still open, so one the user or the
        spawner ended meanwhile is left alone.
        """
        idle_for = duration_text(self.meter.idle_gpu_timeout)
        return await self.meter.stops.settle_and_stop(
            session, reason="gpu_idle", end=now,
            why=f"its GPUs stayed idle (below {self.meter.idle_gpu_threshold:g}% utilisation) "
                f"for {idle_for}",
            notice=f"GPUs idle for {idle_for}: the server is being stopped and the unused "
                   "credits refunded.")
