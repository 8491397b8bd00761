"""The meter decides under its lock, on fresh rows, and never waits on asyncio's default pool.

Same set-up as ``test_meter``: a fake clock, real databases and the small fake
hub REST API. Interleavings are forced, not hoped for: the test holds the lock
the API's extend takes, lets the meter run up to it (``WatchedLock`` says when
the meter starts waiting), changes the session as the API would, then lets go.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest

from jupyterhub_credits.catalog import hold_amount
from jupyterhub_credits.ledger.verify import verify
from tests import test_meter as base
from tests.test_meter import A100, make_meter, running

# The meter tests' fixtures: the fake hub, an empty session store, the catalog.
fake_hub, store, catalog = base.fake_hub, base.store, base.catalog

#: No reconciliation during these tests after the first tick's.
QUIET = {"reconcile_interval": 10**6}


class WatchedLock(asyncio.Lock):
    """The meter's lock, telling the test when someone starts waiting for it."""

    def __init__(self):
        super().__init__()
        self.wanted = asyncio.Event()

    async def acquire(self):
        self.wanted.set()
        return await super().acquire()


async def tick_while_the_api_holds_the_lock(meter, lock, api_change):
    """Start a tick; once it waits for the lock the API holds, make ``api_change``; let go."""
    async with lock:
        lock.wanted.clear()  # (taking it just now set it)
        tick = asyncio.create_task(meter.tick())
        await lock.wanted.wait()
        api_change()
    return await tick


@pytest.mark.asyncio
async def test_an_extension_confirmed_during_the_scan_is_never_settled_at_the_old_end(
        store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann", hours="1")
    fake_hub.run("ann")
    lock = WatchedLock()
    meter = make_meter(store, fake_hub, catalog, clock, lock=lock, **QUIET)
    await meter.tick()
    clock.advance(seconds=3601)  # the paid hour is over: this tick would expire it...

    def extend_by_an_hour():  # ...but the user's extension is confirmed (HTTP 200) first
        store.extend(session.key, hold_amount(A100, Decimal(1)), actor="user:ann")
        store.reset_warnings(session.key, clock())

    report = await tick_while_the_api_holds_the_lock(meter, lock, extend_by_an_hour)
    assert report.expired == []
    now = store.get(session.key)
    assert now.state == "running" and now.paid_until == session.paid_until + timedelta(hours=1)
    assert fake_hub.deletes == []
    # It expires at its new end, charged both hours.
    clock.now = now.paid_until + timedelta(seconds=1)
    assert (await meter.tick()).expired == [session.key]
    assert store.get(session.key).charged == 2 * A100
    assert verify(ledger.engine).ok


@pytest.mark.asyncio
async def test_auto_extend_right_after_a_manual_extension_stays_within_the_quota(
        store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann", hours="23", credits=1_000)
    store.set_auto_extend(session.key, True)
    fake_hub.run("ann")
    lock = WatchedLock()
    meter = make_meter(store, fake_hub, catalog, clock, lock=lock, auto_extend_hours="1",
                       **QUIET)
    await meter.tick()
    clock.advance(hours=23, minutes=-10)  # 10 minutes left: auto-extend is due

    def extend_by_three_quarters():
        store.extend(session.key, hold_amount(A100, Decimal("0.75")), actor="user:ann")

    report = await tick_while_the_api_holds_the_lock(meter, lock, extend_by_three_quarters)
    # 23.75 hours paid, 55 minutes left: not due any more; never more than 24 hours held.
    assert report.extended == []
    assert store.get(session.key).held == hold_amount(A100, Decimal("23.75"))
    assert store.get(session.key).held <= hold_amount(A100, catalog.quotas.max_hours_per_session)


@pytest.mark.asyncio
async def test_a_tick_completes_while_the_default_thread_pool_is_saturated(
        store, ledger, clock, fake_hub, catalog):
    session = running(store, ledger, "ann", hours="0.1")
    fake_hub.run("ann")
    meter = make_meter(store, fake_hub, catalog, clock)
    # asyncio's default pool as on a small machine, every thread busy with a request's work.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=6))
    release = threading.Event()
    busy = [asyncio.ensure_future(asyncio.to_thread(release.wait)) for _ in range(12)]
    try:
        clock.advance(seconds=361)
        # A bound, not a pause: a meter that needs the default pool never finishes.
        report = await asyncio.wait_for(meter.tick(), timeout=20)
        assert report.expired == [session.key]
        assert fake_hub.deletes == [("ann", "")] and meter.stopping == {}
    finally:
        release.set()
        await asyncio.gather(*busy)
