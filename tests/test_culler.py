"""Zero to JupyterHub's idle culler stays on, and a server it culls is settled like any stop.

The real ``jupyterhub-idle-culler`` runs as a hub-managed service with the command and the
role that the chart builds from config/z2jh-values.yaml (tests/z2jh_chart.py), only with a
short ``cull.timeout``/``cull.every`` and the hub's address on this machine.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from jupyterhub_credits.catalog import cost_of_seconds
from jupyterhub_credits.ledger.schema import transfers
from jupyterhub_credits.ledger.verify import verify
from tests import z2jh_chart
from tests.hub import CATALOG, HubProcess
from tests.test_z2jh import DB_SECRET, VALUES
from tests.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

IDLE_TIMEOUT = 3  # seconds (cull.timeout); the chart's default is 3600
A100_RATE = 15_000  # units per GPU-hour


def chart_culler(tmp_path) -> tuple[dict, dict]:
    """The culler service and role the chart makes of the values file, timed for a test."""
    values = z2jh_chart.render_values(
        VALUES, set_file={"hub.extraFiles.credits-catalog.stringData": CATALOG},
        overrides={"cull": {"timeout": IDLE_TIMEOUT, "every": 1}})
    assert values["cull"]["enabled"] is True, "the values file keeps z2jh's culler on"
    pod = z2jh_chart.hub_pod(values, tmp_path, k8s_secrets={
        DB_SECRET: {"hub.db.password": "unused", "credits-db-url": "sqlite://"}})
    c = z2jh_chart.load_hub_config(pod, extra_config=False)
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "jupyterhub-idle-culler"]
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "jupyterhub-idle-culler"]
    return service, role


@pytest.fixture(scope="module")
def culled_hub(tmp_path_factory, module_postgres_url):
    service, role = chart_culler(tmp_path_factory.mktemp("chart"))
    # In the chart the hub listens on localhost:8081; here, on its own free port.
    extra_config = f"""
        import json
        culler = json.loads({json.dumps(service)!r})
        culler["command"] = [arg.replace("http://localhost:8081",
                                         f"http://127.0.0.1:{{c.JupyterHub.hub_port}}")
                             for arg in culler["command"]]
        c.JupyterHub.services.append(culler)
        c.JupyterHub.load_roles.append(json.loads({json.dumps(role)!r}))
    """
    hub = HubProcess(tmp_path_factory.mktemp("hub"), db_url=module_postgres_url,
                     extra_config=extra_config)  # HubProcess dedents it
    try:
        hub.start()
        yield hub, service, role
    finally:
        hub.stop()


def test_an_idle_server_culled_by_z2jh_culler_is_settled_once_for_the_time_it_ran(culled_hub):
    hub, service, role = culled_hub
    assert service["command"][:3] == ["python3", "-m", "jupyterhub_idle_culler"]
    assert f"--timeout={IDLE_TIMEOUT}" in service["command"]
    assert set(role["scopes"]) == {"list:users", "read:users:activity", "read:servers",
                                   "delete:servers"}

    hub.grant("ida", 50)
    session = hub.running_server("ida", image="tf-2.21", gpu_type="a100", gpus=1, hours="2")
    assert session.held == 2 * A100_RATE and hub.live_devices(session.id)
    # The hub's idea of the server's last activity, which the culler compares with its timeout.
    last_activity = datetime.fromisoformat(
        hub.server("ida")["last_activity"].replace("Z", "+00:00"))
    # Nobody touches the server: the culler stops it once it has been idle IDLE_TIMEOUT s.
    hub.wait_gone("ida", timeout=30)
    culled = re.findall(r"DELETE /hub/api/users/ida/server \(jupyterhub-idle-culler@",
                        hub.log_path.read_text(errors="replace"))
    assert len(culled) == 1, "the culler (its own token and role) stopped it"

    ended = wait_for(lambda: (s := hub.sessions.get(session.key)).state == "ended" and s,
                     timeout=30, what="ida's session to be settled")
    wait_for(lambda: not hub.live_devices(session.id), timeout=30, what="ida's GPU to be free")
    assert (ended.ended_at - last_activity).total_seconds() >= IDLE_TIMEOUT, "culled too soon"
    ran = ended.ended_at - ended.ready_at
    # Charged for the seconds it ran, not for the two hours paid in advance.
    assert abs(ended.charged - cost_of_seconds(A100_RATE, Decimal(str(ran.total_seconds())))) <= 1
    assert 0 < ended.charged < ended.held
    ledger = hub.ledger
    with ledger.engine.connect() as conn:
        posts = conn.execute(select(transfers.c.amount).where(
            transfers.c.kind == "post", transfers.c.key.like(f"{session.key}:%"))).all()
    assert [amount for (amount,) in posts] == [ended.charged], "the hold posted exactly once"
    balance = ledger.balance("ida")
    assert (balance.total, balance.reserved) == (50_000 - ended.charged, 0)
    assert verify(ledger.engine).ok
