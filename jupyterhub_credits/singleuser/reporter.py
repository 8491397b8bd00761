"""Send earning events to the credits service: queue → batches → POST, retried, persisted.

Events are ``{"kind", "key", "time", "payload"}`` where ``key`` is the idempotency
key: the service counts a key once however often it arrives, so the reporter may
(and does) resend a batch whenever it cannot know whether it was received.

- One background thread per reporter posts batches of up to ``batch_size`` events
  to ``{api_url}/events`` with ``Authorization: token <JUPYTERHUB_API_TOKEN>``.
  The thread design works the same in the Jupyter server (whose event loop it never
  blocks) and in a kernel (where ``model.fit`` runs synchronously).
- Network errors, HTTP 5xx, 408/425/429 and the other answers that say "not now"
  (redirects, 401/403/404 from a proxy or a service being restarted) are retried
  with exponential backoff and jitter, with the *same* events and keys. Only
  400/413/422 — the service rejecting the batch itself — drop a batch (logged).
- Every event not yet acknowledged is kept in a small JSON file in the Jupyter
  runtime directory (``jupyterhub-credits-events-<host>-<pid>.json``, written
  atomically, removed when empty). A server started on the same host adopts the
  files of processes that no longer run (its own previous life, dead kernels), so a
  restart loses nothing and, thanks to the keys, doubles nothing.
- The token lives only in this object and the request header: never in the state
  file, ``repr``, ``status()`` or a log line.
"""

from __future__ import annotations

import atexit
import http.client
import itertools
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

#: Overrides the service's API base URL (``.../services/credits/api``).
API_URL_ENV = "JUPYTERHUB_CREDITS_API_URL"
STATE_PREFIX = "jupyterhub-credits-events-"
STATE_VERSION = 1
#: Answers that mean "this batch is wrong": dropped, not retried.
PERMANENT_STATUS = frozenset({400, 413, 422})


def service_api_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The credits service's API base, without a trailing slash; None if unknown.

    ``JUPYTERHUB_CREDITS_API_URL`` wins; else ``JUPYTERHUB_API_URL`` with its
    trailing ``/hub/api`` replaced by ``/services/credits/api``.
    """
    env = os.environ if environ is None else environ
    explicit = (env.get(API_URL_ENV) or "").strip()
    if explicit:
        return explicit.rstrip("/")
    hub_api = (env.get("JUPYTERHUB_API_URL") or "").strip().rstrip("/")
    if hub_api.endswith("/hub/api"):
        return hub_api[: -len("/hub/api")] + "/services/credits/api"
    return None


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_event(kind: str, payload: Mapping, *, key: str | None = None,
               time: str | datetime | None = None) -> dict:
    """An event as the service's intake takes it; a random key unless one is given."""
    if isinstance(time, datetime):
        time = time.astimezone(timezone.utc).isoformat(timespec="seconds")
    return {"kind": kind, "key": key or f"{kind}:{uuid.uuid4().hex}",
            "time": time or utc_now_iso(), "payload": dict(payload)}


class DeliveryError(Exception):
    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect means a wrong URL (e.g. the hub's own port): never turn a POST into a GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _ssl_context(environ: Mapping[str, str]) -> ssl.SSLContext | None:
    """JupyterHub's internal SSL, when the spawner set it up; else the defaults."""
    cafile = environ.get("JUPYTERHUB_SSL_CLIENT_CA")
    if not cafile:
        return None
    context = ssl.create_default_context(cafile=cafile)
    certfile = environ.get("JUPYTERHUB_SSL_CERTFILE")
    keyfile = environ.get("JUPYTERHUB_SSL_KEYFILE")
    if certfile and keyfile:
        context.load_cert_chain(certfile, keyfile)
    return context


def post_events(api_url: str, token: str, events: list[dict], *, timeout: float = 10.0,
                ssl_context: ssl.SSLContext | None = None) -> list[dict]:
    """POST one batch; the service's outcomes, or DeliveryError (retryable or not)."""
    request = urllib.request.Request(
        f"{api_url}/events", data=json.dumps(events).encode(), method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json",
                 "Accept": "application/json", "User-Agent": "jupyterhub-credits-singleuser"})
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _NoRedirect(),
        urllib.request.HTTPSHandler(context=ssl_context))
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
        raise DeliveryError(f"HTTP {status} from {api_url}/events", status=status,
                            retryable=status not in PERMANENT_STATUS) from None
    except (OSError, http.client.HTTPException) as error:  # URLError, resets, timeouts
        raise DeliveryError(f"{type(error).__name__}: {error}") from None
    try:
        outcomes = json.loads(body)
    except ValueError:
        raise DeliveryError(f"{api_url}/events answered something that is not JSON") from None
    if isinstance(outcomes, dict):
        outcomes = outcomes.get("outcomes", outcomes.get("events"))
    if not isinstance(outcomes, list):
        raise DeliveryError(f"{api_url}/events answered no list of outcomes")
    return [outcome for outcome in outcomes if isinstance(outcome, dict)]


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname() or "host")[:64]


def runtime_dir() -> Path:
    try:
        from jupyter_core.paths import jupyter_runtime_dir
        return Path(jupyter_runtime_dir())
    except ImportError:  # a bare kernel environment
        return Path.home() / ".local" / "share" / "jupyter" / "runtime"


def default_state_path(directory: str | os.PathLike | None = None) -> Path:
    base = Path(directory) if directory is not None else runtime_dir()
    return base / f"{STATE_PREFIX}{_host_tag()}-{os.getpid()}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        log.warning("credits: ignoring unreadable event file %s: %s", path, error)
        return []
    events = data.get("events") if isinstance(data, dict) else None
    return [event for event in events or () if isinstance(event, dict)
            and isinstance(event.get("key"), str) and isinstance(event.get("kind"), str)]


class EventReporter:
    """A thread-safe event queue delivered in batches by one background thread."""

    def __init__(self, api_url: str, token: str, *, state_path: str | os.PathLike | None = None,
                 batch_size: int = 100, flush_interval: float = 2.0, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, timeout: float = 10.0, max_pending: int = 10_000,
                 ssl_context: ssl.SSLContext | None = None):
        if not api_url or not token:
            raise ValueError("an EventReporter needs the service URL and a token")
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.state_path = Path(state_path) if state_path is not None else None
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.max_pending = max_pending
        self._ssl_context = ssl_context
        self._cond = threading.Condition(threading.Lock())
        self._pending: OrderedDict[str, dict] = OrderedDict()
        self._outcomes: OrderedDict[str, dict] = OrderedDict()
        self._oldest: float | None = None  # monotonic time the oldest pending event came in
        self._retry_at: float | None = None  # set while backing off after a failure
        self._flush_requested = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.attempts = 0  # POSTs tried
        self.sent = 0  # events acknowledged by the service
        self.failures = 0  # POSTs that failed (retryable or not)
        self.dropped = 0  # events given up: rejected batch or queue overflow
        self.last_error: str | None = None
        self.last_success: str | None = None
        if self.state_path is not None:
            self._add(_read_state(self.state_path))

    def __repr__(self) -> str:  # never the token
        return f"<EventReporter {self.api_url} pending={len(self._pending)}>"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs) -> EventReporter | None:
        """A reporter for this single-user server or kernel; None outside JupyterHub."""
        env = os.environ if environ is None else environ
        token = env.get("JUPYTERHUB_API_TOKEN")
        api_url = service_api_url(env)
        if not token or not api_url:
            return None
        kwargs.setdefault("ssl_context", _ssl_context(env))
        if "state_path" not in kwargs:
            try:
                kwargs["state_path"] = default_state_path()
            except Exception as error:  # noqa: BLE001 - persistence is best effort
                log.warning("credits: no runtime directory for unsent events: %s", error)
        return cls(api_url, token, **kwargs)

    def start(self) -> EventReporter:
        """Start the delivery thread (also started by the first ``send``)."""
        self._ensure_thread()
        return self

    # -- queueing ---------------------------------------------------------------------------

    def send(self, kind: str, payload: Mapping, *, key: str | None = None,
             time: str | datetime | None = None) -> str:
        """Queue one event; its idempotency key (given or generated) is returned."""
        event = make_event(kind, payload, key=key, time=time)
        self.submit([event])
        return event["key"]

    def submit(self, events: Iterable[dict]) -> int:
        """Queue ready-made events (a key already queued is kept once); how many were new."""
        added = self._add(events)
        self._ensure_thread()
        return added

    def _add(self, events: Iterable[dict]) -> int:
        added = 0
        with self._cond:
            for event in events:
                if event["key"] in self._pending:
                    continue
                self._pending[event["key"]] = event
                added += 1
            overflow = len(self._pending) - self.max_pending
            if overflow > 0:  # keep the newest; say so loudly
                for key in list(itertools.islice(self._pending, overflow)):
                    del self._pending[key]
                self.dropped += overflow
                log.error("credits: %d unsent events dropped (queue over %d)", overflow,
                          self.max_pending)
            if added:
                if self._oldest is None:
                    self._oldest = time.monotonic()
                self._persist()
                self._cond.notify_all()
        return added

    # -- waiting ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now and wait until nothing is pending; False on timeout."""
        self._ensure_thread()
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 3.0) -> bool:
        """Try to deliver what is queued (not through a backoff), then stop; state stays on disk."""
        with self._cond:
            if self._stopping:
                return not self._pending
            self._flush_requested = True
            self._cond.notify_all()
            if self._thread is not None:
                self._cond.wait_for(lambda: not self._pending or self._retry_at is not None,
                                    timeout)
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(timeout, 0.1))  # a POST still in flight may finish alone
        with self._cond:
            return not self._pending

    def status(self) -> dict:
        """Counters for ``/credits/status`` (no token, no event payloads)."""
        with self._cond:
            return {"pending": len(self._pending), "sent": self.sent, "attempts": self.attempts,
                    "failures": self.failures, "dropped": self.dropped,
                    "retrying": self._retry_at is not None, "last_error": self.last_error,
                    "last_success": self.last_success}

    def outcome(self, key: str) -> dict | None:
        """The service's answer for an event key, once received (the last 1,000 are kept)."""
        with self._cond:
            return self._outcomes.get(key)

    def pending_keys(self) -> list[str]:
        with self._cond:
            return list(self._pending)

    # -- orphans ----------------------------------------------------------------------------

    def adopt_orphans(self, directory: str | os.PathLike | None = None) -> int:
        """Queue the unsent events of dead processes on this host; how many were taken."""
        if directory is None:
            if self.state_path is None:
                return 0
            directory = self.state_path.parent
        directory = Path(directory)
        pattern = re.compile(re.escape(f"{STATE_PREFIX}{_host_tag()}-") + r"(\d+)\.json$")
        taken = 0
        for path in sorted(directory.glob(f"{STATE_PREFIX}*.json")):
            match = pattern.match(path.name)
            if not match or (self.state_path is not None and path == self.state_path):
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and _pid_alive(pid):
                continue
            claim = path.with_name(f"{path.name}.adopting-{os.getpid()}")
            try:
                os.rename(path, claim)  # atomic: one adopter wins
            except OSError:
                continue
            events = _read_state(claim)
            taken += self.submit(events) if events else 0
            claim.unlink(missing_ok=True)  # only after our own file holds them
        if taken:  # old already: send them now rather than after flush_interval
            log.info("credits: adopted %d unsent events from earlier processes", taken)
            with self._cond:
                self._flush_requested = True
                self._cond.notify_all()
        return taken

    # -- internals --------------------------------------------------------------------------

    def _persist(self) -> None:
        """Write the pending events (lock held). Best effort: a full disk must not stop work."""
        if self.state_path is None:
            return
        try:
            if not self._pending:
                self.state_path.unlink(missing_ok=True)
                return
            self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"version": STATE_VERSION, "events": list(self._pending.values())},
                          handle)
            os.replace(tmp, self.state_path)
        except OSError as error:
            log.warning("credits: could not save unsent events to %s: %s", self.state_path, error)

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="credits-reporter",
                                                daemon=True)
                self._thread.start()

    def _next_batch(self) -> list[dict] | None:
        """Wait (lock held) until a batch is due; None when stopping."""
        while not self._stopping:
            if not self._pending:
                self._flush_requested = False
                self._cond.wait()
                continue
            now = time.monotonic()
            if self._retry_at is not None:
                wait = self._retry_at - now
            elif self._flush_requested or len(self._pending) >= self.batch_size:
                wait = 0.0
            else:
                wait = (self._oldest or now) + self.flush_interval - now
            if wait <= 0:
                self._retry_at = None
                return list(itertools.islice(self._pending.values(), self.batch_size))
            self._cond.wait(wait)
        return None

    def _run(self) -> None:
        consecutive = 0
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self.attempts += 1
            try:
                outcomes = post_events(self.api_url, self._token, batch, timeout=self.timeout,
                                       ssl_context=self._ssl_context)
            except DeliveryError as error:
                with self._cond:
                    self.failures += 1
                    self.last_error = str(error)
                    if error.retryable:
                        consecutive += 1
                        delay = min(self.backoff_max, self.backoff_base * 2 ** (consecutive - 1))
                        self._retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
                        log.warning("credits: sending %d events failed (%s); retrying in %.1f s",
                                    len(batch), error, self._retry_at - time.monotonic())
                    else:
                        consecutive = 0
                        self._forget(batch)
                        self.dropped += len(batch)
                        log.error("credits: the service refused %d events (%s); dropped",
                                  len(batch), error)
                    self._cond.notify_all()
                continue
            except Exception as error:  # noqa: BLE001 - the thread must survive anything
                with self._cond:
                    self.failures += 1
                    self.last_error = f"{type(error).__name__}: {error}"
                    consecutive += 1
                    self._retry_at = time.monotonic() + min(self.backoff_max, self.backoff_base
                                                            * 2 ** (consecutive - 1))
                    log.exception("credits: unexpected error sending events")
                    self._cond.notify_all()
                continue
            consecutive = 0
            with self._cond:
                for outcome in outcomes:
                    key = outcome.get("key")
                    if isinstance(key, str):
                        self._outcomes[key] = outcome
                        self._outcomes.move_to_end(key)
                while len(self._outcomes) > 1000:
                    self._outcomes.popitem(last=False)
                self._forget(batch)
                self.sent += len(batch)
                self.last_error = None
                self.last_success = utc_now_iso()
                self._cond.notify_all()

    def _forget(self, batch: list[dict]) -> None:
        for event in batch:
            self._pending.pop(event["key"], None)
        if not self._pending:
            self._oldest = None
        self._persist()


_shared: EventReporter | None = None
_shared_made = False
_shared_lock = threading.Lock()


def get_reporter() -> EventReporter | None:
    """This process's reporter, made from the environment on first use; None outside JupyterHub.

    It closes at interpreter exit (a short last attempt; whatever is left stays in the
    runtime directory for the single-user server to adopt).
    """
    global _shared, _shared_made
    with _shared_lock:
        if not _shared_made:
            _shared = EventReporter.from_env()
            _shared_made = True
            if _shared is not None:
                atexit.register(_shared.close)
        return _shared


def _reset_shared_reporter() -> None:
    """Forget the process-wide reporter (tests, or after the environment changed)."""
    global _shared, _shared_made
    with _shared_lock:
        if _shared is not None:
            _shared.close(timeout=0)
            atexit.unregister(_shared.close)
        _shared, _shared_made = None, False
