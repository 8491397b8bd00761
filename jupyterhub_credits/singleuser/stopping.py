"""Tell the open JupyterLab pages why the server stops, and give them time to save.

The hub stops a single-user server with a signal (SIGTERM; the local spawner sends
SIGINT first). Without help the pages only see their connection drop. When the first
signal arrives, :class:`StopAnnouncer`

1. asks the credits service for the stop it decided (``stop`` of the server status:
   expired, admin, gpu_idle, …), at most ``STOP_QUERY_TIMEOUT`` seconds;
2. emits the ``server-stopping`` event (:data:`SCHEMA_ID`) through the server's
   ``event_logger``: JupyterLab receives it on ``serviceManager.events.stream``;
3. keeps serving for ``JUPYTERHUB_CREDITS_STOP_GRACE`` seconds (3; 0: no wait) so
   the pages can save their documents through the still-running server;
4. hands the signal to the handler jupyter_server (or jupyterhub-singleuser)
   installed, which stops the server as it always did.

A second signal goes to that handler at once (an impatient ^C^C, or a spawner that
escalates).

jupyter-server-proxy's process supervisor (simpervisor) would, on the first proxied
process it starts (TensorBoard), replace the SIGINT/SIGTERM handlers with its own,
which forwards the signal to its children and calls ``sys.exit(0)``: no clean stop,
no announcement. The announcer therefore claims that spot (simpervisor then installs
nothing) and forwards the signal to the supervised children itself, just before
handing it on. The wait must fit the spawner's patience: the local spawner waits 10 s
after SIGINT; KubeSpawner's ``delete_grace_period`` must exceed the grace plus the
query timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from .status import utc_now_iso

log = logging.getLogger(__name__)

SCHEMA_ID = "https://jupyterhub-credits.readthedocs.io/events/server-stopping/v1"
SCHEMA_PATH = Path(__file__).with_name("server_stopping.yaml")
GRACE_ENV = "JUPYTERHUB_CREDITS_STOP_GRACE"
DEFAULT_GRACE = 3.0
STOP_QUERY_TIMEOUT = 2.0
DEFAULT_REASON = "stopped"
DEFAULT_MESSAGE = "Your server was stopped"
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def grace_from_env(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get(GRACE_ENV, "")
    if not raw.strip():
        return DEFAULT_GRACE
    try:
        value = float(raw)
    except ValueError:
        log.warning("credits: %s=%r is not a number; using %s", GRACE_ENV, raw, DEFAULT_GRACE)
        return DEFAULT_GRACE
    return value if value > 0 else 0.0


def stop_event(stop: Mapping | None, grace: float) -> dict:
    """The event's data from the service's ``stop`` (None: the service did not say)."""
    stop = stop if isinstance(stop, Mapping) else {}

    def text(name: str, default: str) -> str:
        value = stop.get(name)
        return value if isinstance(value, str) and value.strip() else default

    return {"reason": text("reason", DEFAULT_REASON), "message": text("message", DEFAULT_MESSAGE),
            "at": text("at", utc_now_iso()), "grace_seconds": grace}


class StopAnnouncer:
    """Wraps the stop signals' handlers of one server (see the module's docstring).

    ``ask_stop()`` returns the service's ``stop`` (or None) and may raise: the event
    is emitted either way.
    """

    def __init__(self, serverapp, ask_stop: Callable[[], Awaitable[Mapping | None]], *,
                 grace: float = DEFAULT_GRACE, query_timeout: float = STOP_QUERY_TIMEOUT):
        self.serverapp = serverapp
        self.ask_stop = ask_stop
        self.grace = grace
        self.query_timeout = query_timeout
        self.originals: dict[int, Callable] = {}
        self.started = False
        self.task: asyncio.Task | None = None
        self.emitted: dict | None = None
        self._supervisor = None  # simpervisor's atexitasync, when we took its place

    def install(self) -> bool:
        """Register the event schema and wrap the handlers; False where nothing was wrapped."""
        event_logger = getattr(self.serverapp, "event_logger", None)
        if event_logger is None:
            return False
        if SCHEMA_ID not in event_logger.schemas.schema_ids:
            event_logger.register_event_schema(SCHEMA_PATH)
        for sig in SIGNALS:
            original = signal.getsignal(sig)
            # Only a Python handler is wrapped: SIG_DFL / SIG_IGN mean nobody asked for a
            # clean stop on this signal here (e.g. an embedding test harness).
            if not callable(original):
                continue
            try:
                signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: leave the signals alone
                log.info("credits: not on the main thread; the stop is not announced")
                break
            self.originals[sig] = original
        if self.originals:
            self._claim_supervisor()
        return bool(self.originals)

    def _claim_supervisor(self) -> None:
        try:
            from simpervisor import atexitasync
        except ImportError:  # no jupyter-server-proxy here
            return
        if not getattr(atexitasync, "signal_handler_set", True):
            atexitasync.signal_handler_set = True
            self._supervisor = atexitasync

    def _forward_to_children(self, sig) -> None:
        """Pass the signal on to the processes jupyter-server-proxy started (as it would)."""
        handlers = getattr(self._supervisor, "_handlers", None) or []
        for handler in list(handlers):
            try:
                handler(sig)
            except Exception:  # noqa: BLE001 - a child already gone
                log.debug("credits: forwarding signal %s to a proxied process failed", sig,
                          exc_info=True)

    def uninstall(self) -> None:
        if self._supervisor is not None:
            self._supervisor.signal_handler_set = False
            self._supervisor = None
        for sig, original in self.originals.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, original)
            except ValueError:
                pass
        self.originals.clear()

    def _on_signal(self, sig, frame) -> None:
        original = self.originals.get(sig)
        if self.started or original is None:
            if original is not None:
                self._forward_to_children(sig)
                original(sig, frame)
            return
        self.started = True
        loop = getattr(getattr(self.serverapp, "io_loop", None), "asyncio_loop", None)
        try:
            # A signal handler runs between two bytecodes of the main thread, maybe inside
            # the loop itself: only the thread-safe call may touch the loop here.
            loop.call_soon_threadsafe(self._start, original, sig, frame)
        except (AttributeError, RuntimeError):  # no loop, or closed: stop as before
            original(sig, frame)

    def _start(self, original, sig, frame) -> None:
        self.task = asyncio.ensure_future(self.announce_then_stop(original, sig, frame))

    async def announce(self) -> dict:
        """Ask for the reason, emit the event; its data."""
        try:
            stop = await asyncio.wait_for(self.ask_stop(), self.query_timeout)
        except Exception as error:  # noqa: BLE001 - timeout, service down: a plain "stopped"
            log.info("credits: no stop reason from the credits service (%s)",
                     type(error).__name__)
            stop = None
        data = stop_event(stop, self.grace)
        try:
            self.serverapp.event_logger.emit(schema_id=SCHEMA_ID, data=data)
        except Exception:  # noqa: BLE001 - never stand between the hub and the stop
            log.exception("credits: could not emit the server-stopping event")
        self.emitted = data
        return data

    async def announce_then_stop(self, original, sig, frame) -> None:
        try:
            data = await self.announce()
            self.serverapp.log.info("credits: stopping (%s); serving %s s more so the pages "
                                    "can save", data["reason"], self.grace)
            if self.grace > 0:
                await asyncio.sleep(self.grace)  # the grace period itself, not a sync
        finally:
            self._forward_to_children(sig)
            original(sig, frame)
