"""Spending credits end to end: a real hub, proxy, credits service and single-user servers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from jupyterhub_credits.catalog import cost_of_seconds
from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.store import SessionStore
from tests.conftest import fresh_postgres_database
from tests.hub import HubProcess, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

A100_RATE = 15_000  # units per GPU-hour (15 credits)


@pytest.fixture(scope="module")
def database_url():
    with fresh_postgres_database("credits_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def hub(tmp_path_factory, database_url):
    hub = HubProcess(tmp_path_factory.mktemp("hub"), db_url=database_url, meter_interval=0.5)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def ledger(database_url):
    ledger = Ledger.open(database_url)
    yield ledger
    ledger.close()


def grant(ledger, user, credits):
    ledger.grant(user, credits * 1000, key=f"test-grant:{user}:{credits}", reason="test",
                 actor="test")


def spawn(hub, user, **options):
    hub.api("POST", f"/users/{user}")
    return hub.api("POST", f"/users/{user}/server", json={"user_options": options})


def test_gpu_session_is_held_billed_from_ready_and_settled_to_the_second(hub, ledger):
    grant(ledger, "ada", 100)
    response = spawn(hub, "ada", image="tf-2.21", gpu_type="a100", gpus=2, hours="1")
    assert response.status_code in (201, 202), response.text
    hub.wait_ready("ada")
    store = SessionStore(ledger)
    session = store.open_session("ada")
    assert session.state == "running" and session.gpus == 2 and session.held == 30_000
    balance = ledger.balance("ada")
    assert (balance.total, balance.reserved) == (100_000, 30_000)
    assert hub.api("DELETE", "/users/ada/server").status_code in (202, 204)
    hub.wait_gone("ada")
    ended = wait_for(lambda: (s := store.get(session.key)).state == "ended" and s,
                     what="settlement")
    seconds_ready = ended.ended_at - ended.ready_at
    expected = cost_of_seconds(2 * A100_RATE, Decimal(str(seconds_ready.total_seconds())))
    # Billed per second of ready time (microsecond-exact ceil; rounding to whole units).
    assert abs(ended.charged - expected) <= 1
    assert ended.charged > 0 and ended.end_reason == "stopped"
    balance = ledger.balance("ada")
    assert (balance.total, balance.reserved) == (100_000 - ended.charged, 0)
    assert verify(ledger.engine).ok
