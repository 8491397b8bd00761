"""``Meter``: the coordinator. Its traits are the meter's configuration (``c.Meter.…``).

Each tick, in order: reconciliation when due (``reconcile.py``); ONE
statement bills every running session (``record_billing``); then, under the
lock the API's extend also takes, the sessions whose paid time ends within
the largest warning / auto-extend lead are read — so every decision is made
on rows no extension can have changed since — and each is expired
(``expiry.py``), auto-extended (``autoextend.py``) or warned (``expiry.py``);
idle GPUs about once a minute (``idle.py``); finally the stops just decided
and those still pending go to the hub, outside the lock (``stops.py``).
Each session read as due also gets a timer for its next exact moment, a
warning or the end of its paid time (``schedule.py``): the stop is decided at
``paid_until`` itself, not at the next tick, and the tick stays the fallback.
A stop asked for through the API (``stop_now``) is settled under the same
lock and sent at once, not at the next tick.

All of the meter's blocking work (the database, looking up the hub's host
name) runs on its own small thread pool, never on asyncio's default one,
which the API's handlers share: a flood of requests cannot starve billing
and stops.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import Histogram
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Bool, Float, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ...catalog import InvalidHours, parse_hours
from ...sessions.store import Session
from .autoextend import AutoExtender, wants_auto_extend
from .common import METER_ACTOR
from .expiry import Expiry, is_expired
from .idle import IdleGpus
from .reconcile import ReconcilePlan, Reconciler
from .schedule import Schedule
from .stops import PendingStop, StopQueue

#: Threads of the meter's own pool (database work, the hub's host name): the tick's
#: work is sequential, and one more lets an extension (under the meter's lock) run beside it.
DB_THREADS = 2
#: How many stops asked for through the API the meter remembers (to answer a repeat).
STOPPED_ON_REQUEST_KEPT = 10_000
#: How long each tick takes, in the service process (exposed by ``service/metrics.py`` from
#: its own registry; ``registry=None`` keeps it out of prometheus_client's global one).
TICK_SECONDS = Histogram("jupyterhub_credits_meter_tick_seconds", "Duration of a meter tick.",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                         registry=None)


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
        catalog's min_extension_minutes); nothing and a notice when not even that.""",
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

    reconcile_page_size = Int(
        25,
        config=True,
        help="""Users per page of the hub's list of active servers in a full reconciliation
        (at start-up, after the hub or the database failed a reconciliation step, and when
        more mismatches await confirmation than one tick checks). Each page costs the hub
        a sort and a count of every user with an active server, whatever its size, plus
        its users: at 10,000 users on 2 cores, 25 a page held the hub's event loop
        ~43 ms (50: ~59 ms, 200: ~150 ms; bench/hub_scale.py).""",
    )

    @validate("reconcile_page_size")
    def _check_reconcile_page_size(self, proposal):
        if not 1 <= proposal.value <= 200:  # the hub's default api_page_max_limit
            raise ValueError("Meter.reconcile_page_size must be 1 to 200, "
                             f"not {proposal.value}")
        return proposal.value

    reconcile_users_per_tick = Int(
        10,
        config=True,
        help="""Users checked with the hub each tick between full reconciliations, one
        GET /hub/api/users/{name} each (its cost to the hub does not grow with the number
        of users: 2-5 ms of its event loop each): first those with a mismatch whose grace
        is over, then users of ended sessions still holding GPUs, then the next users with
        an open session in name order. A walk over all of them starts at most every
        reconcile_interval; with N such users it takes about N / reconcile_users_per_tick
        ticks (the default: 100 users in 50 s, 1,000 in about 8 minutes). Raise it where
        many users run servers and the hub has room.""",
    )

    @validate("reconcile_users_per_tick")
    def _check_reconcile_users_per_tick(self, proposal):
        if not proposal.value >= 1:
            raise ValueError("Meter.reconcile_users_per_tick must be at least 1, "
                             f"not {proposal.value}")
        return proposal.value

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

    def __init__(self, *, sessions, hub, catalog, clock: Callable[[], datetime] | None = None,
                 lock: asyncio.Lock | None = None, earning=None, **kwargs):
        super().__init__(**kwargs)
        self.sessions = sessions
        self.ledger = sessions.ledger
        self.hub = hub
        self.catalog = catalog
        self.clock = clock or sessions.clock
        #: Serialises changes to sessions with the API's extend (one process).
        self.lock = lock or asyncio.Lock()
        #: The meter's last word per session key (shown in /api/me as "notice").
        self.notices: dict[str, str] = {}
        self.last: TickReport = TickReport()
        # Threads start on first use and end with the executor.
        self._executor = ThreadPoolExecutor(max_workers=DB_THREADS,
                                            thread_name_prefix="credits-meter")
        if hub is not None:  # its host name, too, is looked up on the meter's threads
            hub.resolve_names_in(self._executor)
        self.stops = StopQueue(self)
        self.expiry = Expiry(self)
        self.auto_extender = AutoExtender(self)
        self.idle = IdleGpus(self, earning)
        self.reconciler = Reconciler(self)
        self.schedule = Schedule(self)
        self._busy = False
        self._callback: PeriodicCallback | None = None
        #: (user, server name) → key of the session ``stop_now`` last settled there.
        self._stopped_on_request: dict[tuple[str, str], str] = {}

    # --- what the jobs share -------------------------------------------------------------

    async def db(self, function, *args, **kwargs):
        """Run blocking database work on the meter's own threads (asyncio's default pool is
        shared with every API request, so a burst of them could hold up billing and stops).

        The API's extend uses it too for its work under ``lock``: the lock must
        never wait on a pool the meter does not control.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor,
                                          functools.partial(function, *args, **kwargs))

    @property
    def stopping(self) -> dict[str, PendingStop]:
        """Stops decided and not yet confirmed by the hub, by session key."""
        return self.stops.pending

    @property
    def earning(self):
        """Where idle-GPU samples are read (an ``EarningService``)."""
        return self.idle.earning

    @earning.setter
    def earning(self, service) -> None:
        self.idle.earning = service

    async def stop_now(self, session: Session, *, reason: str, why: str, notice: str,
                       actor: str = METER_ACTOR) -> Session | None:
        """Settle ``session`` now with ``reason`` and ask the hub to stop its server at once
        (a stop asked for by its owner or an admin, not decided by a tick).

        Settled under the lock (as expiry is), so an extension is either in the
        settlement or refused; the stop goes out right away, outside the lock,
        and stays queued for the ticks until the hub confirms it. Returns the
        settled session, or None when it was already ending or ended (a second
        stop, expiry, the hub) or settling failed (reconciliation finishes it).
        ``actor`` is who the ledger records as settling it (``user:<name>``).
        """
        async with self.lock:
            current = await self.db(self.sessions.get, session.key)  # as it is now
            if current is None or current.state not in ("starting", "running"):
                return None
            settled = await self.stops.settle_and_stop(current, reason=reason, end=self.clock(),
                                                       why=why, notice=notice, actor=actor)
        if not settled:
            return None
        where = (session.user, session.server_name)
        self._stopped_on_request.pop(where, None)  # the newest last
        self._stopped_on_request[where] = session.key
        while len(self._stopped_on_request) > STOPPED_ON_REQUEST_KEPT:
            del self._stopped_on_request[next(iter(self._stopped_on_request))]
        await self.stops.send_now(session.key)
        return await self.db(self.sessions.get, session.key)

    def stopped_on_request(self, user: str, server_name: str) -> str | None:
        """The key of the last session of this server that ``stop_now`` settled (recent ones
        only, in this process), so a second stop can say it already happened."""
        return self._stopped_on_request.get((user, server_name))

    def forget(self, still_open: set[str]) -> None:
        """Drop what the meter said about sessions that are over."""
        for memo in (self.notices, self.auto_extender.retry_at):
            for key in [key for key in memo if key not in still_open]:
                del memo[key]

    # --- scheduling ----------------------------------------------------------------------

    def start(self) -> None:
        self.schedule.armed = True  # real time from here on: timers mean something
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
        self.schedule.armed = False
        self.schedule.clear()
        self._executor.shutdown(wait=False)

    @property
    def window(self) -> float:
        """How far ahead of now a session's end needs attention (warnings, auto-extend).

        At least two intervals, so that every paid time ending before the next tick
        has its timer armed by this one."""
        return max([0, *self.warning_thresholds, self.auto_extend_lead, 2 * self.interval])

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
        """The tick's database work in one call (what ``bench/meter.py`` measures): bill
        every running session, then fetch those due soon. A tick does the second part
        under its lock."""
        return self.sessions.record_billing(now), self.due(now)

    def due(self, now: datetime) -> list[Session]:
        """Running sessions whose paid time ends within the window, soonest first."""
        return self.sessions.ending_by(now + timedelta(seconds=self.window))

    async def attend(self, key: str) -> TickReport | None:
        """Attend to one session at its scheduled moment (``Schedule`` calls it): expire it,
        auto-extend or warn it as a tick would, then send its stop at once. Never raises."""
        try:
            report = TickReport(at=self.clock())
            async with self.lock:
                session = await self.db(self.sessions.get, key)  # as it is now
                if session is None or session.state != "running":
                    self.schedule.cancel(key)
                    return None
                report.at = now = self.clock()
                decided = await self._attend(session, now, report)
            if decided:
                await self.stops.send_now(key)
            return report
        except Exception:  # noqa: BLE001 - the next tick tries again
            self.log.exception("credits meter: attending to session %s failed", key)
            return None

    async def _attend(self, session: Session, now: datetime, report: TickReport) -> bool:
        """Expire, auto-extend or warn one due session (under the lock); whether a stop was
        decided. Its timer is armed again for its next moment."""
        if is_expired(session, now):
            self.schedule.cancel(session.key)
            if await self.expiry.expire(session):
                report.expired.append(session.key)
                return True
            return False
        if wants_auto_extend(session, now, self.auto_extend_lead):
            extended = await self.auto_extender.extend(session, now)
            if extended is not None:
                report.extended.append(session.key)
                session = extended
        if await self.expiry.warn(session, now):
            report.warned.append(session.key)
        self.schedule.plan(session)  # thresholds just crossed are behind ``now``: not armed
        return False

    async def reconcile(self, now: datetime | None = None) -> ReconcilePlan | None:
        return await self.reconciler.run(now or self.clock())

    async def _tick(self) -> TickReport:
        started = time.perf_counter()
        now = self.clock()
        report = TickReport(at=now)
        if self.reconciler.due(now):
            # First, so that at start-up a session whose server vanished while the
            # service was down is seen with the billed_until from before the crash.
            await self.reconciler.run(now)
        db_started = time.perf_counter()
        report.billed = await self.db(self.sessions.record_billing, now)
        report.db_seconds = time.perf_counter() - db_started

        decided: list[str] = []  # stops decided this tick
        async with self.lock:
            # Read under the lock: an extension confirmed while the meter waited for it is
            # in these rows, so it is never settled at the old paid_until, and an
            # auto-extension counts every hold the session has.
            db_started = time.perf_counter()
            due = await self.db(self.due, now)
            report.db_seconds += time.perf_counter() - db_started
            report.due = len(due)
            for session in due:
                if await self._attend(session, now, report):
                    decided.append(session.key)
        if self.idle.due(now):
            idle = await self.idle.find(now, skip=decided)
            async with self.lock:
                for found in idle:
                    session = await self.db(self.sessions.get, found.key)  # as it is now
                    if session is None or session.state != "running":
                        continue
                    if await self.idle.stop(session, now):
                        decided.append(session.key)
                        report.idle.append(session.key)
        # Stops go out together and outside the lock: the hub may take seconds to answer.
        await self.stops.send(decided)
        report.seconds = time.perf_counter() - started
        TICK_SECONDS.observe(report.seconds)
        self.last = report
        return report
