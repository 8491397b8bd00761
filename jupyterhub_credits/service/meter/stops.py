"""The stop queue: settle a session, then ask the hub to stop its server until it is gone.

A stop is decided under the meter's lock (the session is settled first, so
nothing more is billed) and sent outside it, since the hub may take seconds
to answer. ``DELETE /hub/api/users/{name}/server`` answering 204 or 404 ends
the stop; a 202 (still stopping), an error or an unreachable hub leaves it
queued and the next tick asks again — unless the server is gone by then, or
was started again with a new, paid session, which is no business of the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from ...sessions.store import Session
from ..hub import HubUnavailable, servers_of
from .common import METER_ACTOR, MeterJob, server_label


@dataclass
class PendingStop:
    key: str
    user: str
    server_name: str
    since: datetime
    attempts: int = 0
    why: str = "its paid time ended"


class StopQueue(MeterJob):
    def __init__(self, meter):
        super().__init__(meter)
        #: Session key → the stop still to be confirmed.
        self.pending: dict[str, PendingStop] = {}

    async def settle_and_stop(self, session: Session, *, reason: str, end: datetime,
                              why: str, notice: str, actor: str = METER_ACTOR) -> bool:
        """Settle at ``end`` (GPUs stay assigned until the process is gone), queue the stop.

        Called under the meter's lock. False if settling failed, or if someone
        else (the spawner, an earlier settlement) ended the session first: its
        server is no business of ours then. ``actor``: the meter, or the person
        whose request this is (``Meter.stop_now``).
        """
        try:
            settled = await self.db(self.sessions.settle, session.key, reason=reason, end=end,
                                    actor=actor, release_gpus=False)
        except Exception:  # noqa: BLE001 - next tick (or reconciliation) tries again
            self.log.exception("credits: settling session %s (%s) failed", session.key, reason)
            return False
        if settled.end_reason != reason:
            self.log.info("credits: session %s was already ended (%s)", session.key,
                          settled.end_reason)
            return False
        self.log.info("credits: %s: %s (at %s); settled (charged %s units of %s held, the "
                      "rest refunded); stopping its server",
                      server_label(session.user, session.server_name), why,
                      settled.ended_at.isoformat(), settled.charged, settled.held)
        self.notices[session.key] = notice
        self.pending[session.key] = PendingStop(session.key, session.user, session.server_name,
                                                self.meter.clock(), why=why)
        return True

    async def send(self, decided: Iterable[str]) -> None:
        """Ask the hub: first for the stops just ``decided`` (keys), again for older ones."""
        decided = set(decided)
        await asyncio.gather(*(self._request(self.pending[key], first=True)
                               for key in decided if key in self.pending))
        retries = [stop for stop in self.pending.values() if stop.key not in decided]
        await asyncio.gather(*(self._request(stop, first=False) for stop in retries))

    async def send_now(self, key: str) -> None:
        """Ask the hub at once for one stop just decided (outside a tick, e.g. a user's stop);
        if the hub does not confirm, the next tick asks again."""
        stop = self.pending.get(key)
        if stop is not None:
            await self._request(stop, first=True)

    async def stop_unpaid(self, user: str, server_name: str) -> None:
        """Stop a server that runs without an open session (once; reconciliation repeats)."""
        try:
            await self.hub.stop_server(user, server_name)
        except HubUnavailable as error:
            self.log.warning("credits: stopping unpaid %s failed (%s)",
                             server_label(user, server_name), error)

    async def _request(self, stop: PendingStop, *, first: bool) -> None:
        where = server_label(stop.user, stop.server_name)
        try:
            if not first and not await self._still_ours(stop):
                self._stopped(stop, "server gone")
                return
            stop.attempts += 1
            status = await self.hub.stop_server(stop.user, stop.server_name)
        except HubUnavailable as error:
            self.log.warning("credits: stopping %s failed (%s); trying again next tick",
                             where, error)
            return
        if status in (204, 404):
            self._stopped(stop, "stopped" if status == 204 else "no such server")
        else:
            self.log.debug("credits: %s is still stopping (HTTP %s)", where, status)

    async def _still_ours(self, stop: PendingStop) -> bool:
        """Is the server we are stopping still up (not gone, not replaced by a new start)?"""
        model = await self.hub.user(stop.user)
        server = servers_of(model).get((stop.user, stop.server_name)) if model else None
        if server is None or server.pending == "spawn":
            return False
        current = await self.db(self.sessions.open_session, stop.user, stop.server_name)
        return current is None or current.key == stop.key

    def _stopped(self, stop: PendingStop, how: str) -> None:
        self.pending.pop(stop.key, None)
        self.log.info("credits: %s %s after %s (%.1f s after the decision)",
                      server_label(stop.user, stop.server_name), how, stop.why,
                      (self.meter.clock() - stop.since).total_seconds())
