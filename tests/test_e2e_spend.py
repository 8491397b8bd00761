"""Spending credits end to end: a real hub, proxy, credits service and single-user servers."""

from __future__ import annotations

import os
import signal
from decimal import Decimal

import pytest

from jupyterhub_credits.catalog import cost_of_seconds
from jupyterhub_credits.ledger.verify import verify
from tests.realhub import log_in
from tests.waiting import wait_for

# Servers of users named broken-* exit at once: a start that fails after the hold.
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.hub(extra_config="""
    def break_some(spawner):
        if spawner.user.name.startswith("broken"):
            spawner.cmd = ["/bin/false"]
    c.Spawner.pre_spawn_hook = break_some
    c.Spawner.poll_interval = 1
""")]

A100_RATE = 15_000  # units per GPU-hour (15 credits)


def test_gpu_session_is_held_billed_from_ready_and_settled_to_the_second(hub, hub_ledger):
    hub.grant("ada", 100)
    response = hub.spawn("ada", image="tf-2.21", gpu_type="a100", gpus=2, hours="1")
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("ada")
    session = hub.sessions.open_session("ada")
    assert session.state == "running" and session.gpus == 2 and session.held == 30_000
    balance = hub_ledger.balance("ada")
    assert (balance.total, balance.reserved) == (100_000, 30_000)
    ended = hub.stop_server("ada")  # DELETE answered 202 or 204, gone, settled
    seconds_ready = ended.ended_at - ended.ready_at
    expected = cost_of_seconds(2 * A100_RATE, Decimal(str(seconds_ready.total_seconds())))
    # Billed per second of ready time (microsecond-exact ceil; rounding to whole units).
    assert abs(ended.charged - expected) <= 1
    assert ended.charged > 0 and ended.end_reason == "stopped"
    balance = hub_ledger.balance("ada")
    assert (balance.total, balance.reserved) == (100_000 - ended.charged, 0)
    assert verify(hub_ledger.engine).ok


def test_cpu_session_is_paid_at_the_cpu_rate_and_sees_no_gpu(hub, hub_ledger):
    hub.grant("carl", 5)
    session = hub.running_server("carl", image="tf-2.21-cpu", gpu_type="none", gpus=0, hours="2")
    assert (session.gpu_type, session.gpus, session.rate_per_hour, session.held) == (
        "none", 0, 1000, 2000)
    assert session.devices is None
    ended = hub.stop_server("carl")
    assert 0 < ended.charged <= 2000
    assert hub_ledger.balance("carl").reserved == 0


@pytest.mark.parametrize("options, status, words", [
    ({"image": "tf-2.21", "gpu_type": "a100", "gpus": 4, "hours": "1"}, 403, "At most 3 GPUs"),
    ({"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "25"}, 403, "24"),
    ({"image": "tf-2.21", "gpu_type": "t4", "gpus": 2, "hours": "1"}, 503, "free"),
    ({"image": "tf-2.21", "gpu_type": "h100", "gpus": 1, "hours": "1"}, 503, "free"),
    ({"image": "tf-2.21", "gpu_type": "a100", "gpus": 2, "hours": "10"}, 402, "credits"),
    ({"image": "tf-9.99", "gpu_type": "a100", "gpus": 1, "hours": "1"}, 400, "tf-9.99"),
    ({"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "-1"}, 400, "hours"),
])
def test_refusals_through_the_rest_api(hub, hub_ledger, options, status, words):
    hub.grant("rita", 50)  # once: the same grant key for every case
    response = hub.spawn("rita", **options)
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert hub.server("rita") is None
    assert hub_ledger.balance("rita").reserved == 0  # nothing held, nothing charged
    assert hub.sessions.open_session("rita") is None


def test_quota_comes_before_capacity_and_balance(hub):
    # 4 H100s: over quota, none exist, and far beyond a zero balance: quota speaks first.
    response = hub.spawn("poor", image="tf-2.21", gpu_type="h100", gpus=4, hours="24")
    assert response.status_code == 403 and "At most 3 GPUs" in response.json()["message"]


def test_spawn_page_shows_form_and_refusal_message(hub, hub_ledger):
    hub.grant("pia", 20)
    browser, response = log_in(hub.url, "pia")
    assert response.status_code == 200, response.text[:500]
    form = browser.get(f"{hub.url}/hub/spawn")
    page = form.content.decode()
    assert form.status_code == 200
    assert 'name="gpu_type"' in page
    assert "A100 — 15.00 credits / GPU-hour — 2 of 2 free" in page  # this hub's inventory
    assert "H100 — 25.00 credits / GPU-hour — none here" in page
    assert "<strong>20.00</strong> credits available" in page
    xsrf = browser.cookies.get("_xsrf", path="/hub/")  # renewed at login
    refused = browser.post(f"{hub.url}/hub/spawn", data={
        "_xsrf": xsrf, "image": "tf-2.21", "gpu_type": "a100", "gpus": "2", "hours": "5"})
    message = refused.content.decode()
    assert refused.status_code == 402
    assert "150.00 credits" in message and "20.00" in message
    assert hub.server("pia") is None and hub_ledger.balance("pia").reserved == 0


def test_failed_start_costs_nothing_and_frees_the_gpus(hub, hub_ledger):
    hub.grant("broken-bob", 30)
    response = hub.spawn("broken-bob", image="tf-2.21", gpu_type="a100", gpus=2, hours="1")
    # The hub answers 500 after the server died before it was ready.
    assert response.status_code >= 400, response.text
    session = wait_for(lambda: [s for s in hub.user_sessions("broken-bob") if s.state == "ended"],
                       what="the failed session to end")[0]
    assert session.charged == 0 and session.end_reason == "start_failed"
    assert hub_ledger.balance("broken-bob").total == 30_000
    assert hub_ledger.balance("broken-bob").reserved == 0
    assert hub.live_devices() == set()


def test_a_crashed_server_is_settled_at_its_last_billed_tick(hub, hub_ledger):
    hub.grant("crash-carla", 30)
    session = hub.running_server("crash-carla", image="tf-2.21", gpu_type="a100", gpus=1,
                                 hours="1")
    store = hub.sessions
    billed = wait_for(lambda: (s := store.get(session.key)).billed_until > s.ready_at and s,
                      what="the meter to bill")
    os.kill(hub.server_pids()["crash-carla"], signal.SIGKILL)
    # The hub's poll (every second in this hub) finds it gone and stops it.
    ended = wait_for(lambda: (s := store.get(session.key)).state == "ended" and s,
                     what="the crash to be noticed and settled")
    assert ended.end_reason == "server_gone"
    assert ended.ended_at >= billed.billed_until and ended.charged == ended.cost_until(
        ended.ended_at)
    assert hub_ledger.balance("crash-carla").reserved == 0
    assert hub.live_devices() == set()  # its GPU is free again
