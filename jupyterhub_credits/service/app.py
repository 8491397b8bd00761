"""The credits service: a JupyterHub managed service serving the credits API and the meter.

``python -m jupyterhub_credits.service`` (the hub starts it; see
``hubconfig.configure_credits``). Everything it needs comes from its
environment: the hub's ``JUPYTERHUB_API_TOKEN`` / ``JUPYTERHUB_API_URL`` /
``JUPYTERHUB_SERVICE_URL`` / ``JUPYTERHUB_SERVICE_PREFIX``, and the credits
``JUPYTERHUB_CREDITS_DB_URL`` / ``JUPYTERHUB_CREDITS_CATALOG`` /
``JUPYTERHUB_CREDITS_METER_INTERVAL`` (and optionally
``JUPYTERHUB_CREDITS_LOCAL_GPUS``). Every knob is also a trait, settable in a
config file given with ``--config``.

Routes, under the service prefix (``/services/credits/``):

- ``health`` — liveness, no authentication (the hub and tests wait on it);
- ``oauth_callback`` — the end of a browser's hub login;
- ``""`` — My credits, ``admin`` — the admin panel (``pages/``; HTML in the hub's look);
- ``static/...`` — the pages' own scripts and styles;
- ``metrics`` — Prometheus metrics (``metrics.py``);
- ``api/...`` — the REST API (``service/api``), guarded by the credits scopes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Enum, Float, Integer, Unicode, default
from traitlets.config import Application

from ..catalog import load_catalog
from ..earning import EarningService, earning_rules
from ..ledger import Ledger
from ..ledger.core import utcnow
from ..sessions.allocator import LocalGpuAllocator
from ..sessions.inventory import local_inventory
from ..sessions.store import SessionStore
from .api import NotFoundHandler, default_handlers
from .api.events import MAX_BODY_BYTES
from .context import ServiceContext
from .hub import HubClient
from .meter import Meter
from .metrics import EventLoopLagProbe, MetricsHandler
from .pages import STATIC_DIR, page_handlers, template_environment


class HealthHandler(web.RequestHandler):
    def get(self):
        self.set_header("Cache-Control", "no-store")
        self.write({"status": "ok"})


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    @property
    def hub_auth(self):
        return self.settings["hub_auth"]


class CreditsService(Application):
    name = "jupyterhub-credits-service"
    description = "Credits API and meter for jupyterhub-credits"

    aliases = {"config": "CreditsService.config_file", "log-level": "Application.log_level"}
    classes = [Meter]

    config_file = Unicode("", config=True,
                          help="A Python config file (c.CreditsService..., c.Meter...) to load.")

    service_url = Unicode(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"),
                          config=True, help="Where to listen (set by the hub).")
    bind_url = Unicode(os.environ.get("JUPYTERHUB_CREDITS_BIND_URL", ""), config=True,
                       help="""Where to listen when it differs from the URL the proxy uses
                       (on Kubernetes: http://0.0.0.0:10101). Default: the service URL.""")
    service_prefix = Unicode(os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/credits/"),
                             config=True, help="URL prefix the hub's proxy routes to us.")

    db_url = Unicode(config=True, help="""Database URL of the credits ledger; the hub's
        spawner must use the same. Default: $JUPYTERHUB_CREDITS_DB_URL, else
        sqlite:///jupyterhub_credits.sqlite.""")

    @default("db_url")
    def _default_db_url(self):
        return os.environ.get("JUPYTERHUB_CREDITS_DB_URL", "sqlite:///jupyterhub_credits.sqlite")

    catalog_path = Unicode(config=True, help="""Path of the catalog YAML file. Default:
        $JUPYTERHUB_CREDITS_CATALOG, else config/catalog.yaml.""")

    @default("catalog_path")
    def _default_catalog_path(self):
        return os.environ.get("JUPYTERHUB_CREDITS_CATALOG", "config/catalog.yaml")

    hub_api_url = Unicode(config=True, help="""The hub's REST API (the meter stops servers
        through it). Default: $JUPYTERHUB_API_URL, else http://127.0.0.1:8081/hub/api.""")

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    api_token = Unicode(config=True, help="""The service's own hub token (role
        credits-service: list/read users and servers, delete:servers). Default:
        $JUPYTERHUB_API_TOKEN. Never sent to a client.""")

    @default("api_token")
    def _default_api_token(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    hub_timeout = Float(20, config=True,
                        help="Seconds to wait for the hub's REST API before giving up a call.")

    auth_cache_max_age = Float(300, config=True, help="""Seconds the hub's answer about a
        token (its user and scopes) is reused before asking the hub again. Every
        single-user server polls the service with its own token every 30 s, so the hub
        is asked about N servers' tokens about N / max(this, 30) times a second: at 60 s,
        10,000 servers cost the hub 111-167 token checks/s, most of what one hub process
        answers (bench/lab_poll.py, 2 cores: 140-300/s), beside its own work; at 300 s,
        30-33/s. The price: a revoked token (a stopped server's) keeps working here for up to
        this long. The cache (jupyterhub.services.auth) holds one entry per token seen,
        dropped once older than this: 10,000 tokens are a few MB.""")

    capacity = Enum(["auto", "local", "none"], "auto", config=True, help="""Where
        /api/catalog's free GPU counts come from. "local": this machine's GPUs
        (local_gpus / $JUPYTERHUB_CREDITS_LOCAL_GPUS, else NVML) and the local allocator's
        assignments in the ledger database — right when the hub runs the local spawner
        on this machine. "none": unknown (null), e.g. on Kubernetes. "auto": "local" when
        this machine has GPUs by those rules, else "none".""")

    local_gpus = Unicode("", config=True, help="""This machine's GPUs as TYPE:INDEX pairs
        ("a100:0,a100:1"), as CreditsLocalProcessSpawner.gpus; $JUPYTERHUB_CREDITS_LOCAL_GPUS
        overrides it.""")

    gpu_host = Unicode("local", config=True,
                       help="The host name the local allocator records assignments under.")

    earnings_pay_interval = Float(60, config=True, help="""Seconds between two passes that make
        the ledger transfers of earned events that have none yet (after a crash between
        storing an event and earning it); 0 switches them off.""")

    max_body_size = Integer(MAX_BODY_BYTES, min=1, config=True, help=f"""The largest request
        body (bytes) the service reads; a longer one is refused from its Content-Length
        (400, connection closed) before it is read, and before authentication. The default,
        {MAX_BODY_BYTES:,}, is what the largest legitimate request needs: a full batch of
        events (service/api/events.py: MAX_BODY_BYTES). Tornado's own default is 100 MB.
        A handler that someday takes uploads raises the limit for its own requests only:
        decorate it with @tornado.web.stream_request_body and call
        self.request.connection.set_max_body_size(n) in its prepare().""")

    run_meter = Bool(True, config=True, help="""Run the meter (billing, warnings, expiry,
        reconciliation) in this process. Run it in exactly one service process.""")

    event_loop_lag_log_threshold = Float(1.0, config=True, help="""Log a warning when the
        event loop runs a callback this many seconds late (something blocked it). Every lag
        is in the metric jupyterhub_credits_event_loop_lag_seconds; 1 s, as the hub's own.""")

    @default("log_level")
    def _default_log_level(self):
        return "INFO"

    @default("log_format")
    def _default_log_format(self):
        # Like the hub's own lines (the service logs into the hub's output).
        return ("[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s %(module)s:%(lineno)d] "
                "%(message)s")

    @default("log_datefmt")
    def _default_log_datefmt(self):
        return "%Y-%m-%d %H:%M:%S"

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)

    # --- assembly --------------------------------------------------------------------------

    def make_context(self, *, clock=utcnow) -> ServiceContext:
        catalog = load_catalog(self.catalog_path)
        ledger = Ledger.open(self.db_url, clock=clock)
        sessions = SessionStore(ledger)
        hub = HubClient(self.hub_api_url, self.api_token, timeout=self.hub_timeout)
        context = ServiceContext(ledger=ledger, sessions=sessions, catalog=catalog, hub=hub,
                                 clock=clock, allocator=self.make_allocator(catalog, ledger),
                                 earning=EarningService(ledger, earning_rules(catalog)))
        if self.run_meter:
            # Its own hub client: the meter makes it resolve on the meter's own threads.
            meter_hub = HubClient(self.hub_api_url, self.api_token, timeout=self.hub_timeout)
            context.meter = Meter(parent=self, sessions=sessions, hub=meter_hub, catalog=catalog,
                                  clock=clock, lock=context.lock)
        return context

    def make_allocator(self, catalog, ledger) -> LocalGpuAllocator | None:
        if self.capacity == "none":
            return None
        inventory = local_inventory(catalog, self.local_gpus)
        if not inventory and self.capacity == "auto":
            self.log.info("credits: no local GPUs known; /api/catalog shows free GPUs as null")
            return None
        self.log.info("credits: local GPUs for free counts: %s",
                      ", ".join(f"{g.gpu_type}:{g.index}" for g in inventory) or "none")
        return LocalGpuAllocator(ledger.engine, inventory, host=self.gpu_host, clock=ledger.clock)

    def make_app(self, context: ServiceContext) -> web.Application:
        prefix = self.service_prefix if self.service_prefix.endswith("/") \
            else self.service_prefix + "/"
        hub_auth = HubOAuth(api_token=self.api_token, api_url=self.hub_api_url,
                            cache_max_age=int(self.auth_cache_max_age), parent=self)
        handlers = [
            (prefix + "health", HealthHandler),
            (prefix + "oauth_callback", OAuthCallbackHandler),
            (prefix + "metrics", MetricsHandler),
            *page_handlers(prefix),
            *[(prefix + path.lstrip("/"), handler) for path, handler in default_handlers],
            (prefix + r"api(?:/.*)?", NotFoundHandler),
        ]
        return web.Application(
            handlers, credits=context, hub_auth=hub_auth, credits_prefix=prefix,
            cookie_secret=os.urandom(32), login_url=hub_auth.login_url, xsrf_cookies=False,
            credits_templates=template_environment(),
            static_path=STATIC_DIR, static_url_prefix=prefix + "static/")

    def make_server(self, app: web.Application) -> HTTPServer:
        """The HTTP server for ``app``, refusing bodies over ``max_body_size`` unread."""
        return HTTPServer(app, max_body_size=self.max_body_size)

    # --- running -----------------------------------------------------------------------------

    async def serve(self) -> None:
        context = self.make_context()
        app = self.make_app(context)
        # What start-up made (modules, catalog, engines: ~150,000 objects) lives as long as
        # the process: out of the garbage collector's full passes, which otherwise walk it
        # every few seconds under load, each a pause of ~100 ms for every request in
        # flight (bench/lab_poll.py, 64 polls in flight: p99 180-200 ms, now ~100 ms).
        gc.collect()
        gc.freeze()
        url = urlparse(self.bind_url or self.service_url)
        self.make_server(app).listen(url.port, url.hostname)
        self.log.info("credits service listening on %s%s", self.service_url, self.service_prefix)
        lag_probe = EventLoopLagProbe(log_threshold=self.event_loop_lag_log_threshold,
                                      log=self.log)
        lag_probe.start()
        if context.meter is not None:
            context.meter.start()
        payer = None
        if self.earnings_pay_interval > 0 and context.earning is not None:
            payer = PeriodicCallback(lambda: self.pay_earnings(context),
                                       self.earnings_pay_interval * 1000)
            payer.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
        self.log.info("credits service stopping")
        lag_probe.stop()
        if payer is not None:
            payer.stop()
        if context.meter is not None:
            context.meter.stop()
        context.ledger.close()

    async def pay_earnings(self, context: ServiceContext) -> int:
        """Earn what stored events earned but were not yet paid for (idempotent)."""
        try:
            paid = await asyncio.to_thread(context.earning.pay_pending)
        except Exception:  # noqa: BLE001 - the next pass tries again
            self.log.exception("credits: paying pending earnings failed")
            return 0
        if paid:
            self.log.info("credits: paid %d pending earnings", paid)
        return paid

    def start(self):
        asyncio.run(self.serve())


def main(argv=None):
    CreditsService.launch_instance(argv)
