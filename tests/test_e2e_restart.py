"""kill -9 the hub mid-session: after a restart the session is settled once, its GPUs freed."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import func, select

from jupyterhub_credits.ledger.schema import transfers
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.schema import gpu_assignments
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_hub_killed_and_restarted_settles_once_at_the_last_billed_tick(hub, hub_ledger):
    ledger, store = hub_ledger, hub.sessions
    hub.grant("kim", 50)
    session = hub.running_server("kim", image="tf-2.21", gpu_type="a100", gpus=1, hours="1")
    # Let the meter bill a little, so there is something to charge.
    billed = wait_for(lambda: (s := store.get(session.key)).billed_until > s.ready_at and s,
                      what="the meter to record billing")

    pid = hub.server_pids()["kim"]
    hub.kill()  # hub, proxy and service: SIGKILL, no cleanup at all
    os.kill(pid, signal.SIGKILL)  # and the server dies while the hub is down
    frozen = store.get(session.key)
    assert frozen.state == "running" and frozen.billed_until >= billed.billed_until

    hub.start()  # the hub finds the server gone and stops it; the meter reconciles
    ended = wait_for(lambda: (s := store.get(session.key)).state == "ended" and s,
                     timeout=60, what="the session to be settled after the restart")
    # Charged up to the last tick recorded before the crash, not for the downtime.
    assert ended.ended_at == frozen.billed_until
    assert ended.charged == frozen.cost_until(frozen.billed_until) > 0
    with ledger.engine.connect() as conn:
        posts = conn.execute(select(func.count()).select_from(transfers).where(
            transfers.c.kind == "post",
            transfers.c.key.like(f"{session.key}:%"))).scalar()
        live = conn.execute(select(func.count()).select_from(gpu_assignments).where(
            gpu_assignments.c.released_at.is_(None))).scalar()
    assert posts == 1  # charged once
    assert live == 0  # GPUs released
    balance = ledger.balance("kim")
    assert (balance.total, balance.reserved) == (50_000 - ended.charged, 0)
    assert verify(ledger.engine).ok
    # The freed GPU can be used again at once.
    response = hub.spawn("kim", image="tf-2.21", gpu_type="a100", gpus=2, hours="0.5")
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("kim")
