"""Runs INSIDE the peer's scratch virtualenv (jupyterhub-credit-service 0.4.2, jupyterhub 6.1.1),
never in ours: it imports only the peer and JupyterHub. Started by bench/peer.py.

    python peer_billing.py tick  --workdir DIR --sizes 100,1000 [--repeats 3]
    python peer_billing.py clock --workdir DIR --task-interval 60 --billing-interval 600 \
                                 --billing-value 10 --sessions 20

Prints ONE JSON document on stdout; the hub's own log goes to stderr.

The peer bills from inside the hub's process: ``CreditsAuthenticator.__init__``
starts ``credit_reconciliation_task`` (one pass, then ``asyncio.sleep(interval)``)
on the hub's event loop. Here a real ``JupyterHub`` application is initialised
(its database, users, roles, handlers; no proxy or HTTP server started) with
the peer's authenticator and a spawner class derived from the peer's
``CreditsSpawner`` whose servers need no process (``StubSpawner``). N users
with a running server are written straight into the hub's database, then
wrapped the way the hub does at start-up (``app.users[orm_user]``, then
``user.spawners[""]``, which loads the spawner's saved billing state) — minus
the hub's HTTP check of each server, which has nothing to reach here.

``tick``: the peer's own coroutine is started as a fresh task and its pass
timed until its ``credits_task_post_hook`` (called at the end of every pass);
a probe task on the same loop records the longest stall. "due": every
server's last bill is one billing interval old, so each is billed (one
balance change and one commit each); "none due": every server was just billed.

``clock``: the same coroutine, unmodified, driven by a virtual clock: the
module's ``utcnow`` and its ``asyncio.sleep`` are replaced (through the
module's globals) by a clock that jumps ahead, so the default intervals
(60 s pass, 600 s billing) can be followed in seconds. Users become ready at
times spread evenly over one pass interval, each with credit for exactly one
billing interval; the virtual moment the peer asks the hub to stop each
server is recorded. Process shutdown time is not included (no processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import types
from datetime import datetime, timedelta
from pathlib import Path

from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.utils import utcnow
from traitlets.config import Config

import jupyterhub_credit_service.authenticator as peer_authenticator
from jupyterhub_credit_service import CreditsAuthenticator, CreditsSpawner
from jupyterhub_credit_service.orm import CreditsUser, CreditsUserValues

#: The peer's defaults, read from its source (authenticator.py, spawner.py).
DEFAULT_TASK_INTERVAL = 60
DEFAULT_BILLING_INTERVAL = 600
DEFAULT_BILLING_VALUE = 10


class StubSpawner(CreditsSpawner):
    """The peer's spawner with a server that needs no process: running until stopped."""

    #: Set by the ``clock`` mode: called with the spawner when the hub stops it.
    on_stop = None

    async def start(self):
        return ("127.0.0.1", 9)

    async def poll(self):
        return None if self.server is not None else 0

    async def stop(self, now=False):
        if StubSpawner.on_stop is not None:
            StubSpawner.on_stop(self)


class BenchAuthenticator(CreditsAuthenticator):
    """The peer's authenticator as a hub would configure it (no login is used here)."""


class StallProbe:
    """Longest delay of a 5 ms sleep on this loop: how long the loop was blocked."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.longest = 0.0
        self._task = None

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.period)
            self.longest = max(self.longest, time.perf_counter() - started - self.period)

    async def stop(self) -> float:
        await asyncio.sleep(self.period * 2)  # let it see the end of a stall
        self._task.cancel()
        return self.longest


async def make_hub(workdir: Path, *, task_interval: int, billing_interval: int,
                   billing_value: int) -> JupyterHub:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # the hub writes its cookie secret and looks for its config here
    c = Config()
    c.JupyterHub.db_url = f"sqlite:///{workdir / 'jupyterhub.sqlite'}"
    c.JupyterHub.authenticator_class = BenchAuthenticator
    c.JupyterHub.spawner_class = StubSpawner
    c.JupyterHub.log_level = "INFO"  # a hub's default; the peer formats its debug text anyway
    c.Authenticator.allow_all = True
    c.CreditsAuthenticator.credits_task_interval = task_interval
    c.CreditsSpawner.billing_interval = billing_interval
    c.CreditsSpawner.billing_value = billing_value
    app = JupyterHub(config=c)
    await app.initialize([])
    # The pass started by the authenticator at start-up ran on an empty hub: stop it, so
    # that every measured pass is one we started.
    app.authenticator.credits_task.cancel()
    return app


def add_running_users(app: JupyterHub, count: int, *, started: datetime, balance: int,
                      billing_interval: int, billing_value: int, running: bool = True,
                      prefix: str = "user") -> list:
    """``count`` users, each with a credits balance and a server the hub thinks is up;
    returns the hub's ``User`` wrappers."""
    db = app.db
    orm_users = [orm.User(name=f"{prefix}{i:06d}") for i in range(count)]
    db.add_all(orm_users)
    for orm_user in orm_users:
        server = orm.Server(ip="127.0.0.1", port=9, base_url=f"/user/{orm_user.name}/") \
            if running else None
        db.add(orm.Spawner(user=orm_user, name="", server=server, started=started,
                           state={"billing_value": billing_value,
                                  "billing_interval": billing_interval}))
        credits_user = CreditsUser(name=orm_user.name, spawner_bills={})
        db.add(credits_user)
        db.add(CreditsUserValues(name="default", balance=balance, cap=balance, grant_value=0,
                                 grant_interval=10**9, grant_last_update=started,
                                 user_options=None, credits_user=credits_user))
    db.commit()
    users = []
    for orm_user in orm_users:
        user = app.users[orm_user]
        user.spawners[""]  # builds the peer's spawner, which registers the user for billing
        users.append(user)
    return users


def set_last_bills(app: JupyterHub, users, when: datetime) -> None:
    by_name = {cu.name: cu for cu in app.db.query(CreditsUser).all()}
    for user in users:
        spawner = user.spawners[""]
        by_name[user.name].spawner_bills[str(spawner.orm_spawner.id)] = when.isoformat()
    app.db.commit()


async def one_pass(authenticator) -> dict:
    """Start the peer's coroutine, time its first pass, stop it before the next."""
    finished = asyncio.Event()
    authenticator.credits_task_post_hook = finished.set
    probe = StallProbe()
    probe.start()
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    task = asyncio.get_running_loop().create_task(authenticator.credit_reconciliation_task())
    await finished.wait()
    seconds = time.perf_counter() - started
    task.cancel()
    stall = await probe.stop()
    return {"pass_s": seconds, "stall_s": stall}


def summary(samples: list[dict]) -> dict:
    passes = [s["pass_s"] for s in samples]
    return {"runs": len(samples), "tick_p50_ms": round(1000 * statistics.median(passes), 2),
            "tick_max_ms": round(1000 * max(passes), 2),
            "stall_max_ms": round(1000 * max(s["stall_s"] for s in samples), 2)}


async def tick_mode(args) -> dict:
    results = {}
    for count in args.sizes:
        print(f"peer: {count} users", file=sys.stderr, flush=True)
        app = await make_hub(Path(args.workdir) / f"tick_{count}",
                             task_interval=3600, billing_interval=DEFAULT_BILLING_INTERVAL,
                             billing_value=DEFAULT_BILLING_VALUE)
        now = utcnow(with_tz=False)
        built = time.perf_counter()
        users = add_running_users(app, count, started=now - timedelta(hours=1),
                                  balance=10**9, billing_interval=DEFAULT_BILLING_INTERVAL,
                                  billing_value=DEFAULT_BILLING_VALUE)
        setup_s = round(time.perf_counter() - built, 1)
        repeats = 1 if count >= 10_000 else args.repeats
        due, none_due = [], []
        for _ in range(repeats):
            # One billing interval ago: every server owes one bill now.
            set_last_bills(app, users, utcnow(with_tz=False)
                           - timedelta(seconds=DEFAULT_BILLING_INTERVAL + 1))
            due.append(await one_pass(app.authenticator))
            # Each was just billed by that pass: nothing is due.
            none_due.append(await one_pass(app.authenticator))
        billed = sum(1 for cu in app.db.query(CreditsUser).all() for v in cu.credits_user_values
                     if v.balance < 10**9)
        results[str(count)] = {"users": count, "setup_s": setup_s, "billed_users": billed,
                               "all_due": summary(due), "none_due": summary(none_due)}
        app.db.close()
    return {"tick": results}


class VirtualClock:
    """Naive-UTC time that moves only when the peer's loop sleeps; events fire on the way."""

    def __init__(self, start: datetime):
        self.now = start
        self.events: list[tuple[datetime, object]] = []  # (when, callable)

    def utcnow(self, with_tz=True):
        return self.now

    async def sleep(self, seconds):
        target = self.now + timedelta(seconds=seconds)
        for when, action in sorted((e for e in self.events if e[0] <= target),
                                   key=lambda e: e[0]):
            self.now = when
            action()
            self.events.remove((when, action))
        self.now = target
        await asyncio.sleep(0)


async def clock_mode(args) -> dict:
    app = await make_hub(Path(args.workdir) / f"clock_{args.task_interval}",
                         task_interval=args.task_interval,
                         billing_interval=args.billing_interval,
                         billing_value=args.billing_value)
    clock = VirtualClock(datetime(2026, 1, 1, 12, 0))
    # The peer's module reads time and sleeps through these two globals only.
    peer_authenticator.utcnow = clock.utcnow
    peer_authenticator.asyncio = types.SimpleNamespace(
        sleep=clock.sleep, create_task=asyncio.create_task, Event=asyncio.Event)
    users = add_running_users(app, args.sessions, started=clock.now, balance=args.billing_value,
                              billing_interval=args.billing_interval,
                              billing_value=args.billing_value, running=False, prefix="clock")
    ready_at, stopped_at = {}, {}

    def make_ready(user, when):
        def action():
            spawner = user.spawners[""]
            spawner.orm_spawner.server = orm.Server(ip="127.0.0.1", port=9,
                                                    base_url=f"/user/{user.name}/")
            spawner.orm_spawner.started = when
            app.db.commit()
            ready_at[user.name] = when
        return action

    # Ready moments spread evenly over one pass interval, a little after the first pass.
    first = clock.now + timedelta(seconds=1)
    for i, user in enumerate(users):
        when = first + timedelta(seconds=args.task_interval * (i + 0.5) / len(users))
        clock.events.append((when, make_ready(user, when)))
    StubSpawner.on_stop = lambda spawner: stopped_at.setdefault(spawner.user.name, clock.now)

    authenticator = app.authenticator
    task = asyncio.get_running_loop().create_task(authenticator.credit_reconciliation_task())
    horizon = 3 * args.task_interval + 2 * args.billing_interval
    while len(stopped_at) < len(users) and (clock.now - first).total_seconds() < horizon:
        await asyncio.sleep(0.001)  # real time: let the peer's task and the stops run
    task.cancel()
    bills = {cu.name: cu.spawner_bills for cu in app.db.query(CreditsUser).all()}
    runs = []
    for user in users:
        name = user.name
        if name not in stopped_at:
            continue
        last_bill = max(datetime.fromisoformat(v) for v in bills[name].values()) \
            if bills[name] else None
        paid = timedelta(seconds=args.billing_interval)  # credit for one interval
        runs.append({
            "unbilled_after_ready_s": round((last_bill - ready_at[name]).total_seconds(), 3)
            if last_bill else None,
            "stop_after_own_paid_until_s": round(
                (stopped_at[name] - (last_bill + paid)).total_seconds(), 3)
            if last_bill else None,
            "stop_after_paid_time_s": round(
                (stopped_at[name] - (ready_at[name] + paid)).total_seconds(), 3),
        })
    unpaid = sorted(r["stop_after_paid_time_s"] for r in runs)
    return {
        "task_interval_s": args.task_interval, "billing_interval_s": args.billing_interval,
        "billing_value": args.billing_value, "sessions": len(users), "stopped": len(runs),
        "what": "virtual clock through the peer's own billing coroutine: seconds from the end "
                "of the paid time (ready + one billing interval, the credit each user had) to "
                "the peer's stop request; no server process, so no shutdown time",
        "stop_after_paid_time_p50_s": round(statistics.median(unpaid), 3) if unpaid else None,
        "stop_after_paid_time_p99_s": unpaid[min(len(unpaid) - 1, int(0.99 * len(unpaid)))]
        if unpaid else None,
        "stop_after_paid_time_max_s": unpaid[-1] if unpaid else None,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["tick", "clock"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--sizes", default="100,1000",
                        type=lambda s: [int(n) for n in s.split(",") if n])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task-interval", type=int, default=DEFAULT_TASK_INTERVAL)
    parser.add_argument("--billing-interval", type=int, default=DEFAULT_BILLING_INTERVAL)
    parser.add_argument("--billing-value", type=int, default=DEFAULT_BILLING_VALUE)
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args()
    mode = tick_mode if args.mode == "tick" else clock_mode
    result = asyncio.run(mode(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
