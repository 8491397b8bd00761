"""The README's demo hub (config/jupyterhub_config.py) as a newcomer uses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from jupyterhub_credits.ledger import Ledger
from tests.hub import ROOT, free_ports
from tests.realhub import log_in
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo")
    (port,) = free_ports(1)
    env = dict(os.environ, JUPYTERHUB_CREDITS_DEMO_STATE=str(state),
               JUPYTERHUB_CREDITS_DEMO_PORT=str(port), JUPYTERHUB_CREDITS_LOCAL_GPUS="a100:0")
    env.pop("JUPYTERHUB_CREDITS_DB_URL", None)
    log = open(state / "demo.log", "wb")
    process = subprocess.Popen([str(BIN / "jupyterhub"), "-f", "config/jupyterhub_config.py"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        assert process.poll() is None, (state / "demo.log").read_text()[-3000:]
        try:
            return (requests.get(f"{url}/hub/api/", timeout=2).ok
                    and requests.get(f"{url}/services/credits/health", timeout=2).ok)
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, what="the demo hub")
    yield url, state
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def test_demo_logins_signup_credits_and_a_cpu_session(demo):
    url, state = demo
    ledger = Ledger.open(f"sqlite:///{state / 'jupyterhub_credits.sqlite'}")
    try:
        _, refused = log_in(url, "newbie", password="wrong")
        assert "Invalid username or password" in refused.content.decode()

        browser, response = log_in(url, "newbie")
        assert response.ok and response.url.endswith("/hub/spawn")
        # The signup bonus (75) and today's login (1), earned through the catalog's rules.
        assert ledger.balance("newbie").available == 76_000
        log_in(url, "newbie")  # a second login earns no second bonus, nor a second daily login
        assert ledger.balance("newbie").available == 76_000

        form = browser.get(f"{url}/hub/spawn").content.decode()
        assert "<strong>76.00</strong> credits available" in form
        started = browser.post(f"{url}/hub/spawn", data={
            "_xsrf": browser.cookies.get("_xsrf", path="/hub/"), "image": "tf-2.21-cpu",
            "gpu_type": "none", "gpus": "0", "hours": "1"})
        assert started.ok, started.content.decode()[-2000:]
        wait_for(lambda: browser.get(f"{url}/hub/api/users/newbie",
                                     headers={"Referer": f"{url}/hub/home"}).ok
                 and ledger.balance("newbie").reserved == 1000,
                 what="the hold of a CPU hour")
        # The service's page logs the browser in through the hub's OAuth (a cookie, no token).
        assert browser.get(f"{url}/services/credits/").ok
        me = wait_for(lambda: (r := browser.get(f"{url}/services/credits/api/me")).ok
                      and r.json()["sessions"] and r.json(), what="the credits API")
        assert me["user"] == "newbie" and me["sessions"][0]["gpu_type"] == "none"

        admin, response = log_in(url, "admin")
        assert response.ok
        assert "/hub/admin" in admin.get(f"{url}/hub/home").content.decode()
    finally:
        ledger.close()
