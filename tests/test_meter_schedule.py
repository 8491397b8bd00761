"""Exact moments: the stop is decided at ``paid_until`` itself, not at the next tick.

These run the meter in real time (``Meter.start``), because its timers are the
event loop's: each test sets the tick interval to a minute, so that only a
timer can act within the few seconds a test waits. Real databases, the small
fake hub REST API of tests/test_meter.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger.schema import transfers
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.service.hub import HubClient
from jupyterhub_credits.service.meter import Meter
from jupyterhub_credits.service.meter.schedule import next_moment
from jupyterhub_credits.sessions.schema import sessions
from jupyterhub_credits.sessions.store import SessionStore
from tests.test_meter import TOKEN, _session, fake_hub, running  # noqa: F401 - fixture
from tests.waiting import wait_for_async

TICK = 60  # seconds: no tick comes while a test waits, only timers


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
def real_ledger(db_url):
    """A ledger on the wall clock: the meter's timers are real ones."""
    ledger = Ledger.open(db_url)
    with ledger.engine.begin() as conn:  # the shared PostgreSQL database keeps rows
        conn.execute(sessions.delete())
    yield ledger
    ledger.close()


@pytest.fixture
def real_store(real_ledger):
    return SessionStore(real_ledger)


@pytest.fixture
def meters(real_store, fake_hub, catalog):  # noqa: F811
    started = []

    def start(**traits) -> Meter:
        traits = {"warning_thresholds": [600, 60], "reconcile_grace": 0,
                  "reconcile_interval": 3600, "interval": TICK, **traits}
        meter = Meter(sessions=real_store, hub=HubClient(fake_hub.url, TOKEN), catalog=catalog,
                      **traits)
        meter.start()
        started.append(meter)
        return meter

    yield start
    for meter in started:
        meter.stop()


@pytest.fixture
def catalog():
    from jupyterhub_credits.catalog import load_catalog
    from tests.hub import CATALOG
    return load_catalog(CATALOG)


def ending_in(store, ledger, fake_hub, user: str, seconds: float):  # noqa: F811
    """A running 1-hour session whose paid time is cut to end ``seconds`` from now (the
    catalog sells nothing that short), its server running at the fake hub."""
    session = running(store, ledger, user)
    paid_until = now() + timedelta(seconds=seconds)
    with ledger.engine.begin() as conn:
        conn.execute(update(sessions).where(sessions.c.key == session.key)
                     .values(paid_until=paid_until))
    fake_hub.run(user)
    return store.get(session.key)


def settlements(ledger, key: str) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(transfers).where(
            transfers.c.key.like(f"{key}:settle:%"))).scalar()


async def ended(store, key: str, timeout: float = 10):
    return await wait_for_async(lambda: (s := store.get(key)).state == "ended" and s,
                                timeout=timeout, what=f"session {key} settled")


# --- the pure rule ----------------------------------------------------------------------


def test_next_moment_is_the_next_warning_ahead_else_the_end(clock):
    at = clock()
    session = _session(clock, left=900)
    assert next_moment(session, [600, 60], at) == session.paid_until - timedelta(seconds=600)
    warned = _session(clock, left=300, warned=[600])
    assert next_moment(warned, [600, 60], at) == warned.paid_until - timedelta(seconds=60)
    # A threshold already behind "now" is not armed even when not given: the tick gives it.
    late = _session(clock, left=30)
    assert next_moment(late, [600, 60], at) == late.paid_until
    assert next_moment(_session(clock, left=30, state="settling"), [600], at) is None


# --- in real time -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stop_is_decided_at_paid_until_not_at_the_next_tick(meters, real_store, real_ledger,
                                                                  fake_hub):  # noqa: F811
    session = ending_in(real_store, real_ledger, fake_hub, "ada", 1.5)
    meter = meters()
    await wait_for_async(lambda: meter.schedule.moment_of(session.key), what="timer armed")
    # Both warnings were crossed at once (1.5 s left): the one moment ahead is the end.
    assert meter.schedule.moment_of(session.key) == session.paid_until
    settled = await ended(real_store, session.key)
    decided_after = (now() - session.paid_until).total_seconds()
    # The next tick is a minute away: only the timer can have done it, and at paid_until.
    assert decided_after < TICK / 2
    assert settled.end_reason == "expired"
    assert settled.ended_at == session.paid_until
    await wait_for_async(lambda: ("ada", "") in fake_hub.deletes, what="the hub asked to stop")
    assert settlements(real_ledger, session.key) == 1
    assert verify(real_ledger.engine).ok


@pytest.mark.asyncio
async def test_warnings_come_at_their_moments_before_the_stop(meters, real_store, real_ledger,
                                                             fake_hub):  # noqa: F811
    session = ending_in(real_store, real_ledger, fake_hub, "bea", 2.5)
    meter = meters(warning_thresholds=[2, 1])
    # Both thresholds are still ahead at the first tick: each is given at its own moment.
    notice = await wait_for_async(lambda: meter.notices.get(session.key),
                                  what="the 2 s warning")
    warned = real_store.get(session.key)
    assert "of paid time left" in notice
    assert warned.state == "running" and now() < session.paid_until
    assert warned.warned_thresholds == [2]  # not 1 yet: its moment is a second later
    warned = await wait_for_async(
        lambda: 1 in ((s := real_store.get(session.key)).warned_thresholds or []) and s,
        what="the 1 s warning")
    assert warned.state == "running"
    settled = await ended(real_store, session.key)
    assert settled.ended_at == session.paid_until


@pytest.mark.asyncio
async def test_an_extension_behind_the_meters_back_is_seen_when_the_timer_fires(
        meters, real_store, real_ledger, fake_hub):  # noqa: F811
    session = ending_in(real_store, real_ledger, fake_hub, "cy", 1.0)
    meter = meters(warning_thresholds=[])
    await wait_for_async(lambda: meter.schedule.moment_of(session.key), what="timer armed")
    later = session.paid_until + timedelta(seconds=1.5)
    with real_ledger.engine.begin() as conn:  # e.g. another replica's extension
        conn.execute(update(sessions).where(sessions.c.key == session.key)
                     .values(paid_until=later))
    # The old moment comes: the session is read again, not stopped, and armed anew.
    await wait_for_async(lambda: meter.schedule.moment_of(session.key) == later,
                         what="timer moved to the new paid_until")
    assert real_store.get(session.key).state == "running"
    settled = await ended(real_store, session.key)
    assert settled.ended_at == later


@pytest.mark.asyncio
async def test_an_extension_through_the_meter_moves_the_timer_at_once(
        meters, real_store, real_ledger, fake_hub):  # noqa: F811
    session = ending_in(real_store, real_ledger, fake_hub, "dee", 30)
    meter = meters(warning_thresholds=[])
    await wait_for_async(lambda: meter.schedule.moment_of(session.key), what="timer armed")
    extended = real_store.extend(session.key, session.rate_per_hour, actor="user:dee")
    meter.schedule.plan(extended)  # what the extend API does under the meter's lock
    assert meter.schedule.moment_of(session.key) == extended.paid_until
    # paid_until follows from everything held (two hours now), not from the cut one.
    assert extended.paid_until > session.paid_until + timedelta(hours=1)


@pytest.mark.asyncio
async def test_a_restarted_meter_rebuilds_its_timers_from_the_database(
        meters, real_store, real_ledger, fake_hub):  # noqa: F811
    session = ending_in(real_store, real_ledger, fake_hub, "eve", 2.0)
    first = meters()
    await wait_for_async(lambda: first.schedule.moment_of(session.key), what="timer armed")
    first.stop()  # as if the service died: its timers die with it
    assert first.schedule.moment_of(session.key) is None
    second = meters()
    await wait_for_async(lambda: second.schedule.moment_of(session.key),
                         what="timer armed again from the database")
    settled = await ended(real_store, session.key)
    assert settled.ended_at == session.paid_until
    assert settlements(real_ledger, session.key) == 1
