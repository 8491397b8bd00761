"""Prometheus metrics: ``GET /services/credits/metrics`` (scope ``custom:credits:metrics``).

Totals are read from the database when Prometheus scrapes, not counted in
this process: stops the hub process settles (a user stopping a server from
the hub's home page), sessions of a service that restarted, and transfers
made by the command line all count, and every service replica answers the
same. One scrape's read is a handful of aggregate queries in one snapshot
(``read_totals``), kept for at most ``MAX_AGE_S`` seconds (by the service's
injected clock) so that several Prometheus servers, or a short scrape
interval, cost one read. Two live instruments are observed in the service
process: the meter's tick duration (``meter.core.TICK_SECONDS``) and the
event loop's lag (``EVENT_LOOP_LAG``, ``EventLoopLagProbe``): how late the
loop runs a callback due at a known moment, i.e. how long something blocked
every request, tick and scheduled stop in flight.

Everything is exposed from a private ``CollectorRegistry``, never
prometheus_client's global one (the hub's own metrics live there when the
hub and a test share a process). No metric has a per-user label: the
labels are GPU types, stop reasons, earning rules and outcomes, all bounded
by the catalog. Amounts are credits (units / ``UNITS_PER_CREDIT``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from ..catalog.model import CPU_ONLY
from ..earning.schema import events
from ..ledger import database
from ..ledger.amounts import UNITS_PER_CREDIT
from ..ledger.schema import holds, transfers
from ..sessions.schema import sessions
from .api.base import APIHandler
from .auth import METRICS
from .context import ServiceContext
from .meter.core import TICK_SECONDS

#: The most seconds a scrape answers from totals read earlier.
MAX_AGE_S = 15.0
#: The Prometheus text format this endpoint answers (what every Prometheus reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "jupyterhub_credits_"

#: Transfer kinds behind each money counter: ``issued`` is grant + earn.
FLOWS = {"issued": ("grant", "earn"), "spent": ("post",), "expired": ("expire",),
         "reversed": ("reverse",)}
FLOW_HELP = {
    "issued": "Credits issued: granted by admins and earned, before any reversal.",
    "spent": "Credits spent on sessions (posted holds), before any reversal.",
    "expired": "Credits that lapsed unspent.",
    "reversed": "Credits moved back by reversals of earlier transfers.",
}
#: ``credits_sessions.end_reason`` → the ``reason`` label of a stop; others are "other".
STOP_REASONS = {"expired": "expiry", "gpu_idle": "idle_gpu", "user": "user", "stopped": "user",
                "admin": "admin", "server_gone": "crash"}
STOP_LABELS = ("expiry", "idle_gpu", "user", "admin", "crash", "other")
#: End reasons of sessions that never ran, so never stopped (a start the ledger refused).
NOT_STOPS = ("refused",)
#: The label of an event that matched no rule (e.g. an unknown kind, rejected).
NO_RULE = "none"

#: Fine buckets below 50 ms (an idle loop answers within a millisecond; 50 ms is what no
#: credits code may block it for), then the ranges a stall is told apart in.
EVENT_LOOP_LAG = Histogram(
    f"{PREFIX}event_loop_lag_seconds", "How late the service's event loop ran a callback "
    "due at a known moment (probed every 50 ms): how long something blocked the loop.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None)
#: A histogram says how many stalls fell in a bucket, not how long the worst one was.
EVENT_LOOP_LAG_MAX = Gauge(f"{PREFIX}event_loop_lag_max_seconds", "The longest event-loop "
                           "lag seen since the service started.", registry=None)


@dataclass(frozen=True)
class Totals:
    """What one scrape reports, read in one database snapshot. Amounts in units."""

    flows: dict[str, int] = field(default_factory=dict)
    holds_open: int = 0
    reserved: int = 0
    running: dict[str, int] = field(default_factory=dict)
    gpu_seconds: dict[str, float] = field(default_factory=dict)
    stops: dict[str, int] = field(default_factory=dict)
    events: dict[tuple[str, str], int] = field(default_factory=dict)


def _seconds_between(conn, start, end):
    """SQL for the seconds from ``start`` to ``end`` (datetime columns), per backend."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def read_totals(engine: Engine) -> Totals:
    """Every total the metrics show, from the ledger's tables, in one read snapshot."""
    with database.read_transaction(engine) as conn:
        by_kind = dict(conn.execute(
            select(transfers.c.kind, func.sum(transfers.c.amount))
            .where(transfers.c.kind.in_([kind for kinds in FLOWS.values() for kind in kinds]))
            .group_by(transfers.c.kind)).all())
        flows = {name: sum(int(by_kind.get(kind) or 0) for kind in kinds)
                 for name, kinds in FLOWS.items()}
        holds_open, reserved = conn.execute(
            select(func.count(), func.coalesce(func.sum(holds.c.amount), 0))
            .where(holds.c.state == "pending")).one()
        gpu_type = case((sessions.c.gpus == 0, CPU_ONLY), else_=sessions.c.gpu_type)
        running = {label: int(count) for label, count in conn.execute(
            select(gpu_type, func.count()).where(sessions.c.state == "running")
            .group_by(gpu_type)).all()}
        # Sold: from ready to the end (or as far as the meter has billed a running one).
        end = func.coalesce(sessions.c.ended_at, sessions.c.billed_until)
        sold = func.sum(_seconds_between(conn, sessions.c.ready_at, end) * sessions.c.gpus)
        gpu_seconds = {label: max(float(seconds or 0), 0.0) for label, seconds in conn.execute(
            select(sessions.c.gpu_type, sold)
            .where(sessions.c.gpus > 0, sessions.c.ready_at.is_not(None), end.is_not(None))
            .group_by(sessions.c.gpu_type)).all()}
        stops: dict[str, int] = {}
        for reason, count in conn.execute(
                select(sessions.c.end_reason, func.count())
                .where(sessions.c.end_reason.is_not(None), sessions.c.end_reason.not_in(NOT_STOPS))
                .group_by(sessions.c.end_reason)).all():
            label = STOP_REASONS.get(reason, "other")
            stops[label] = stops.get(label, 0) + int(count)
        counted = {(rule or NO_RULE, outcome): int(count) for rule, outcome, count in conn.execute(
            select(events.c.rule, events.c.outcome, func.count())
            .group_by(events.c.rule, events.c.outcome)).all()}
    return Totals(flows=flows, holds_open=int(holds_open), reserved=int(reserved),
                  running=running, gpu_seconds=gpu_seconds, stops=stops, events=counted)


def _credits(units: int) -> float:
    return units / UNITS_PER_CREDIT


class CreditsCollector(Collector):
    """The database totals as Prometheus metric families, read at most every ``max_age`` s.

    ``clock`` is the service's (a test's fake one); a clock that went back
    reads again. Thread-safe: scrapes run on worker threads.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime],
                 gpu_types: Iterable[str] = (), max_age: float = MAX_AGE_S):
        self.engine = engine
        self.clock = clock
        self.max_age = max_age
        #: Labels shown at 0 before anything happened (the catalog's GPU types, and CPU).
        self.gpu_types = tuple(dict.fromkeys([*gpu_types, CPU_ONLY]))
        self._lock = threading.Lock()
        self._totals: Totals | None = None
        self._read_at: datetime | None = None

    def totals(self) -> Totals:
        with self._lock:
            now = self.clock()
            if self._totals is None or not (
                    0 <= (now - self._read_at).total_seconds() < self.max_age):
                self._totals = read_totals(self.engine)
                self._read_at = now
            return self._totals

    def describe(self) -> Iterator[Metric]:
        return self._families(Totals())

    def collect(self) -> Iterator[Metric]:
        return self._families(self.totals())

    def _families(self, totals: Totals) -> Iterator[Metric]:
        for name, help_text in FLOW_HELP.items():
            family = CounterMetricFamily(f"{PREFIX}{name}_credits", help_text)
            if totals.flows:
                family.add_metric([], _credits(totals.flows.get(name, 0)))
            yield family
        holds_open = GaugeMetricFamily(f"{PREFIX}holds_open", "Holds placed and not yet "
                                       "posted or voided (one or more per open session).")
        reserved = GaugeMetricFamily(f"{PREFIX}reserved_credits",
                                     "Credits reserved by open holds.")
        running = GaugeMetricFamily(f"{PREFIX}running_sessions", "Sessions running now, by "
                                    'GPU type ("none": CPU only).', labels=["gpu_type"])
        sold = CounterMetricFamily(f"{PREFIX}sold_gpu_seconds", "GPU-seconds sold: from a "
                                   "session's ready time to its end (or as far as billed) "
                                   "times its GPUs, by GPU type.", labels=["gpu_type"])
        stops = CounterMetricFamily(f"{PREFIX}session_stops", "Sessions ended, by reason: "
                                    "expiry, idle_gpu, user, admin, crash, other.",
                                    labels=["reason"])
        counted = CounterMetricFamily(f"{PREFIX}earning_events", "Earning events received, by "
                                      'rule ("none": matched none) and outcome.',
                                      labels=["rule", "outcome"])
        if totals.flows:  # read from the database (describe() has none)
            holds_open.add_metric([], totals.holds_open)
            reserved.add_metric([], _credits(totals.reserved))
            for gpu_type in sorted({*self.gpu_types, *totals.running}):
                running.add_metric([gpu_type], totals.running.get(gpu_type, 0))
            for gpu_type in sorted({*self.gpu_types, *totals.gpu_seconds} - {CPU_ONLY}):
                sold.add_metric([gpu_type], totals.gpu_seconds.get(gpu_type, 0.0))
            for reason in STOP_LABELS:
                stops.add_metric([reason], totals.stops.get(reason, 0))
            for (rule, outcome), count in sorted(totals.events.items()):
                counted.add_metric([rule, outcome], count)
        yield from (holds_open, reserved, running, sold, stops, counted)


class EventLoopLagProbe:
    """Measures how late the running event loop fires a callback due every ``interval`` s.

    A callback scheduled with ``call_at`` for a known moment runs late by exactly
    as long as the loop was busy elsewhere (a blocking call, a long callback)
    when that moment came; an idle loop runs it within about a millisecond. One
    plain callback (no task, no coroutine) 20 times a second costs next to nothing.
    Each lag is observed in ``histogram``, the largest kept in ``maximum``; a lag
    of ``log_threshold`` s or more is logged as the hub logs its own
    (``PeriodicMetricsCollector.event_loop_interval_log_threshold``, default 1 s).
    """

    def __init__(self, interval: float = 0.05, *, histogram: Histogram = EVENT_LOOP_LAG,
                 maximum: Gauge = EVENT_LOOP_LAG_MAX, log_threshold: float = 1.0,
                 log: logging.Logger | None = None):
        self.interval = interval
        self.histogram, self.maximum = histogram, maximum
        self.log_threshold = log_threshold
        self.log = log or logging.getLogger(__name__)
        self.samples = 0
        self.largest = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start probing the running loop (call from inside it)."""
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        # The loop may run a timer up to its clock resolution early: that is no lag.
        lag = max(0.0, self._loop.time() - self._due)
        self.samples += 1
        self.histogram.observe(lag)
        if lag > self.largest:
            self.largest = lag
            self.maximum.set(lag)
        if lag >= self.log_threshold:
            self.log.warning("credits service: the event loop was blocked for %.3f s", lag)
        self._schedule()


def make_registry(context: ServiceContext, *, max_age: float = MAX_AGE_S) -> CollectorRegistry:
    """A private registry with the database totals of ``context``, the meter's histogram
    and the event loop's lag."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CreditsCollector(context.ledger.engine, clock=context.clock,
                                       gpu_types=context.catalog.gpu_types, max_age=max_age))
    registry.register(TICK_SECONDS)
    registry.register(EVENT_LOOP_LAG)
    registry.register(EVENT_LOOP_LAG_MAX)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registry`` (blocking: it may read the database)."""
    return generate_latest(registry)


class MetricsHandler(APIHandler):
    """``GET metrics``: Prometheus text for a token with ``custom:credits:metrics``.

    Errors are the API's JSON (401 without a login, 403 without the scope:
    a user's own ``!user`` scopes never suffice); success is text/plain.
    """

    def registry(self) -> CollectorRegistry:
        # One per application (so one cache), made on first use by the event loop's thread.
        registry = self.settings.get("credits_metrics")
        if registry is None:
            registry = self.settings["credits_metrics"] = make_registry(self.credits)
        return registry

    async def get(self):
        self.require(METRICS)
        body = await self.run(exposition, self.registry())
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)
