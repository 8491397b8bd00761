"""Jupyter Server extension: activity minutes, GPU sampling and ``GET /credits/status``.

Enabled by ``jupyter-config/jupyter_server_config.d/jupyterhub_credits.json``
(``jpserver_extensions: {"jupyterhub_credits.singleuser": true}``). Under JupyterHub
(``JUPYTERHUB_API_TOKEN`` set) it:

- counts *active minutes*: every ``tick`` seconds (30) a minute counts as active if a
  kernel is busy or produced output since the last tick (the kernel manager's own
  ``last_activity`` / ``execution_state``; browser polling does not count). Every
  ``JUPYTERHUB_CREDITS_ACTIVITY_PERIOD`` minutes (5, aligned on the clock) it reports
  ``notebook_activity`` ``{"active_minutes": M}`` with the key
  ``notebook_activity:<server>:<period start>``; the period in progress is reported
  when the server stops;
- samples its GPUs through NVML when nvidia-ml-py and a driver are present
  (``JUPYTERHUB_CREDITS_GPU_INTERVAL`` seconds, 5), see :mod:`.gpu`;
- adopts the unsent events left by earlier processes (its previous life, dead kernels
  running ``CreditsCallback``) in the runtime directory;
- serves ``GET {base_url}credits/status`` to the logged-in user: it asks the credits
  service for ``/api/me`` *server-side* with the server's token and answers
  ``{"available", "user", "me", "reporter", "gpu", "error"?}``. No token ever goes to
  the browser.

``<server>`` is ``JUPYTERHUB_CREDITS_SESSION`` (set by our spawners) or
``<user>/<server name>``. ``JUPYTERHUB_CREDITS_DISABLE=1`` turns reporting off.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
from datetime import datetime, timezone

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import httpclient, web
from tornado.ioloop import PeriodicCallback

from . import gpu
from .reporter import EventReporter, service_api_url

log = logging.getLogger(__name__)

SETTINGS_KEY = "jupyterhub_credits"
ACTIVITY_KIND = "notebook_activity"


def _jupyter_server_extension_points():
    return [{"module": "jupyterhub_credits.singleuser.extension"}]


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        log.warning("credits: %s=%r is not a number; using %s", name, os.environ[name], default)
        return default
    return value if value > 0 else default


def server_id(environ=None) -> str:
    env = os.environ if environ is None else environ
    return env.get("JUPYTERHUB_CREDITS_SESSION") or \
        f"{env.get('JUPYTERHUB_USER', '')}/{env.get('JUPYTERHUB_SERVER_NAME', '')}"


class ActivityCounter:
    """Active minutes, grouped into clock-aligned periods (pure: tests drive the clock)."""

    def __init__(self, period_minutes: int = 5):
        self.period = int(period_minutes) * 60
        self._minutes: set[int] = set()  # minute starts (epoch seconds)
        self._last_tick: datetime | None = None

    def observe(self, now: datetime, last_activities, busy: bool) -> None:
        """One tick: the kernels' latest activity times and whether any is busy now."""
        since = self._last_tick
        self._last_tick = now
        if busy:
            self._mark(now)
        for moment in last_activities:
            if moment is not None and (since is None or moment > since) and moment <= now:
                self._mark(moment)

    def _mark(self, moment: datetime) -> None:
        self._minutes.add(math.floor(moment.timestamp() / 60) * 60)

    def due(self, now: datetime, *, final: bool = False) -> list[tuple[datetime, int]]:
        """Periods over by ``now`` (all of them if ``final``) with active minutes, forgotten."""
        cutoff = math.inf if final else math.floor(now.timestamp() / self.period) * self.period
        periods: dict[int, int] = {}
        for minute in [m for m in self._minutes if m < cutoff]:
            start = math.floor(minute / self.period) * self.period
            periods[start] = periods.get(start, 0) + 1
            self._minutes.discard(minute)
        return [(datetime.fromtimestamp(start, timezone.utc), count)
                for start, count in sorted(periods.items())]


def _scrub(value, token: str | None):
    """Drop anything token-like from a JSON value before it goes to a browser."""
    if isinstance(value, dict):
        return {k: _scrub(v, token) for k, v in value.items() if "token" not in str(k).lower()}
    if isinstance(value, list):
        return [_scrub(v, token) for v in value]
    if token and isinstance(value, str) and token in value:
        return "[redacted]"
    return value


class CreditsState:
    """What the extension runs for one server; kept in ``web_app.settings``."""

    def __init__(self, serverapp, environ=None, *, reporter: EventReporter | None = None,
                 nvml=None):
        env = os.environ if environ is None else environ
        self.serverapp = serverapp
        self.user = env.get("JUPYTERHUB_USER")
        self.server_id = server_id(env)
        self._token = env.get("JUPYTERHUB_API_TOKEN")
        self.api_url = service_api_url(env)
        self.enabled = bool(self._token and self.api_url) and \
            env.get("JUPYTERHUB_CREDITS_DISABLE", "") not in ("1", "true", "yes")
        self.reporter = reporter
        if self.enabled and self.reporter is None:
            self.reporter = EventReporter.from_env(env)
        self.activity = ActivityCounter(
            max(1, round(_env_number("JUPYTERHUB_CREDITS_ACTIVITY_PERIOD", 5))))
        self.tick_seconds = _env_number("JUPYTERHUB_CREDITS_ACTIVITY_TICK", 30)
        self.gpu_interval = _env_number("JUPYTERHUB_CREDITS_GPU_INTERVAL", 5)
        self._nvml = nvml
        self.sampler: gpu.GpuSampler | None = None
        self._periodic: PeriodicCallback | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        if not self.enabled or self.reporter is None:
            log.info("credits: not under JupyterHub (or disabled): nothing is reported")
            return
        self.reporter.start()
        self.reporter.adopt_orphans()
        self.sampler = gpu.GpuSampler.from_environment(
            self._nvml, reporter=self.reporter, server_id=self.server_id,
            interval=self.gpu_interval)
        if self.sampler is not None:
            self.sampler.start()
            log.info("credits: sampling %d GPU(s) every %s s", len(self.sampler.gpus),
                     self.gpu_interval)
        self._periodic = PeriodicCallback(self.tick, self.tick_seconds * 1000)
        self._periodic.start()
        atexit.register(self.stop)

    def kernel_activity(self) -> tuple[list[datetime], bool]:
        manager = getattr(self.serverapp, "kernel_manager", None)
        moments, busy = [], False
        if manager is None:
            return moments, busy
        for kernel_id in list(manager.list_kernel_ids()):
            try:
                kernel = manager.get_kernel(kernel_id)
            except KeyError:
                continue
            moments.append(getattr(kernel, "last_activity", None))
            busy = busy or getattr(kernel, "execution_state", None) == "busy"
        return moments, busy

    def tick(self, now: datetime | None = None, *, final: bool = False) -> list[str]:
        """Observe the kernels, report finished periods, adopt orphans; the keys sent."""
        now = now or datetime.now(timezone.utc)
        moments, busy = self.kernel_activity()
        self.activity.observe(now, moments, busy)
        keys = []
        if self.reporter is None:
            return keys
        for start, minutes in self.activity.due(now, final=final):
            start_iso = start.isoformat(timespec="seconds")
            keys.append(self.reporter.send(
                ACTIVITY_KIND, {"active_minutes": minutes},
                key=f"{ACTIVITY_KIND}:{self.server_id}:{start_iso}", time=now))
        if not final:
            self.reporter.adopt_orphans()
        return keys

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._periodic is not None:
            self._periodic.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.reporter is not None:
            self.tick(final=True)
            self.reporter.close()

    async def status(self) -> dict:
        """The user's credits as the service tells them, for the browser (no token)."""
        answer = {"available": False, "user": self.user,
                  "reporter": self.reporter.status() if self.reporter else None,
                  "gpu": self.sampler.latest if self.sampler else None}
        if not (self._token and self.api_url):
            answer["error"] = "not running under JupyterHub"
            return answer
        request = httpclient.HTTPRequest(
            f"{self.api_url}/me", headers={"Authorization": f"token {self._token}",
                                           "Accept": "application/json"},
            request_timeout=10, follow_redirects=False)
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as error:  # noqa: BLE001 - DNS, refused: answered as unavailable
            answer["error"] = f"credits service unreachable ({type(error).__name__})"
            return answer
        if response.code != 200:
            answer["error"] = ("credits service unreachable" if response.code == 599
                               else f"credits service answered HTTP {response.code}")
            return answer
        try:
            answer["me"] = _scrub(json.loads(response.body), self._token)
        except ValueError:
            answer["error"] = "credits service answered something that is not JSON"
            return answer
        answer["available"] = True
        return answer


class CreditsStatusHandler(APIHandler):
    auth_resource = "credits"

    @web.authenticated
    @authorized
    async def get(self):
        state: CreditsState | None = self.settings.get(SETTINGS_KEY)
        body = await state.status() if state is not None else {"available": False}
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


def _load_jupyter_server_extension(serverapp):
    state = CreditsState(serverapp)
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = state
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(".*$", [(url_path_join(base_url, "credits/status"),
                                  CreditsStatusHandler)])
    state.start()
    serverapp.log.info("jupyterhub_credits: loaded (reporting %s)",
                       "on" if state.enabled else "off")
    return state
