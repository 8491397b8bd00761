"""Load: 50 simulated users starting, using and stopping servers on a real hub for minutes.

Starts a real JupyterHub (``tests/hub.py``: hub, configurable-http-proxy, the
credits service, the credits local spawner) on a fresh temporary PostgreSQL
credits database, with fake local GPUs declared (``JUPYTERHUB_CREDITS_LOCAL_GPUS``).
Every simulated user, granted credits, loops until the deadline:

1. asks the hub's REST API for its server with ``user_options`` (with its own
   token), alternating a CPU session and a GPU session (1 T4, 1 A100 or 2 A100s
   on the declared devices), and waits until it is ready (the answer's 201, or
   the spawn's progress stream for a 202): the spawn latency, request → ready;
2. while the server runs (6–14 s): reports earning events with the server's own
   token (``JUPYTERHUB_API_TOKEN`` of the server process) straight to the
   service, as servers do, every 3 s, and polls ``/services/credits/api/me``
   through the proxy with its own token every 2 s, as a page or script does;
3. stops it (``DELETE``) and waits until it is gone; thinks 0.5–2 s.

Users 0–9 run real ``jupyterhub-singleuser`` servers (at most 10 live at once:
the machine has 2 cores); the others run ``bench/standin_server.py``, which
answers what the hub and the spawner ask of a server (a ``pre_spawn_hook``
picks the command per user; everything else is the real spawner's work).

Before that, the same loop without the credits API calls runs for
``--baseline`` s against a hub with the plain ``SimpleLocalProcessSpawner``
(no credits mixin, no credits service): the difference of spawn latencies is
what the credits part adds under load (admission, hold, GPU assignment, its
own readiness check, marking ready; and the service's load on the machine).

Measured: spawn and stop latency p50/p99 (real and stand-in servers, CPU and
GPU); API latency of ``/api/me`` and events; the meter tick (the service's
``jupyterhub_credits_meter_tick_seconds``, scraped every second so that each
tick's own duration is known); the hub's event-loop lag (its
``jupyterhub_event_loop_interval_seconds`` and every stall ≥ 50 ms it logs)
and the service's (``jupyterhub_credits_event_loop_lag_seconds``, its max and
every stall ≥ 50 ms it logs); errors and refusals by kind. At the end, after
every server stopped: ledger ``verify``, every session ended and settled once
(holds resolved, posted = charged), no GPU device assigned to two sessions at
overlapping times, and every accepted event stored exactly once.

    .venv/bin/python bench/load.py [--quick] [--duration 300] [--users 50] [--real 10]
        [--baseline 60] [--meter-interval 5] [--asyncio-debug] [--out PATH]

Prints one JSON document on stdout (progress on stderr); ``"ok"`` is the end
check; exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from benchdb import DEFAULT_PG_ADMIN_URL, log, percentiles, postgres_database  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from jupyterhub_credits.earning.schema import events as events_table  # noqa: E402
from jupyterhub_credits.ledger import Ledger  # noqa: E402
from jupyterhub_credits.ledger import database as ledger_database  # noqa: E402
from jupyterhub_credits.ledger.schema import holds, transfers  # noqa: E402
from jupyterhub_credits.ledger.verify import verify  # noqa: E402
from jupyterhub_credits.sessions.schema import (  # noqa: E402
    gpu_assignments,
    session_holds,
    sessions,
)
from tests.hub import BIN, HubProcess  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

STANDIN = ROOT / "bench" / "standin_server.py"
#: Declared fake devices: fewer than the users who may want one at a time, so that
#: capacity refusals (and the allocator's exclusivity) are part of the load.
LOCAL_GPUS = ",".join([f"t4:{i}" for i in range(12)] + [f"a100:{i}" for i in range(12, 20)])
#: What a user asks for, in turn (a cycle's number picks one): CPU every other cycle.
OPTIONS = [
    {"image": "tf-2.21-cpu", "gpu_type": "none", "gpus": 0, "hours": "1"},
    {"image": "tf-2.21", "gpu_type": "t4", "gpus": 1, "hours": "1"},
    {"image": "tf-2.21-cpu", "gpu_type": "none", "gpus": 0, "hours": "0.5"},
    {"image": "tf-2.21", "gpu_type": "a100", "gpus": 1, "hours": "1"},
    {"image": "tf-2.21-cpu", "gpu_type": "none", "gpus": 0, "hours": "1"},
    {"image": "tf-2.19", "gpu_type": "a100", "gpus": 2, "hours": "2"},
]
GRANT_UNITS = 100_000_000  # 100,000 credits each: balance never refuses a start here
RUN_S = (6.0, 14.0)  # how long each server is used
THINK_S = (0.5, 2.0)  # between a stop and the next start
ME_EVERY_S = 2.0
EVENTS_EVERY_S = 3.0
STALL_S = 0.05  # the aim: nothing blocks a loop longer
HUB_STALL = re.compile(r"^\[W (\S+ \S+) .*Event loop was unresponsive for at least ([\d.]+)s")
SERVICE_STALL = re.compile(r"^\[W (\S+ \S+) .*event loop was blocked for ([\d.]+) s")


def user_name(index: int) -> str:
    return f"load{index:02d}"


#: Run inside the hub (its config file executes in the running loop): a heartbeat
#: callback every 10 ms and a thread that, whenever the heartbeat is over 50 ms late,
#: records the loop thread's stack — a poor man's py-spy (not installable here), to say
#: what blocked the loop. Waking every 10 ms costs the hub next to nothing.
STALL_SAMPLER = """
import asyncio as _asyncio, json as _json, sys as _sys, threading as _threading
import time as _time, traceback as _traceback

def _start_stall_sampler(path, threshold=0.05):
    loop = _asyncio.get_running_loop()
    loop_thread = _threading.get_ident()
    beat = [_time.monotonic()]

    def heartbeat():
        beat[0] = _time.monotonic()
        loop.call_later(0.01, heartbeat)

    def watch():
        with open(path, "a") as out:
            while True:
                _time.sleep(0.01)
                seen = beat[0]
                late = _time.monotonic() - seen
                if late > threshold:
                    frame = _sys._current_frames().get(loop_thread)
                    stack = _traceback.extract_stack(frame) if frame else []
                    out.write(_json.dumps({"beat": seen, "late": round(late, 4), "stack": [
                        f"{f.filename}:{f.lineno} {f.name}" for f in stack[-40:]]}) + "\\n")
                    out.flush()

    loop.call_soon(heartbeat)
    _threading.Thread(target=watch, name="bench-stall-sampler", daemon=True).start()
"""


#: Run inside the credits hub: times each CreditsSpawner.start() and, inside it, the plain
#: spawner's own start() (LocalProcessSpawner: the process) and the credits readiness wait
#: (the hub's own wait that follows then finds the server up at once); what remains is
#: the credits part of a start (admission, hold, GPU assignment, marking ready). Also
#: times the post-stop hook (settlement). One JSON line per call.
SPAWNER_TIMING = """
import json as _tjson, time as _ttime
from jupyterhub.spawner import LocalProcessSpawner as _Local
from jupyterhub_credits.spawner.mixin import CreditsSpawner as _Credits

def _bench_time(cls, name, label, path):
    original = getattr(cls, name, None)
    if original is None:
        return

    async def timed(self, *args, **kwargs):
        started = _ttime.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            with open(path, "a") as out:
                out.write(_tjson.dumps({"what": label, "user": self.user.name,
                                        "id": id(self), "at": started,
                                        "s": _ttime.perf_counter() - started}) + "\\n")
    setattr(cls, name, timed)
"""


def timing_config(path: Path) -> str:
    return SPAWNER_TIMING + "".join(
        f"_bench_time({cls}, {name!r}, {label!r}, {str(path)!r})\n" for cls, name, label in (
            ("_Credits", "start", "credits_start"), ("_Local", "start", "plain_start"),
            ("_Credits", "_wait_until_answering", "credits_ready_wait"),
            ("_Credits", "run_post_stop_hook", "post_stop_settle")))


def spawner_timing(path: Path, since: float) -> dict:
    """Per start: the credits start's total, its plain start and its readiness wait; the
    credits part is the total less both. The settlements' times besides."""
    if not path.exists():
        return {}
    calls: dict[int, list] = defaultdict(list)
    settle = []
    for line in path.read_text().splitlines():
        call = json.loads(line)
        if call["at"] < since:
            continue
        if call["what"] == "post_stop_settle":
            settle.append(call["s"])
        else:
            calls[call["id"]].append(call)
    parts = []
    for spawner_calls in calls.values():
        spawner_calls.sort(key=lambda c: c["at"])
        current = None
        for call in spawner_calls:  # the inner calls start after their credits start
            if call["what"] == "credits_start":
                current = {"total": call["s"], "plain_start": 0.0, "ready_wait": 0.0}
                parts.append(current)
            elif current is not None and call["what"] == "plain_start":
                current["plain_start"] += call["s"]
            elif current is not None and call["what"] == "credits_ready_wait":
                current["ready_wait"] += call["s"]
    return {
        "starts": len(parts),
        "credits_start_total": percentiles([p["total"] for p in parts]),
        "plain_spawner_start": percentiles([p["plain_start"] for p in parts]),
        "readiness_wait": percentiles([p["ready_wait"] for p in parts]),
        "credits_part": percentiles([p["total"] - p["plain_start"] - p["ready_wait"]
                                     for p in parts]),
        "post_stop_settlement": percentiles(settle),
        "how": "timed inside the hub: CreditsSpawner.start() less the plain "
               "LocalProcessSpawner.start() and less the readiness wait (which replaces the "
               "hub's own) = admission (catalog, quota, capacity, balance), the hold, the GPU "
               "assignment and marking the session ready, each a database round trip on a "
               "worker thread, under this load",
    }


def hook_config(real: int, stacks: Path) -> str:
    """Hub config shared by both hubs: the per-user server command, longer timeouts
    (real servers start slowly on a loaded machine), the hub's stalls ≥ 50 ms logged and
    their stacks sampled, and ``read:metrics`` for the bench's token."""
    return STALL_SAMPLER + f"\n_start_stall_sampler({str(stacks)!r}, {STALL_S})\n" + \
        textwrap.dedent(f"""
        import sys as _sys
        _STANDIN = [_sys.executable, {str(STANDIN)!r}]

        def _bench_server_command(spawner):
            # Users from {real} on get the stand-in: at most {real} real servers at once.
            if int(spawner.user.name[4:]) >= {real}:
                spawner.cmd = _STANDIN

        c.Spawner.pre_spawn_hook = _bench_server_command
        c.Spawner.http_timeout = 120
        c.Spawner.start_timeout = 180
        c.PeriodicMetricsCollector.event_loop_interval_log_threshold = {STALL_S}
        # Only under PYTHONASYNCIODEBUG=1 (--asyncio-debug): log callbacks over 50 ms.
        import asyncio as _asyncio
        _asyncio.get_running_loop().slow_callback_duration = {STALL_S}
        c.JupyterHub.load_roles.append({{"name": "bench-metrics", "services": ["tester"],
                                        "scopes": ["read:metrics"]}})
    """)


class CreditsHub(HubProcess):
    """The tests' hub, with the bench's per-user command and the service's stalls logged."""

    def __init__(self, workdir, *, real: int, asyncio_debug: bool, **kwargs):
        service = textwrap.dedent(f"""
            for _service in c.JupyterHub.services:
                if _service["name"] == "credits":
                    _service["command"] = [*_service["command"],
                        "--CreditsService.event_loop_lag_log_threshold={STALL_S}"]
                    if {asyncio_debug!r}:
                        _service["environment"]["PYTHONASYNCIODEBUG"] = "1"
        """)
        super().__init__(workdir, extra_config=hook_config(real, Path(workdir) / "stalls.jsonl")
                         + service + timing_config(Path(workdir) / "timing.jsonl"), **kwargs)


class PlainHub(HubProcess):
    """The baseline: the same hub with JupyterHub's own SimpleLocalProcessSpawner and no
    credits at all (no mixin, no service)."""

    def __init__(self, workdir, *, real: int, **kwargs):
        super().__init__(workdir, db_url="", **kwargs)
        self.real = real

    def config_text(self) -> str:
        allow_root = "c.Spawner.args = ['--ServerApp.allow_root=True']" if os.geteuid() == 0 else ""
        return textwrap.dedent(f"""
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
            c.Authenticator.allow_all = True
            c.JupyterHub.spawner_class = "simple"
            c.Spawner.cmd = [{str(BIN / "jupyterhub-singleuser")!r}]
            c.Spawner.default_url = "/lab"
            c.Spawner.environment = {{"JUPYTERHUB_CREDITS_DISABLE": "1"}}
            c.SimpleLocalProcessSpawner.home_dir_template = {str(self.workdir / "home" / "{username}")!r}
            {allow_root}
            c.JupyterHub.services = [{{"name": "tester", "api_token": {self.token!r}}}]
            c.JupyterHub.load_roles = [{{
                "name": "tester", "services": ["tester"],
                "scopes": ["admin:users", "admin:servers", "access:servers", "list:users",
                           "read:users", "tokens"],
            }}]
        """) + hook_config(self.real, self.workdir / "stalls.jsonl")

    def start(self, timeout: float = 60) -> "PlainHub":
        self.config_path.write_text(self.config_text())
        env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        with open(self.log_path, "ab") as hub_log:
            self.process = subprocess.Popen(
                [str(BIN / "jupyterhub"), "-f", str(self.config_path)], cwd=self.workdir,
                env=env, stdout=hub_log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=timeout, what="the baseline hub")
        return self

    def close_ledger(self) -> None:
        pass


# --- what the simulated users measure ----------------------------------------------------


class Books:
    """Latencies, outcomes and every event key the service accepted."""

    def __init__(self):
        self.spawn: dict[str, list[float]] = defaultdict(list)  # by "real/cpu" etc.
        self.stop: list[float] = []
        self.me: dict[str, list[float]] = defaultdict(list)  # by route
        self.events: list[float] = []
        self.errors: Counter = Counter()
        self.refusals: Counter = Counter()
        self.cycles = 0
        self.accepted: dict[str, set[str]] = defaultdict(set)  # user → keys stored
        self.outcomes: Counter = Counter()

    def error(self, kind: str) -> None:
        self.errors[kind[:160]] += 1


def server_kind(index: int, real: int, options: dict) -> str:
    return ("real" if index < real else "standin") + ("/gpu" if options["gpus"] else "/cpu")


def hub_address(hub: HubProcess) -> str:
    """The hub's own port, not the proxy's, for every call to the hub's REST API.

    The proxy of the test harness is the pure-Python configurable-http-proxy 0.4: it
    buffers whole responses (a spawn's progress stream ties up a connection until the
    server is ready) and forwards at most 10 requests at once (tornado's
    AsyncHTTPClient default); the rest queue, and fail with 503 after its timeout. With
    50 users that queue, not the hub or credits, made most of the latency (seen in a
    first run: /api/me 9 s through it, 46 ms straight to the service). Only /api/me's
    "proxy" half still goes through it, to show its part."""
    return f"http://127.0.0.1:{hub.hub_port}"


async def server_token(http: aiohttp.ClientSession, hub: HubProcess, user: str) -> str:
    """The running server's own token, from its process's environment; the pid from the
    server's state in the hub's REST API (the bench's admin token), not from the hub's
    SQLite file: a reader there could hold up the hub's own commits."""
    async with http.get(f"{hub_address(hub)}/hub/api/users/{user}",
                        headers={"Authorization": f"token {hub.token}"}) as response:
        model = await response.json()
    pid = model["servers"][""]["state"]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
    return pairs[b"JUPYTERHUB_API_TOKEN"].decode()


async def wait_ready(http: aiohttp.ClientSession, hub_url: str, user: str, token: str) -> dict:
    """Follow the spawn's progress stream to its last event (ready or failed)."""
    url = f"{hub_url}/hub/api/users/{user}/server/progress"
    last: dict = {}
    async with http.get(url, headers={"Authorization": f"token {token}"}) as response:
        if response.status != 200:
            text = (await response.text())[:80]
            if response.status == 400 and "not starting" in text:
                # The spawn ended before its progress was asked for: ready, or failed.
                async with http.get(f"{hub_url}/hub/api/users/{user}",
                                    headers={"Authorization": f"token {token}"}) as answer:
                    server = (await answer.json()).get("servers", {}).get("")
                if server and server.get("ready"):
                    return {"ready": True}
                return {"failed": True, "message": "the spawn failed before its progress "
                                                   "was asked for (reason not known)"}
            return {"failed": True, "message": f"progress HTTP {response.status}: {text}"}
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                last = json.loads(line[5:])
                if last.get("ready") or last.get("failed"):
                    break
    return last


async def wait_gone(http: aiohttp.ClientSession, hub_url: str, user: str, token: str,
                    timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(f"{hub_url}/hub/api/users/{user}",
                            headers={"Authorization": f"token {token}"}) as response:
            model = await response.json()
        if not model.get("servers", {}).get(""):
            return
        await asyncio.sleep(1.0)  # a poll of the hub's model, as a client does
    raise TimeoutError(f"{user}'s server still there after {timeout} s")


def make_events(user: str, cycle: int, batch: int, options: dict) -> list[dict]:
    moment = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    if options["gpus"]:
        return [{"kind": "gpu_utilization", "key": f"{user}-c{cycle}-b{batch}-e{n}",
                 "time": moment, "payload": {"minute": moment, "gpus": [
                     {"index": i, "util": 70, "mem_used_mb": 2048}
                     for i in range(options["gpus"])]}} for n in range(3)]
    return [{"kind": "notebook_activity", "key": f"{user}-c{cycle}-b{batch}",
             "time": moment, "payload": {"active_minutes": 1}}]


async def use_server(http, hub, user, token, cycle, options, books, credits: bool) -> None:
    """While the server runs: events with its own token, /api/me with the user's."""
    if not credits:
        await asyncio.sleep(random.uniform(*RUN_S))  # the same time in use, nothing to call
        return
    server = await server_token(http, hub, user)
    direct = f"http://127.0.0.1:{hub.service_port}/services/credits/api"
    events_url = f"{direct}/events"
    # /api/me alternately through the proxy (as a page or script calls it) and straight to
    # the service's port: the difference is the proxy's part.
    me_urls = {"proxy": f"{hub.url}/services/credits/api/me", "direct": f"{direct}/me"}
    me_calls = 0
    until = time.monotonic() + random.uniform(*RUN_S)
    next_me = time.monotonic()
    next_events = time.monotonic() + random.uniform(0, EVENTS_EVERY_S)
    batch = 0
    while time.monotonic() < until:
        now = time.monotonic()
        if now >= next_me:
            next_me = now + ME_EVERY_S
            route = ("proxy", "direct")[me_calls % 2]
            me_calls += 1
            started = time.perf_counter()
            try:
                async with http.get(me_urls[route],
                                    headers={"Authorization": f"token {token}"}) as r:
                    payload = await r.read()
                    if r.status == 200:
                        books.me[route].append(time.perf_counter() - started)
                    else:
                        books.error(f"/api/me HTTP {r.status}: {payload[:80]!r}")
            except Exception as error:  # noqa: BLE001 - counted by kind
                books.error(f"/api/me {type(error).__name__}")
        if now >= next_events:
            next_events = now + EVENTS_EVERY_S
            batch += 1
            body = make_events(user, cycle, batch, options)
            started = time.perf_counter()
            try:
                async with http.post(events_url, json=body,
                                     headers={"Authorization": f"token {server}"}) as r:
                    payload = await r.read()
                    if r.status == 200:
                        books.events.append(time.perf_counter() - started)
                        for answer in json.loads(payload):
                            books.outcomes[answer.get("outcome")] += 1
                            if answer.get("outcome") in ("earned", "capped", "rejected"):
                                books.accepted[user].add(answer["key"])
                    else:
                        books.error(f"events HTTP {r.status}: {payload[:80]!r}")
            except Exception as error:  # noqa: BLE001
                books.error(f"events {type(error).__name__}")
        await asyncio.sleep(max(0.0, min(next_me, next_events, until) - time.monotonic()))


async def simulated_user(index: int, hub, token: str, deadline: float, real: int,
                         books: Books, credits: bool) -> None:
    user = user_name(index)
    hub_url = hub_address(hub)
    rng = random.Random(index)
    auth = {"Authorization": f"token {token}"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.sleep(rng.uniform(0, 5))  # not all at the same moment
        cycle = 0
        while time.monotonic() < deadline:
            options = OPTIONS[(index + cycle) % len(OPTIONS)]
            cycle += 1
            kind = server_kind(index, real, options)
            started = time.perf_counter()
            try:
                async with http.post(f"{hub_url}/hub/api/users/{user}/server", headers=auth,
                                     json={"user_options": options}) as response:
                    status, text = response.status, await response.text()
                if status == 202:
                    event = await wait_ready(http, hub_url, user, token)
                    if not event.get("ready"):
                        message = event.get("message", "")
                        if "GPU" in message and ("free" in message or "available" in message):
                            books.refusals["capacity (progress)"] += 1
                        else:
                            books.error(f"spawn failed: {message[:100]}")
                        await wait_gone(http, hub_url, user, token)
                        await asyncio.sleep(rng.uniform(*THINK_S))
                        continue
                elif status == 503 and options["gpus"] and "GPU" in text:
                    books.refusals[f"capacity: {options['gpu_type']}"] += 1
                    await asyncio.sleep(rng.uniform(*THINK_S))
                    continue
                elif status != 201:
                    # E.g. 400 "already running" after a stop that failed: stopped below,
                    # so one failure is counted once, not at every later cycle.
                    raise RuntimeError(f"spawn HTTP {status}: {text[:100]}")
                books.spawn[kind].append(time.perf_counter() - started)
                books.cycles += 1
                await use_server(http, hub, user, token, cycle, options, books, credits)
            except Exception as error:  # noqa: BLE001 - counted by kind; the server stops below
                books.error(str(error) if isinstance(error, RuntimeError)
                            else f"cycle {type(error).__name__}: {error}")
            started = time.perf_counter()
            try:
                async with http.delete(f"{hub_url}/hub/api/users/{user}/server",
                                       headers=auth) as response:
                    status, text = response.status, await response.text()
                if status == 202:
                    await wait_gone(http, hub_url, user, token)
                elif status not in (204, 400):  # 400: nothing running (a failed start)
                    books.error(f"stop HTTP {status}: {text[:80]}")
                books.stop.append(time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001
                books.error(f"stop {type(error).__name__}: {error}")
            await asyncio.sleep(rng.uniform(*THINK_S))


# --- what the hub and the service report -------------------------------------------------


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def histogram(found: dict, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets [(le, count)], count, sum) of histogram ``name``."""
    buckets = sorted((float(dict(labels)["le"]), value) for (sample, labels), value
                     in found.items() if sample == name + "_bucket")
    return buckets, found.get((name + "_count", ()), 0.0), found.get((name + "_sum", ()), 0.0)


def histogram_delta(before: dict, after: dict, name: str) -> dict:
    """The samples observed between two scrapes: count, mean, and p50/p99 as the bucket
    bound they fall under (a histogram knows no finer), plus the count over 50 ms."""
    b_buckets, b_count, b_sum = histogram(before, name) if before else ([], 0.0, 0.0)
    a_buckets, a_count, a_sum = histogram(after, name)
    old = dict(b_buckets)
    buckets = [(le, value - old.get(le, 0.0)) for le, value in a_buckets]
    count = a_count - b_count
    out = {"count": int(count), "mean_ms": round(1000 * (a_sum - b_sum) / count, 2)
           if count else None}
    for q in (0.5, 0.99):
        bound = next((le for le, cumulative in buckets if cumulative >= q * count), None)
        out[f"p{int(q * 100)}_at_most_ms"] = None if bound is None else (
            "inf" if bound == float("inf") else round(1000 * bound, 1))
    at_50 = next((value for le, value in buckets if abs(le - STALL_S) < 1e-9), None)
    out["over_50ms"] = None if at_50 is None else int(count - at_50)
    return out


def stalls(log_text: str, pattern: re.Pattern, since: str) -> list[dict]:
    """Every stall the log records after ``since`` (a log timestamp)."""
    found = []
    for line in log_text.splitlines():
        match = pattern.match(line)
        if match and match.group(1) >= since:
            found.append({"at": match.group(1), "s": float(match.group(2))})
    return found


def stall_summary(found: list[dict]) -> dict:
    values = sorted(s["s"] for s in found)
    return {"logged_over_50ms": len(values), "max_ms": round(1000 * values[-1], 1)
            if values else None, "longest": sorted(found, key=lambda s: -s["s"])[:5]}


class Scraper:
    """Scrapes the service's /metrics every second: a window holding exactly one new
    meter tick gives that tick's own duration (the difference of the histogram's sums)."""

    def __init__(self, hub: HubProcess):
        self.url = f"http://127.0.0.1:{hub.service_port}/services/credits/metrics"
        self.headers = {"Authorization": f"token {hub.token}"}
        self.ticks: list[float] = []
        self.ticks_in_shared_windows = 0
        self.first: dict | None = None
        self.last: dict | None = None
        self.errors: Counter = Counter()

    def scrape(self) -> dict | None:
        try:
            response = requests.get(self.url, headers=self.headers, timeout=30)
            response.raise_for_status()
            return metric_samples(response.text)
        except Exception as error:  # noqa: BLE001 - counted; the next scrape tries again
            self.errors[type(error).__name__] += 1
            return None

    async def run(self, stop: asyncio.Event) -> None:
        name = "jupyterhub_credits_meter_tick_seconds"
        while not stop.is_set():
            found = await asyncio.to_thread(self.scrape)
            if found is not None:
                if self.last is not None:
                    _, count0, sum0 = histogram(self.last, name)
                    _, count1, sum1 = histogram(found, name)
                    if count1 - count0 == 1:
                        self.ticks.append(sum1 - sum0)
                    elif count1 - count0 > 1:
                        self.ticks_in_shared_windows += int(count1 - count0)
                self.first = self.first or found
                self.last = found
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass


class CpuSampler:
    """CPU seconds by role over the run, from psutil every 2 s (what a process used after
    its last sample is lost: short-lived servers are undercounted)."""

    ROLES = (("standin_server.py", "standin_servers"), ("jupyterhub-singleuser", "real_servers"),
             ("jupyterhub_credits.service", "credits_service"),
             ("configurable-http-proxy", "proxy"), ("bin/jupyterhub ", "hub"))

    def __init__(self, database: str | None):
        self.database = database
        self.seen: dict[int, tuple[str, float]] = {}
        self.used: Counter = Counter()

    def role(self, proc) -> str:
        if proc.pid == os.getpid():
            return "bench_clients"
        cmdline = " ".join(proc.info["cmdline"] or ()) + " "
        for marker, role in self.ROLES:
            if marker in cmdline:
                return role
        if (proc.info["name"] or "").startswith("postgres"):
            return "postgres_ours" if self.database and self.database in cmdline \
                else "postgres_other"
        return "other_processes"

    def sample(self) -> None:
        for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            total = times.user + times.system
            role, before = self.seen.get(proc.pid, (None, None))
            if role is None:
                role, before = self.role(proc), total  # first seen: count from now
            self.used[role] += total - before
            self.seen[proc.pid] = (role, total)

    async def run(self, stop: asyncio.Event) -> None:
        self.started = time.monotonic()
        self.machine0 = psutil.cpu_times()
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except TimeoutError:
                pass
        await asyncio.to_thread(self.sample)
        self.wall = time.monotonic() - self.started
        self.machine1 = psutil.cpu_times()

    def result(self) -> dict:
        total = sum(self.machine1) - sum(self.machine0)
        idle = (self.machine1.idle - self.machine0.idle
                + getattr(self.machine1, "iowait", 0) - getattr(self.machine0, "iowait", 0))
        return {"cores_busy": {role: round(seconds / self.wall, 3)
                               for role, seconds in self.used.most_common() if seconds > 0.01},
                "machine_busy_share": round(1 - idle / max(1e-9, total), 3),
                "cores": psutil.cpu_count()}


def log_errors(log_text: str, since: str, most: int = 8) -> dict:
    """The hub's (and the service's) error lines since ``since``, each with the last lines
    of its traceback, grouped by message: what a 500 was."""
    blocks: dict[str, dict] = {}
    lines = log_text.splitlines()
    for number, line in enumerate(lines):
        if not line.startswith("[E ") or line[3:26] < since:
            continue
        message = line.split("] ", 1)[-1][:160]
        trace = []
        for follow in lines[number + 1:number + 80]:
            if follow.startswith("["):
                break
            trace.append(follow)
        entry = blocks.setdefault(message, {"count": 0, "traceback_tail": trace[-6:]})
        entry["count"] += 1
    return dict(sorted(blocks.items(), key=lambda item: -item[1]["count"])[:most])


def log_stamp() -> str:
    """Now in the hub's log timestamp format (local time, as its lines are written)."""
    now = datetime.now()
    return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"


def culprit(stack: list[str]) -> str:
    """What a sampled stack of the loop's thread was doing, in a few words: the innermost
    frame of project code (ours, jupyterhub_credits, or JupyterHub's), whether our code
    called it, and the innermost frame of all (a database commit, a fork, ``select``...)."""
    def short(frame: str) -> str:
        path, _, rest = frame.partition(" ")
        for marker in ("jupyterhub_credits/", "site-packages/", "lib/python3.11/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{path} {rest}"

    if not stack:
        return "no stack"
    leaf = f" | in {short(stack[-1])}"
    for depth in range(len(stack) - 1, -1, -1):
        frame = stack[depth]
        if "/jupyterhub_credits/" in frame:
            return f"credits {short(frame)}{leaf}"
        if "site-packages/jupyterhub/" in frame:
            ours = [f for f in stack[:depth] if "/jupyterhub_credits/" in f]
            under = f" (called by credits {short(ours[-1])})" if ours else ""
            return f"jupyterhub {short(frame)}{under}{leaf}"
    return f"other{leaf}"


def stall_stacks(path: Path, since_monotonic: float) -> dict:
    """The sampled stacks of every stall over 50 ms, grouped by culprit (``culprit``).

    A stall is the samples taken while one heartbeat was late; it is counted for the
    culprit of most of its samples. ``in selectors.py select`` means the loop was waiting
    for I/O, not running code: the process was not given a core (the machine is busy)."""
    if not path.exists():
        return {"stalls": 0}
    by_beat: dict[float, list] = defaultdict(list)
    for line in path.read_text().splitlines():
        sample = json.loads(line)
        if sample["beat"] >= since_monotonic:
            by_beat[sample["beat"]].append(sample)
    groups: dict[str, dict] = {}
    in_credits = on_stack = 0
    for samples in by_beat.values():
        names = Counter(culprit(s["stack"]) for s in samples)
        name = names.most_common(1)[0][0]
        length = max(s["late"] for s in samples)
        in_credits += name.startswith("credits")
        on_stack += any("/jupyterhub_credits/" in f for s in samples for f in s["stack"])
        group = groups.setdefault(name, {"stalls": 0, "total_s": 0.0, "max_s": 0.0})
        group["stalls"] += 1
        group["total_s"] = round(group["total_s"] + length, 3)
        if length >= group["max_s"]:
            group["max_s"] = length
            group["example_stack"] = next(s["stack"] for s in samples
                                          if culprit(s["stack"]) == name)[-10:]
    top = sorted(groups.items(), key=lambda item: -item[1]["total_s"])
    return {"stalls": len(by_beat),
            "stalls_in_credits_code": in_credits,
            "stalls_with_credits_code_lower_on_the_stack": on_stack,
            # The 12 that blocked longest in all, and every one in our own code.
            "by_culprit": dict([*top[:12], *[(name, group) for name, group in top[12:]
                                              if name.startswith("credits")]])}


def hub_lag(hub: HubProcess, before: dict, since: str, since_monotonic: float) -> dict:
    """The hub's event-loop lag since ``before`` (its metrics) and ``since`` (its log)."""
    return {
        "histogram": histogram_delta(before, hub_metrics(hub),
                                     "jupyterhub_event_loop_interval_seconds"),
        **stall_summary(stalls(hub.log_path.read_text(errors="replace"), HUB_STALL, since)),
        "sampled_stacks": stall_stacks(hub.workdir / "stalls.jsonl", since_monotonic),
        "note": "JupyterHub probes every 50 ms and records 50 ms for any delay under 100 ms, "
                "so its histogram's p50 is at most 50 ms by construction; every stall >= 50 ms "
                "is also logged (threshold set to 0.05 s) and counted here with its length"}


def hub_metrics(hub: HubProcess) -> dict:
    response = requests.get(f"{hub_address(hub)}/hub/metrics", timeout=30,
                            headers={"Authorization": f"token {hub.token}"})
    response.raise_for_status()
    return metric_samples(response.text)


# --- one phase ----------------------------------------------------------------------------


def make_tokens(hub: HubProcess, users: list[str]) -> dict[str, str]:
    return {user: hub.user_token(user) for user in users}


def run_users(hub, tokens, duration, real, credits: bool) -> tuple[Books, dict]:
    books = Books()
    extra: dict = {}

    async def everything():
        stop = asyncio.Event()
        cpu = CpuSampler(getattr(hub, "database", None))
        scraper = Scraper(hub) if credits else None
        background = [asyncio.create_task(cpu.run(stop))]
        if scraper:
            background.append(asyncio.create_task(scraper.run(stop)))
        deadline = time.monotonic() + duration
        started = time.monotonic()
        await asyncio.gather(*(simulated_user(i, hub, tokens[user_name(i)], deadline, real,
                                              books, credits) for i in range(len(tokens))))
        extra["wall_s"] = round(time.monotonic() - started, 1)
        stop.set()
        await asyncio.gather(*background)
        extra["cpu"] = cpu.result()
        extra["scraper"] = scraper

    asyncio.run(everything())
    return books, extra


def spawn_figures(books: Books) -> dict:
    every = [v for values in books.spawn.values() for v in values]
    return {"all": percentiles(every),
            **{kind: percentiles(values) for kind, values in sorted(books.spawn.items())}}


def baseline_phase(tmp: Path, args, users: list[str]) -> dict:
    hub = PlainHub(tmp / "plain", real=args.real)
    try:
        log("baseline: starting a hub with the plain spawner (no credits)")
        hub.start(timeout=120)
        tokens = make_tokens(hub, users)
        log(f"baseline: {len(users)} users for {args.baseline} s")
        since, before, since_monotonic = log_stamp(), hub_metrics(hub), time.monotonic()
        load_before = os.getloadavg()
        books, extra = run_users(hub, tokens, args.baseline, args.real, credits=False)
        return {"duration_s": args.baseline, "wall_s": extra["wall_s"],
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                "hub_event_loop_lag": hub_lag(hub, before, since, since_monotonic),
                "spawns": books.cycles, "spawn_latency": spawn_figures(books),
                "stop_latency": percentiles(books.stop), "errors": dict(books.errors),
                "refusals": dict(books.refusals), "cpu": extra["cpu"],
                "hub_log_errors": log_errors(hub.log_path.read_text(errors="replace"), since)}
    finally:
        log("baseline: stopping its hub")
        hub.stop()


# --- the end check -------------------------------------------------------------------------


def end_check(db_url: str, books: Books) -> dict:
    engine = ledger_database.make_engine(db_url)
    try:
        started = time.perf_counter()
        report = verify(engine)
        verify_s = time.perf_counter() - started
        with engine.connect() as conn:
            rows = conn.execute(select(sessions.c.id, sessions.c.state, sessions.c.end_reason,
                                       sessions.c.charged, sessions.c.gpus,
                                       sessions.c.ready_at)).all()
            # Every hold of every session, with what the ledger did to it.
            hold_rows = conn.execute(
                select(session_holds.c.session_id, holds.c.state, holds.c.posted)
                .join(transfers, transfers.c.key == session_holds.c.hold_key)
                .join(holds, holds.c.transfer_id == transfers.c.id)).all()
            assignments = conn.execute(select(
                gpu_assignments.c.session_id, gpu_assignments.c.host, gpu_assignments.c.device,
                gpu_assignments.c.assigned_at, gpu_assignments.c.released_at)).all()
            stored = conn.execute(select(events_table.c.user, events_table.c.key)).all()
            stored_count = conn.execute(select(func.count()).select_from(events_table)).scalar()
    finally:
        engine.dispose()
    by_session: dict[int, list] = defaultdict(list)
    for session_id, state, posted in hold_rows:
        by_session[session_id].append((state, posted))
    open_sessions = [r.id for r in rows if r.state != "ended"]
    unsettled = []
    for r in rows:
        if r.state != "ended":
            continue
        resolved = by_session.get(r.id, [])
        if (r.charged is None or any(state == "pending" for state, _ in resolved)
                or sum(posted for _, posted in resolved) != r.charged):
            unsettled.append(r.id)
    # No device in two live assignments at once: intervals per device must not overlap.
    per_device: dict[tuple, list] = defaultdict(list)
    live = 0
    for a in assignments:
        never = datetime.max.replace(tzinfo=a.assigned_at.tzinfo)  # still assigned
        per_device[(a.host, a.device)].append((a.assigned_at, a.released_at or never))
        live += a.released_at is None
    overlaps = 0
    for intervals in per_device.values():
        intervals.sort()
        overlaps += sum(1 for (_, end), (start, _) in zip(intervals, intervals[1:])
                        if start < end)
    assigned = Counter(a.session_id for a in assignments)
    wrong_count = [r.id for r in rows if r.ready_at is not None and assigned[r.id] != r.gpus]
    keys = defaultdict(list)
    for user, key in stored:
        keys[user].append(key)
    lost = sum(len(books.accepted[u] - set(keys.get(u, []))) for u in books.accepted)
    extra = sum(len(set(k) - books.accepted.get(u, set())) for u, k in keys.items())
    twice = stored_count - sum(len(set(k)) for k in keys.values())
    result = {
        "ledger_verify_ok": report.ok, "ledger_verify_s": round(verify_s, 2),
        "sessions": len(rows),
        "end_reasons": dict(Counter(r.end_reason for r in rows)),
        "sessions_not_ended": len(open_sessions),
        "ended_sessions_not_settled_exactly": unsettled[:20],
        "gpu_assignments": len(assignments), "gpu_assignments_live": live,
        "gpu_devices_double_assigned": overlaps,
        "ready_sessions_with_wrong_gpu_count": wrong_count[:20],
        "events_accepted": sum(len(v) for v in books.accepted.values()),
        "events_stored": stored_count, "events_lost": lost,
        "events_stored_not_accepted": extra, "events_stored_twice": twice,
    }
    if not report.ok:
        result["ledger_verify_failures"] = str(report)[:2000]
    result["ok"] = (report.ok and not open_sessions and not unsettled and live == 0
                    and overlaps == 0 and not wrong_count and lost == 0 and twice == 0
                    and extra == 0)
    return result


def credits_phase(tmp: Path, args, users: list[str], db_url: str) -> dict:
    hub = CreditsHub(tmp / "credits", db_url=db_url, real=args.real,
                     asyncio_debug=args.asyncio_debug, local_gpus=LOCAL_GPUS,
                     meter_interval=args.meter_interval)
    hub.database = db_url.rsplit("/", 1)[1].split("?")[0]
    out: dict = {}
    try:
        log("credits: starting the hub with the credits spawner and service")
        if args.asyncio_debug:
            os.environ["PYTHONASYNCIODEBUG"] = "1"  # the hub inherits it
        hub.start(timeout=120)
        ledger = Ledger.open(db_url, upgrade=False)
        for user in users:
            ledger.grant(user, GRANT_UNITS, key=f"load-grant:{user}", reason="bench",
                         actor="bench")
        ledger.close()
        tokens = make_tokens(hub, users)
        # Figures from here on: the hub's start and the set-up are not part of them.
        since, since_monotonic = log_stamp(), time.monotonic()
        since_monotonic_perf = time.perf_counter()
        hub_before = hub_metrics(hub)
        service_before = Scraper(hub).scrape()
        log(f"credits: {len(users)} users ({args.real} real servers) for {args.duration} s")
        load_before = os.getloadavg()
        books, extra = run_users(hub, tokens, args.duration, args.real, credits=True)
        load_after = os.getloadavg()
        log("credits: every user stopped; waiting for every session to be settled")
        engine = ledger_database.make_engine(db_url)

        def all_settled():
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(sessions)
                                    .where(sessions.c.state != "ended")).scalar() == 0

        try:
            wait_for(all_settled, timeout=120, what="every session to be settled")
        except Exception as error:  # noqa: BLE001 - the end check says which
            books.error(f"settling {type(error).__name__}")
        engine.dispose()
        scraper: Scraper = extra["scraper"]
        service_after = scraper.scrape() or scraper.last
        hub_log = hub.log_path.read_text(errors="replace")
        ticks = scraper.ticks
        out = {
            "duration_s": args.duration, "wall_s": extra["wall_s"],
            "loadavg_before": load_before, "loadavg_after": load_after,
            "spawns": books.cycles,
            "spawn_latency": spawn_figures(books),
            "stop_latency": percentiles(books.stop),
            "api_latency": {
                "me_through_proxy": percentiles(books.me["proxy"]),
                "me_direct": percentiles(books.me["direct"]),
                "events_direct": percentiles(books.events)},
            "event_outcomes": dict(books.outcomes),
            "credits_part_of_a_start": spawner_timing(hub.workdir / "timing.jsonl",
                                                      since_monotonic_perf),
            "meter_tick": {
                **percentiles(ticks),
                "from": "each tick's own duration: scrapes 1 s apart of "
                        "jupyterhub_credits_meter_tick_seconds holding one new tick",
                "ticks_in_windows_with_several": scraper.ticks_in_shared_windows,
                "histogram": histogram_delta(service_before, service_after,
                                             "jupyterhub_credits_meter_tick_seconds"),
                "interval_s": args.meter_interval},
            "event_loop_lag": {
                "hub": hub_lag(hub, hub_before, since, since_monotonic),
                "service": {
                    "histogram": histogram_delta(service_before, service_after,
                                                 "jupyterhub_credits_event_loop_lag_seconds"),
                    "max_ms_since_start": round(1000 * service_after.get(
                        ("jupyterhub_credits_event_loop_lag_max_seconds", ()), 0), 1),
                    **stall_summary(stalls(hub_log, SERVICE_STALL, since))},
            },
            "errors": dict(books.errors), "refusals": dict(books.refusals),
            "hub_log_errors": log_errors(hub_log, since),
            "scrape_errors": dict(scraper.errors),
            "cpu": extra["cpu"],
        }
        if args.asyncio_debug:
            out["asyncio_slow_callbacks"] = [line for line in hub_log.splitlines()
                                             if "Executing <" in line and "took" in line][-40:]
        log("credits: end check")
        out["end_check"] = end_check(db_url, books)
    except BaseException:
        log("failed:\n" + traceback.format_exc() + "\nhub log tail:\n" + hub.log_tail(40))
        raise
    finally:
        log("credits: stopping the hub")
        hub.stop()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="""60 s of load and a 25 s
                        baseline with 20 users, 4 of them real (about 3 minutes in all)""")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load on the credits hub (default 300, --quick 60)")
    parser.add_argument("--baseline", type=float, default=None, help="""seconds of the same
                        loop on a hub without credits (default 60, --quick 25; 0: skip)""")
    parser.add_argument("--users", type=int, default=None, help="default 50, --quick 20")
    parser.add_argument("--real", type=int, default=None, help="""users whose servers are
                        real jupyterhub-singleuser processes (default 10, --quick 4)""")
    parser.add_argument("--meter-interval", type=float, default=5.0,
                        help="the meter's tick interval (the production default: 5 s)")
    parser.add_argument("--asyncio-debug", action="store_true", help="""run the hub and the
                        service with PYTHONASYNCIODEBUG=1 and list the callbacks asyncio logs
                        as slow (>= 100 ms): a diagnostic, it slows both down""")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--out", help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    args.duration = args.duration or (60.0 if args.quick else 300.0)
    args.users = args.users or (20 if args.quick else 50)
    args.real = args.real if args.real is not None else (4 if args.quick else 10)
    if args.baseline is None:
        args.baseline = 25.0 if args.quick else 60.0
    users = [user_name(i) for i in range(args.users)]
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "note": "2 cores shared with other work while measured: figures are noisy; "
                            "see loadavg and cpu.cores_busy.other_processes"},
        "setup": {"users": args.users, "real_servers": min(args.real, args.users),
                  "standin_servers": max(0, args.users - args.real),
                  "local_gpus": LOCAL_GPUS, "options_cycle": OPTIONS,
                  "server_in_use_s": RUN_S, "think_s": THINK_S,
                  "me_every_s": ME_EVERY_S, "events_every_s": EVENTS_EVERY_S,
                  "events_route": "straight to the service's port, as servers send them "
                                  "(JUPYTERHUB_CREDITS_API_URL); /api/me through the proxy",
                  "credits_database": "PostgreSQL (temporary database)",
                  "hub_database": "SQLite"},
        "loadavg_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="credits-bench-load-") as tmp:
        if args.baseline > 0:
            result["baseline_plain_spawner"] = baseline_phase(Path(tmp), args, users)
        with postgres_database(args.pg_url) as db_url:
            result["credits"] = credits_phase(Path(tmp), args, users, db_url)
    credits = result["credits"]
    baseline = result.get("baseline_plain_spawner")
    if baseline:
        added = {}
        for key in ("p50_ms", "p99_ms"):
            for kind in ("all", "real/cpu", "standin/cpu"):
                ours = credits["spawn_latency"].get(kind, {}).get(key)
                theirs = baseline["spawn_latency"].get(kind, {}).get(key)
                if ours is not None and theirs is not None:
                    added[f"{kind} {key}"] = round(ours - theirs, 1)
        result["credits_adds_to_spawn_ms"] = {
            **added, "how": "credits hub minus the plain-spawner hub, same loop and machine, "
                            "one after the other (CPU sessions compared like for like; GPU "
                            "sessions exist only with credits)"}
    lags = credits["event_loop_lag"]
    hub_stacks = lags["hub"]["sampled_stacks"]
    aim = {"hub_max_ms": lags["hub"]["max_ms"],
           "hub_stalls_over_50ms": lags["hub"]["logged_over_50ms"],
           "hub_stalls_in_credits_code": hub_stacks.get("stalls_in_credits_code"),
           "hub_stalls_in_jupyterhub_code_called_by_credits": hub_stacks.get(
               "stalls_with_credits_code_lower_on_the_stack", 0)
           - (hub_stacks.get("stalls_in_credits_code") or 0),
           "service_max_ms": lags["service"]["max_ms_since_start"],
           "service_stalls_over_50ms": lags["service"]["logged_over_50ms"]}
    if baseline:
        aim["baseline_hub_max_ms"] = baseline["hub_event_loop_lag"]["max_ms"]
        aim["baseline_hub_stalls_over_50ms"] = baseline["hub_event_loop_lag"]["logged_over_50ms"]
    # The service is all credits code; in the hub, only stalls with our code on the stack.
    aim["met"] = (not aim["hub_stalls_in_credits_code"]
                  and not aim["service_stalls_over_50ms"])
    result["aim_no_credits_code_blocks_a_loop_over_50ms"] = aim
    result["loadavg_end"] = os.getloadavg()
    result["ok"] = credits["end_check"]["ok"]
    document = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(document + "\n")
    print(document)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
