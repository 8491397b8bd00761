#!/usr/bin/env python
"""What reconciliation costs at 10,000 running servers: the hub's side and the meter's tick.

    .venv/bin/python bench/hub_scale.py [--quick] [--users 10000] [--pages 50,100,200,500]
                                        [--ticks 120] [--pg-url ADMIN_URL] [--out PATH]

Prints ONE JSON document on stdout (progress on stderr); ``--out`` also writes it there.

``hub``: a real JupyterHub (its own process, SQLite database) whose database holds
``--users`` users, each with a running server recorded: rows inserted before it starts.
Its spawner is a stand-in defined in the hub's configuration (``poll()`` says running,
its state survives restarts; no processes) and so is its proxy (routes kept in memory:
the proxy is not what is measured, and 10,000 routes would make the real one the
bottleneck of the hub's start). The hub's own start-up check that each server answers
HTTP is skipped for the stand-in servers (nothing listens). A lag probe runs on the
hub's event loop (sleeps 2 ms, records every wake-up later than that): the hub's own
``event_loop_interval_seconds`` metric measures every 50 ms and buckets from 50 ms, too
coarse to tell one request from the next. For each page size: the wall time of
``GET /hub/api/users?state=active&offset=…&limit=N`` (at offsets spread over the list,
the same request the meter makes, with the credits service's scopes) and the longest
stall of the hub's loop overlapping it; also ``GET /hub/api/users/{name}`` (how a
suspect is confirmed) and the old reconciliation's whole listing (every page, 200 a page).

``tick``: the credits meter (``Meter.tick``, reconciliation included) against that hub,
with ``--users`` running sessions of the same users in the credits database (SQLite in
a temporary file; PostgreSQL in a temporary database): the start-up tick (a full
listing, ``reconcile_page_size`` users a page), then ``--ticks`` ticks with the
clock advancing 5 s a tick, p50 / p99 / max. "before": every tick reconciles as the
old code did at each ``reconcile_interval`` (read every open session, list every server
200 a page, read again); "without_reconciliation": the same ticks with reconciliation off (what the
rest of the tick costs on the loaded machine meanwhile); "after": the rolling walk
(``reconcile_users_per_tick`` users a tick, one ``GET /users/{name}`` each, answers
used by the next tick; ticks ``--gap`` real seconds apart, the service's are 5 s).
Also how long one whole
walk takes in ticks and seconds, and the hub requests each tick made.

The machine is shared (2 cores, other work running): ``loadavg`` before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402

from benchdb import (  # noqa: E402
    DEFAULT_PG_ADMIN_URL,
    log,
    percentiles,
    postgres_database,
    sqlite_database,
)

BIN = Path(sys.executable).parent
TICK_SECONDS = 5
START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
#: The scopes of the credits service's role (hubconfig.SERVICE_SCOPES): the same view.
SERVICE_SCOPES = ["list:users", "read:users", "read:users:name", "read:servers",
                  "delete:servers", "read:groups", "users:activity"]
PAGINATION = "application/jupyterhub-pagination+json"
#: The page size the meter used before the rolling sweep (HubClient's default).
OLD_PAGE_SIZE = 200


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def user_name(i: int) -> str:
    return f"user{i:06d}"


# --- the hub ---------------------------------------------------------------------------------

HUB_CONFIG = '''
import asyncio, collections, json, time
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner
from jupyterhub.user import User
from tornado import web

c = get_config()
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret_file = {cookie_file!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "bench", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"], "scopes": {scopes!r}}}]
# The credits service's token is made by the hub (cheap to check); a token given in the
# configuration is checked with 16,384 rounds of hashing unless trusted like one.
c.JupyterHub.trust_user_provided_tokens = True
# The hub's default largest page is 200: allow the larger pages measured.
c.JupyterHub.api_page_max_limit = 1000


class StandInSpawner(Spawner):
    """A server that runs as long as its state says so: no process at all."""

    running = False

    def load_state(self, state):
        super().load_state(state)
        self.running = bool(state.get("standin"))

    def get_state(self):
        state = super().get_state()
        if self.running:
            state["standin"] = True
        return state

    def clear_state(self):
        super().clear_state()
        self.running = False

    async def start(self):
        self.running = True
        return ("127.0.0.1", 9)

    async def stop(self, now=False):
        self.running = False

    async def poll(self):
        return None if self.running else 0


class StandInProxy(Proxy):
    """Routes in memory: what the hub tells a proxy, with nothing behind it."""

    should_start = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.routes = {{}}

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


_wait_up = User._wait_up


async def _no_wait_for_standins(self, spawner):
    # Nothing listens for a stand-in server: the start-up check would stop them all.
    if isinstance(spawner, StandInSpawner):
        return None
    return await _wait_up(self, spawner)


User._wait_up = _no_wait_for_standins
c.JupyterHub.spawner_class = StandInSpawner
c.JupyterHub.proxy_class = StandInProxy

#: (monotonic time the loop woke up, seconds it was late) for each late wake-up.
STALLS = collections.deque(maxlen=200_000)
PROBE = {{"task": None}}
PROBE_SLEEP = 0.002


async def _probe():
    last = time.monotonic()
    while True:
        await asyncio.sleep(PROBE_SLEEP)
        now = time.monotonic()
        late = now - last - PROBE_SLEEP
        if late > 0.001:
            STALLS.append((now, late))
        last = now


class StallHandler(APIHandler):
    """GET: start the probe (first call), then the stalls that ended after ?since=."""

    @web.authenticated
    def get(self):
        if PROBE["task"] is None:
            PROBE["task"] = asyncio.ensure_future(_probe())
        since = float(self.get_argument("since", "0"))
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps([s for s in STALLS if s[0] >= since]))


c.JupyterHub.extra_handlers = [(r"/api/bench/stalls", StallHandler)]
'''


def add_hub_users(path: Path, users: int) -> None:
    """``users`` users each with a running (stand-in) server and the default ``user`` role,
    in the database of a hub that started once (its roles exist: assigning the role to
    each user at start-up takes the hub about 20 ms a user)."""
    from jupyterhub import orm

    engine = create_engine(f"sqlite:///{path}")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with engine.begin() as conn:
        role_id = conn.execute(text("SELECT id FROM roles WHERE name = 'user'")).scalar_one()
        for start in range(0, users, 5_000):
            ids = range(start + 1, min(users, start + 5_000) + 1)
            conn.execute(insert(orm.User.__table__), [
                {"id": i, "name": user_name(i - 1), "admin": False, "created": now,
                 "last_activity": now, "cookie_id": secrets.token_hex(16)} for i in ids])
            conn.execute(insert(orm.Server.__table__), [
                {"id": i, "proto": "http", "ip": "127.0.0.1", "port": 9,
                 "base_url": f"/user/{user_name(i - 1)}/", "cookie_name": "bench"} for i in ids])
            conn.execute(insert(orm.Spawner.__table__), [
                {"id": i, "user_id": i, "server_id": i, "name": "", "state": {"standin": True},
                 "started": now, "last_activity": now} for i in ids])
            conn.execute(insert(orm.Base.metadata.tables["user_role_map"]),
                         [{"user_id": i, "role_id": role_id} for i in ids])
    engine.dispose()


class BenchHub:
    def __init__(self, workdir: Path, users: int):
        self.workdir = workdir
        self.users = users
        self.port, self.hub_port = free_ports(2)
        self.token = secrets.token_hex(24)
        self.api = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.process: subprocess.Popen | None = None
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"

    def start(self) -> float:
        """Start empty (the hub creates its schema and roles), stop, add the users and their
        servers, start again; seconds the second start took."""
        db = self.workdir / "jupyterhub.sqlite"
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(HUB_CONFIG.format(
            port=self.port, hub_port=self.hub_port, db_url=f"sqlite:///{db}",
            cookie_file=str(self.workdir / "cookie_secret"), token=self.token,
            scopes=SERVICE_SCOPES))
        self._launch(config, expect_users=0)
        self.stop()
        add_hub_users(db, self.users)
        started = time.perf_counter()
        self._launch(config, expect_users=self.users)
        self.stalls(0)  # starts the probe
        return time.perf_counter() - started

    def _launch(self, config: Path, expect_users: int) -> None:
        with open(self.workdir / "hub.log", "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "jupyterhub"), "-f", str(config)], cwd=self.workdir,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"))
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited:\n{self.log_tail()}")
            try:
                response = self.http.get(f"{self.api}/users?state=active&limit=1", timeout=5,
                                         headers={"Accept": PAGINATION})
                if response.status_code == 200 and \
                        response.json()["_pagination"]["total"] == expect_users:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub not up with {self.users} servers:\n{self.log_tail()}")
            time.sleep(0.5)  # polling the hub's start, not synchronising

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "hub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def stalls(self, since: float) -> list[tuple[float, float]]:
        return [tuple(s) for s in self.http.get(f"{self.api}/bench/stalls",
                                                params={"since": since}, timeout=30).json()]

    def timed(self, path: str, **params) -> tuple[float, float, requests.Response]:
        """(wall seconds, longest stall of the hub's loop overlapping the request, response)."""
        began = time.monotonic()
        response = self.http.get(self.api + path, params=params, timeout=60,
                                 headers={"Accept": PAGINATION})
        ended = time.monotonic()
        response.raise_for_status()
        # A stall is recorded when the loop wakes up (its end): it overlaps the request if it
        # ended after the request began and began before the request ended.
        worst = max([late for woke, late in self.stalls(began)
                     if woke - late <= ended], default=0.0)
        return ended - began, worst, response


def measure_hub(hub: BenchHub, page_sizes: list[int], requests_each: int) -> dict:
    results = {}
    rng = random.Random(10)
    for size in page_sizes:
        walls, stalls = [], []
        for _ in range(requests_each):
            offset = rng.randrange(0, max(1, hub.users - size))
            wall, stall, response = hub.timed("/users", state="active", offset=offset,
                                              limit=size)
            assert len(response.json()["items"]) == min(size, hub.users - offset)
            walls.append(wall)
            stalls.append(stall)
        results[str(size)] = {"wall": percentiles(walls), "hub_loop_stall": percentiles(stalls),
                              "pages_for_all_users": -(-hub.users // size)}
        log(f"hub: page {size}: wall {results[str(size)]['wall']} "
            f"stall {results[str(size)]['hub_loop_stall']}")
    walls, stalls = [], []
    for _ in range(requests_each):
        wall, stall, _ = hub.timed(f"/users/{user_name(rng.randrange(hub.users))}")
        walls.append(wall)
        stalls.append(stall)
    one_user = {"wall": percentiles(walls), "hub_loop_stall": percentiles(stalls)}
    log(f"hub: one user: {one_user}")
    # The old reconciliation: every page, one after the other, 200 a page.
    began = time.monotonic()
    offset, pages, worst = 0, 0, 0.0
    while True:
        _, stall, response = hub.timed("/users", state="active", offset=offset,
                                       limit=OLD_PAGE_SIZE)
        pages += 1
        worst = max(worst, stall)
        following = response.json()["_pagination"]["next"]
        if not following:
            break
        offset = following["offset"]
    whole = {"page_size": OLD_PAGE_SIZE, "pages": pages,
             "wall_s": round(time.monotonic() - began, 3),
             "longest_hub_loop_stall_ms": round(1000 * worst, 2)}
    log(f"hub: whole listing: {whole}")
    return {"list_page": results, "get_one_user": one_user, "old_whole_listing": whole}


# --- the meter's tick against that hub ---------------------------------------------------------


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def add_ledger_sessions(engine, users: int, now: datetime) -> None:
    """A running session for each hub user, ready a minute ago, ending over the next 24 h."""
    from jupyterhub_credits.sessions.schema import sessions

    ready = now - timedelta(minutes=1)
    rows = [{"key": f"session:bench{i:06d}", "user": user_name(i), "server_name": "",
             "account": f"user:{user_name(i)}", "image": "tf-2.21", "gpu_type": "a100",
             "gpus": 1, "rate_per_hour": 15_000, "held": 15_000, "state": "running",
             "requested_at": ready - timedelta(seconds=5), "ready_at": ready,
             "paid_until": now + timedelta(seconds=900 + (86_400 * i) // users),
             "billed_until": ready, "auto_extend": False, "warnings": [600, 60]}
            for i in range(users)]
    with engine.begin() as conn:
        for start in range(0, users, 5_000):
            conn.execute(insert(sessions), rows[start:start + 5_000])
        conn.execute(text("ANALYZE credits_sessions" if conn.dialect.name == "postgresql"
                          else "ANALYZE"))


async def measure_ticks_on(url: str, hub: BenchHub, ticks: int, before_ticks: int,
                           gap: float) -> dict:
    from jupyterhub_credits.ledger import Ledger
    from jupyterhub_credits.service.hub import HubClient
    from jupyterhub_credits.service.meter import Meter
    from jupyterhub_credits.sessions.store import SessionStore

    class CountingHubClient(HubClient):
        calls: list[str] = []

        async def request(self, method, path, **kwargs):
            self.calls.append(path)
            return await super().request(method, path, **kwargs)

    clock = Clock(START)
    ledger = Ledger.open(url, clock=clock, upgrade=False)
    try:
        add_ledger_sessions(ledger.engine, hub.users, clock())
        client = CountingHubClient(hub.api, hub.token, timeout=120)
        meter = Meter(sessions=SessionStore(ledger), hub=client, catalog=None, clock=clock)
        settings = {"interval_s": meter.interval, "real_gap_between_ticks_s": gap,
                    "reconcile_interval_s": meter.reconcile_interval,
                    "reconcile_page_size": meter.reconcile_page_size,
                    "reconcile_users_per_tick": meter.reconcile_users_per_tick}

        async def one_tick(force_full: bool) -> tuple[float, int, int]:
            # Ticks come every interval (5 s) in the service: the walk's answers, asked at
            # the end of one tick, are there before the next. A shorter real gap keeps the
            # run short; the fake clock still advances by a whole interval.
            await asyncio.sleep(gap)
            clock.now += timedelta(seconds=TICK_SECONDS)
            if force_full:  # the old code's reconciling tick: everything, 200 users a page
                meter.reconciler.full_pass_needed = True
            client.calls.clear()
            started = time.perf_counter()
            report = await meter.tick()
            seconds = time.perf_counter() - started
            assert report is not None and report.billed == hub.users, "tick failed"
            pages = sum(1 for path in client.calls if path.startswith("/users?"))
            return seconds, pages, len(client.calls) - pages

        startup, startup_pages, _ = await one_tick(False)
        log(f"  start-up tick {startup:.2f} s ({startup_pages} pages)")
        # The same ticks without reconciliation: what the rest of the tick costs meanwhile.
        due = meter.reconciler.due
        meter.reconciler.due = lambda now: False
        baseline = [(await one_tick(False))[0] for _ in range(max(10, ticks // 4))]
        meter.reconciler.due = due
        log(f"  without reconciliation: {percentiles(baseline)}")
        # The walk would start reconcile_interval after the start-up pass: measure it at work.
        meter.reconciler.next_walk_at = clock.now
        steps: list[float] = []  # the reconciliation's own part of each tick
        run = meter.reconciler.run

        async def timed_run(now):
            started = time.perf_counter()
            try:
                return await run(now)
            finally:
                steps.append(time.perf_counter() - started)

        meter.reconciler.run = timed_run
        after, after_pages, after_users = [], [], []
        for _ in range(ticks):
            seconds, pages, users = await one_tick(False)
            after.append(seconds)
            after_pages.append(pages)
            after_users.append(users)
        log(f"  after: {percentiles(after)}; reconciliation's part {percentiles(steps)}")
        meter.reconciler.run = run
        meter.reconcile_page_size = OLD_PAGE_SIZE
        before, before_pages = [], []
        for _ in range(before_ticks):
            seconds, pages, _ = await one_tick(True)
            before.append(seconds)
            before_pages.append(pages)
        log(f"  before: {percentiles(before)}")
        meter.stop()
        walk_ticks = -(-hub.users // meter.reconcile_users_per_tick)
        return {
            "open_sessions": hub.users, "settings": settings,
            "startup_tick": {"seconds": round(startup, 3), "pages": startup_pages,
                             "page_size": settings["reconcile_page_size"]},
            "without_reconciliation": {"tick": percentiles(baseline)},
            "after": {"tick": percentiles(after), "reconciliation_step": percentiles(steps),
                      "hub_pages_per_tick_max": max(after_pages),
                      "hub_user_requests_per_tick_max": max(after_users),
                      "hub_user_requests_per_tick_mean": round(statistics.mean(after_users), 2)},
            "before": {"what": "every tick a full reconciliation as the old code did every "
                               "reconcile_interval: all open sessions read twice, every "
                               f"server listed {OLD_PAGE_SIZE} a page",
                       "tick": percentiles(before),
                       "hub_pages_per_tick": max(before_pages, default=0)},
            "walk": {"ticks": walk_ticks, "seconds": walk_ticks * meter.interval,
                     "what": "one walk over every user with an open session, "
                             "reconcile_users_per_tick a tick (default settings)"},
        }
    finally:
        ledger.close()


# --- main --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 users, fewer samples")
    parser.add_argument("--users", type=int)
    parser.add_argument("--pages", default="1,10,25,50,100,200,500",
                        help="comma-separated page sizes measured at the hub")
    parser.add_argument("--requests", type=int, help="requests per page size")
    parser.add_argument("--ticks", type=int, help="meter ticks measured (after)")
    parser.add_argument("--before-ticks", type=int, help="meter ticks measured (before)")
    parser.add_argument("--gap", type=float, default=0.5,
                        help="real seconds between two measured ticks (the service's are 5)")
    parser.add_argument("--pg-url", default=os.environ.get("JUPYTERHUB_CREDITS_TEST_PG_URL",
                                                           DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--out", help="also write the JSON document here")
    args = parser.parse_args(argv)
    users = args.users or (2_000 if args.quick else 10_000)
    requests_each = args.requests or (10 if args.quick else 30)
    ticks = args.ticks or (30 if args.quick else 120)
    before_ticks = args.before_ticks or 3

    report = {"benchmark": "hub_scale", "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(), "users": users,
              "loadavg_before": [round(x, 2) for x in os.getloadavg()],
              "note": "shared 2-core machine with other work running: figures are noisy"}
    with tempfile.TemporaryDirectory() as workdir:
        hub = BenchHub(Path(workdir), users)
        try:
            log(f"hub: starting with {users} users, each with a running server")
            report["hub_start_s"] = round(hub.start(), 1)
            log(f"hub: up in {report['hub_start_s']} s")
            report["hub"] = measure_hub(hub, [int(n) for n in args.pages.split(",")],
                                        requests_each)
            report["tick"] = {}
            for backend in ("sqlite", "postgresql"):
                if (backend == "sqlite" and args.skip_sqlite) or \
                        (backend == "postgresql" and args.skip_postgres):
                    continue
                log(f"meter tick on {backend} at {users} sessions")
                database = sqlite_database(workdir, "credits") if backend == "sqlite" \
                    else postgres_database(args.pg_url)
                with database as url:
                    report["tick"][backend] = asyncio.run(
                        measure_ticks_on(url, hub, ticks, before_ticks, args.gap))
        except Exception:
            log(f"failed; hub log:\n{hub.log_tail()}")
            raise
        finally:
            hub.stop()
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    document = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(document + "\n")
    print(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
