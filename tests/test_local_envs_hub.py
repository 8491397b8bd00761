"""The chosen image's environment runs the server, on a real hub with local processes.

The hub's envs dir holds a small environment for tf-2.19 (tests/hub.py
``small_environment``: a real virtualenv with its own ``jupyterhub-singleuser``)
and none for tf-2.17. What runs is asked of the running server itself (its
``env-probe`` endpoint), not read off what the spawner meant to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hub import HubProcess, small_environment

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def envs_dir(tmp_path_factory) -> Path:
    envs_dir = tmp_path_factory.mktemp("envs")
    small_environment(envs_dir / "tf-2.19")
    return envs_dir


@pytest.fixture(scope="module")
def hub(tmp_path_factory, module_postgres_url, envs_dir):
    """This module's hub: every image's environment is ``<envs_dir>/<image id>``."""
    hub = HubProcess(tmp_path_factory.mktemp("hub"), db_url=module_postgres_url,
                     envs_dir=envs_dir)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


def test_a_tf_2_19_server_runs_in_the_tf_2_19_environment(hub, envs_dir):
    hub.grant("nina", 20)
    session = hub.running_server("nina", image="tf-2.19", gpu_type="a100", gpus=1, hours="1")
    assert session.image == "tf-2.19"

    environment = envs_dir / "tf-2.19"
    server = hub.env_probe("nina")
    assert Path(server["prefix"]) == environment
    assert Path(server["executable"]) == environment / "bin" / "python"
    # Kernels and terminals find the image's Python first.
    assert server["path"].split(":")[0] == str(environment / "bin")
    assert hub.server_environment("nina")["CUDA_VISIBLE_DEVICES"]  # its GPU, as before

    ended = hub.stop_server("nina")
    assert ended.end_reason == "stopped"


def test_an_image_not_installed_is_refused_with_the_command_that_builds_it(hub, hub_ledger,
                                                                           envs_dir):
    hub.grant("omar", 10)
    response = hub.spawn("omar", image="tf-2.17", gpu_type="a100", gpus=1, hours="1")
    assert response.status_code == 503, response.text
    message = response.json()["message"]
    assert message.startswith("TensorFlow 2.17 (CUDA 12.3) is not installed on this machine.")
    assert f"jupyterhub-credits envs build tf-2.17 --envs-dir {envs_dir}" in message
    assert "Traceback" not in response.text

    assert hub.server("omar") is None
    assert hub.user_sessions("omar") == []  # refused before anything was held
    balance = hub_ledger.balance("omar")
    assert (balance.available, balance.reserved) == (10_000, 0)
    assert hub.live_devices() == set()  # no GPU was assigned either
