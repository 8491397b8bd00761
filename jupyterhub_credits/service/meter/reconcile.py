"""Reconciliation: make the ledger's open sessions agree with the servers the hub runs.

Sessions open in the ledger whose server the hub no longer runs are settled at
their ``billed_until``; servers running with no open session are stopped; GPUs
of ended sessions whose server is gone are released; interrupted settlements
are finished. A mismatch must be seen twice, ``reconcile_grace`` apart, before
anything is done about it, so a start or stop in flight is never mistaken for one.

Two ways of looking, because of what each costs the hub (bench/hub_scale.py):
one page of ``GET /hub/api/users?state=active`` makes the hub sort and count
every user with an active server, whatever the page size (at 10,000 users on 2
cores its event loop stalled ~25 ms for a page of 1, ~43 ms for 25, ~150 ms for
200), while ``GET /hub/api/users/{name}`` costs the same however many users
there are (~2–5 ms).

- A full pass lists every active server, ``Meter.reconcile_page_size`` users a
  page, between two reads of every open session: at start-up (before the first
  billing, so a server that vanished while the service was down is charged to
  the tick before the crash), after a step failed (the hub or the database was
  unreachable: servers may have died meanwhile), and when more mismatches await
  confirmation than one tick checks. It is also the only way to find a server
  whose user has no open session at all: such a server runs only when a stop
  the meter decided was lost, i.e. across a restart of the service.
- Otherwise each tick looks at a few users, one ``GET /users/{name}`` each,
  between two indexed reads of their open sessions. The walk: the next
  ``Meter.reconcile_users_per_tick`` users with an open session, in name
  order, are asked about at the end of one step and their answers used by the
  next (after-read then), so that no tick waits for the hub on its behalf; a
  walk over all of them starts again at most every ``reconcile_interval``.
  Checked at once, at most as many again: users with a mismatch whose grace is
  over (the confirmation), and every ``reconcile_interval`` users of ended
  sessions still holding GPUs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ...sessions.store import Session, SessionSummary
from ..hub import HubUnavailable, ServerState, servers_of
from .common import METER_ACTOR, MeterJob, server_label


@dataclass(frozen=True)
class Sighting:
    """When a mismatch was first seen, and the session's ``billed_until`` then."""

    first: datetime
    billed_until: datetime | None = None
    #: The user whose check with the hub confirms it (None: the ledger alone decides).
    user: str | None = None


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

    ``before`` is read before the hub's servers and ``after`` after them:
    a session counts as vanished only if it was open in both reads and its
    server is missing; a server counts as unpaid only if no session was open
    for it in either read (one open before and ended after is a stop in
    flight). Every mismatch must persist ``grace`` seconds (it is remembered in
    ``suspects``, keyed by what it is about) before it is acted on. A vanished
    session ends at the ``billed_until`` it had when first seen vanished:
    billing after that was for a server already gone (e.g. after a hub
    restart, the last tick before the crash).
    ``servers`` may be those of a few users only: ``before`` and ``after`` are
    then those users' sessions.
    """
    plan = ReconcilePlan()
    before = list(before)
    after_by_key = {s.key: s for s in after}
    open_before = {(s.user, s.server_name) for s in before}
    open_by_server = {(s.user, s.server_name): s for s in after}
    ignored = set(ignore_servers)

    def observe(mark: tuple, action: list, item, user: str | None, billed_until=None) -> None:
        sighting = suspects.get(mark) or Sighting(now, billed_until, user)
        if (now - sighting.first).total_seconds() >= grace:
            action.append(item if mark[0] != "gone" else (item, sighting.billed_until))
        else:
            plan.suspects[mark] = sighting

    for session in before:
        current = after_by_key.get(session.key)
        if current is None:
            continue  # ended meanwhile (the spawner settled it)
        if current.state == "settling":
            observe(("settling", current.key), plan.resettle, current, None)
        elif (current.user, current.server_name) not in servers:
            observe(("gone", current.key), plan.settle, current, current.user,
                    session.billed_until)
    if stop_unpaid:
        for where, server in servers.items():
            if server.steady and where not in open_by_server and where not in open_before \
                    and where not in ignored:
                observe(("unpaid", *where), plan.stop, where, where[0])
    for session in holding:
        where = (session.user, session.server_name)
        newer = open_by_server.get(where)
        if where not in servers or (newer is not None and newer.key != session.key):
            observe(("gpus", session.key), plan.release, session, session.user)
    return plan


def _unique(*groups: Iterable[SessionSummary]) -> list[SessionSummary]:
    by_key: dict[str, SessionSummary] = {}
    for group in groups:
        for session in group:
            by_key.setdefault(session.key, session)
    return list(by_key.values())


@dataclass
class _Ahead:
    """The walk's users asked for ahead: their sessions read before the requests went out."""

    at: datetime
    users: list[str]
    before: list[SessionSummary]
    answers: asyncio.Future
    last: bool  # the walk's last users


class Reconciler(MeterJob):
    def __init__(self, meter):
        super().__init__(meter)
        self.suspects: dict[tuple, Sighting] = {}
        #: At start-up, and after a failed step: the next step lists every server.
        self.full_pass_needed = True
        #: The walk over users with an open session: the last user checked, when this
        #: walk started (None: none under way), when the next may start, the open
        #: sessions it saw (so the meter forgets only notices of sessions that are over).
        self.walk_after: str | None = None
        self.walk_started: datetime | None = None
        self.next_walk_at: datetime | None = None
        self.walk_keys: set[str] = set()
        #: When to look again at interrupted settlements and ended sessions holding GPUs.
        self.next_housekeeping_at: datetime | None = None
        #: The walk's next users, asked for at the end of one step and used by the next, so
        #: that no tick waits for the hub on the walk's behalf.
        self.ahead: _Ahead | None = None
        #: The users the last step asked the hub about, one request each (a full pass's
        #: pages are not listed here).
        self.last_checked: list[str] = []

    def due(self, now: datetime) -> bool:
        """Every tick: each does a bounded part (a full pass only when one is needed)."""
        return True

    async def run(self, now: datetime) -> ReconcilePlan | None:
        self.last_checked = []
        try:
            if self.full_pass_needed or self._too_many_due(now):
                return await self.full_pass(now)
            return await self.check_some(now)
        except HubUnavailable as error:
            self.log.warning("credits: reconciliation step skipped, hub unavailable (%s); "
                             "the next one lists every server", error)
            self._fail()
            return None
        except Exception:
            self._fail()  # e.g. the database: servers may have died meanwhile
            raise

    def _fail(self) -> None:
        self.full_pass_needed = True
        if self.ahead is not None:
            self.ahead.answers.cancel()
            self.ahead = None

    def _due_users(self, now: datetime) -> list[str]:
        """Users of hub mismatches whose grace is over, the longest waiting first."""
        users: list[str] = []
        for mark, sighting in sorted(self.suspects.items(), key=lambda item: item[1].first):
            if mark[0] in ("gone", "unpaid") and sighting.user not in users and \
                    (now - sighting.first).total_seconds() >= self.meter.reconcile_grace:
                users.append(sighting.user)
        return users

    def _too_many_due(self, now: datetime) -> bool:
        return len(self._due_users(now)) > self.meter.reconcile_users_per_tick

    # --- a full pass ---------------------------------------------------------------------

    async def full_pass(self, now: datetime) -> ReconcilePlan:
        meter = self.meter
        before = await self.db(self.sessions.open_session_summaries)
        servers = await self.hub.active_servers(meter.reconcile_page_size)
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
        await self._apply(plan, now)
        self.full_pass_needed = False
        if self.ahead is not None:
            self.ahead.answers.cancel()
            self.ahead = None
        # Everything was just looked at: the walk and the housekeeping start afresh.
        self.walk_started, self.walk_after = None, None
        self.next_walk_at = now + timedelta(seconds=meter.reconcile_interval)
        self.next_housekeeping_at = self._next_housekeeping(now, plan.suspects)
        return plan

    # --- a few users -----------------------------------------------------------------------

    async def check_some(self, now: datetime) -> ReconcilePlan | None:
        """The walk's users asked for in the previous step, then, waiting for the hub, those
        whose mismatch's grace is over and (every reconcile_interval) those of ended
        sessions holding GPUs; finally the walk's next users are asked for, not waited for."""
        plan = ReconcilePlan()
        if self.ahead is not None:
            ahead, self.ahead = self.ahead, None
            answers = await ahead.answers  # asked a tick ago: normally long there
            after = await self.db(self.sessions.open_session_summaries_of, ahead.users)
            # Decided as of when the hub answered (its grace counts from then).
            self._merge(plan, await self._decide(ahead.at, ahead.users, ahead.before, answers,
                                                 after))
            self.walk_keys.update(s.key for s in after)
            self.walk_after = ahead.users[-1]
            if ahead.last:
                await self._end_walk()
        self._merge(plan, await self._check_due(now))
        await self._ask_ahead(now)
        return plan if plan.settle or plan.resettle or plan.release or plan.stop or \
            plan.suspects else None

    async def _check_due(self, now: datetime) -> ReconcilePlan:
        """Users whose mismatch's grace is over, then users of ended sessions holding GPUs
        and interrupted settlements (every reconcile_interval): checked now."""
        budget = self.meter.reconcile_users_per_tick
        users = self._due_users(now)[:budget]
        housekeeping = self.next_housekeeping_at is None or now >= self.next_housekeeping_at
        settling: list[SessionSummary] = []
        holding: list[Session] = []
        if housekeeping:
            settling = await self.db(self.sessions.settling_summaries)
            holding = await self.db(self.sessions.ended_holding_gpus)
            for session in holding:
                if session.user not in users and len(users) < budget:
                    users.append(session.user)
        plan = ReconcilePlan()
        if users or settling:
            before = await self.db(self.sessions.open_session_summaries_of, users)
            answers = await asyncio.gather(*(self.hub.user(user) for user in users))
            after = await self.db(self.sessions.open_session_summaries_of, users)
            plan = await self._decide(now, users, before, answers, after, settling=settling,
                                      holding=holding, housekeeping=housekeeping)
        if housekeeping:
            left_out = any(s.user not in users for s in holding)
            self.next_housekeeping_at = now if left_out else \
                self._next_housekeeping(now, self.suspects)
        return plan

    async def _ask_ahead(self, now: datetime) -> None:
        """Read the walk's next users' open sessions and ask the hub about them, without
        waiting: the next step uses the answers."""
        meter = self.meter
        if self.walk_started is None and (self.next_walk_at is None or now >= self.next_walk_at):
            self.walk_started, self.walk_after, self.walk_keys = now, None, set()
        if self.walk_started is None:
            return
        wanted = meter.reconcile_users_per_tick
        users = await self.db(self.sessions.users_with_open_sessions_after, self.walk_after,
                              wanted)
        if not users:
            await self._end_walk()
            return
        before = await self.db(self.sessions.open_session_summaries_of, users)
        answers = asyncio.ensure_future(
            asyncio.gather(*(self.hub.user(user) for user in users)))
        answers.add_done_callback(_retrieve)  # a failure is raised where it is awaited
        self.ahead = _Ahead(now, users, before, answers, last=len(users) < wanted)
        self.last_checked += users

    async def _decide(self, now: datetime, users: list[str], before: list[SessionSummary],
                      answers: list[dict | None], after: list[SessionSummary], *,
                      settling: list[SessionSummary] = (), holding: list[Session] = (),
                      housekeeping: bool = False) -> ReconcilePlan:
        """Compare what the hub said of ``users`` with their sessions read before and after
        it; act on what outlasted its grace; remember the rest."""
        meter = self.meter
        servers: dict[tuple[str, str], ServerState] = {}
        for model in answers:
            if model is not None:  # None: no such user any more, so no server either
                servers.update(servers_of(model))
        checked = set(users)
        if answers:
            self.last_checked += [user for user in users if user not in self.last_checked]
        # Each suspect about what was just looked at is decided again (kept, acted on or
        # forgotten); the others wait for their own check.
        looked_at = {mark for mark, sighting in self.suspects.items()
                     if (mark[0] in ("gone", "unpaid") and sighting.user in checked)
                     or (housekeeping and mark[0] == "settling")
                     or (housekeeping and mark[0] == "gpus" and sighting.user in checked)}
        stopping = meter.stops.pending
        plan = plan_reconciliation(
            before=_unique(before, settling),
            servers=servers,
            after=_unique(after, [s for s in settling if s.user not in checked]),
            holding=[s for s in holding if s.user in checked],
            suspects=self.suspects,
            now=now, grace=meter.reconcile_grace, stop_unpaid=meter.stop_unpaid_servers,
            ignore_servers={(s.user, s.server_name) for s in stopping.values()})
        self.suspects = {mark: sighting for mark, sighting in self.suspects.items()
                         if mark not in looked_at} | plan.suspects
        await self._apply(plan, now)
        return plan

    @staticmethod
    def _merge(into: ReconcilePlan, plan: ReconcilePlan) -> None:
        into.settle += plan.settle
        into.resettle += plan.resettle
        into.release += plan.release
        into.stop += plan.stop
        into.suspects.update(plan.suspects)

    def _next_housekeeping(self, now: datetime, suspects: Mapping[tuple, Sighting]) -> datetime:
        """Again after the grace when a settlement or GPUs wait for it, else after the
        interval."""
        meter = self.meter
        waiting = any(mark[0] in ("settling", "gpus") for mark in suspects)
        wait = meter.reconcile_grace if waiting else meter.reconcile_interval
        return now + timedelta(seconds=min(wait, meter.reconcile_interval))

    async def _end_walk(self) -> None:
        """Every user with an open session was checked: forget what the meter said about
        sessions that are over, and start the next walk at most reconcile_interval later."""
        meter = self.meter
        remembered = set(meter.notices) | set(meter.auto_extender.retry_at)
        still_open = self.walk_keys | await self.db(self.sessions.open_keys,
                                                    remembered - self.walk_keys)
        meter.forget(still_open=still_open | set(meter.stops.pending))
        self.next_walk_at = self.walk_started + timedelta(seconds=meter.reconcile_interval)
        self.walk_started, self.walk_after, self.walk_keys = None, None, set()

    # --- acting ----------------------------------------------------------------------------

    async def _apply(self, plan: ReconcilePlan, now: datetime) -> None:
        meter = self.meter
        if plan.settle or plan.resettle or plan.release:
            async with meter.lock:
                # Each is settled by key, and settling ends only a session still open: one
                # ended (or extended, which changes nothing here: its server is gone)
                # meanwhile is safe to pass again.
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


def _retrieve(future: asyncio.Future) -> None:
    """Mark a failed request as seen, so that asyncio does not log it as never retrieved
    when the walk is dropped before using it (the step that awaits it sees it)."""
    if not future.cancelled():
        future.exception()
