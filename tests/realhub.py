"""Fixtures for tests against a real hub (a pytest plugin, registered in tests/conftest.py).

One real JupyterHub per test module (``tests/hub.py``: proxy, credits service,
local single-user servers, GPUs declared as "a100:0,a100:1,t4:2") on the
module's own PostgreSQL database. A module says how its hub differs from the
default with a marker::

    pytestmark = pytest.mark.hub(catalog={"quotas": {"min_prepaid_minutes": "0.05"}},
                                 logins_earn=True, extra_config="c.Spawner.poll_interval = 1")

``catalog`` is merged into the shipped catalog (mappings key by key, anything
else replaced); the other settings are ``HubProcess`` arguments. Fixtures:

- ``hub``: the running ``HubProcess``; its helpers ``grant``, ``spawn``,
  ``running_server``, ``stop_server``, ``user_sessions``, ``live_devices``;
- ``hub_ledger``: a Ledger on the hub's credits database (``hub.ledger``).

``log_in`` logs a person in through the hub's login form with ``requests``
(for a real browser, see ``logged_in`` in tests/browser.py).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests
import yaml

from tests.hub import CATALOG, HubProcess

#: The settings ``pytest.mark.hub`` accepts besides ``catalog``.
_HUB_SETTINGS = ("local_gpus", "meter_interval", "extra_config", "logins_earn")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "hub(catalog=..., local_gpus=..., meter_interval=..., extra_config=..., logins_earn=...): "
        "how the module's real hub (tests/realhub.py) differs from the default",
    )


def merged(base: Any, changes: Any) -> Any:
    """``changes`` laid over ``base``: mappings merge key by key, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(changes, dict)):
        return copy.deepcopy(changes)
    result = copy.deepcopy(base)
    for key, value in changes.items():
        result[key] = merged(result[key], value) if key in result else copy.deepcopy(value)
    return result


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, module_postgres_url):
    """A real hub for this module, shaped by the module's ``pytest.mark.hub`` (if any)."""
    marker = request.node.get_closest_marker("hub")
    settings = dict(marker.kwargs) if marker else {}
    unknown = set(settings) - {"catalog", *_HUB_SETTINGS}
    if unknown:
        raise pytest.UsageError(f"pytest.mark.hub: unknown settings {sorted(unknown)}")
    workdir = tmp_path_factory.mktemp("hub")
    catalog = CATALOG
    if "catalog" in settings:
        catalog = workdir / "catalog.yaml"
        changed = merged(yaml.safe_load(CATALOG.read_text()), settings.pop("catalog"))
        catalog.write_text(yaml.safe_dump(changed))
    hub = HubProcess(workdir, db_url=module_postgres_url, catalog=catalog, **settings)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def hub_ledger(hub):
    """The Ledger on the hub's own credits database (to grant credits and inspect)."""
    return hub.ledger


def log_in(url: str, user: str,
           password: str = "demo") -> tuple[requests.Session, requests.Response]:
    """Log ``user`` in through the login form of the hub at ``url``, as a browser posts it.

    Returns the session (its cookies are the login) and the answer, after redirects.
    """
    browser = requests.Session()
    browser.get(f"{url}/hub/login", timeout=10)
    response = browser.post(f"{url}/hub/login", timeout=30, data={
        "username": user, "password": password, "_xsrf": browser.cookies.get("_xsrf")})
    return browser, response
