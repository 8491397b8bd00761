"""A real ``jupyter server`` process with our shipped config and JupyterHub's environment.

Used by the single-user tests that need what an in-process server cannot give:
real signals (the stop announcement), a child process behind jupyter-server-proxy
(TensorBoard), the shipped config file. ``JupyterProcess`` starts the server on a
free loopback port with a login token, waits until it accepts connections and
keeps its log lines; it is stopped (and waited for) on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

from tests.fake_credits import TOKEN
from tests.hub import ROOT, free_ports
from tests.waiting import wait_for

SHIPPED_CONFIG = ROOT / "jupyter-config" / "jupyter_server_config.d" / "jupyterhub_credits.json"
#: Installed extensions the tests do not need: they only slow the start down.
NOT_NEEDED = ("jupyterlab", "jupyter_lsp", "notebook_shim", "jupyter_server_terminals")


def hub_environment(service, *, user: str = "alice", server_name: str = "",
                    session: str = "session-1", **extra: str) -> dict:
    """What a spawner gives a single-user server (no GPU), pointing at ``service``.

    The stop grace is 0 (a test about the stop sets its own): a test's server stops at once.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JUPYTER_"))}
    env.update(JUPYTERHUB_API_TOKEN=TOKEN, JUPYTERHUB_API_URL=f"{service.url}/hub/api",
               JUPYTERHUB_USER=user, JUPYTERHUB_SERVER_NAME=server_name,
               JUPYTERHUB_CREDITS_SESSION=session, JUPYTERHUB_BASE_URL="/",
               PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", JUPYTERHUB_CREDITS_STOP_GRACE="0")
    env.update(extra)
    return env


class JupyterProcess:
    def __init__(self, directory: Path, env: dict, *, base_url: str = "/",
                 disabled: tuple[str, ...] = NOT_NEEDED, start_timeout: float = 60):
        self.directory = directory
        self.root = directory / "root"
        self.runtime = directory / "runtime"
        config = directory / "config"
        (config / "jupyter_server_config.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(SHIPPED_CONFIG, config / "jupyter_server_config.d")
        (config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {
            "jpserver_extensions": {name: False for name in disabled}}}))
        for path in (self.root, self.runtime):
            path.mkdir(exist_ok=True)
        (self.port,) = free_ports(1)
        self.login = "browser-login-token"
        self.base_url = base_url
        self.url = f"http://127.0.0.1:{self.port}{base_url.rstrip('/')}"
        self.env = dict(env, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(self.runtime),
                        JUPYTER_DATA_DIR=str(directory / "data"))
        self.start_timeout = start_timeout
        self.lines: list[str] = []
        self.process: subprocess.Popen | None = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {self.login}"}

    def log(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> JupyterProcess:
        # stdin from /dev/null: as under a spawner, jupyter_server installs no interactive
        # ^C handler, so SIGINT is Python's own (KeyboardInterrupt)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--ServerApp.base_url={self.base_url}",
             f"--IdentityProvider.token={self.login}", f"--ServerApp.root_dir={self.root}"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, cwd=self.root)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            wait_for(self._accepting, timeout=self.start_timeout, interval=0.05,
                     what="the jupyter server to accept connections")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def _accepting(self) -> bool:
        # it logs "running" before the event loop binds the port: try the port itself
        assert self.process.poll() is None, f"the server exited:\n{self.log()}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # our grace applies: a second signal cuts it short
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
