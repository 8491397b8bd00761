"""The meter end to end: a real hub stops a server whose paid time ended, and bills only that.

The hub's catalog is the shipped one with ``min_prepaid_minutes`` lowered to
0.05 (3 seconds), so a session of a few seconds can be bought for real.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jupyterhub_credits.ledger.verify import verify
from tests.waiting import wait_for

METER_INTERVAL = 0.5

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.hub(
    catalog={"quotas": {"min_prepaid_minutes": "0.05"}}, meter_interval=METER_INTERVAL)]


def test_an_expired_session_is_warned_stopped_and_charged_its_paid_time(hub, hub_ledger, capsys):
    hub.grant("ada", 20)
    session = hub.running_server("ada", image="tf-2.21", gpu_type="a100", gpus=2,
                                 hours="0.002")  # 7.2 s of 2 x A100 (30 credits/hour): 60 units
    assert session.held == 60 and len(hub.live_devices(session.id)) == 2
    paid_until = session.paid_until
    assert paid_until == session.ready_at + timedelta(seconds=7)  # what 60 units pay for
    token = hub.user_token("ada")

    # Both warnings (600 s and 60 s) are crossed at once: one notice, both recorded.
    def warned():
        me = hub.credits_api("GET", "/me", token=token).json()
        return me["sessions"] and me["sessions"][0]["warnings"] == [600, 60] and me
    me = wait_for(warned, timeout=5, interval=0.1, what="the meter's warning")
    assert "left" in me["sessions"][0]["notice"]

    def gone():
        return hub.server("ada") is None and datetime.now(timezone.utc)
    stopped_at = wait_for(gone, timeout=30, interval=0.05, what="the meter to stop the server")
    overrun = (stopped_at - paid_until).total_seconds()
    with capsys.disabled():
        print(f"\nenforcement overrun: {overrun:.2f} s past paid_until "
              f"(meter interval {METER_INTERVAL} s)")
    assert 0 <= overrun < 10

    ended = wait_for(lambda: (s := hub.sessions.get(session.key)).state == "ended" and s,
                     what="settlement")
    assert ended.end_reason == "expired" and ended.ended_at == paid_until
    # Its ready time only: up to paid_until, to the unit; never more than was held.
    assert ended.charged == ended.cost_until(paid_until) <= ended.held
    assert ended.charged == 59  # 7 s of 30 credits/hour, rounded up to the unit
    balance = hub_ledger.balance("ada")
    assert (balance.total, balance.reserved) == (20_000 - ended.charged, 0)
    # The spawner's post-stop hook freed the GPUs once the process was gone.
    wait_for(lambda: hub.live_devices(session.id) == set(), timeout=10, what="GPUs released")
    catalog = hub.credits_api("GET", "/catalog", token=token).json()
    assert {g["id"]: g["free"] for g in catalog["gpu_types"]}["a100"] == 2
    assert verify(hub_ledger.engine).ok


def test_auto_extend_keeps_a_session_running(hub):
    # 36 s of CPU: inside the meter's auto-extend lead (15 minutes) from the start.
    hub.grant("ben", 10)
    session = hub.running_server("ben", image="tf-2.21-cpu", gpu_type="none", hours="0.01")
    assert session.held == 10
    old_end = session.paid_until
    token = hub.user_token("ben")
    response = hub.credits_api("POST", "/sessions/default/extend", token=token,
                               json={"auto_extend": True})
    assert response.status_code == 200 and response.json()["session"]["auto_extend"]
    # The meter buys another hour (1 credit) by itself.
    extended = wait_for(lambda: (s := hub.sessions.get(session.key)).held > 10 and s,
                        timeout=10, interval=0.1, what="the auto-extension")
    # Paid time is recomputed from all the holds: 36 s + 1 hour from ready.
    assert extended.held == 1_010
    assert extended.paid_until == session.ready_at + timedelta(seconds=36 + 3600) > old_end
    # The meter ticks on and leaves the server up.
    wait_for(lambda: hub.sessions.get(session.key).billed_until
             > extended.billed_until + timedelta(seconds=2 * METER_INTERVAL), timeout=10,
             what="the meter to keep billing")
    assert hub.server("ben")["ready"] and hub.sessions.get(session.key).state == "running"
    me = hub.credits_api("GET", "/me", token=token).json()["sessions"][0]
    assert me["held"] == "1.01" and "Auto-extended" in me["notice"] and me["warnings"] == []
    hub.stop_server("ben")
