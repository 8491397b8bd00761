"""TensorBoard behind jupyter-server-proxy: one per server, started on first use.

Registered as the ``tensorboard`` entry of the ``jupyter_serverproxy_servers``
entry-point group (setup.cfg); jupyter-server-proxy (>= 4.4, with the 2024 security
fixes) calls :func:`setup_tensorboard` when it loads and serves the process at
``{base_url}tensorboard/``, starting it on the first request, with a launcher item.

TensorBoard runs on 127.0.0.1 with ``--path_prefix {base_url}tensorboard`` and the
proxy forwards the full path (``absolute_url``), so the page's own links keep the
hub's prefix (``/user/alice/gpu1/tensorboard/...``) and work for named servers. Its
``--logdir`` is the notebook root: every run of the user's notebooks appears, and the
credits panel selects one with ``?runFilter=`` (see :func:`.status.tensorboard_run_url`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ICON_PATH = Path(__file__).with_name("tensorboard.svg")
#: TensorBoard imports TensorFlow when it is installed: slow on a busy small machine.
START_TIMEOUT = 120.0
PATH = "tensorboard"


def available() -> bool:
    """Both TensorBoard and jupyter-server-proxy are installed in this environment."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("tensorboard", "jupyter_server_proxy"))


def root_dir() -> str:
    """The running server's notebook root; the working directory outside a server."""
    try:
        from jupyter_server.serverapp import ServerApp
        if ServerApp.initialized():
            return os.path.abspath(ServerApp.instance().root_dir)
    except ImportError:
        pass
    return os.getcwd()


def setup_tensorboard() -> dict:
    """The jupyter-server-proxy server definition of TensorBoard."""
    # jupyter-server-proxy fills in {port} and {base_url} with str.format: braces in a
    # directory name must not be read as fields.
    logdir = root_dir().replace("{", "{{").replace("}", "}}")
    return {
        "command": [sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
                    "--port", "{port}", "--host", "127.0.0.1",
                    "--path_prefix", "{base_url}" + PATH, "--reload_interval", "5"],
        "absolute_url": True,
        "timeout": START_TIMEOUT,
        "launcher_entry": {"title": "TensorBoard", "icon_path": str(ICON_PATH)},
        "new_browser_tab": True,
    }
