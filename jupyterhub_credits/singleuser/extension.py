"""Jupyter Server extension: activity minutes, GPU sampling, the credits panel's API.

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
- serves ``GET {base_url}credits/status`` and ``POST {base_url}credits/extend``
  (:mod:`.handlers`) to the JupyterLab extension: it asks the credits service
  *server-side* with the server's token, once per ``JUPYTERHUB_CREDITS_STATUS_TTL``
  seconds whatever the number of tabs (:mod:`.status`), and adds what only the
  server knows: the training runs of its kernels (:mod:`.runs`), its GPU history,
  TensorBoard's address (:mod:`.tensorboard`). No token ever goes to the browser;
- announces its stop to the open pages and waits for them to save (:mod:`.stopping`).

``<server>`` is ``JUPYTERHUB_CREDITS_SESSION`` (set by our spawners) or
``<user>/<server name>``. ``JUPYTERHUB_CREDITS_DISABLE=1`` turns reporting off.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
from datetime import datetime, timezone
from urllib.parse import quote

from jupyter_server.utils import url_path_join
from tornado.ioloop import PeriodicCallback

from . import gpu, tensorboard
from .handlers import SETTINGS_KEY, CreditsExtendHandler, CreditsStatusHandler
from .redact import redact_transform
from .reporter import EventReporter, _ssl_context, service_api_url
from .runs import RunsView, server_id
from .status import (DEFAULT_TTL, TTL_ENV, ServiceStatus, scrub, spread, tensorboard_run_url,
                     utc_now_iso)
from .stopping import StopAnnouncer, grace_from_env

log = logging.getLogger(__name__)

ACTIVITY_KIND = "notebook_activity"
DEFAULT_SERVER = "default"
#: Kept for importers of the old names.
_scrub = scrub
__all__ = ["ActivityCounter", "CreditsState", "server_id", "SETTINGS_KEY"]


def _jupyter_server_extension_points():
    return [{"module": "jupyterhub_credits.singleuser.extension"}]


def _env_number(name: str, default: float, environ=None) -> float:
    env = os.environ if environ is None else environ
    try:
        value = float(env.get(name, default))
    except ValueError:
        log.warning("credits: %s=%r is not a number; using %s", name, env[name], default)
        return default
    return value if value > 0 else default


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


class CreditsState:
    """What the extension runs for one server; kept in ``web_app.settings``.

    ``client`` (tests) replaces the service client; ``base_url`` / ``root_dir`` default
    to the server's.
    """

    def __init__(self, serverapp, environ=None, *, reporter: EventReporter | None = None,
                 nvml=None, client: ServiceStatus | None = None):
        env = os.environ if environ is None else environ
        self.serverapp = serverapp
        self.user = env.get("JUPYTERHUB_USER")
        self.server_name = env.get("JUPYTERHUB_SERVER_NAME", "")
        self.label = self.server_name or DEFAULT_SERVER
        self.server_id = server_id(env)
        self._token = env.get("JUPYTERHUB_API_TOKEN")
        self.api_url = service_api_url(env)
        self.under_hub = bool(self._token and self.api_url and self.user)
        self.enabled = self.under_hub and \
            env.get("JUPYTERHUB_CREDITS_DISABLE", "") not in ("1", "true", "yes")
        self.hub_base_url = env.get("JUPYTERHUB_BASE_URL") or "/"
        if not self.hub_base_url.endswith("/"):
            self.hub_base_url += "/"
        self.reporter = reporter
        if self.enabled and self.reporter is None:
            self.reporter = EventReporter.from_env(env)
        self.activity = ActivityCounter(
            max(1, round(_env_number("JUPYTERHUB_CREDITS_ACTIVITY_PERIOD", 5, env))))
        self.tick_seconds = _env_number("JUPYTERHUB_CREDITS_ACTIVITY_TICK", 30, env)
        self.gpu_interval = _env_number("JUPYTERHUB_CREDITS_GPU_INTERVAL", 5, env)
        self.client = client or ServiceStatus(
            self.api_url if self.under_hub else None, self._token, self.label,
            ttl=_env_number(TTL_ENV, DEFAULT_TTL, env), ssl_options=_ssl_context(env),
            jitter=spread)
        runtime = getattr(serverapp, "runtime_dir", None)
        self.runs = RunsView(self.server_id, runtime if isinstance(runtime, str) else None,
                             reporter=self.reporter)
        self.stop_grace = grace_from_env(env)
        self.announcer: StopAnnouncer | None = None
        self._nvml = nvml
        self.sampler: gpu.GpuSampler | None = None
        self._periodic: PeriodicCallback | None = None
        self._stopped = threading.Event()

    @property
    def token(self) -> str | None:
        """For scrubbing answers only; never put into one."""
        return self._token

    def __repr__(self) -> str:  # never the token
        return f"<CreditsState {self.server_id} enabled={self.enabled}>"

    def start(self) -> None:
        if self.under_hub and self.serverapp is not None:
            self.announcer = StopAnnouncer(self.serverapp, self.stop_reason,
                                           grace=self.stop_grace)
            if not self.announcer.install():
                self.announcer = None
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
        if self.announcer is not None:
            self.announcer.uninstall()
        if self._periodic is not None:
            self._periodic.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.reporter is not None:
            self.tick(final=True)
            self.reporter.close()
        atexit.unregister(self.stop)

    # -- what the browser gets ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        settings = getattr(getattr(self.serverapp, "web_app", None), "settings", None) or {}
        return settings.get("base_url") or "/"

    @property
    def root_dir(self) -> str | None:
        root = getattr(self.serverapp, "root_dir", None)
        return root if isinstance(root, str) else None

    def links(self) -> dict:
        spawn = f"{self.hub_base_url}hub/spawn/{quote(self.user or '', safe='')}"
        if self.server_name:
            spawn += "/" + quote(self.server_name, safe="")
        return {"my_credits": f"{self.hub_base_url}services/credits/", "start_again": spawn}

    async def status(self, viewer: str | None = None, *, refresh: bool = False,
                     force: bool = False, timeout: float | None = None) -> dict:
        """The ``credits/status`` answer (contract section 2), token-free."""
        runs = self.runs.runs() if self.under_hub else []
        snapshot = await self.client.get(runs=self.runs.lacking_outcome(runs), refresh=refresh,
                                         force=force, timeout=timeout)
        answer = snapshot.answer if isinstance(snapshot.answer, dict) else None
        if answer is not None:
            self.runs.learn(answer.get("runs"))
        tensorboard_url = url_path_join(self.base_url, tensorboard.PATH) + "/" \
            if tensorboard.available() else None
        for run in runs:
            if run["outcome"] is None:
                run["outcome"] = self.runs.outcomes.get(run["key"])
            run["tensorboard_url"] = tensorboard_run_url(tensorboard_url, run["logdir"],
                                                         self.root_dir)
        balance = session = None
        if answer is not None:
            if isinstance(answer.get("available"), str):
                balance = {"available": answer["available"], "reserved": answer.get("reserved")}
            session = answer.get("session") if isinstance(answer.get("session"), dict) else None
        owner = (answer or {}).get("user") if isinstance((answer or {}).get("user"), str) \
            else self.user
        body = {
            "available": answer is not None,
            "error": snapshot.error,
            "retry_in": snapshot.retry_in,
            "fetched_at": snapshot.fetched_at,
            "now": utc_now_iso(),
            "user": owner,
            "viewer": viewer,
            "can_spend": bool(self.under_hub and viewer is not None and viewer == self.user),
            "server": {"name": self.server_name, "label": self.label, "id": self.server_id},
            "balance": balance,
            "session": session,
            "stop": answer.get("stop") if answer and isinstance(answer.get("stop"), dict)
            else None,
            "warning_thresholds": (answer or {}).get("warning_thresholds") or [],
            "earnings_today": (answer or {}).get("earnings_today"),
            "runs": runs,
            "gpu_history": self.sampler.utilization_history() if self.sampler else None,
            "gpu": self.sampler.latest if self.sampler else None,
            "reporter": self.reporter.status() if self.reporter else None,
            "me": {"user": owner, "available": balance["available"],
                   "reserved": balance["reserved"],
                   "sessions": [session] if session else []} if balance else None,
            "tensorboard": {"url": tensorboard_url} if tensorboard_url else None,
            "links": self.links(),
        }
        return scrub(body, self._token)

    async def extend(self, body: dict) -> tuple[int, dict]:
        """Pass an extend / auto-extend to the service: (its status, its JSON answer)."""
        forwarded = {name: body[name] for name in ("hours", "auto_extend", "key") if name in body}
        return await self.client.post("extend", forwarded)

    async def stop_reason(self):
        """The stop the service decided, asked now (for :mod:`.stopping`); None if none."""
        snapshot = await self.client.get(force=True, timeout=self.announcer.query_timeout
                                         if self.announcer else 2.0)
        answer = snapshot.answer or {}
        return answer.get("stop") if isinstance(answer.get("stop"), dict) else None


def _load_jupyter_server_extension(serverapp):
    state = CreditsState(serverapp)
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = state
    base_url = web_app.settings.get("base_url", "/")
    web_app.add_handlers(".*$", [
        (url_path_join(base_url, "credits/status"), CreditsStatusHandler),
        (url_path_join(base_url, "credits/extend"), CreditsExtendHandler),
    ])
    transform = redact_transform(os.environ.get("JUPYTERHUB_API_TOKEN"))
    if transform is not None:
        web_app.add_transform(transform)
    state.start()
    serverapp.log.info("jupyterhub_credits: loaded (reporting %s, stop announced: %s)",
                       "on" if state.enabled else "off",
                       f"{state.stop_grace:g} s grace" if state.announcer else "no")
    return state
