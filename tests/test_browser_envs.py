"""The spawn page of a machine whose images are local environments, in a real Chromium.

Two real hubs (tests/hub.py), each started only when a test needs it: one whose envs
dir holds a small environment for tf-2.19 only (tests/hub.py ``small_environment``),
so tf-2.21 (the catalog's default), tf-2.17 and tf-2.21-cpu are not installed; and
one that maps every image to its own environment, as the demo hub does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import type_hours
from tests.conftest import migrated_sqlite_url
from tests.hub import HubProcess, small_environment
from tests.lab import wait_for_lab

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed")
expect = sync_api.expect

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.browser]

NOT_INSTALLED = "not installed on this machine"


@pytest.fixture(scope="module")
def envs_dir(tmp_path_factory) -> Path:
    envs_dir = tmp_path_factory.mktemp("envs")
    small_environment(envs_dir / "tf-2.19")
    return envs_dir


def running_hub(tmp_path_factory, db_url, **settings):
    hub = HubProcess(tmp_path_factory.mktemp("hub"), db_url=db_url, **settings)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, module_postgres_url, envs_dir):
    """Images in ``<envs_dir>/<image id>``: only tf-2.19 is there."""
    yield from running_hub(tmp_path_factory, module_postgres_url, envs_dir=envs_dir)


@pytest.fixture(scope="module")
def own_environment_hub(tmp_path_factory):
    """Every image in the hub's own environment (HubProcess's default, as on the demo hub).
    Its own credits database: two meters on one database would each take the other hub's
    sessions for servers that are gone."""
    yield from running_hub(tmp_path_factory,
                           migrated_sqlite_url(tmp_path_factory.mktemp("ledger")))


def test_a_person_sees_what_is_not_installed_and_starts_tf_2_19(
        hub, envs_dir, person, logged_in, screenshot):
    hub.grant(person, 5)
    # Their last choice was an image this machine does not have (refused, 503).
    assert hub.spawn(person, image="tf-2.17", hours="1").status_code == 503

    page = logged_in(hub, person)
    image = page.locator("#credits-image")
    for image_id, name in [("tf-2.17", "TensorFlow 2.17 (CUDA 12.3)"),
                           ("tf-2.21", "TensorFlow 2.21 (CUDA 12.5)")]:
        option = image.locator(f'option[value="{image_id}"]')
        expect(option).to_have_text(f"{name} — {NOT_INSTALLED}")
        assert option.evaluate("option => option.disabled"), image_id
    expect(image.locator('option[value="tf-2.19"]')).to_have_text("TensorFlow 2.19 (CUDA 12.5)")
    # Neither the refused tf-2.17 nor the catalog's default is preselected: an image that
    # can run is, so that the form as it stands submits one.
    expect(image).to_have_value("tf-2.19")
    # A closed list hides its disabled options: the page says what is missing.
    expect(page.locator(".credits-images-unavailable")).to_have_text(
        "Not installed on this machine: TensorFlow 2.21 (CUDA 12.5); TensorFlow 2.17 (CUDA 12.3);"
        " TensorFlow 2.21, CPU only.")
    expect(page.locator("#credits-images-note")).to_have_count(0)
    screenshot("form")

    page.select_option("#credits-image", "tf-2.19")
    type_hours(page, "1")
    page.get_by_role("button", name="Start").click()
    wait_for_lab(page)
    screenshot("lab")

    session = hub.sessions.open_session(person)
    assert session.image == "tf-2.19"
    assert Path(hub.env_probe(person)["prefix"]) == envs_dir / "tf-2.19"


def test_a_hub_that_runs_every_image_in_its_own_environment_says_so(
        own_environment_hub, logged_in, screenshot):
    page = logged_in(own_environment_hub, "noor")
    expect(page.locator("#credits-images-note")).to_have_text(
        "On this hub every image runs in the hub's own Python environment (TensorFlow 2.21.0)"
        " — the version in an image's name is not what you get.")
    expect(page.locator(".credits-images-unavailable")).to_have_count(0)
    options = page.locator("#credits-image option")
    assert options.evaluate_all("options => options.filter(o => o.disabled).length") == 0
    expect(page.locator("#credits-image")).to_have_value("tf-2.21")  # the catalog's default
    screenshot("form")
