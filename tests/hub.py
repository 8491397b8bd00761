"""A real JupyterHub process on loopback, with its real proxy and the credits service.

Each ``HubProcess`` gets its own directory, free ports and a ``tester`` service
token with admin scopes to drive it through the REST API. Everything it starts
is in one process group, so ``kill()`` is a real ``kill -9`` of the hub.

It also opens the hub's credits database (``ledger``) so that tests can grant
credits and see sessions: ``spawn`` starts a server as the REST API does,
``running_server`` waits until it is ready and returns its session, and
``stop_server`` stops it and waits until it is settled and its GPUs are free.
The pytest fixtures around it (one hub per module) are in tests/realhub.py.
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
import sysconfig
import textwrap
from functools import cached_property
from pathlib import Path

import requests
from sqlalchemy import select

from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.sessions.schema import gpu_assignments, sessions
from jupyterhub_credits.sessions.store import Session, SessionStore
from tests.waiting import wait_for

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


#: A server extension of the small environments: GET <server>/env-probe answers the running
#: server's own sys.prefix, sys.executable and PATH (what it is, not what was intended).
ENV_PROBE = textwrap.dedent("""
    import json, os, sys
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.utils import url_path_join
    from tornado import web

    class EnvProbeHandler(APIHandler):
        @web.authenticated
        def get(self):
            self.finish(json.dumps({"prefix": sys.prefix, "executable": sys.executable,
                                    "path": os.environ.get("PATH", "")}))

    def _jupyter_server_extension_points():
        return [{"module": "env_probe"}]

    def _load_jupyter_server_extension(app):
        route = url_path_join(app.web_app.settings["base_url"], "env-probe")
        app.web_app.add_handlers(".*$", [(route, EnvProbeHandler)])
""")


def small_environment(path: Path) -> Path:
    """An image's environment as the local spawner finds it, made in about a second.

    A real virtualenv (its own ``sys.prefix``, its own ``bin/python``) that borrows the
    hub's packages (a .pth that adds this run's site-packages) and Jupyter data (JupyterLab,
    the server extensions' settings) instead of installing them, with its own
    ``bin/jupyterhub-singleuser`` and the ``env-probe`` extension (``ENV_PROBE``).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site_packages = next(path.glob("lib/python*/site-packages"))
    hub_site_packages = sysconfig.get_paths()["purelib"]
    # addsitedir, not a plain path: the hub's own .pth files (an editable install) apply too.
    (site_packages / "hub_packages.pth").write_text(
        f"import site; site.addsitedir({hub_site_packages!r})\n")
    (site_packages / "env_probe.py").write_text(ENV_PROBE)
    config = path / "etc" / "jupyter" / "jupyter_server_config.d"
    config.mkdir(parents=True)
    for hub_setting in (Path(sys.prefix) / config.relative_to(path)).glob("*.json"):
        (config / hub_setting.name).symlink_to(hub_setting)
    (config / "env_probe.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"env_probe": True}}}))
    (path / "share").mkdir(exist_ok=True)
    (path / "share" / "jupyter").symlink_to(Path(sys.prefix) / "share" / "jupyter")
    program = path / "bin" / "jupyterhub-singleuser"
    program.write_text(f"#!{path / 'bin' / 'python'}\nimport sys\n"
                       "from jupyterhub.singleuser import main\nsys.exit(main())\n")
    program.chmod(0o755)
    return path


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class HubProcess:
    def __init__(self, workdir: Path, *, db_url: str, local_gpus: str = "a100:0,a100:1,t4:2",
                 meter_interval: float = 0.5, extra_config: str = "", catalog: Path = CATALOG,
                 logins_earn: bool = False, envs_dir: Path | None = None,
                 image_environments: dict[str, str] | None = None):
        """``logins_earn``: logins go through the earning rules as on the demo hub (signup
        bonus, daily login); off by default so that a test's balance is what it granted.

        ``envs_dir`` / ``image_environments``: where each image's environment is
        (CreditsLocalProcessSpawner's settings). By default every image runs in the hub's
        own environment (this test run's Python), as on the demo hub; with ``envs_dir``
        alone, each image's environment is ``<envs_dir>/<image id>``."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url
        self.local_gpus = local_gpus
        self.meter_interval = meter_interval
        self.extra_config = extra_config
        self.catalog = catalog
        self.logins_earn = logins_earn
        self.envs_dir = envs_dir
        if image_environments is None and envs_dir is None:
            image_environments = {"*": sys.prefix}
        self.image_environments = image_environments or {}
        self.port, self.proxy_api_port, self.hub_port, self.service_port = free_ports(4)
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "hub.log"
        self.config_path = self.workdir / "jupyterhub_config.py"

    # --- configuration --------------------------------------------------------------

    def config_text(self) -> str:
        allow_root = "c.Spawner.args = ['--ServerApp.allow_root=True']" if os.geteuid() == 0 else ""
        earning = textwrap.dedent("""
            from jupyterhub_credits.hubconfig import earning_hook
            c.Authenticator.post_auth_hook = earning_hook()
        """) if self.logins_earn else ""
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
            c.Spawner.default_url = "/lab"  # as on the demo hub: people land in JupyterLab
            c.Spawner.http_timeout = 30
            c.Spawner.start_timeout = 60
            c.SimpleLocalProcessSpawner.home_dir_template = {str(self.workdir / "home" / "{username}")!r}
            c.CreditsLocalProcessSpawner.envs_dir = {str(self.envs_dir or self.workdir / "envs")!r}
            c.CreditsLocalProcessSpawner.image_environments = {self.image_environments!r}
            {allow_root}
            configure_credits(c, catalog_path={str(self.catalog)!r}, db_url={self.db_url!r},
                              spawner="simple", service_port={self.service_port},
                              meter_interval={self.meter_interval}, admin_users=["admin"])
            # Servers stop at once: only the JupyterLab tests wait for the page to save.
            c.Spawner.environment["JUPYTERHUB_CREDITS_STOP_GRACE"] = "0"
            c.JupyterHub.services.append({{"name": "tester", "api_token": {self.token!r}}})
            c.JupyterHub.load_roles.append({{
                "name": "tester", "services": ["tester"],
                "scopes": ["admin:users", "admin:servers", "access:servers", "list:users",
                           "read:users", "admin:groups", "tokens", "access:services",
                           "custom:credits:admin"],
            }})
        """) + earning + textwrap.dedent(self.extra_config)

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
        self.close_ledger()

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

    def server_environment(self, user: str) -> dict[str, str]:
        """The environment of ``user``'s single-user server process: its own token, its URLs."""
        pid = wait_for(lambda: self.server_pids().get(user), what=f"{user}'s server pid")
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        pairs = (item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        return {key.decode(): value.decode() for key, value in pairs}

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

    def env_probe(self, user: str, name: str = "") -> dict:
        """What ``user``'s running server says about itself through ``env-probe`` (only
        servers run from a ``small_environment`` have it)."""
        path = f"/user/{user}/{name}/env-probe" if name else f"/user/{user}/env-probe"
        response = requests.get(f"{self.url}{path}", timeout=30,
                                headers={"Authorization": f"token {self.token}"})
        response.raise_for_status()
        return response.json()

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

    # --- servers and credits ------------------------------------------------------------

    @cached_property
    def ledger(self) -> Ledger:
        """The hub's credits database, opened by the test (closed by ``stop``)."""
        return Ledger.open(self.db_url)

    @property
    def sessions(self) -> SessionStore:
        return SessionStore(self.ledger)

    def close_ledger(self) -> None:
        ledger = self.__dict__.pop("ledger", None)
        if ledger is not None:
            ledger.close()

    def grant(self, user: str, credits: int, *, key: str | None = None) -> None:
        """Give ``user`` whole credits; the same user and amount twice is one grant (same key)."""
        self.ledger.grant(user, credits * 1000, key=key or f"test-grant:{user}:{credits}",
                          reason="test", actor="test")

    def spawn(self, user: str, name: str = "", **user_options) -> requests.Response:
        """Ask for ``user``'s server with ``user_options``, as a REST client does."""
        self.api("POST", f"/users/{user}")
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        return self.api("POST", path, json={"user_options": user_options})

    def running_server(self, user: str, name: str = "", **user_options) -> Session:
        """Start ``user``'s server, wait until it is ready, and return its open session."""
        response = self.spawn(user, name, **user_options)
        assert response.status_code in (201, 202), response.text
        self.wait_ready(user, name)
        return self.sessions.open_session(user, name)

    def stop_server(self, user: str, name: str = "", timeout: float = 60) -> Session | None:
        """Stop ``user``'s server; wait until it is gone, settled and its GPUs are free.

        Returns the ended session (None if there was none), so tests stay independent:
        what one test held is back in the pool before the next one starts.
        """
        session = self.sessions.open_session(user, name)
        if self.server(user, name) is not None:
            response = self.api("DELETE", f"/users/{user}/servers/{name}" if name
                                else f"/users/{user}/server")
            assert response.status_code in (202, 204), response.text
            self.wait_gone(user, name, timeout=timeout)
        if session is None:
            return None
        ended = wait_for(lambda: (s := self.sessions.get(session.key)).state == "ended" and s,
                         timeout=timeout, what=f"{user}'s session to be settled")
        wait_for(lambda: not self.live_devices(session.id), timeout=timeout,
                 what=f"{user}'s GPUs to be released")
        return ended

    def live_devices(self, session_id: int | None = None) -> set[str]:
        """GPU devices assigned and not yet released (to one session, or to any)."""
        query = select(gpu_assignments.c.device).where(gpu_assignments.c.released_at.is_(None))
        if session_id is not None:
            query = query.where(gpu_assignments.c.session_id == session_id)
        with self.ledger.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def user_sessions(self, user: str) -> list[Session]:
        """Every session of ``user``, open or ended, oldest first."""
        with self.ledger.engine.connect() as conn:
            keys = conn.execute(select(sessions.c.key).where(sessions.c.user == user)
                                .order_by(sessions.c.id)).scalars().all()
        return [self.sessions.get(key) for key in keys]
