"""Reconciliation: make the ledger's open sessions agree with the servers the hub runs.

At start and every ``Meter.reconcile_interval``: sessions open in the ledger
whose server the hub no longer runs are settled at their ``billed_until``;
servers running with no open session are stopped; GPUs of ended sessions
whose server is gone are released. A mismatch must be seen twice,
``reconcile_grace`` apart, before anything is done about it, so a start or
stop in flight is never mistaken for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ...sessions.store import Session, SessionSummary
from ..hub import HubUnavailable, ServerState
from .common import METER_ACTOR, MeterJob, server_label


@dataclass(frozen=True)
class Sighting:
    """When a mismatch was first seen, and the session's ``billed_until`` then."""

    first: datetime
    billed_until: datetime | None = None


@dataclass
class ReconcilePlan:
    #: Open, server gone: settle, ending at the billed_until of the first sighting.
    settle: list[tuple[SessionSummary, datetime | None]] = field(default_factory=list)
    resettle: list[SessionSummary] = field(default_factory=list)  # stuck in "settling"
    release: list[Session] = field(default_factory=list)  # ended, GPUs still live, server gone
    stop: list[tuple[str, str]] = field(default_factory=list)  # running without an open session
    suspects: dict[tuple, Sighting] = field(default_factory=dict)  # seen, waiting for grace


def plan_reconciliation(*, before: Iterable[SessionSummary],
                        servers: Mapping[tuple[str, str], ServerState],
                        after: Iterable[SessionSummary], holding: Iterable[Session],
                        suspects: Mapping[tuple, Sighting], now: datetime, grace: float,
                        stop_unpaid: bool = True,
                        ignore_servers: Iterable[tuple[str, str]] = ()) -> ReconcilePlan:
    """Compare the ledger's open sessions with the hub's active servers; decide what to fix.

    ``before`` is read before the hub's server list and ``after`` after it:
    a session counts as vanished only if it was open in both reads and its
    server is missing; a server counts as unpaid only if no session was open
    for it after the list was taken. Every mismatch must persist ``grace``
    seconds (it is remembered in ``suspects``, keyed by what it is about)
    before it is acted on. A vanished session ends at the ``billed_until`` it
    had when first seen vanished: billing after that was for a server already
    gone (e.g. after a hub restart, the last tick before the crash).
    """
    plan = ReconcilePlan()
    after_by_key = {s.key: s for s in after}
    open_by_server = {(s.user, s.server_name): s for s in after}
    ignored = set(ignore_servers)

    def observe(mark: tuple, action: list, item, billed_until=None) -> None:
        sighting = suspects.get(mark) or Sighting(now, billed_until)
        if (now - sighting.first).total_seconds() >= grace:
            action.append(item if mark[0] != "gone" else (item, sighting.billed_until))
        else:
            plan.suspects[mark] = sighting

    for session in before:
        current = after_by_key.get(session.key)
        if current is None:
            continue  # ended meanwhile (the spawner settled it)
        if current.state == "settling":
            observe(("settling", current.key), plan.resettle, current)
        elif (current.user, current.server_name) not in servers:
            observe(("gone", current.key), plan.settle, current, session.billed_until)
    if stop_unpaid:
        for where, server in servers.items():
            if server.steady and where not in open_by_server and where not in ignored:
                observe(("unpaid", *where), plan.stop, where)
    for session in holding:
        where = (session.user, session.server_name)
        newer = open_by_server.get(where)
        if where not in servers or (newer is not None and newer.key != session.key):
            observe(("gpus", session.key), plan.release, session)
    return plan


class Reconciler(MeterJob):
    def __init__(self, meter):
        super().__init__(meter)
        self.suspects: dict[tuple, Sighting] = {}
        self.next_at: datetime | None = None  # None: at the next tick

    def due(self, now: datetime) -> bool:
        return self.next_at is None or now >= self.next_at

    async def run(self, now: datetime) -> ReconcilePlan | None:
        meter = self.meter
        before = await self.db(self.sessions.open_session_summaries)
        try:
            servers = await self.hub.active_servers()
        except HubUnavailable as error:
            self.log.warning("credits: reconciliation skipped, hub unavailable (%s)", error)
            self.next_at = now + timedelta(seconds=min(meter.reconcile_interval,
                                                       max(meter.interval, 1)))
            return None
        after = await self.db(self.sessions.open_session_summaries)
        holding = await self.db(self.sessions.ended_holding_gpus)
        stopping = meter.stops.pending
        plan = plan_reconciliation(
            before=before, servers=servers, after=after, holding=holding,
            suspects=self.suspects, now=now, grace=meter.reconcile_grace,
            stop_unpaid=meter.stop_unpaid_servers,
            ignore_servers={(s.user, s.server_name) for s in stopping.values()})
        self.suspects = plan.suspects
        meter.forget(still_open={s.key for s in after} | set(stopping))
        async with meter.lock:
            # Each is settled by key, and settling ends only a session still open: one
            # ended (or extended, which changes nothing here: its server is gone) meanwhile
            # is safe to pass again.
            for session, end in plan.settle:
                await self._settle_gone(session, end)
            for session in plan.resettle:
                await self._finish_settling(session)
            for session in plan.release:
                released = await self.db(self.sessions.release_gpus, session.key, now)
                self.log.info("credits: released %d GPU(s) of ended session %s (%s): its "
                              "server is gone", released, session.key,
                              server_label(session.user, session.server_name))
        for user, server_name in plan.stop:
            self.log.warning("credits: %s runs without an open session (unpaid); stopping it",
                             server_label(user, server_name))
        await asyncio.gather(*(meter.stops.stop_unpaid(user, server_name)
                               for user, server_name in plan.stop))
        wait = meter.reconcile_grace if plan.suspects else meter.reconcile_interval
        self.next_at = now + timedelta(seconds=min(wait, meter.reconcile_interval))
        return plan

    async def _settle_gone(self, session: SessionSummary, end: datetime | None) -> None:
        try:
            settled = await self.db(self.sessions.settle, session.key, reason="server_gone",
                                    end=end, actor=METER_ACTOR)
        except Exception:  # noqa: BLE001
            self.log.exception("credits: settling vanished session %s failed", session.key)
            return
        self.log.info("credits: %s is no longer running; session %s settled at %s "
                      "(charged %s units)", server_label(session.user, session.server_name),
                      session.key, settled.ended_at.isoformat() if settled.ended_at else "-",
                      settled.charged)

    async def _finish_settling(self, session: SessionSummary) -> None:
        try:
            await self.db(self.sessions.settle, session.key,
                          reason=session.end_reason or "server_gone",
                          actor=METER_ACTOR, release_gpus=False)
        except Exception:  # noqa: BLE001
            self.log.exception("credits: finishing settlement of %s failed", session.key)
            return
        self.log.info("credits: finished the interrupted settlement of session %s", session.key)
