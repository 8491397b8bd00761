"""The meter: every few seconds, bill running sessions, warn, auto-extend, stop what is unpaid.

Modelled on jupyterhub-idle-culler: one job, a ``PeriodicCallback`` in the
service's event loop, REST calls to the hub through Tornado's async HTTP
client, small pure helpers for every decision. Each tick:

1. ``record_billing(now)`` — ONE statement moves ``billed_until`` of every
   running session (a hub or service crash loses at most one tick), then ONE
   indexed range query fetches the sessions whose paid time ends within the
   largest warning / auto-extend lead;
2. sessions that opted in are auto-extended when quota and balance allow;
3. warnings at each threshold (default 600 s and 60 s before ``paid_until``)
   are logged and recorded once (``mark_warned``), so ``/api/me`` shows them;
4. sessions whose paid time has ended are settled at ``paid_until`` (keeping
   their GPUs assigned until the process is gone) and their servers stopped
   with ``DELETE /hub/api/users/{name}/server``; a stop that fails or is still
   in progress (202) is looked at again next tick;
5. reconciliation, at start and every ``reconcile_interval``: sessions open in
   the ledger whose server the hub no longer runs are settled at their
   ``billed_until``; servers running with no open session are stopped;
   GPUs of ended sessions whose server is gone are released. A mismatch must
   be seen twice, ``reconcile_grace`` apart, before anything is done about it,
   so a start or stop in flight is never mistaken for one;
6. idle GPUs (off unless ``idle_gpu_timeout`` is set), about once a minute: a
   running GPU session whose user's stored ``gpu_utilization`` samples cover
   the last ``idle_gpu_timeout`` seconds (at least ``IDLE_COVERAGE`` of its
   minutes) and show every minute below ``idle_gpu_threshold`` % is settled
   now with reason ``gpu_idle`` (what it did not use is voided, i.e. refunded)
   and its server stopped like an expired one. Missing samples never stop anything.

Time comes from an injected clock (the ledger's, or a test's fake one).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Bool, Float, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..catalog import InvalidHours, effective_quotas, minimum_hours, parse_hours
from ..earning import EarningService
from ..ledger import LedgerError
from ..sessions.store import Session, SessionError, SessionSummary
from .extension import decide_extension
from .hub import HubUnavailable, ServerState, servers_of

METER_ACTOR = "system:meter"
#: The share of an idle window's minutes that must have GPU samples before the
#: meter believes the GPUs idle (fewer: unknown, so the server is left alone).
IDLE_COVERAGE = 0.8
#: Seconds between idle-GPU checks (samples come once a minute).
IDLE_CHECK_EVERY = 60.0

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
    given = set(session.warnings or ())
    return sorted((t for t in set(thresholds) if left <= t and t not in given), reverse=True)


def wants_auto_extend(session: Session, now: datetime, lead: float) -> bool:
    return session.auto_extend and session.state == "running" and \
        0 < seconds_left(session, now) <= lead


def format_seconds(seconds: float) -> str:
    """A short human duration: "9 min 58 s", "45 s", "2 h 5 min"."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def server_label(user: str, server_name: str) -> str:
    return f"{user}/{server_name}" if server_name else user


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
            if server.settled and where not in open_by_server and where not in ignored:
                observe(("unpaid", *where), plan.stop, where)
    for session in holding:
        where = (session.user, session.server_name)
        newer = open_by_server.get(where)
        if where not in servers or (newer is not None and newer.key != session.key):
            observe(("gpus", session.key), plan.release, session)
    return plan


@dataclass
class PendingStop:
    key: str
    user: str
    server_name: str
    since: datetime
    attempts: int = 0
    why: str = "its paid time ended"


@dataclass
class TickReport:
    """What the last tick did (for logs, tests and the benchmark)."""

    at: datetime | None = None
    billed: int = 0
    due: int = 0
    warned: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)  # stopped: GPUs idle too long
    db_seconds: float = 0.0
    seconds: float = 0.0


# --- the meter ---------------------------------------------------------------------------------


class Meter(LoggingConfigurable):
    """Bills, warns, auto-extends and stops; one ``tick`` every ``interval`` seconds."""

    interval = Float(
        config=True,
        help="""Seconds between ticks. Billing is recorded each tick, so a crash loses at
        most this much; an expired server is stopped within about this long.
        Default: $JUPYTERHUB_CREDITS_METER_INTERVAL, else 5.""",
    )

    @default("interval")
    def _default_interval(self):
        try:
            return float(os.environ.get("JUPYTERHUB_CREDITS_METER_INTERVAL", "5"))
        except ValueError:
            return 5.0

    @validate("interval")
    def _check_interval(self, proposal):
        if not proposal.value > 0:
            raise ValueError(f"Meter.interval must be positive, not {proposal.value}")
        return proposal.value

    warning_thresholds = List(
        Int(),
        default_value=[600, 60],
        config=True,
        help="""Seconds before a session's paid time ends at which its user is warned
        (logged, and listed under the session's "warnings" in /api/me). Each is given
        once; again only after an extension moves the end past it.""",
    )

    auto_extend_hours = Unicode(
        "1",
        config=True,
        help="""Hours each auto-extension buys (a decimal string), for sessions that opted
        in. Less is bought when the quota or balance allows less (but at least the
        catalog's min_prepaid_minutes); nothing and a notice when not even that.""",
    )

    @validate("auto_extend_hours")
    def _check_auto_extend_hours(self, proposal):
        try:
            parse_hours(proposal.value)
        except InvalidHours as error:
            raise ValueError(f"Meter.auto_extend_hours: {error}") from None
        return proposal.value

    auto_extend_lead = Float(
        900,
        config=True,
        help="""Auto-extend a session once it has this many seconds or fewer of paid time
        left. Longer than the largest warning threshold, so that a session extended in
        time is never warned.""",
    )

    auto_extend_retry = Float(
        60,
        config=True,
        help="Seconds to wait before trying again an auto-extension that was refused.",
    )

    reconcile_interval = Float(
        60,
        config=True,
        help="""Seconds between reconciliations of open sessions with the servers the hub
        runs (also run at start-up).""",
    )

    reconcile_grace = Float(
        15,
        config=True,
        help="""Seconds a mismatch between the ledger and the hub must persist before the
        meter acts on it (settles a session, stops a server, releases GPUs), so that a
        start or stop in progress is never mistaken for one.""",
    )

    stop_unpaid_servers = Bool(
        True,
        config=True,
        help="""Stop servers the hub runs without any open session (e.g. one whose expiry
        stop was lost when the service restarted). Every credits spawn opens a session,
        so such a server runs unpaid.""",
    )

    idle_gpu_timeout = Float(
        0,
        config=True,
        help="""Stop a running GPU server whose GPUs stayed idle this many seconds (0, the
        default: never). Idle means every minute of the window sampled by the server's GPU
        sampler (gpu_utilization events) had a mean utilisation below idle_gpu_threshold,
        and samples cover at least 80% of the window's minutes: without samples nothing is
        stopped. The session is settled at that moment (reason "gpu_idle"), so the unused
        part of its hold is refunded. At least 60 when set; checked about once a minute.""",
    )

    @validate("idle_gpu_timeout")
    def _check_idle_gpu_timeout(self, proposal):
        value = proposal.value
        if value != 0 and not value >= 60:
            raise ValueError("Meter.idle_gpu_timeout must be 0 (off) or at least 60 seconds "
                             f"(GPU samples are per minute), not {value}")
        return value

    idle_gpu_threshold = Float(
        5,
        config=True,
        help="""Mean GPU utilisation (percent, over the server's GPUs) below which a sampled
        minute counts as idle for idle_gpu_timeout.""",
    )

    @validate("idle_gpu_threshold")
    def _check_idle_gpu_threshold(self, proposal):
        if not 0 <= proposal.value <= 100:
            raise ValueError("Meter.idle_gpu_threshold is a percentage (0 to 100), "
                             f"not {proposal.value}")
        return proposal.value

    def __init__(self, *, store, hub, catalog, clock: Callable[[], datetime] | None = None,
                 lock: asyncio.Lock | None = None, earning=None, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.ledger = store.ledger
        self.hub = hub
        self.catalog = catalog
        self.clock = clock or store.clock
        #: Serialises changes to sessions with the API's extend (one process).
        self.lock = lock or asyncio.Lock()
        self.stopping: dict[str, PendingStop] = {}
        self.suspects: dict[tuple, Sighting] = {}
        #: The meter's last word per session key (shown in /api/me as "notice").
        self.notices: dict[str, str] = {}
        self.next_reconcile: datetime | None = None  # None: at the next tick
        #: Reads GPU samples for idle_gpu_timeout (an EarningService; made when first needed).
        self.earning = earning
        self.next_idle_check: datetime | None = None  # None: at the next tick
        self.last: TickReport = TickReport()
        self._extend_retry_at: dict[str, datetime] = {}
        self._busy = False
        self._callback: PeriodicCallback | None = None

    # --- scheduling ----------------------------------------------------------------------

    def start(self) -> None:
        self._callback = PeriodicCallback(self.tick, self.interval * 1000)
        self._callback.start()
        IOLoop.current().add_callback(self.tick)
        self.log.info("credits meter: every %s s, warnings at %s s, reconcile every %s s",
                      self.interval, sorted(self.warning_thresholds, reverse=True),
                      self.reconcile_interval)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
            self._callback = None

    @property
    def window(self) -> float:
        """How far ahead of now a session's end needs attention (warnings, auto-extend)."""
        return max([0, *self.warning_thresholds, self.auto_extend_lead])

    async def tick(self) -> TickReport | None:
        """One pass; never raises (a failing pass is logged and the next one tries again)."""
        if self._busy:
            self.log.warning("credits meter: previous tick still running; skipping this one")
            return None
        self._busy = True
        try:
            return await self._tick()
        except Exception:  # noqa: BLE001 - the loop must survive anything
            self.log.exception("credits meter: tick failed; trying again next tick")
            return None
        finally:
            self._busy = False

    def scan(self, now: datetime) -> tuple[int, list[Session]]:
        """The tick's database work: bill every running session, fetch those due soon."""
        billed = self.store.record_billing(now)
        return billed, self.store.ending_by(now + timedelta(seconds=self.window))

    async def _tick(self) -> TickReport:
        started = time.perf_counter()
        now = self.clock()
        report = TickReport(at=now)
        if self.next_reconcile is None or now >= self.next_reconcile:
            # First, so that at start-up a session whose server vanished while the
            # service was down is seen with the billed_until from before the crash.
            await self.reconcile(now)
        scan_started = time.perf_counter()
        billed, due = await asyncio.to_thread(self.scan, now)
        report.billed, report.due = billed, len(due)
        report.db_seconds = time.perf_counter() - scan_started

        expired: list[Session] = []
        async with self.lock:
            for session in due:
                if is_expired(session, now):
                    if await self._expire(session):
                        expired.append(session)
                        report.expired.append(session.key)
                    continue
                if wants_auto_extend(session, now, self.auto_extend_lead):
                    extended = await self._auto_extend(session, now)
                    if extended is not None:
                        report.extended.append(session.key)
                        session = extended
                if await self._warn(session, now):
                    report.warned.append(session.key)
        if self.idle_gpu_timeout > 0 and (self.next_idle_check is None
                                          or now >= self.next_idle_check):
            self.next_idle_check = now + timedelta(seconds=IDLE_CHECK_EVERY)
            idle = await self._idle_sessions(now, skip={s.key for s in expired})
            async with self.lock:
                for session in idle:
                    if await self._stop_idle(session, now):
                        expired.append(session)
                        report.idle.append(session.key)
        # Stops go out together and outside the lock: the hub may take seconds to answer.
        await asyncio.gather(*(self._request_stop(self.stopping[s.key], first=True)
                               for s in expired if s.key in self.stopping))
        retries = [stop for stop in self.stopping.values()
                   if stop.key not in {s.key for s in expired}]
        await asyncio.gather(*(self._request_stop(stop, first=False) for stop in retries))
        report.seconds = time.perf_counter() - started
        self.last = report
        return report

    # --- warnings and auto-extend ---------------------------------------------------------

    async def _warn(self, session: Session, now: datetime) -> bool:
        crossed = due_warnings(session, now, self.warning_thresholds)
        if not crossed:
            return False
        left = seconds_left(session, now)
        message = (f"{format_seconds(left)} of paid time left (ends "
                   f"{session.paid_until:%H:%M:%S} UTC): extend the session or save your work; "
                   "the server is stopped when its paid time ends.")
        self.log.info("credits: warning %s (session %s): %s",
                      server_label(session.user, session.server_name), session.key, message)
        for threshold in crossed:
            await asyncio.to_thread(self.store.mark_warned, session.key, threshold)
        self.notices[session.key] = message
        return True

    async def _auto_extend(self, session: Session, now: datetime) -> Session | None:
        retry_at = self._extend_retry_at.get(session.key)
        if retry_at is not None and now < retry_at:
            return None
        where = server_label(session.user, session.server_name)
        try:
            model = await self.hub.user(session.user)
        except HubUnavailable as error:
            self.log.warning("credits: cannot auto-extend %s now (%s)", where, error)
            return None
        quotas = effective_quotas(self.catalog, (model or {}).get("groups") or [])
        available = await asyncio.to_thread(_available, self.ledger, session.account)
        wanted = parse_hours(self.auto_extend_hours)
        decision = decide_extension(rate=session.rate_per_hour, held=session.held, hours=wanted,
                                    available=available, quotas=quotas)
        if not decision.ok and decision.max_hours >= minimum_hours(quotas):
            # Buy what quota and balance allow rather than nothing.
            decision = decide_extension(rate=session.rate_per_hour, held=session.held,
                                        hours=min(wanted, decision.max_hours),
                                        available=available, quotas=quotas)
        if not decision.ok:
            return self._extension_refused(session, now, f"Auto-extend: {decision.message}")
        try:
            extended = await asyncio.to_thread(self.store.extend, session.key,
                                               decision.hold_units, actor=METER_ACTOR)
        except (LedgerError, SessionError) as error:
            return self._extension_refused(session, now, f"Auto-extend refused: {error}")
        await asyncio.to_thread(self.store.reset_warnings, session.key, now)
        self._extend_retry_at.pop(session.key, None)
        self.notices[session.key] = (f"Auto-extended: paid until "
                                     f"{extended.paid_until:%H:%M:%S} UTC.")
        self.log.info("credits: auto-extended %s (session %s) by %s units, paid until %s",
                      where, session.key, decision.hold_units, extended.paid_until.isoformat())
        return await asyncio.to_thread(self.store.get, session.key)

    def _extension_refused(self, session: Session, now: datetime, message: str) -> None:
        self._extend_retry_at[session.key] = now + timedelta(seconds=self.auto_extend_retry)
        self.notices[session.key] = message
        self.log.warning("credits: %s (session %s): %s",
                         server_label(session.user, session.server_name), session.key, message)
        return None

    # --- expiry -----------------------------------------------------------------------------

    async def _expire(self, session: Session) -> bool:
        """Settle at ``paid_until`` (GPUs stay assigned) and queue the server's stop."""
        return await self._settle_and_stop(
            session, reason="expired", end=session.paid_until, why="its paid time ended",
            notice="Paid time ended: the server is being stopped.")

    async def _settle_and_stop(self, session: Session, *, reason: str, end: datetime,
                               why: str, notice: str) -> bool:
        """Settle at ``end`` (GPUs stay assigned until the process is gone), queue the stop.

        False if settling failed, or if someone else (the spawner, an earlier
        settlement) ended the session first: its server is no business of ours then.
        """
        try:
            settled = await asyncio.to_thread(
                self.store.settle, session.key, reason=reason, end=end,
                actor=METER_ACTOR, release_gpus=False)
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
        self.stopping[session.key] = PendingStop(session.key, session.user,
                                                 session.server_name, self.clock(), why=why)
        return True

    # --- idle GPUs --------------------------------------------------------------------------

    async def _idle_sessions(self, now: datetime, skip: Iterable[str] = ()) -> list[Session]:
        """Running GPU sessions, ready for at least the timeout, whose GPUs stayed idle.

        Reads only (no lock): one query for the open sessions, one per user
        with candidates for the samples. A failure stops nothing.
        """
        timeout = timedelta(seconds=self.idle_gpu_timeout)
        skipped = set(skip) | set(self.stopping)
        try:
            candidates = [s for s in await asyncio.to_thread(self.store.open_sessions)
                          if s.state == "running" and s.gpus > 0 and s.ready_at is not None
                          and s.ready_at <= now - timeout and s.key not in skipped]
            if not candidates:
                return []
            if self.earning is None:
                self.earning = EarningService(self.ledger)
            samples = {}
            for user in {s.user for s in candidates}:
                samples[user] = await asyncio.to_thread(self.earning.gpu_minutes, user,
                                                        now - timeout)
        except Exception:  # noqa: BLE001 - leave everything running; next check tries again
            self.log.exception("credits: idle GPU check failed")
            return []
        return [session for session in candidates
                if gpus_idle(samples[session.user], now=now, timeout=self.idle_gpu_timeout,
                             threshold=self.idle_gpu_threshold)]

    async def _stop_idle(self, session: Session, now: datetime) -> bool:
        """Settle an idle session at ``now`` (the rest of its hold is voided) and queue its stop.

        Called under ``self.lock``; settling only ends a session still open, so one
        the user or the spawner ended meanwhile is left alone.
        """
        idle_for = format_seconds(self.idle_gpu_timeout)
        return await self._settle_and_stop(
            session, reason="gpu_idle", end=now,
            why=f"its GPUs stayed idle (below {self.idle_gpu_threshold:g}% utilisation) "
                f"for {idle_for}",
            notice=f"GPUs idle for {idle_for}: the server is being stopped and the unused "
                   "credits refunded.")

    async def _request_stop(self, stop: PendingStop, *, first: bool) -> None:
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
        current = await asyncio.to_thread(self.store.open_session, stop.user, stop.server_name)
        return current is None or current.key == stop.key

    def _stopped(self, stop: PendingStop, how: str) -> None:
        self.stopping.pop(stop.key, None)
        self.log.info("credits: %s %s after %s (%.1f s after the decision)",
                      server_label(stop.user, stop.server_name), how, stop.why,
                      (self.clock() - stop.since).total_seconds())

    # --- reconciliation ---------------------------------------------------------------------

    async def reconcile(self, now: datetime | None = None) -> ReconcilePlan | None:
        now = now or self.clock()
        before = await asyncio.to_thread(self.store.open_session_summaries)
        try:
            servers = await self.hub.active_servers()
        except HubUnavailable as error:
            self.log.warning("credits: reconciliation skipped, hub unavailable (%s)", error)
            self.next_reconcile = now + timedelta(seconds=min(self.reconcile_interval,
                                                              max(self.interval, 1)))
            return None
        after = await asyncio.to_thread(self.store.open_session_summaries)
        holding = await asyncio.to_thread(self.store.ended_holding_gpus)
        plan = plan_reconciliation(
            before=before, servers=servers, after=after, holding=holding,
            suspects=self.suspects, now=now, grace=self.reconcile_grace,
            stop_unpaid=self.stop_unpaid_servers,
            ignore_servers={(s.user, s.server_name) for s in self.stopping.values()})
        self.suspects = plan.suspects
        # Forget what the meter said about sessions that are over.
        still_open = {s.key for s in after} | set(self.stopping)
        for memo in (self.notices, self._extend_retry_at):
            for key in [key for key in memo if key not in still_open]:
                del memo[key]
        async with self.lock:
            for session, end in plan.settle:
                await self._settle_gone(session, end)
            for session in plan.resettle:
                await self._finish_settling(session)
            for session in plan.release:
                released = await asyncio.to_thread(self.store.release_gpus, session.key, now)
                self.log.info("credits: released %d GPU(s) of ended session %s (%s): its "
                              "server is gone", released, session.key,
                              server_label(session.user, session.server_name))
        for user, server_name in plan.stop:
            self.log.warning("credits: %s runs without an open session (unpaid); stopping it",
                             server_label(user, server_name))
        await asyncio.gather(*(self._stop_unpaid(user, name) for user, name in plan.stop))
        wait = self.reconcile_grace if plan.suspects else self.reconcile_interval
        self.next_reconcile = now + timedelta(seconds=min(wait, self.reconcile_interval))
        return plan

    async def _settle_gone(self, session: SessionSummary, end: datetime | None) -> None:
        try:
            settled = await asyncio.to_thread(
                self.store.settle, session.key, reason="server_gone", end=end,
                actor=METER_ACTOR)
        except Exception:  # noqa: BLE001
            self.log.exception("credits: settling vanished session %s failed", session.key)
            return
        self.log.info("credits: %s is no longer running; session %s settled at %s "
                      "(charged %s units)", server_label(session.user, session.server_name),
                      session.key, settled.ended_at.isoformat() if settled.ended_at else "-",
                      settled.charged)

    async def _finish_settling(self, session: SessionSummary) -> None:
        try:
            await asyncio.to_thread(self.store.settle, session.key,
                                    reason=session.end_reason or "server_gone",
                                    actor=METER_ACTOR, release_gpus=False)
        except Exception:  # noqa: BLE001
            self.log.exception("credits: finishing settlement of %s failed", session.key)
            return
        self.log.info("credits: finished the interrupted settlement of session %s", session.key)

    async def _stop_unpaid(self, user: str, server_name: str) -> None:
        try:
            await self.hub.stop_server(user, server_name)
        except HubUnavailable as error:
            self.log.warning("credits: stopping unpaid %s failed (%s)",
                             server_label(user, server_name), error)


def _available(ledger, account: str) -> int:
    try:
        return ledger.balance(account).available
    except LedgerError:
        return 0


__all__ = ["Meter", "ReconcilePlan", "Sighting", "TickReport", "due_warnings", "format_seconds",
           "gpus_idle", "is_expired", "plan_reconciliation", "seconds_left", "wants_auto_extend"]
