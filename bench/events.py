"""Earning events through the credits service's HTTP API: throughput, latency, exactness.

Starts a real JupyterHub (its proxy, the credits service, local servers, each
a 1-GPU session on a declared fake local T4) on a fresh temporary PostgreSQL
database, with a catalog whose earning rules neither cap nor rate-limit a
flood, then posts events as the single-user
servers do (each server's own token) with 1, 8 and 32 concurrent clients, one
event per POST ("single") or 100 ("batch"), through the hub's proxy and
straight to the service's port. Every client also re-sends earlier requests
(retries: every answer must be "duplicate", earning nothing) and sometimes
sends a new request twice at once (exactly one of the two may record it).
At the end the ``credits_events`` table and the ledger are checked against
every answer: each key accepted is stored exactly once, nothing else is, and
the credits earned in the ledger are exactly the units answered.

    .venv/bin/python bench/events.py [--quick] [--duration S] [--users 8] [--batch 100]
        [--clients 1,8,32] [--pg-url URL] [--skip-direct]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp
import psutil
import yaml
from benchdb import (
    DEFAULT_PG_ADMIN_URL,
    WaitSampler,
    log,
    percentiles,
    postgres_database,
    wait_for_quiet,
)
from sqlalchemy import create_engine, func, select, text

from jupyterhub_credits.catalog import load_catalog
from jupyterhub_credits.earning import EarningService, earning_rules
from jupyterhub_credits.earning.schema import events as events_table
from jupyterhub_credits.ledger import Ledger
from jupyterhub_credits.ledger import database as ledger_database
from jupyterhub_credits.ledger.schema import accounts, transfers
from jupyterhub_credits.ledger.verify import verify
from jupyterhub_credits.sessions.store import SessionStore
from tests.hub import CATALOG, HubProcess
from tests.waiting import wait_for

#: One event in this many is a training run (earns 0.5 credits through the ledger); the
#: others are GPU utilisation samples (stored as "earned" with 0 units, no ledger transfer).
RUN_EVERY = 50
#: Every RESEND_EVERY-th request of a client re-sends an earlier acknowledged one.
RESEND_EVERY = 10
#: Every DOUBLE_EVERY-th request of a client sends a new body twice at the same time.
DOUBLE_EVERY = 25
STORED = ("earned", "capped", "rejected")
RUN_UNITS = 500  # training_run points "0.5" in units
#: What each bench user's server is: GPU samples count only from a session with GPUs, and
#: only for as many GPUs as it has, so each is a 1-GPU session on a fake local T4.
GPU_TYPE = "t4"
IMAGE = "tf-2.21"
SESSION_GPUS = 1
#: The length every training run claims. A run counts only if a session of its user had
#: been up that long when it ended, so the bench waits until every server has been up this
#: long before it sends anything (short, so the wait is short).
RUN_SECONDS = 5


# --- the hub --------------------------------------------------------------------------


def flood_catalog(path: Path) -> Path:
    """The shipped catalog with earning loosened so that no event is capped or rate-limited,
    and the bench's GPU sessions allowed (one per user, ``SESSION_GPUS`` each)."""
    catalog = yaml.safe_load(CATALOG.read_text())
    image = catalog["images"][IMAGE]
    if GPU_TYPE not in image["gpu_types"]:
        image["gpu_types"].append(GPU_TYPE)
    quotas = catalog["quotas"]
    quotas["max_gpus_per_session"] = max(quotas["max_gpus_per_session"], SESSION_GPUS)
    quotas["max_concurrent_gpu_sessions"] = max(quotas["max_concurrent_gpu_sessions"], 1)
    earning = catalog["earning"]
    earning["rate_limit_per_minute"] = 100_000_000
    earning["max_claims_per_day"] = 100_000_000  # credits
    earning["rules"]["training_run"].update(max_per_day=None, min_interval_s=0, min_duration_s=1)
    # No derived "#efficiency_bonus" rows: one stored row per event sent.
    earning["rules"]["efficiency_bonus"]["enabled"] = False
    path.write_text(yaml.safe_dump(catalog))
    return path


def server_token(hub: HubProcess, user: str) -> str:
    pid = wait_for(lambda: hub.server_pids().get(user), what=f"{user}'s server pid")
    environ = dict(item.split(b"=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    return environ[b"JUPYTERHUB_API_TOKEN"].decode()


def local_gpus(count: int) -> str:
    """Fake local GPUs for the hub, one per bench user: ``t4:0,t4:1,...``."""
    return ",".join(f"{GPU_TYPE}:{index}" for index in range(count * SESSION_GPUS))


def start_sessions(hub: HubProcess, ledger: Ledger, users: list[str]) -> dict[str, str]:
    """A running 1-GPU server per user, up at least ``RUN_SECONDS``; the server's own token
    by user."""
    for user in users:
        # 1000 credits: an hour of a T4 holds 5.
        ledger.grant(user, 1_000_000, key=f"bench-grant:{user}", reason="bench", actor="bench")
        hub.api("POST", f"/users/{user}")
        response = hub.api("POST", f"/users/{user}/server", json={"user_options": {
            "image": IMAGE, "gpu_type": GPU_TYPE, "gpus": SESSION_GPUS, "hours": "1"}})
        if response.status_code not in (201, 202):
            raise RuntimeError(f"could not start {user}'s server: {response.status_code} "
                               f"{response.text}")
    tokens = {}
    for user in users:
        hub.wait_ready(user, timeout=180)
        tokens[user] = server_token(hub, user)
    # The session's ready time is what the service measures a run's length against.
    store = SessionStore(ledger)
    ready = {user: wait_for(lambda user=user: getattr(store.open_session(user), "ready_at", None),
                            what=f"{user}'s session to be ready") for user in users}
    latest = max(ready.values())
    wait_for(lambda: datetime.now(UTC) - latest >= timedelta(seconds=RUN_SECONDS),
             timeout=RUN_SECONDS + 30, what=f"every server to be up {RUN_SECONDS} s")
    return tokens


# --- CPU accounting -------------------------------------------------------------------


class CpuMeter:
    """CPU seconds per role (bench client, hub, proxy, service, servers, PostgreSQL, other)."""

    def __init__(self, hub: HubProcess, users: list[str], database: str):
        self.hub, self.users, self.database = hub, users, database
        self.refresh()

    def refresh(self) -> None:
        self.roles: dict[int, str] = {os.getpid(): "bench_client", self.hub.process.pid: "hub"}
        proxy_pid = self.hub.workdir / "proxy.pid"
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if "configurable-http-proxy" in cmdline or "configurable_http_proxy" in cmdline:
                self.roles[proc.pid] = "proxy"
        if proxy_pid.exists():
            try:
                self.roles[int(proxy_pid.read_text().strip())] = "proxy"
            except ValueError:
                pass
        for pid in self.hub.service_pids():
            self.roles[pid] = "credits_service"
        for pid in self.hub.server_pids().values():
            self.roles[pid] = "singleuser_servers"

    def role(self, proc) -> str:
        if proc.pid in self.roles:
            return self.roles[proc.pid]
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            cmdline = " ".join(proc.info["cmdline"] or ())
            return "postgres_backends" if self.database in cmdline.split() else "postgres_other"
        return "other_processes"

    def snapshot(self) -> dict:
        per_pid = {}
        for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            per_pid[proc.pid] = (self.role(proc), times.user + times.system)
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0)
        return {"pids": per_pid, "busy": busy, "total": sum(machine), "at": time.monotonic()}

    @staticmethod
    def share(before: dict, after: dict) -> dict:
        wall = after["at"] - before["at"]
        cores = psutil.cpu_count()
        used: Counter = Counter()
        for pid, (role, seconds) in after["pids"].items():
            old = before["pids"].get(pid)
            used[role] += seconds - (old[1] if old and old[0] == role else 0)
        machine_total = after["total"] - before["total"]
        idle = 1 - (after["busy"] - before["busy"]) / max(1e-9, machine_total)
        out = {"cores_busy": {role: round(seconds / wall, 3)
                              for role, seconds in used.most_common() if seconds > 0.005},
               "machine_idle_share": round(max(0.0, idle), 3), "cores": cores}
        return out


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def make_event(key: str, index: int, moment: str) -> dict:
    if RUN_EVERY and index % RUN_EVERY == 0:
        return {"kind": "training_run", "key": key, "time": moment,
                "payload": {"epochs": 1, "steps": 10, "duration_s": RUN_SECONDS,
                            "metrics": {"loss": 0.1}}}
    return {"kind": "gpu_utilization", "key": key, "time": moment,
            "payload": {"minute": moment, "gpus": [{"index": 0, "util": 50,
                                                    "mem_used_mb": 1024}]}}


class Books:
    """Everything the answers said, to check the database against at the end."""

    def __init__(self):
        self.accepted: dict[str, set[str]] = defaultdict(set)  # user → keys stored
        self.units: Counter = Counter()  # user → units answered as earned
        self.acked: dict[str, list[bytes]] = defaultdict(list)  # user → bodies answered
        self.uncertain: list[tuple[str, bytes, list[str]]] = []  # failed requests
        self.outcomes: Counter = Counter()
        self.unexpected: list[dict] = []
        self.duplicates_answered = 0
        self.duplicates_that_earned = 0
        self.resend_not_duplicate = 0
        self.double_sends = 0
        self.double_sends_both_recorded = 0
        self.double_sends_none_recorded = 0
        self.index = 0

    def next_index(self) -> int:
        self.index += 1
        return self.index

    def take_fresh(self, user: str, keys: list[str], answers: list[dict]) -> int:
        """Book a batch's answers when they were the first to record it; events stored."""
        if [a.get("key") for a in answers] != keys:
            self.unexpected.append({"problem": "answers out of order or missing",
                                    "sent": keys[:3], "answered": answers[:3]})
        stored = 0
        for answer in answers:
            outcome = answer.get("outcome")
            self.outcomes[outcome] += 1
            if outcome == "duplicate":
                self.unexpected.append({"problem": "a new key answered duplicate",
                                        "answer": answer})
                continue
            if outcome != "earned" and len(self.unexpected) < 50:
                self.unexpected.append({"problem": "not earned", "answer": answer})
            if outcome in STORED and not answer.get("reason", "").startswith("rate limit"):
                key = answer["key"]
                if key in self.accepted[user]:
                    self.unexpected.append({"problem": "key recorded twice", "key": key})
                self.accepted[user].add(key)
                self.units[user] += int(answer.get("units", 0))
                stored += 1
        return stored

    def take_duplicates(self, answers: list[dict]) -> bool:
        """Book the answers to a re-sent batch; whether every one was a duplicate."""
        all_duplicate = True
        for answer in answers:
            self.outcomes["duplicate (re-sent)" if answer.get("outcome") == "duplicate"
                          else f"{answer.get('outcome')} (re-sent)"] += 1
            if answer.get("outcome") != "duplicate":
                all_duplicate = False
            else:
                self.duplicates_answered += 1
            if int(answer.get("units", 0)) != 0:
                self.duplicates_that_earned += 1
        return all_duplicate


class Phase:
    def __init__(self):
        self.fresh_latencies: list[float] = []
        self.resend_latencies: list[float] = []
        self.events_stored = 0
        self.events_resent = 0
        self.requests = 0
        self.errors: Counter = Counter()


async def post(session: aiohttp.ClientSession, url: str, token: str, body: bytes):
    started = time.perf_counter()
    async with session.post(url, data=body, headers={
            "Authorization": f"token {token}", "Content-Type": "application/json"}) as response:
        payload = await response.read()
        status = response.status
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
    return json.loads(payload), elapsed


async def client(number: int, url: str, user: str, token: str, batch: int, stop_at: float,
                 label: str, books: Books, phase: Phase) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=4, force_close=False)
    rng = random.Random(number)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        request = 0
        while time.monotonic() < stop_at:
            request += 1
            acked = books.acked[user]
            if request % RESEND_EVERY == 0 and acked:
                body = rng.choice(acked)
                try:
                    answers, elapsed = await post(session, url, token, body)
                except Exception as error:  # noqa: BLE001 - counted, and the body is known
                    phase.errors[type(error).__name__ + ": " + str(error)[:120]] += 1
                    continue
                phase.requests += 1
                phase.resend_latencies.append(elapsed)
                phase.events_resent += len(answers)
                if not books.take_duplicates(answers):
                    books.resend_not_duplicate += 1
                continue
            moment = now_iso()
            keys = [f"{label}-c{number}-r{request}-e{j}" for j in range(batch)]
            body = json.dumps([make_event(key, books.next_index(), moment)
                               for key in keys]).encode()
            senders = 2 if request % DOUBLE_EVERY == 0 else 1
            results = await asyncio.gather(*(post(session, url, token, body)
                                              for _ in range(senders)), return_exceptions=True)
            fresh = 0
            failed = False
            for result in results:
                if isinstance(result, BaseException):
                    phase.errors[type(result).__name__ + ": " + str(result)[:120]] += 1
                    failed = True
                    continue
                answers, elapsed = result
                phase.requests += 1
                if answers and all(a.get("outcome") == "duplicate" for a in answers):
                    phase.resend_latencies.append(elapsed)
                    phase.events_resent += len(answers)
                    books.take_duplicates(answers)
                else:
                    fresh += 1
                    phase.fresh_latencies.append(elapsed)
                    phase.events_stored += books.take_fresh(user, keys, answers)
            if fresh == 0 and failed:
                books.uncertain.append((user, body, keys))  # its fate is settled at the end
            elif senders == 2 and not failed:
                books.double_sends += 1
                books.double_sends_both_recorded += fresh > 1
                books.double_sends_none_recorded += fresh == 0
            if fresh == 1:
                acked.append(body)


def stored_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(events_table)).scalar()


def run_phase(url: str, target: str, mode: str, clients: int, batch: int, duration: float,
              users: list[str], tokens: dict[str, str], books: Books, cpu: CpuMeter,
              admin_url: str, database: str) -> dict:
    size = batch if mode == "batch" else 1
    label = f"{target[0]}{mode[0]}{clients}"
    phase = Phase()
    sampler = WaitSampler(admin_url, database, interval=0.1)
    sampler.start()
    before = cpu.snapshot()
    started = time.monotonic()
    stop_at = started + duration

    async def everyone():
        await asyncio.gather(*(
            client(n, url, users[n % len(users)], tokens[users[n % len(users)]], size,
                   stop_at, label, books, phase) for n in range(clients)))

    asyncio.run(everyone())
    wall = time.monotonic() - started
    after = cpu.snapshot()
    waits = sampler.result()
    return {
        "target": target, "mode": mode, "clients": clients, "events_per_request": size,
        "wall_s": round(wall, 2),
        "events_per_s": round(phase.events_stored / wall, 1),
        "requests_per_s": round(phase.requests / wall, 1),
        "events_stored": phase.events_stored,
        "events_resent_per_s": round(phase.events_resent / wall, 1),
        "latency_new": percentiles(phase.fresh_latencies),
        "latency_resent": percentiles(phase.resend_latencies),
        "errors": dict(phase.errors),
        "cpu": CpuMeter.share(before, after),
        "cpu_ms_per_event": round(1000 * (after["busy"] - before["busy"])
                                  / max(1, phase.events_stored + phase.events_resent), 3),
        "db_backends_by_state": waits,
    }


def in_process(db_url: str, catalog_path: Path, users: list[str], duration: float, batch: int,
               books: Books, cpu: CpuMeter, label: str) -> dict:
    """Diagnostic: ``EarningService.record`` called straight from this process (one thread,
    no HTTP, no JSON, no token check), to tell the earning work from the HTTP stack's."""
    ledger = Ledger.open(db_url, upgrade=False)
    service = EarningService(ledger, earning_rules(load_catalog(str(catalog_path))))
    out = {}
    try:
        for mode, size in (("single", 1), ("batch", batch)):
            latencies, stored, request = [], 0, 0
            me = psutil.Process()
            own_before = sum(me.cpu_times()[:2])
            before = cpu.snapshot()
            started = time.monotonic()
            while time.monotonic() < started + duration:
                request += 1
                user = users[request % len(users)]
                moment = now_iso()
                keys = [f"{label}{mode[0]}-r{request}-e{j}" for j in range(size)]
                batch_events = [make_event(key, books.next_index(), moment) for key in keys]
                began = time.perf_counter()
                answers = service.record(user, batch_events, source="server")
                latencies.append(time.perf_counter() - began)
                stored += books.take_fresh(user, keys, answers)
            wall = time.monotonic() - started
            after = cpu.snapshot()
            share = CpuMeter.share(before, after)
            out[mode] = {"events_per_request": size, "events_per_s": round(stored / wall, 1),
                         "latency": percentiles(latencies),
                         "python_cpu_ms_per_event": round(
                             1000 * (sum(me.cpu_times()[:2]) - own_before) / max(1, stored), 3),
                         "cpu": share}
    finally:
        ledger.close()
    return out


# --- the final count ------------------------------------------------------------------


async def recover(url: str, tokens: dict[str, str], books: Books) -> dict:
    """Send every request whose answer was lost until it is answered; book what it says."""
    recovered = {"requests": len(books.uncertain), "found_recorded": 0, "recorded_now": 0,
                 "keys_found_recorded": defaultdict(list)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for user, body, keys in books.uncertain:
            for attempt in range(10):
                try:
                    answers, _ = await post(session, url, tokens[user], body)
                    break
                except Exception:  # noqa: BLE001
                    await asyncio.sleep(1 + attempt)
            else:
                raise RuntimeError("a request could not be answered after 10 tries")
            if all(a.get("outcome") == "duplicate" for a in answers):
                recovered["found_recorded"] += 1
                recovered["keys_found_recorded"][user] += keys
                books.accepted[user].update(keys)
            else:
                recovered["recorded_now"] += 1
                books.take_fresh(user, keys, answers)
    return recovered


def final_count(db_url: str, users: list[str], books: Books, recovered: dict) -> dict:
    engine = ledger_database.make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(events_table.c.user, events_table.c.key,
                                       events_table.c.points)).all()
            earned = dict(conn.execute(
                select(accounts.c.name, func.sum(transfers.c.amount))
                .join(accounts, accounts.c.id == transfers.c.credit_account_id)
                .where(transfers.c.kind == "earn").group_by(accounts.c.name)).all())
            unsettled = conn.execute(select(func.count()).select_from(events_table).where(
                events_table.c.outcome == "earned", events_table.c.points > 0,
                events_table.c.transfer_id.is_(None))).scalar()
        stored: dict[str, list[str]] = defaultdict(list)
        points: dict[tuple[str, str], int] = {}
        for user, key, units in rows:
            stored[user].append(key)
            points[(user, key)] = int(units)
        # Units of events whose first answer was lost (their earning is in the table).
        for user, keys in recovered["keys_found_recorded"].items():
            books.units[user] += sum(points.get((user, key), 0) for key in keys)
        per_user = {}
        lost = extra = twice = 0
        money_ok = True
        for user in sorted(set(stored) | set(books.accepted)):
            keys = stored.get(user, [])
            distinct = set(keys)
            accepted = books.accepted.get(user, set())
            user_lost = len(accepted - distinct)
            user_extra = len(distinct - accepted)
            user_twice = len(keys) - len(distinct)
            ledger_units = int(earned.get(f"user:{user}", 0))
            per_user[user] = {"rows": len(keys), "keys_accepted": len(accepted),
                              "lost": user_lost, "extra": user_extra, "stored_twice": user_twice,
                              "units_answered": books.units[user], "units_in_ledger": ledger_units}
            lost += user_lost
            extra += user_extra
            twice += user_twice
            money_ok &= ledger_units == books.units[user]
        started = time.perf_counter()
        report = verify(engine)
        verify_s = time.perf_counter() - started
        return {
            "rows_stored": len(rows),
            "keys_accepted": sum(len(keys) for keys in books.accepted.values()),
            "lost": lost, "not_sent_but_stored": extra, "stored_twice": twice,
            "units_answered": sum(books.units.values()),
            "units_earned_in_ledger": int(sum(earned.values())),
            "money_matches": money_ok,
            "earned_events_without_transfer": unsettled,
            "duplicate_answers": books.duplicates_answered,
            "duplicate_answers_that_earned": books.duplicates_that_earned,
            "resends_not_all_duplicate": books.resend_not_duplicate,
            "double_sends": books.double_sends,
            "double_sends_recorded_twice": books.double_sends_both_recorded,
            "double_sends_recorded_by_neither": books.double_sends_none_recorded,
            "requests_without_answer_resent_at_end": recovered["requests"],
            "unexpected_answers": books.unexpected[:10],
            "unexpected_answers_total": len(books.unexpected),
            "outcomes": dict(books.outcomes),
            "ledger_verify_ok": report.ok,
            "ledger_verify_s": round(verify_s, 2),
            "per_user": per_user,
            "ok": (lost == 0 and extra == 0 and twice == 0 and money_ok and unsettled == 0
                   and books.duplicates_that_earned == 0 and books.resend_not_duplicate == 0
                   and books.double_sends_both_recorded == 0
                   and books.double_sends_none_recorded == 0 and not books.unexpected
                   and report.ok),
        }
    finally:
        engine.dispose()


# --- main -----------------------------------------------------------------------------


def machine(admin_url: str) -> dict:
    info = {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f
                                      if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        engine = create_engine(ledger_database.normalize_url(admin_url))
        with engine.connect() as conn:
            info["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
            info["postgresql_settings"] = dict(conn.execute(text(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                "('synchronous_commit', 'fsync', 'shared_buffers', 'max_connections')")).all())
        engine.dispose()
    except Exception as error:  # noqa: BLE001
        info["postgresql"] = f"unknown ({error})"
    return info


def main(argv=None) -> int:
    global RUN_EVERY
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per measurement (default 8, --quick 3)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--run-every", type=int, default=RUN_EVERY, help="""one event in this
                        many is a training run (earns through the ledger); 0: none""")
    parser.add_argument("--wait-quiet", type=float, default=15, help="""before each measurement
                        wait up to this many seconds for the machine to be nearly idle
                        (it may be shared); 0: don't""")
    parser.add_argument("--skip-direct", action="store_true",
                        help="only through the proxy, not straight to the service's port")
    args = parser.parse_args(argv)
    RUN_EVERY = args.run_every
    duration = args.duration or (3.0 if args.quick else 8.0)
    client_counts = [int(n) for n in args.clients.split(",")]
    users = [f"bench{i}" for i in range(args.users)]
    result: dict = {
        "machine": machine(args.pg_url),
        "setup": {"users": args.users, "duration_s_per_measurement": duration,
                  "batch": args.batch, "clients": client_counts,
                  "event_mix": (f"1 in {RUN_EVERY} a training_run of {RUN_SECONDS} s (earns "
                                "0.50 through the ledger), the others gpu_utilization samples "
                                "(stored, earn 0)"
                                if RUN_EVERY else "gpu_utilization samples only (stored, earn 0)"),
                  "resend_every": RESEND_EVERY, "double_send_every": DOUBLE_EVERY},
    }
    with tempfile.TemporaryDirectory(prefix="credits-bench-events-") as tmp, \
            postgres_database(args.pg_url) as db_url:
        database = db_url.rsplit("/", 1)[1].split("?")[0]
        catalog = flood_catalog(Path(tmp) / "catalog.yaml")
        hub = HubProcess(Path(tmp) / "hub", db_url=db_url, catalog=catalog, meter_interval=10,
                         local_gpus=local_gpus(len(users)))
        ledger = None
        try:
            log("starting the hub")
            started = time.monotonic()
            hub.start(timeout=120)
            result["setup"]["hub_start_s"] = round(time.monotonic() - started, 1)
            ledger = Ledger.open(db_url, upgrade=False)
            log(f"starting {len(users)} {SESSION_GPUS}-GPU ({GPU_TYPE}) servers")
            started = time.monotonic()
            tokens = start_sessions(hub, ledger, users)
            result["setup"]["servers_start_s"] = round(time.monotonic() - started, 1)
            targets = {"proxy": f"{hub.url}/services/credits/api/events"}
            if not args.skip_direct:
                targets["direct"] = (f"http://127.0.0.1:{hub.service_port}"
                                     "/services/credits/api/events")
            cpu = CpuMeter(hub, users, database)
            books = Books()
            engine = ledger_database.make_engine(db_url)
            # Warm up: every token once through each route (the service asks the hub who it is).
            async def warm_up(url: str, label: str):
                phase = Phase()
                await asyncio.gather(*(
                    client(n, url, user, tokens[user], 1, time.monotonic() + 0.3, label, books,
                           phase) for n, user in enumerate(users)))
                if phase.errors:
                    raise RuntimeError(f"warm-up through {url} failed: {dict(phase.errors)}")

            for target, url in targets.items():
                asyncio.run(asyncio.wait_for(warm_up(url, f"w{target[0]}"), 60))
            diagnostics = {}
            quiet = wait_for_quiet(args.wait_quiet)
            rows_before = stored_rows(engine)
            log(f"in-process record() for {duration} s per mode ({rows_before} rows stored)")
            diagnostics["in_process_first"] = {
                "rows_stored_before": rows_before, "machine_busy_before": quiet,
                **in_process(db_url, catalog, users, duration, args.batch, books, cpu, "i1")}
            phases = []
            # Proxy and direct back to back, so both see about the same table size.
            for mode in ("single", "batch"):
                for clients in client_counts:
                    for target, url in targets.items():
                        quiet = wait_for_quiet(args.wait_quiet)
                        rows_before = stored_rows(engine)
                        log(f"{target} {mode} x{clients} for {duration} s "
                            f"({rows_before} rows stored so far)")
                        cpu.refresh()
                        entry = run_phase(url, target, mode, clients, args.batch, duration,
                                          users, tokens, books, cpu, args.pg_url, database)
                        entry["rows_stored_before"] = rows_before
                        entry["machine_busy_before"] = quiet
                        phases.append(entry)
                        log(f"  {entry['events_per_s']} events/s, p50 "
                            f"{entry['latency_new'].get('p50_ms')} ms, p99 "
                            f"{entry['latency_new'].get('p99_ms')} ms, errors "
                            f"{sum(entry['errors'].values())}; {entry['cpu']}")
            quiet = wait_for_quiet(args.wait_quiet)
            rows_before = stored_rows(engine)
            log(f"in-process record() again ({rows_before} rows stored)")
            diagnostics["in_process_last"] = {
                "rows_stored_before": rows_before, "machine_busy_before": quiet,
                **in_process(db_url, catalog, users, duration, args.batch, books, cpu, "i2")}
            result["diagnostics"] = diagnostics
            engine.dispose()
            result["phases"] = phases
            result["summary"] = {
                f"{p['target']}/{p['mode']}/{p['clients']}": {
                    "events_per_s": p["events_per_s"], "p50_ms": p["latency_new"].get("p50_ms"),
                    "p99_ms": p["latency_new"].get("p99_ms")} for p in phases}
            best = max((p["events_per_s"] for p in phases
                        if p["mode"] == "batch" and p["target"] == "proxy"), default=0)
            best_direct = max((p["events_per_s"] for p in phases
                               if p["mode"] == "batch" and p["target"] == "direct"), default=None)
            result["aim"] = {"events_per_s_with_batches": 2000, "best_through_proxy": best,
                             "best_direct": best_direct, "met": best >= 2000}
            log("final count")
            recovered = asyncio.run(recover(targets["proxy"], tokens, books))
            result["verification"] = final_count(db_url, users, books, recovered)
            log(f"verification ok: {result['verification']['ok']}")
        except BaseException:
            log("failed:\n" + traceback.format_exc() + "\nhub log tail:\n" + hub.log_tail(40))
            raise
        finally:
            if ledger is not None:
                ledger.close()
            log("stopping the hub")
            hub.stop()
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
