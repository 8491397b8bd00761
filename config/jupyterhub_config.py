"""The demo hub: JupyterHub on http://127.0.0.1:8000 with credits, SQLite and local servers.

Run from the repository root: ``bash scripts/demo.sh`` (which runs
``.venv/bin/jupyterhub -f config/jupyterhub_config.py``). Log in with any user
name and the password ``demo``; ``admin`` is an admin. New users get signup
credits. GPUs are discovered through NVML (none: CPU-only), or declared with
JUPYTERHUB_CREDITS_LOCAL_GPUS="a100:0,a100:1".
"""

import os
import sys
from pathlib import Path

from jupyterhub_credits.hubconfig import configure_credits, earning_hook

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

root = Path(__file__).resolve().parent.parent
state = Path(os.environ.get("JUPYTERHUB_CREDITS_DEMO_STATE", root / ".demo"))
state.mkdir(parents=True, exist_ok=True)
bin_dir = Path(sys.executable).parent

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("JUPYTERHUB_CREDITS_DEMO_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.command = [str(bin_dir / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = str(state / "jupyterhub-proxy.pid")

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "demo"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}
c.Authenticator.post_auth_hook = earning_hook()  # signup bonus and daily login (catalog rules)

c.Spawner.cmd = [str(bin_dir / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 60
c.Spawner.start_timeout = 120
c.SimpleLocalProcessSpawner.home_dir_template = str(state / "home" / "{username}")
# Every image runs in the hub's own environment (one TensorFlow, whatever the image's name
# says; the spawn page says so). A real machine builds one environment per image instead:
# `jupyterhub-credits envs build`, and leaves image_environments out.
c.CreditsLocalProcessSpawner.image_environments = {"*": sys.prefix}
if os.geteuid() == 0:
    c.Spawner.args = ["--ServerApp.allow_root=True"]

configure_credits(
    c,
    catalog_path=str(root / "config" / "catalog.yaml"),
    db_url=os.environ.get("JUPYTERHUB_CREDITS_DB_URL",
                          f"sqlite:///{state / 'jupyterhub_credits.sqlite'}"),
    spawner="simple",
    admin_users=["admin"],
)
