"""The meter's rules with a fake clock, real databases and a small fake hub REST API.

The hub is not under test here: ``FakeHub`` is an in-process Tornado server
answering the few calls the meter makes (list active servers, read a user,
stop a server) and recording the stops. Time only moves when a test says so.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import delete, select
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from jupyterhub_credits.catalog import hold_amount, load_catalog
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.service.hub import HubClient, ServerState
from jupyterhub_credits.service.meter import (
    Meter,
    Sighting,
    due_warnings,
    plan_reconciliation,
)
from jupyterhub_credits.sessions.allocator import LocalGpuAllocator
from jupyterhub_credits.sessions.inventory import LocalGpu
from jupyterhub_credits.sessions.schema import gpu_assignments, session_holds, sessions
from jupyterhub_credits.sessions.store import Session, SessionStore
from tests.hub import CATALOG

A100 = 15_000  # units per GPU-hour
TOKEN = "meter-test-token"


# --- a fake hub --------------------------------------------------------------------


class FakeHub:
    """Users with groups and servers; DELETE answers from a queue (default 204 = stopped)."""

    def __init__(self):
        self.users: dict[str, dict] = {}
        self.deletes: list[tuple[str, str]] = []
        self.delete_answers: list[int] = []
        self.down = False
        self.url = ""

    def run(self, user, server="", *, ready=True, pending=None, groups=()):
        entry = self.users.setdefault(user, {"groups": list(groups), "servers": {}})
        entry["servers"][server] = {"ready": ready, "pending": pending}

    def gone(self, user, server=""):
        self.users.get(user, {"servers": {}})["servers"].pop(server, None)

    def model(self, name):
        entry = self.users[name]
        return {"kind": "user", "name": name, "groups": entry["groups"],
                "servers": {k: {"name": k, **v} for k, v in entry["servers"].items()}}

    def app(self):
        hub = self

        class Base(web.RequestHandler):
            def prepare(self):
                if hub.down:
                    raise web.HTTPError(503)
                if self.request.headers.get("Authorization") != f"token {TOKEN}":
                    raise web.HTTPError(403)

        class Users(Base):
            def get(self):
                assert self.get_argument("state") == "active"
                offset, limit = int(self.get_argument("offset")), int(self.get_argument("limit"))
                names = sorted(n for n, u in hub.users.items() if u["servers"])
                page = [hub.model(n) for n in names[offset:offset + limit]]
                following = None
                if offset + limit < len(names):
                    following = {"offset": offset + limit, "limit": limit, "url": "ignored"}
                self.set_header("Content-Type", "application/json")
                self.finish({"items": page, "_pagination": {"offset": offset, "limit": limit,
                                                            "total": len(names),
                                                            "next": following}})

        class User(Base):
            def get(self, name):
                if name not in hub.users:
                    raise web.HTTPError(404)
                self.set_header("Content-Type", "application/json")
                self.finish(hub.model(name))

        class Server(Base):
            def delete(self, name, server=""):
                hub.deletes.append((name, server))
                status = hub.delete_answers.pop(0) if hub.delete_answers else 204
                if status == 204:
                    hub.gone(name, server)
                elif status == 202:
                    hub.users[name]["servers"][server]["pending"] = "stop"
                self.set_status(status)
                self.finish()

        return web.Application([
            (r"/hub/api/users", Users),
            (r"/hub/api/users/([^/]+)", User),
            (r"/hub/api/users/([^/]+)/server", Server),
            (r"/hub/api/users/([^/]+)/servers/([^/]+)", Server),
        ])


@pytest_asyncio.fixture
async def fake_hub():
    hub = FakeHub()
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(hub.app())
    server.add_sockets(sockets)
    hub.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hub/api"
    yield hub
    server.stop()


# --- sessions as the spawner makes them ----------------------------------------------------------


@pytest.fixture
def store(ledger):
    # The shared PostgreSQL test database keeps sessions between tests: start empty.
    with ledger.engine.begin() as conn:
        for table in (gpu_assignments, session_holds, sessions):
            conn.execute(delete(table))
    return SessionStore(ledger)


@pytest.fixture
def catalog():
    return load_catalog(CATALOG)


@pytest.fixture
def allocator(ledger, clock):
    inventory = [LocalGpu("a100", 0), LocalGpu("a100", 1), LocalGpu("t4", 2)]
    return LocalGpuAllocator(ledger.engine, inventory, clock=clock)


def make_meter(store, fake_hub, catalog, clock, **traits):
    # Pages of 2 users: a full reconciliation lists more than one page.
    traits = {"warning_thresholds": [600, 60], "reconcile_grace": 0,
              "reconcile_interval": 60, "interval": 5, "reconcile_page_size": 2, **traits}
    return Meter(sessions=store, hub=HubClient(fake_hub.url, TOKEN, page_size=2), catalog=catalog,
                 clock=clock, **traits)


def running(store, ledger, user, *, hours="1", gpus=1, server="", credits=100,
            allocator=None) -> Session:
    """A ready session like the spawner leaves it: hold, GPUs, mark_ready."""
    ledger.grant(user, credits * 1000, key=f"grant:{user}:{server}:{credits}", reason="test",
                 actor="test")
    rate = A100 * gpus
    session = store.start(user=user, server_name=server, account=f"user:{user}", image="tf-2.21",
                          gpu_type="a100", gpus=gpus, rate_per_hour=rate,
                          hold_units=hold_amount(rate, Decimal(hours)), actor=f"user:{user}")
    if allocator is not None:
        allocator.assign(session.id, "a100", gpus)
    return store.mark_ready(session.key)


def live_devices(ledger, session: Session) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(gpu_assignments.c.device).where(
            gpu_assignments.c.session_id == session.id,
            gpu_assignments.c.released_at.is_(None))).scalars())


# --- pure helpers --------------------------------------------------------------------


def _session(clock, *, left: float, warned=None, auto_extend=False, key="s1", user="u",
             server="", state="running", billed_until=None) -> Session:
    now = clock()
    return Session(id=1, key=key, user=user, server_name=server, account=f"user:{user}",
                   image="tf", gpu_type="a100", gpus=1, rate_per_hour=A100, held=A100,
                   state=state, requested_at=now, ready_at=now,
                   paid_until=now + timedelta(seconds=left), billed_until=billed_until or now,
                   ended_at=None, end_reason=None, charged=None, auto_extend=auto_extend,
                   warned_thresholds=warned, devices=None)


def test_due_warnings_are_the_crossed_thresholds_not_yet_given(clock):
    now = clock()
    assert due_warnings(_session(clock, left=601), now, [600, 60]) == []
    assert due_warnings(_session(clock, left=600), now, [600, 60]) == [600]
    assert due_warnings(_session(clock, left=300, warned=[600]), now, [600, 60]) == []
    assert due_warnings(_session(clock, left=59, warned=[600]), now, [600, 60]) == [60]
    # Bought for less than both: both crossed at once (one warning, both recorded).
    assert due_warnings(_session(clock, left=30), now, [60, 600]) == [600, 60]


def test_plan_reconciliation_waits_for_grace_and_ends_at_first_billed(clock):
    t0 = clock()
    gone = _session(clock, left=100, key="gone", user="ann", billed_until=t0)
    alive = _session(clock, left=100, key="alive", user="bob")
    servers = {("bob", ""): ServerState("bob", "", True, None),
               ("eve", ""): ServerState("eve", "", True, None),  # no session: unpaid
               ("zed", ""): ServerState("zed", "", False, "spawn")}  # starting: leave it
    first = plan_reconciliation(before=[gone, alive], servers=servers, after=[gone, alive],
                                holding=[], suspects={}, now=t0, grace=10)
    assert (first.settle, first.stop) == ([], [])
    assert set(first.suspects) == {("gone", "gone"), ("unpaid", "eve", "")}
    later = t0 + timedelta(seconds=10)
    billed_later = _session(clock, left=100, key="gone", user="ann", billed_until=later)
    second = plan_reconciliation(before=[billed_later, alive], servers=servers,
                                 after=[billed_later, alive], holding=[],
                                 suspects=first.suspects, now=later, grace=10)
    assert second.settle == [(billed_later, t0)]  # billed_until of the first sighting
    assert second.stop == [("eve", "")]
    # A mismatch that resolves itself is forgotten.
    third = plan_reconciliation(before=[alive], servers={("bob", ""): servers[("bob", "")]},
                                after=[alive], holding=[],
                                suspects={("unpaid", "eve", ""): Sighting(t0)}, now=later,
                                grace=10)
    assert third.suspects == {} and third.stop == []


def test_plan_reconciliation_ignores_sessions_ended_or_started_meanwhile(clock):
    ended_meanwhile = _session(clock, left=100, key="old", user="ann")
    started_meanwhile = _session(clock, left=100, key="new", user="bob")
    plan = plan_reconciliation(before=[ended_meanwhile], servers={}, after=[started_meanwhile],
                               holding=[], suspects={}, now=clock(), grace=0)
    assert plan.settle == [] and plan.stop == []


# --- the meter against a database and the fake hub ---------------------------------------------


@pytest.mark.asyncio
async def test_tick_records_billing_for_every_running_session(store, ledger, clock, fake_hub,
                                                                catalog):
    a = running(store, ledger, "ann")
    b = running(store, ledger, "bob", hours="2")
    fake_hub.run("ann")
    fake_hub.run("bob")
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=30)
    report = await meter.tick()
    assert report.billed == 2 and report.due == 0
    assert store.get(a.key).billed_until == clock() == store.get(b.key).billed_until
    assert report.db_seconds > 0


@pytest.mark.asyncio
async def test_warnings_are_given_once_per_threshold(store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann")  # 1 hour
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=3000 - 1)  # 601 s left
    assert (await meter.tick()).warned == []
    clock.advance(seconds=1)  # 600 s left
    assert (await meter.tick()).warned == [session.key]
    assert store.get(session.key).warned_thresholds == [600]
    assert "10 min" in meter.notices[session.key]
    clock.advance(seconds=200)
    assert (await meter.tick()).warned == []  # not again
    clock.advance(seconds=340)  # 60 s left
    assert (await meter.tick()).warned == [session.key]
    clock.advance(seconds=10)
    assert (await meter.tick()).warned == []
    assert sorted(store.get(session.key).warned_thresholds) == [60, 600]
    assert fake_hub.deletes == []


@pytest.mark.asyncio
async def test_expiry_settles_at_paid_until_stops_the_server_then_frees_gpus(
        store, ledger, clock, fake_hub, catalog, allocator):
    session = running(store, ledger, "ann", hours="0.5", gpus=2, allocator=allocator)
    fake_hub.run("ann")
    fake_hub.delete_answers = [202]  # the hub is still stopping it after the first call
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=1800 + 7)  # 7 s past the paid time
    report = await meter.tick()
    assert report.expired == [session.key]
    ended = store.get(session.key)
    assert ended.state == "ended" and ended.end_reason == "expired"
    assert ended.ended_at == session.paid_until  # not the tick's time
    assert ended.charged == ended.held == 15_000  # the whole paid half hour, never more
    assert ledger.balance("ann").reserved == 0 and ledger.balance("ann").total == 85_000
    assert fake_hub.deletes == [("ann", "")]
    # The GPUs stay taken while the process may still run.
    assert len(live_devices(ledger, session)) == 2
    assert allocator.free()["a100"] == 0

    clock.advance(seconds=5)  # still stopping (pending "stop"): asked again, now 204
    await meter.tick()
    assert fake_hub.deletes == [("ann", ""), ("ann", "")]
    assert meter.stopping == {}
    clock.advance(seconds=60)  # reconciliation: the server is gone, the GPUs are free
    await meter.tick()
    assert live_devices(ledger, session) == [] and allocator.free()["a100"] == 2
    assert fake_hub.deletes == [("ann", ""), ("ann", "")]  # nothing stopped twice
    assert verify(ledger.engine).ok


@pytest.mark.asyncio
async def test_a_failed_stop_is_tried_again_next_tick(store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann", hours="0.1", server="gpu")
    fake_hub.run("ann", "gpu")
    fake_hub.delete_answers = [500]
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=360)
    await meter.tick()
    assert store.get(session.key).state == "ended"
    assert fake_hub.deletes == [("ann", "gpu")] and session.key in meter.stopping
    fake_hub.down = True
    clock.advance(seconds=5)
    await meter.tick()  # the hub does not answer: still pending, no crash
    assert session.key in meter.stopping
    fake_hub.down = False
    clock.advance(seconds=5)
    await meter.tick()
    assert fake_hub.deletes == [("ann", "gpu")] * 2 and meter.stopping == {}


@pytest.mark.asyncio
async def test_a_retry_never_stops_a_server_started_again_since(store, ledger, clock, fake_hub,
                                                                catalog):
    old = running(store, ledger, "ann", hours="0.1")
    fake_hub.run("ann")
    fake_hub.delete_answers = [500]
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=361)
    await meter.tick()
    assert store.get(old.key).state == "ended" and old.key in meter.stopping
    # Meanwhile the server stopped by itself and the user started a new, paid one.
    new = running(store, ledger, "ann", hours="1", credits=101)
    clock.advance(seconds=5)
    await meter.tick()
    assert fake_hub.deletes == [("ann", "")] and meter.stopping == {}
    assert store.get(new.key).state == "running"


@pytest.mark.asyncio
async def test_auto_extend_buys_more_time_before_any_warning(store, ledger, clock, fake_hub,
                                                              catalog):
    session = running(store, ledger, "ann", hours="1", credits=100)
    store.set_auto_extend(session.key, True)
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock, auto_extend_hours="2",
                       auto_extend_lead=900)
    clock.advance(seconds=3600 - 900)
    report = await meter.tick()
    assert report.extended == [session.key] and report.warned == []
    extended = store.get(session.key)
    assert extended.held == 45_000
    assert extended.paid_until == session.paid_until + timedelta(hours=2)
    assert ledger.balance("ann").reserved == 45_000
    assert "Auto-extended" in meter.notices[session.key]


@pytest.mark.asyncio
async def test_auto_extend_buys_what_the_balance_allows_then_warns(store, ledger, clock,
                                                                    fake_hub, catalog):
    # 20 credits: 15 held for the first hour; the 5 left buy 0.33 hours at 15/hour.
    session = running(store, ledger, "ann", hours="1", credits=20)
    store.set_auto_extend(session.key, True)
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock, auto_extend_hours="1",
                       auto_extend_lead=900, auto_extend_retry=30)
    clock.advance(seconds=3600 - 900)
    assert (await meter.tick()).extended == [session.key]
    partial = store.get(session.key)
    assert partial.held == 15_000 + 4_950  # 0.33 hours
    assert partial.paid_until == session.paid_until + timedelta(seconds=1188)
    assert ledger.balance("ann").available == 50  # less than the shortest extension
    # Nothing left: the next approach to the end is warned about, not extended.
    clock.now = partial.paid_until - timedelta(seconds=600)
    report = await meter.tick()
    assert report.extended == [] and report.warned == [session.key]
    assert "Auto-extend" in meter.notices[session.key] or "left" in meter.notices[session.key]
    assert store.get(session.key).warned_thresholds == [600]


@pytest.mark.asyncio
async def test_extension_forgets_warnings_that_lie_ahead_again(store, ledger, clock, fake_hub,
                                                                catalog):
    session = running(store, ledger, "ann", hours="1")
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=3600 - 30)
    await meter.tick()
    assert sorted(store.get(session.key).warned_thresholds) == [60, 600]
    store.extend(session.key, hold_amount(A100, Decimal("0.25")), actor="user:ann")  # +900 s
    store.reset_warnings(session.key, clock())  # 930 s left: both thresholds lie ahead
    assert store.get(session.key).warned_thresholds is None
    clock.advance(seconds=330)  # 600 s left
    assert (await meter.tick()).warned == [session.key]


@pytest.mark.asyncio
async def test_reconciliation_settles_a_vanished_session_at_its_billed_until(
        store, ledger, clock, fake_hub, catalog, allocator):
    session = running(store, ledger, "ann", hours="2", allocator=allocator)
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock, reconcile_grace=15)
    clock.advance(seconds=600)
    await meter.tick()  # reconciles (all well), then bills to +600 s
    last_billed = store.get(session.key).billed_until
    assert last_billed == clock()
    fake_hub.gone("ann")  # the server died; nobody told the ledger
    clock.advance(seconds=60)
    await meter.tick()  # first sighting: wait for the grace period
    assert store.get(session.key).state == "running"
    clock.advance(seconds=15)
    await meter.tick()
    ended = store.get(session.key)
    assert ended.state == "ended" and ended.end_reason == "server_gone"
    # Billed to the last tick before it was found gone, not to when it was settled.
    assert ended.ended_at == last_billed
    assert ended.charged == ended.cost_until(ended.ended_at) == 2_500  # 10 minutes of A100
    assert live_devices(ledger, session) == [] and ledger.balance("ann").reserved == 0
    assert fake_hub.deletes == []


@pytest.mark.asyncio
async def test_reconciliation_at_start_ends_at_the_tick_before_the_crash(
        store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann", hours="2")
    clock.advance(seconds=120)
    store.record_billing(clock())  # the last tick before the hub went down
    clock.advance(hours=1)  # down for an hour; the server is gone when it comes back
    meter = make_meter(store, fake_hub, catalog, clock)
    await meter.tick()
    ended = store.get(session.key)
    assert ended.end_reason == "server_gone"
    assert ended.ended_at == session.ready_at + timedelta(seconds=120)
    assert ended.charged == 500


@pytest.mark.asyncio
async def test_reconciliation_stops_a_server_running_without_a_session(store, ledger, clock,
                                                                       fake_hub, catalog):
    for i in range(5):  # more users than one page of the hub's list
        running(store, ledger, f"user{i}")
        fake_hub.run(f"user{i}")
    fake_hub.run("ghost")
    fake_hub.run("starter", ready=False, pending="spawn")  # its session is not open yet
    meter = make_meter(store, fake_hub, catalog, clock, reconcile_grace=10)
    await meter.tick()
    assert fake_hub.deletes == []
    clock.advance(seconds=10)
    await meter.tick()
    assert fake_hub.deletes == [("ghost", "")]


@pytest.mark.asyncio
async def test_a_hub_that_does_not_answer_stops_nothing(store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann")
    fake_hub.down = True
    meter = make_meter(store, fake_hub, catalog, clock)
    clock.advance(seconds=30)
    report = await meter.tick()
    assert report.billed == 1  # billing goes on
    assert store.get(session.key).state == "running"


def test_the_meter_keeps_its_configuration_names():
    # c.Meter.<name> in a service configuration: the package split renamed none of them.
    assert set(Meter.class_own_traits(config=True)) == {
        "interval", "warning_thresholds", "auto_extend_hours", "auto_extend_lead",
        "auto_extend_retry", "reconcile_interval", "reconcile_grace", "reconcile_page_size",
        "reconcile_users_per_tick", "stop_unpaid_servers", "idle_gpu_timeout",
        "idle_gpu_threshold"}
