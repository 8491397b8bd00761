"""Asking the credits service about this server: cached, one request at a time, backing off.

Every open JupyterLab tab polls ``credits/status`` on its own server; the server asks
the credits service (``GET {api}/sessions/{server label}``) on their behalf, with
its own token, and shares the answer:

- at most one request in flight: callers that arrive while it runs await the same
  future;
- an answer is reused for ``ttl`` seconds (``JUPYTERHUB_CREDITS_STATUS_TTL``, 30);
  ``refresh`` asks again, but not more than once per ``min_refresh`` seconds (2), so
  a user hammering a button cannot hammer the service;
- after a failure it waits 5, 10, 20 … 300 s before asking again, serving the last
  good answer (if any) with the words of the error and the seconds until the next
  try; ``force`` (after the user changed something, or at stop) asks anyway.

The service's answer is kept as it came; :func:`build_status` turns it (and the
server's own knowledge) into what the browser gets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, urlencode

from tornado import httpclient

log = logging.getLogger(__name__)

TTL_ENV = "JUPYTERHUB_CREDITS_STATUS_TTL"
DEFAULT_TTL = 30.0
MIN_REFRESH = 2.0
BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
REQUEST_TIMEOUT = 10.0
#: How much later than the plain backoff a server may ask again (a fraction of the delay).
BACKOFF_SPREAD = 0.2


def spread(delay: float) -> float:
    """``delay`` made up to ``BACKOFF_SPREAD`` longer at random: after the service was
    down (or restarted, its token cache empty), thousands of servers failed together and
    would otherwise all ask again in the same second."""
    return delay * (1 + random.uniform(0, BACKOFF_SPREAD))


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class ServiceError(Exception):
    """The service could not be asked, or answered something unusable; ``str`` is for people."""

    def __init__(self, words: str, *, status: int | None = None):
        super().__init__(words)
        self.status = status


def service_trouble(code: int | None, error: BaseException | None = None) -> str:
    """Words for a failed request (never a URL or a token: they go to the browser)."""
    if code in (None, 599):
        return "The credits service is not answering"
    if code in (401, 403):
        return f"The credits service refused this server's credentials (HTTP {code})"
    return f"The credits service answered HTTP {code}"


def request_headers(token: str) -> dict:
    return {"Authorization": f"token {token}", "Accept": "application/json",
            "User-Agent": "jupyterhub-credits-singleuser"}


async def http_fetch(url: str, token: str, *, timeout: float, ssl_options=None,
                     method: str = "GET", body: dict | None = None):
    """One request to the service; the tornado response (any status) or ServiceError."""
    headers = request_headers(token)
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body)
    request = httpclient.HTTPRequest(url, method=method, headers=headers, body=data,
                                     request_timeout=timeout, connect_timeout=timeout,
                                     follow_redirects=False, ssl_options=ssl_options)
    try:
        return await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
    except Exception as error:  # noqa: BLE001 - DNS, refused, TLS: all "not answering"
        raise ServiceError(service_trouble(None, error)) from None


def json_object(response) -> dict:
    try:
        value = json.loads(response.body or b"")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ServiceError("The credits service answered something that is not a JSON object",
                           status=response.code)
    return value


@dataclass
class Snapshot:
    """What the extension knows from the service right now."""

    answer: dict | None  # the last good answer, None before the first
    fetched_at: str | None  # when it was received (ISO, this server's clock)
    error: str | None = None  # words for the panel while asking fails
    retry_in: float | None = None  # seconds until the next try after a failure


class ServiceStatus:
    """The cached, single-flight, backing-off client of ``GET {api}/sessions/{label}``.

    ``fetch(runs, timeout)`` (tests) replaces the HTTP request; it returns the
    answer (a dict) or raises ServiceError. ``clock`` is monotonic seconds.
    """

    def __init__(self, api_url: str | None, token: str | None, label: str, *,
                 ttl: float = DEFAULT_TTL, min_refresh: float = MIN_REFRESH,
                 backoff_base: float = BACKOFF_BASE, backoff_max: float = BACKOFF_MAX,
                 timeout: float = REQUEST_TIMEOUT, ssl_options=None,
                 fetch: Callable[[list[str], float], Awaitable[dict]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[float], float] = lambda delay: delay):
        self.api_url = api_url
        self._token = token
        self.label = label
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._ssl_options = ssl_options
        self._fetch = fetch or self._http_fetch
        self.clock = clock
        self.jitter = jitter  # ``spread`` in a server; none where tests count seconds
        self.answer: dict | None = None
        self.fetched_at: str | None = None
        self._fetched_mono: float | None = None
        self._asked_mono: float | None = None  # when the last request started
        self._inflight: asyncio.Future | None = None
        self.failures = 0  # consecutive
        self.error: str | None = None
        self._retry_at: float | None = None
        self.requests = 0  # requests started
        self.waiting = 0  # callers waiting for the request in flight

    def __repr__(self) -> str:  # never the token
        return f"<ServiceStatus {self.label} failures={self.failures}>"

    @property
    def url(self) -> str:
        return f"{self.api_url}/sessions/{quote(self.label, safe='')}"

    async def _http_fetch(self, runs: list[str], timeout: float) -> dict:
        url = self.url + (f"?{urlencode({'runs': ','.join(runs)})}" if runs else "")
        response = await http_fetch(url, self._token, timeout=timeout,
                                    ssl_options=self._ssl_options)
        if response.code != 200:
            raise ServiceError(service_trouble(response.code), status=response.code)
        return json_object(response)

    def snapshot(self) -> Snapshot:
        retry_in = None
        if self._retry_at is not None:
            retry_in = max(0, math.ceil(self._retry_at - self.clock()))
        return Snapshot(self.answer, self.fetched_at, self.error, retry_in)

    def _due(self, refresh: bool) -> bool:
        now = self.clock()
        if self._retry_at is not None:
            return now >= self._retry_at  # backing off: a refresh does not cut it short
        if self._fetched_mono is None:
            return True
        if refresh:
            return self._asked_mono is None or now - self._asked_mono >= self.min_refresh
        return now - self._fetched_mono >= self.ttl

    async def get(self, *, runs: Iterable[str] = (), refresh: bool = False,
                  force: bool = False, timeout: float | None = None) -> Snapshot:
        """The current snapshot, asking the service first when due (or ``force``)."""
        if self.api_url is None or self._token is None:
            return Snapshot(None, None, "This server does not run under JupyterHub: "
                                        "there are no credits to show", None)
        if force:
            future = self._start(list(runs), timeout)
        elif self._inflight is not None:
            future = self._inflight
        elif self._due(refresh):
            future = self._start(list(runs), timeout)
        else:
            return self.snapshot()
        # shield: one caller going away (a closed tab) must not cancel the others' request
        self.waiting += 1
        try:
            await asyncio.shield(future)
        finally:
            self.waiting -= 1
        return self.snapshot()

    def _start(self, runs: list[str], timeout: float | None) -> asyncio.Future:
        self._asked_mono = self.clock()
        self.requests += 1
        future = asyncio.ensure_future(self._ask(runs, self.timeout if timeout is None
                                                 else timeout))
        self._inflight = future

        def done(task: asyncio.Future) -> None:
            if self._inflight is task:
                self._inflight = None
        future.add_done_callback(done)
        return future

    async def _ask(self, runs: list[str], timeout: float) -> None:
        try:
            # the HTTP client's own timeout should fire first (its words are better); this
            # one only bounds a fetch that ignores it
            answer = await asyncio.wait_for(self._fetch(runs, timeout), timeout * 1.5 + 0.1)
        except (ServiceError, asyncio.TimeoutError) as error:
            words = str(error) if isinstance(error, ServiceError) else \
                service_trouble(None)
            self._failed(words)
            return
        except Exception as error:  # noqa: BLE001 - a bug must not take the panel down
            log.exception("credits: asking the credits service failed")
            self._failed(f"The credits service could not be asked ({type(error).__name__})")
            return
        self.answer = answer
        self.fetched_at = utc_now_iso()
        self._fetched_mono = self.clock()
        self.failures = 0
        self.error = None
        self._retry_at = None

    def _failed(self, words: str) -> None:
        self.failures += 1
        delay = self.jitter(min(self.backoff_max, self.backoff_base * 2 ** (self.failures - 1)))
        self._retry_at = self.clock() + delay
        self.error = f"{words}; trying again in {math.ceil(delay)} s"
        if self.failures in (1, 5) or self.failures % 20 == 0:
            log.warning("credits: %s (%d failures in a row)", self.error, self.failures)

    async def post(self, path: str, body: dict, *, timeout: float | None = None):
        """POST to ``{api}/sessions/{label}/{path}``: (HTTP status, JSON object answer).

        Raises ServiceError when the service is unreachable or answers no JSON object.
        """
        if self.api_url is None or self._token is None:
            raise ServiceError("This server does not run under JupyterHub")
        response = await http_fetch(f"{self.url}/{path}", self._token, method="POST",
                                    body=body, timeout=timeout or self.timeout,
                                    ssl_options=self._ssl_options)
        if response.code == 599:
            raise ServiceError(service_trouble(599))
        try:
            return response.code, json_object(response)
        except ServiceError:
            raise ServiceError(service_trouble(response.code), status=response.code) from None


# -- what the browser gets -----------------------------------------------------------------

#: ``str.format`` would read braces in a regex; JavaScript's RegExp (TensorBoard's run
#: filter) rejects some of Python's ``re.escape`` escapes in unicode mode ("\\-", "\\ "):
#: escape exactly the characters that are special in both.
_REGEX_SPECIAL = re.compile(r"([\\^$.*+?()\[\]{}|])")


def regex_escape(text: str) -> str:
    return _REGEX_SPECIAL.sub(r"\\\1", text)


def tensorboard_run_url(tensorboard_url: str | None, logdir: str | None,
                        root_dir: str | None) -> str | None:
    """The TensorBoard time-series page filtered to one run's log directory.

    TensorBoard names runs by their path relative to its ``--logdir`` (the notebook
    root); the filter is that path, anchored, so ``logs/a`` does not also select
    ``logs/ab``. None when the run logged outside the root (TensorBoard cannot see it).
    """
    if not tensorboard_url or not logdir or not root_dir:
        return None
    root = os.path.realpath(root_dir)
    target = os.path.realpath(logdir)
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        return None
    relative = os.path.relpath(target, root).replace(os.sep, "/")
    if relative == ".":
        return f"{tensorboard_url}#timeseries"
    run_filter = f"^{regex_escape(relative)}(/|$)"
    return f"{tensorboard_url}?runFilter={quote(run_filter, safe='')}#timeseries"


def scrub(value, token: str | None):
    """Drop anything token-like from a JSON value before it goes to a browser."""
    if isinstance(value, dict):
        return {k: scrub(v, token) for k, v in value.items() if "token" not in str(k).lower()}
    if isinstance(value, list):
        return [scrub(v, token) for v in value]
    if token and isinstance(value, str) and token in value:
        return "[redacted]"
    return value
