"""A real JupyterHub process on loopback, with its real proxy and the credits service.

Each ``HubProcess`` gets its own directory, free ports and a ``tester`` service
token with admin scopes to drive it through the REST API. Everything it starts
is in one process group, so ``kill()`` is a real ``kill -9`` of the hub.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CATALOG = ROOT / "config" / "catalog.yaml"


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def wait_for(predicate, *, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # polling interval, not synchronisation


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class HubProcess:
    def __init__(self, workdir: Path, *, db_url: str, local_gpus: str = "a100:0,a100:1,t4:2",
                 meter_interval: float = 0.5, extra_config: str = "", catalog: Path = CATALOG):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url
        self.local_gpus = local_gpus
        self.meter_interval = meter_interval
        self.extra_config = extra_config
        self.catalog = catalog
        self.port, self.proxy_api_port, self.hub_port, self.service_port = free_ports(4)
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "hub.log"
        self.config_path = self.workdir / "jupyterhub_config.py"

    # --- configuration --------------------------------------------------------------

    def config_text(self) -> str:
        allow_root = "c.Spawner.args = ['--ServerApp.allow_root=True']" if os.geteuid() == 0 else ""
        return textwrap.dedent(f"""
            from jupyterhub_credits.hubconfig import configure_credits
            c = get_config()
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.ConfigurableHTTPProxy.command = [{str(BIN / "configurable-http-proxy")!r}]
            c.ConfigurableHTTPProxy.pid_file = {str(self.workdir / "proxy.pid")!r}
            c.JupyterHub.db_url = "sqlite:///{self.workdir / 'jupyterhub.sqlite'}"
            c.JupyterHub.cookie_secret_file = {str(self.workdir / "cookie_secret")!r}
            c.JupyterHub.authenticator_class = "dummy"
            c.DummyAuthenticator.password = "demo"
            c.Authenticator.allow_all = True
            c.Authenticator.admin_users = {{"admin"}}
            c.Spawner.cmd = [{str(BIN / "jupyterhub-singleuser")!r}]
            c.Spawner.http_timeout = 30
            c.Spawner.start_timeout = 60
            c.SimpleLocalProcessSpawner.home_dir_template = {str(self.workdir / "home" / "{username}")!r}
            {allow_root}
            configure_credits(c, catalog_path={str(self.catalog)!r}, db_url={self.db_url!r},
                              spawner="simple", service_port={self.service_port},
                              meter_interval={self.meter_interval}, admin_users=["admin"])
            c.JupyterHub.services.append({{"name": "tester", "api_token": {self.token!r}}})
            c.JupyterHub.load_roles.append({{
                "name": "tester", "services": ["tester"],
                "scopes": ["admin:users", "admin:servers", "access:servers", "list:users",
                           "read:users", "admin:groups", "tokens", "access:services",
                           "custom:credits:admin"],
            }})
        """) + textwrap.dedent(self.extra_config)

    # --- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "HubProcess":
        self.config_path.write_text(self.config_text())
        env = dict(os.environ, JUPYTERHUB_CREDITS_LOCAL_GPUS=self.local_gpus,
                   PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(self.config_path)], cwd=self.workdir, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                hub = requests.get(f"{self.url}/hub/api/", timeout=2)
                service = requests.get(f"{self.url}/services/credits/health", timeout=2)
            except requests.ConnectionError:
                return False
            return hub.status_code == 200 and service.status_code == 200

        wait_for(ready, timeout=timeout, what="the hub and the credits service")
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the hub (it stops its servers and service), SIGKILL what is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        _kill(self.server_pids().values())
        _kill(self.service_pids())
        self.process = None

    def kill(self) -> None:
        """``kill -9`` the hub, its proxy and its service: nothing gets to clean up."""
        self._kill_group()
        self.process.wait(10)
        # Managed services run in a session of their own: find ours by its port.
        _kill(self.service_pids())
        self.process = None

    def service_pids(self) -> list[int]:
        marker = f"JUPYTERHUB_SERVICE_URL=http://127.0.0.1:{self.service_port}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def server_pids(self) -> dict[str, int]:
        """Single-user server processes by user, from the hub's own database (spawner state)."""
        path = self.workdir / "jupyterhub.sqlite"
        if not path.exists():
            return {}
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT users.name, spawners.state FROM spawners "
                              "JOIN users ON users.id = spawners.user_id").fetchall()
        pids = {}
        for name, state in rows:
            pid = json.loads(state or "{}").get("pid")
            if pid:
                pids[name] = pid
        return pids

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # --- talking to it ------------------------------------------------------------------

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs):
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers,
                                timeout=kwargs.pop("timeout", 30), **kwargs)

    def credits_api(self, method: str, path: str, *, token: str | None = None, **kwargs):
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, f"{self.url}/services/credits/api{path}",
                                headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def user_token(self, user: str) -> str:
        self.api("POST", f"/users/{user}")
        response = self.api("POST", f"/users/{user}/tokens", json={"note": "test"})
        response.raise_for_status()
        return response.json()["token"]

    def server(self, user: str, name: str = "") -> dict | None:
        model = self.api("GET", f"/users/{user}").json()
        return model.get("servers", {}).get(name)

    def wait_ready(self, user: str, name: str = "", timeout: float = 60) -> dict:
        return wait_for(lambda: (s := self.server(user, name)) and s.get("ready") and s,
                        timeout=timeout, what=f"{user}'s server to be ready")

    def wait_gone(self, user: str, name: str = "", timeout: float = 60) -> None:
        wait_for(lambda: self.server(user, name) is None, timeout=timeout,
                 what=f"{user}'s server to stop")
