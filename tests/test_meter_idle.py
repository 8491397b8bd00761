"""The meter stops servers whose GPUs stayed idle (``Meter.idle_gpu_timeout``), refunding the rest.

Same set-up as ``test_meter``: a fake clock, real databases (both backends) and
the small fake hub REST API. GPU samples reach the database the way a
single-user server's sampler sends them: one ``gpu_utilization`` event per
minute, recorded through ``EarningService.record`` a minute after it starts.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from jupyterhub_credits.earning import EarningService
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.service.meter import Meter, gpus_idle
from tests import test_meter as base
from tests.test_meter import live_devices, make_meter, running

# The meter tests' fixtures: the fake hub, an empty session store, the catalog, GPUs.
fake_hub, store, catalog, allocator = base.fake_hub, base.store, base.catalog, base.allocator

TIMEOUT = 600  # 10 minutes


@pytest.fixture
def earning(ledger):
    return EarningService(ledger)


def report_minutes(earning, clock, user, utils, *, server="", gpus=1):
    """One sample per minute from now on, each sent as its minute ends (the clock moves)."""
    for util in utils:
        minute = clock()
        clock.advance(seconds=60)
        if util is None:  # the sampler sent nothing for this minute
            continue
        payload = {"minute": minute.isoformat(),
                   "gpus": [{"index": i, "util": util, "mem_used_mb": 100} for i in range(gpus)]}
        [answer] = earning.record(user, [{"kind": "gpu_utilization",
                                          "key": f"gpu_utilization:{server}:{minute.isoformat()}",
                                          "time": clock().isoformat(), "payload": payload}],
                                  source="server")
        assert answer["outcome"] == "earned", answer


def idle_meter(store, fake_hub, catalog, clock, earning, **traits):
    meter = make_meter(store, fake_hub, catalog, clock, **traits)
    meter.earning = earning
    return meter


# --- the pure decision -----------------------------------------------------------------------


def test_gpus_idle_needs_samples_covering_the_window_all_below_the_threshold(clock):
    now = clock()
    minutes = [now - timedelta(minutes=m) for m in range(10, 0, -1)]  # the 10 in the window

    def idle(samples, timeout=TIMEOUT):
        return gpus_idle(samples, now=now, timeout=timeout, threshold=5)

    assert idle([(m, 1.0) for m in minutes])
    assert idle([(m, 4.9) for m in minutes[2:]])  # 8 of 10: enough
    assert not idle([(m, 1.0) for m in minutes[3:]])  # 7 of 10: unknown
    assert not idle([])
    assert not idle([(m, 50.0 if i == 4 else 0.0) for i, m in enumerate(minutes)])
    assert not idle([(m, 5.0) for m in minutes])  # at the threshold is not below it
    # Only the window counts: a busy minute before it, or samples after now, change nothing.
    assert idle([(now - timedelta(minutes=11), 90.0), *[(m, 0.0) for m in minutes]])
    assert not idle([(now, 0.0), (now + timedelta(minutes=1), 0.0), *[(m, 0.0)
                                                                     for m in minutes[:7]]])
    # A minute reported twice (another of the user's servers) counts by its busiest sample.
    assert not idle([*[(m, 0.0) for m in minutes], (minutes[5], 60.0)])
    assert not idle([(m, 0.0) for m in minutes], timeout=0)


def test_idle_traits_default_off_and_are_checked():
    assert Meter.idle_gpu_timeout.default_value == 0
    assert Meter.idle_gpu_threshold.default_value == 5
    assert Meter.idle_gpu_timeout.help and Meter.idle_gpu_threshold.help
    with pytest.raises(ValueError, match="at least 60"):
        Meter(sessions=_NoStore(), hub=None, catalog=None, idle_gpu_timeout=30)
    with pytest.raises(ValueError, match="percentage"):
        Meter(sessions=_NoStore(), hub=None, catalog=None, idle_gpu_threshold=101)


class _NoStore:
    ledger = None
    clock = None


# --- the meter against a database and the fake hub ---------------------------------------------


@pytest.mark.asyncio
async def test_off_by_default(store, ledger, clock, fake_hub, catalog, earning):
    session = running(store, ledger, "ann", hours="1")
    fake_hub.run("ann")
    meter = idle_meter(store, fake_hub, catalog, clock, earning)
    assert meter.idle_gpu_timeout == 0
    report_minutes(earning, clock, "ann", [0] * 15)
    report = await meter.tick()
    assert report.idle == [] and fake_hub.deletes == []
    assert store.get(session.key).state == "running"


@pytest.mark.asyncio
async def test_idle_gpus_settle_refund_and_stop(store, ledger, clock, fake_hub, catalog,
                                                 allocator, earning):
    session = running(store, ledger, "ann", hours="1", gpus=2, allocator=allocator)
    fake_hub.run("ann")
    meter = idle_meter(store, fake_hub, catalog, clock, earning, idle_gpu_timeout=TIMEOUT)
    fake_hub.delete_answers = [202]  # still stopping after the first call
    # Busy at first, then idle for the whole 10-minute window.
    report_minutes(earning, clock, "ann", [80, 90] + [2] * 10, gpus=2)
    now = clock()
    report = await meter.tick()
    assert report.idle == [session.key] and report.expired == []
    ended = store.get(session.key)
    assert ended.state == "ended" and ended.end_reason == "gpu_idle"
    assert ended.ended_at == now == session.ready_at + timedelta(minutes=12)
    # Two A100s for 12 minutes: 6,000 units of the 30,000 held; the rest voided.
    assert ended.held == 30_000 and ended.charged == ended.cost_until(now) == 6_000
    balance = ledger.balance("ann")
    assert balance.reserved == 0 and balance.total == 100_000 - 6_000
    assert fake_hub.deletes == [("ann", "")]
    assert "idle" in meter.notices[session.key]
    # The GPUs stay taken while the process may still run.
    assert len(live_devices(ledger, session)) == 2 and allocator.free()["a100"] == 0

    clock.advance(seconds=5)  # the stop is asked again (same path as expiry), now 204
    report = await meter.tick()
    assert report.idle == [] and fake_hub.deletes == [("ann", "")] * 2
    assert meter.stopping == {}
    clock.advance(seconds=60)  # reconciliation: the server is gone, the GPUs are free
    await meter.tick()
    assert live_devices(ledger, session) == [] and allocator.free()["a100"] == 2
    assert fake_hub.deletes == [("ann", "")] * 2
    assert store.get(session.key).charged == 6_000
    assert verify(ledger.engine).ok


@pytest.mark.asyncio
async def test_a_failed_idle_stop_is_tried_again(store, ledger, clock, fake_hub, catalog,
                                                  earning):
    session = running(store, ledger, "ann", hours="1", server="gpu")
    fake_hub.run("ann", "gpu")
    fake_hub.delete_answers = [500]
    meter = idle_meter(store, fake_hub, catalog, clock, earning, idle_gpu_timeout=TIMEOUT)
    report_minutes(earning, clock, "ann", [0] * 10, server="gpu")
    assert (await meter.tick()).idle == [session.key]
    assert fake_hub.deletes == [("ann", "gpu")] and session.key in meter.stopping
    clock.advance(seconds=5)
    await meter.tick()
    assert fake_hub.deletes == [("ann", "gpu")] * 2 and meter.stopping == {}
    assert store.get(session.key).end_reason == "gpu_idle"


@pytest.mark.asyncio
async def test_one_busy_minute_in_the_window_keeps_it_running(store, ledger, clock, fake_hub,
                                                               catalog, earning):
    session = running(store, ledger, "ann", hours="1")
    fake_hub.run("ann")
    meter = idle_meter(store, fake_hub, catalog, clock, earning, idle_gpu_timeout=TIMEOUT)
    report_minutes(earning, clock, "ann", [0] * 6 + [40] + [0] * 5)
    report = await meter.tick()
    assert report.idle == [] and fake_hub.deletes == []
    assert store.get(session.key).state == "running"
    # Once the busy minute has left the window, the next check (a minute on) stops it.
    report_minutes(earning, clock, "ann", [0] * 5)
    assert (await meter.tick()).idle == [session.key]
    assert fake_hub.deletes == [("ann", "")]


@pytest.mark.asyncio
async def test_too_few_samples_never_stop(store, ledger, clock, fake_hub, catalog, earning):
    session = running(store, ledger, "ann", hours="1")
    fake_hub.run("ann")
    meter = idle_meter(store, fake_hub, catalog, clock, earning, idle_gpu_timeout=TIMEOUT)
    # 7 of the window's 10 minutes sampled, all idle: unknown, not idle.
    report_minutes(earning, clock, "ann", [0, None, 0, None, 0, 0, None, 0, 0, 0])
    assert (await meter.tick()).idle == []
    clock.advance(minutes=30)  # no samples at all for 30 minutes: still unknown
    assert (await meter.tick()).idle == []
    assert fake_hub.deletes == [] and store.get(session.key).state == "running"


@pytest.mark.asyncio
async def test_not_before_the_session_has_run_the_timeout(store, ledger, clock, fake_hub,
                                                           catalog, earning):
    report_minutes(earning, clock, "ann", [])  # nothing yet
    session = running(store, ledger, "ann", hours="1")
    fake_hub.run("ann")
    meter = idle_meter(store, fake_hub, catalog, clock, earning, idle_gpu_timeout=TIMEOUT,
                       idle_gpu_threshold=50)
    report_minutes(earning, clock, "ann", [0] * 9)  # ready for 9 minutes only
    assert (await meter.tick()).idle == []
    report_minutes(earning, clock, "ann", [0])  # 10 minutes, and the check is due again
    assert (await meter.tick()).idle == [session.key]


@pytest.mark.asyncio
async def test_cpu_sessions_are_never_stopped_for_idle_gpus(store, ledger, clock, fake_hub,
                                                             catalog, earning):
    # bob's GPU server reports idle minutes; his CPU server has no GPUs to be idle.
    ledger.grant("bob", 100_000, key="grant:bob", reason="test", actor="test")
    cpu = store.start(user="bob", server_name="", account="user:bob", image="tf-2.21",
                      gpu_type="", gpus=0, rate_per_hour=1_000, hold_units=1_000,
                      actor="user:bob")
    cpu = store.mark_ready(cpu.key)
    gpu = running(store, ledger, "bob", server="gpu")
    fake_hub.run("bob")
    fake_hub.run("bob", "gpu")
    meter = idle_meter(store, fake_hub, catalog, clock, earning, idle_gpu_timeout=TIMEOUT)
    report_minutes(earning, clock, "bob", [0] * 15, server="gpu")
    assert (await meter.tick()).idle == [gpu.key]
    assert fake_hub.deletes == [("bob", "gpu")] and store.get(cpu.key).state == "running"
