"""configure_credits: an invalid catalog stops the hub at start-up with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from jupyterhub_credits.hubconfig import configure_credits
from tests.hub import CATALOG

BIN = Path(sys.executable).parent


def bad_catalog(tmp_path) -> Path:
    text = CATALOG.read_text().replace("price_per_gpu_hour: 15", "price_per_gpu_hour: -15")
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_invalid_catalog_is_refused_with_file_key_and_problem(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        configure_credits(Config(), catalog_path=str(bad_catalog(tmp_path)),
                          db_url=f"sqlite:///{tmp_path}/credits.sqlite")
    message = str(stopped.value.code)
    assert "catalog.yaml" in message and "gpu_types.a100.price_per_gpu_hour" in message
    assert "negative" in message


def test_a_hub_with_an_invalid_catalog_does_not_start(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "from jupyterhub_credits.hubconfig import configure_credits\n"
        f"configure_credits(get_config(), catalog_path={str(bad_catalog(tmp_path))!r},\n"
        f"                  db_url='sqlite:///{tmp_path}/credits.sqlite')\n")
    run = subprocess.run([str(BIN / "jupyterhub"), "-f", str(config)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "jupyterhub-credits: invalid catalog:" in run.stderr + run.stdout
    assert "gpu_types.a100.price_per_gpu_hour" in run.stderr + run.stdout


def test_configure_credits_merges_with_existing_roles_and_scopes(tmp_path):
    c = Config()
    c.JupyterHub.load_roles = [{"name": "teachers", "scopes": ["admin:users"], "users": ["t"]}]
    c.Authenticator.admin_users = {"root"}
    configure_credits(c, catalog_path=str(CATALOG), db_url=f"sqlite:///{tmp_path}/c.sqlite")
    roles = {role["name"]: role for role in c.JupyterHub.load_roles}
    assert roles["teachers"]["scopes"] == ["admin:users"]
    assert roles["credits-admin"]["users"] == ["root"]
    assert "users:activity!user" in roles["server"]["scopes"]  # the default kept
    # A server's own token reads, reports and spends for its owner only (JupyterLab's extend).
    assert {"custom:credits:read!user", "custom:credits:events!user",
            "custom:credits:spend!user"} <= set(roles["server"]["scopes"])
    assert not [scope for scope in roles["server"]["scopes"]
                if scope.startswith("custom:credits:") and not scope.endswith("!user")]
    assert "custom:credits:read!user" in c.JupyterHub.extra_user_scopes
    service = next(s for s in c.JupyterHub.services if s["name"] == "credits")
    assert service["environment"]["JUPYTERHUB_CREDITS_DB_URL"].endswith("c.sqlite")


def test_configure_credits_puts_its_page_template_first_and_keeps_others(tmp_path):
    from jupyterhub_credits.hubconfig import HUB_TEMPLATES

    c = Config()
    c.JupyterHub.template_paths = ["/srv/site-templates"]
    configure_credits(c, catalog_path=str(CATALOG), db_url=f"sqlite:///{tmp_path}/c.sqlite")
    configure_credits(c, catalog_path=str(CATALOG), db_url=f"sqlite:///{tmp_path}/c.sqlite")
    assert c.JupyterHub.template_paths == [HUB_TEMPLATES, "/srv/site-templates"]
    assert Path(HUB_TEMPLATES, "page.html").is_file()
    assert "custom:credits:metrics" in c.JupyterHub.custom_scopes
    assert "custom:credits:metrics" in c.JupyterHub.custom_scopes["custom:credits:admin"][
        "subscopes"]
