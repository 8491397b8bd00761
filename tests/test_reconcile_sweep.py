"""Reconciliation a few users a tick: what it finds, when it acts, what it asks the hub.

Same set-up as ``test_meter``: a fake clock, real databases and the small fake
hub REST API. The meter's hub client records each request it makes, so that a
test can say how many and which a tick made: after the start-up pass, a tick
asks about at most ``reconcile_users_per_tick`` users of its walk (one ``GET
/users/{name}`` each, answers used by the next tick) and confirms at most as many
mismatches, and lists no page, unless a full pass is needed (the hub failed a step,
or more mismatches await confirmation than one tick checks).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.service.hub import HubClient
from jupyterhub_credits.service.meter import Meter
from tests import test_meter as base
from tests.test_meter import TOKEN, running

# The meter tests' fixtures: the fake hub, an empty session store, the catalog.
fake_hub, store, catalog = base.fake_hub, base.store, base.catalog


class RecordingHubClient(HubClient):
    """Our hub client, noting each request it makes (method and path)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str]] = []

    async def request(self, method, path, **kwargs):
        self.calls.append((method, path))
        return await super().request(method, path, **kwargs)

    def take(self) -> tuple[list[str], list[str]]:
        """(pages listed, users read) since the last call."""
        pages = [path for method, path in self.calls if path.startswith("/users?")]
        users = [path.removeprefix("/users/") for method, path in self.calls
                 if method == "GET" and path.startswith("/users/")]
        self.calls = []
        return pages, users


def make_meter(store, fake_hub, catalog, clock, **traits):
    traits = {"warning_thresholds": [600, 60], "reconcile_grace": 15, "reconcile_interval": 60,
              "interval": 5, "reconcile_page_size": 2, "reconcile_users_per_tick": 2, **traits}
    return Meter(sessions=store, hub=RecordingHubClient(fake_hub.url, TOKEN), catalog=catalog,
                 clock=clock, **traits)


async def tick(meter, clock, seconds=5):
    clock.advance(seconds=seconds)
    await meter.tick()
    return meter.hub.take()


@pytest.mark.asyncio
async def test_the_walk_finds_a_vanished_session_and_an_unpaid_server_a_few_users_a_tick(
        store, ledger, clock, fake_hub, catalog):
    names = [f"u{i}" for i in range(9)]
    sessions = {name: running(store, ledger, name) for name in names}
    for name in names:
        fake_hub.run(name)
    meter = make_meter(store, fake_hub, catalog, clock)
    await meter.tick()  # start-up: a full pass, 2 users a page
    pages, users = meter.hub.take()
    assert len(pages) == 5 and users == []

    fake_hub.gone("u5")  # its server died; nobody told the ledger
    fake_hub.run("u3", "extra")  # runs without any session (its stop was lost)
    billed = {}
    seen = []
    for step in range(8):  # the next walk starts 60 s after the start-up pass
        billed_before = store.get(sessions["u5"].key).billed_until
        pages, users = await tick(meter, clock, 60 if step == 0 else 5)
        assert pages == [] and len(users) <= 2  # bounded: no listing, 2 users at most
        seen += users
        if "u5" in users and "u5" not in billed:
            billed["u5"] = billed_before  # what the first sighting read
    # Every user with an open session checked, in name order, two a tick; the two with a
    # mismatch once more, to confirm it after the grace (one request each).
    assert list(dict.fromkeys(seen)) == names
    assert {name: seen.count(name) for name in names} == {
        name: 2 if name in ("u3", "u5") else 1 for name in names}
    gone = store.get(sessions["u5"].key)
    assert gone.state == "ended" and gone.end_reason == "server_gone"
    assert gone.ended_at == billed["u5"]  # billed to the tick before it was found gone
    assert fake_hub.deletes == [("u3", "extra")]
    assert all(store.get(sessions[n].key).state == "running" for n in names if n != "u5")
    assert verify(ledger.engine).ok


@pytest.mark.asyncio
async def test_grace_is_respected_and_a_restart_meanwhile_is_never_settled(
        store, ledger, clock, fake_hub, catalog):
    old = running(store, ledger, "ann")
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock, reconcile_users_per_tick=1)
    await meter.tick()  # start-up pass
    meter.hub.take()
    fake_hub.gone("ann")
    # The walk asks about ann at +60; the answer is used by the next tick: a first sighting
    # (as of +60), and nothing done within the grace.
    pages, users = await tick(meter, clock, 60)
    assert users == ["ann"]
    for _ in range(2):
        pages, users = await tick(meter, clock)
        assert users == [] and ("gone", old.key) in meter.reconciler.suspects
        assert store.get(old.key).state == "running"
    # Before the grace is over, the spawner settles it and ann starts again: a new session.
    store.settle(old.key, reason="stopped", actor="test")
    new = running(store, ledger, "ann", credits=101)
    fake_hub.run("ann")
    pages, users = await tick(meter, clock)  # +15 s: the confirmation
    assert users == ["ann"] and meter.reconciler.suspects == {}
    assert store.get(old.key).end_reason == "stopped"  # not the meter's "server_gone"
    assert store.get(new.key).state == "running"
    assert fake_hub.deletes == []


@pytest.mark.asyncio
async def test_starts_and_stops_during_a_walk_are_never_mistaken(store, ledger, clock,
                                                                fake_hub, catalog):
    names = ["b", "d", "f", "h"]
    sessions = {name: running(store, ledger, name) for name in names}
    for name in names:
        fake_hub.run(name)
    meter = make_meter(store, fake_hub, catalog, clock, reconcile_grace=0)
    await meter.tick()
    meter.hub.take()
    pages, users = await tick(meter, clock, 60)  # the walk begins: b, d
    assert users == ["b", "d"]
    # Mid-walk: b (already checked) stops properly; a user sorting before the cursor starts
    # (not checked by this walk); h is stopping; f is starting again after a stop; a new
    # user is starting (no session ready yet).
    store.settle(sessions["b"].key, reason="stopped", actor="test")
    fake_hub.gone("b")
    running(store, ledger, "a")
    fake_hub.run("a")
    fake_hub.users["h"]["servers"][""]["pending"] = "stop"
    store.settle(sessions["f"].key, reason="stopped", actor="test")
    restarted = store.start(user="f", server_name="", account="user:f", image="tf-2.21",
                            gpu_type="a100", gpus=1, rate_per_hour=15_000, hold_units=15_000,
                            actor="user:f")
    fake_hub.run("f", ready=False, pending="spawn")
    fake_hub.run("z", ready=False, pending="spawn")
    for _ in range(3):
        pages, users = await tick(meter, clock)
    assert fake_hub.deletes == []  # nothing stopped, grace 0 notwithstanding
    assert store.get(sessions["h"].key).state == "running"
    assert store.get(restarted.key).state == "starting"
    assert store.get(sessions["b"].key).end_reason == "stopped"
    assert meter.reconciler.suspects == {}
    assert verify(ledger.engine).ok


@pytest.mark.asyncio
async def test_after_the_hub_failed_a_step_a_full_pass_finds_a_server_nobody_pays(
        store, ledger, clock, fake_hub, catalog):
    running(store, ledger, "ann")
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock, reconcile_grace=10)
    await meter.tick()
    meter.hub.take()
    fake_hub.down = True
    await tick(meter, clock, 60)  # the walk asks about ann...
    await tick(meter, clock)  # ...the hub failed: the next step lists everything
    assert meter.reconciler.full_pass_needed
    fake_hub.down = False
    fake_hub.run("ghost")  # e.g. its expiry stop was lost while the hub was away
    pages, users = await tick(meter, clock)
    assert len(pages) == 1 and ("unpaid", "ghost", "") in meter.reconciler.suspects
    pages, users = await tick(meter, clock, 10)  # confirmed with one request, then stopped
    assert pages == [] and users == ["ghost"]
    assert fake_hub.deletes == [("ghost", "")]


@pytest.mark.asyncio
async def test_more_mismatches_than_one_tick_checks_are_confirmed_by_one_full_pass(
        store, ledger, clock, fake_hub, catalog):
    names = [f"u{i}" for i in range(5)]
    sessions = {name: running(store, ledger, name, hours="2") for name in names}
    clock.advance(seconds=120)
    store.record_billing(clock())  # the last tick before the hub (and every server) went down
    clock.advance(hours=1)
    meter = make_meter(store, fake_hub, catalog, clock, reconcile_grace=10)
    await meter.tick()  # start-up: every server is gone; first sightings
    meter.hub.take()
    assert all(store.get(s.key).state == "running" for s in sessions.values())
    pages, users = await tick(meter, clock, 10)  # 5 due, 2 a tick: one full pass instead
    assert len(pages) == 1 and users == []
    for session in sessions.values():
        ended = store.get(session.key)
        assert ended.end_reason == "server_gone"
        assert ended.ended_at == session.ready_at + timedelta(seconds=120)
    assert verify(ledger.engine).ok
