"""The meter end to end: a real hub stops a server whose paid time ended, and bills only that.

The catalog cannot sell less than a minute (``min_prepaid_minutes`` >= 1), so
the tests buy a minute and then shorten what was paid for to a few seconds
by moving ``paid_until`` in the sessions table — the one test seam here;
everything after that (meter, settlement, the hub's stop, the spawner's
post-stop hook freeing the GPUs) is the real thing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.schema import gpu_assignments, sessions
from jupyterhub_credits.sessions.store import SessionStore
from tests.conftest import fresh_postgres_database
from tests.hub import HubProcess, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

METER_INTERVAL = 0.5
@pytest.fixture(scope="module")
def database_url():
    with fresh_postgres_database("credits_meter") as url:
        yield url


@pytest.fixture(scope="module")
def hub(tmp_path_factory, database_url):
    hub = HubProcess(tmp_path_factory.mktemp("hub"), db_url=database_url,
                     meter_interval=METER_INTERVAL)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def ledger(database_url):
    ledger = Ledger.open(database_url)
    yield ledger
    ledger.close()


def start(hub, ledger, user, credits, **options):
    ledger.grant(user, credits * 1000, key=f"grant:{user}", reason="test", actor="test")
    hub.api("POST", f"/users/{user}")
    response = hub.api("POST", f"/users/{user}/server", json={"user_options": options})
    assert response.status_code in (201, 202), response.text
    hub.wait_ready(user)
    return SessionStore(ledger).open_session(user)


def pay_only_until(ledger, key: str, paid_until: datetime) -> None:
    """The test seam: the session was paid for until ``paid_until`` (a few seconds away)."""
    with ledger.engine.begin() as conn:
        conn.execute(update(sessions).where(sessions.c.key == key).values(paid_until=paid_until))


def live_devices(ledger, session_id: int) -> list[str]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(select(gpu_assignments.c.device).where(
            gpu_assignments.c.session_id == session_id,
            gpu_assignments.c.released_at.is_(None))).scalars())


def test_an_expired_session_is_warned_stopped_and_charged_its_paid_time(hub, ledger, capsys):
    session = start(hub, ledger, "ada", 20, image="tf-2.21", gpu_type="a100", gpus=2,
                    hours="0.0167")  # a minute of 2 x A100 (30 credits/hour): 501 units
    assert session.held == 501 and len(live_devices(ledger, session.id)) == 2
    token = hub.user_token("ada")
    paid_until = datetime.now(timezone.utc) + timedelta(seconds=6)
    pay_only_until(ledger, session.key, paid_until)

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

    ended = wait_for(lambda: (s := SessionStore(ledger).get(session.key)).state == "ended" and s,
                     what="settlement")
    assert ended.end_reason == "expired" and ended.ended_at == paid_until
    # Its ready time only: up to paid_until, to the unit; never more than was held.
    assert ended.charged == ended.cost_until(paid_until) <= ended.held
    assert 0 < ended.charged < 100  # a few seconds of 2 x A100 (30/hour): ~0.05 credits
    balance = ledger.balance("ada")
    assert (balance.total, balance.reserved) == (20_000 - ended.charged, 0)
    # The spawner's post-stop hook freed the GPUs once the process was gone.
    wait_for(lambda: live_devices(ledger, session.id) == [], timeout=10, what="GPUs released")
    catalog = hub.credits_api("GET", "/catalog", token=token).json()
    assert {g["id"]: g["free"] for g in catalog["gpu_types"]}["a100"] == 2
    assert verify(ledger.engine).ok


def test_auto_extend_keeps_a_session_running(hub, ledger):
    session = start(hub, ledger, "ben", 10, image="tf-2.21-cpu", gpu_type="none", hours="1")
    token = hub.user_token("ben")
    response = hub.credits_api("POST", "/sessions/default/extend", token=token,
                               json={"auto_extend": True})
    assert response.status_code == 200 and response.json()["session"]["auto_extend"]
    soon = datetime.now(timezone.utc) + timedelta(seconds=5)
    pay_only_until(ledger, session.key, soon)
    # Inside the meter's auto-extend lead: it buys another hour (1 credit) by itself.
    extended = wait_for(lambda: (s := SessionStore(ledger).get(session.key)).held > 1_000 and s,
                        timeout=5, interval=0.1, what="the auto-extension")
    # Paid time is recomputed from the holds: two hours from ready.
    assert extended.held == 2_000 and extended.paid_until == session.ready_at + timedelta(hours=2)
    # The meter ticks on (billing moves past the old end) and leaves the server up.
    wait_for(lambda: SessionStore(ledger).get(session.key).billed_until > soon + timedelta(
        seconds=2 * METER_INTERVAL), timeout=10, what="the meter to bill past the old end")
    assert hub.server("ben")["ready"] and SessionStore(ledger).get(session.key).state == "running"
    me = hub.credits_api("GET", "/me", token=token).json()["sessions"][0]
    assert me["held"] == "2.00" and "Auto-extended" in me["notice"] and me["warnings"] == []
    hub.api("DELETE", "/users/ben/server")
    hub.wait_gone("ben")
