"""Auto-extend: buy more time for sessions that opted in, shortly before their paid time ends.

A session with ``auto_extend`` on and ``Meter.auto_extend_lead`` seconds or
fewer left is extended by ``Meter.auto_extend_hours`` — or by what its quota
and balance still allow, when that is at least the catalog's
``min_extension_minutes`` — through the same decision as
``POST /api/sessions/{server}/extend`` (``service/extension.py``). A refusal
becomes the session's notice and is tried again after ``auto_extend_retry``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ...catalog import effective_quotas, parse_hours
from ...ledger import LedgerError
from ...sessions.store import Session, SessionError
from ..extension import decide_extension
from ..hub import HubUnavailable
from .common import METER_ACTOR, MeterJob, server_label
from .expiry import seconds_left


def wants_auto_extend(session: Session, now: datetime, lead: float) -> bool:
    return session.auto_extend and session.state == "running" and \
        0 < seconds_left(session, now) <= lead


class AutoExtender(MeterJob):
    def __init__(self, meter):
        super().__init__(meter)
        #: Session key → when a refused auto-extension may be tried again.
        self.retry_at: dict[str, datetime] = {}

    async def extend(self, session: Session, now: datetime) -> Session | None:
        """Extend ``session`` (read under the meter's lock); the session as it is now, or None."""
        retry_at = self.retry_at.get(session.key)
        if retry_at is not None and now < retry_at:
            return None
        where = server_label(session.user, session.server_name)
        try:
            model = await self.hub.user(session.user)
        except HubUnavailable as error:
            self.log.warning("credits: cannot auto-extend %s now (%s)", where, error)
            return None
        quotas = effective_quotas(self.meter.catalog, (model or {}).get("groups") or [])
        available = await self.db(self.meter.ledger.available, session.account)
        wanted = parse_hours(self.meter.auto_extend_hours)
        decision = decide_extension(rate=session.rate_per_hour, held=session.held, hours=wanted,
                                    available=available, quotas=quotas)
        if not decision.ok and decision.max_hours:
            # Buy what quota and balance allow rather than nothing (max_hours is 0 when
            # that is less than the shortest extension).
            decision = decide_extension(rate=session.rate_per_hour, held=session.held,
                                        hours=min(wanted, decision.max_hours),
                                        available=available, quotas=quotas)
        if not decision.ok:
            return self._refused(session, now, f"Auto-extend: {decision.message}")
        try:
            extended = await self.db(self.sessions.extend, session.key, decision.hold_units,
                                     actor=METER_ACTOR)
        except (LedgerError, SessionError) as error:
            return self._refused(session, now, f"Auto-extend refused: {error}")
        await self.db(self.sessions.reset_warnings, session.key, now)
        self.retry_at.pop(session.key, None)
        self.notices[session.key] = (f"Auto-extended: paid until "
                                     f"{extended.paid_until:%H:%M:%S} UTC.")
        self.log.info("credits: auto-extended %s (session %s) by %s units, paid until %s",
                      where, session.key, decision.hold_units, extended.paid_until.isoformat())
        return await self.db(self.sessions.get, session.key)

    def _refused(self, session: Session, now: datetime, message: str) -> None:
        self.retry_at[session.key] = now + timedelta(seconds=self.meter.auto_extend_retry)
        self.notices[session.key] = message
        self.log.warning("credits: %s (session %s): %s",
                         server_label(session.user, session.server_name), session.key, message)
        return None
